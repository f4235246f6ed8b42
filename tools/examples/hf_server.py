#!/usr/bin/env python3
"""A Hugging Face transformers inference server that knows nothing about hotboot.

It serves a model saved with `save_pretrained` (hf_mkmodel.py makes a random
Llama of 1B- or 8B-class shapes) and loads it with `from_pretrained` at boot.
hotboot captures it in transparent mode: CRIU for the process, the CUDA
driver's checkpoint API for its GPU memory:

    python3 tools/examples/hf_mkmodel.py --shape 1b --out /tmp/hf-1b --device cuda
    hotboot build -o hf.hbsnap --port 8000 --canary-path /generate \\
        --canary-body '{"prompt":"The quick brown fox","max_tokens":16}' \\
        --canary-compare /tokens --after-restore /after-restore \\
        -- python3 tools/examples/hf_server.py --model /tmp/hf-1b --port 8000 \\
           --device cuda --compile cuda-graphs
    hotboot restore hf.hbsnap              # on its build port, 8000

Boot, each phase timed (GET /health "timings"): cuda_init (the context),
load (`from_pretrained(DIR, dtype=bfloat16, device_map=DEVICE)`, sdpa
attention), to_device (only when device_map needs `accelerate` and it is
missing: then loaded on the CPU and moved), compile, warmup (greedy decodes
over --warmup-lengths prompt lengths), boot (all of it). Until then GET
/health answers 503.

--compile (what the stack offers; on failure the server says so on stderr,
in /health "compile_error", and serves eagerly: "compile": "none"):
  none           eager forward, transformers' DynamicCache.
  cuda-graphs    a StaticCache (fixed addresses) and one CUDA graph of the
                 batch-1 decode step captured with torch.cuda.graph; the
                 prefill runs eagerly. The attention mask is built by the
                 server (4-D, bool) so nothing in the step reads the GPU from
                 the CPU. No Triton, no C compiler.
  torch-compile  a StaticCache and torch.compile(model.forward,
                 mode="reduce-overhead") for the decode step (Inductor +
                 CUDA graph trees; needs Triton; compiles at warmup).

Greedy decoding (argmax, no sampling): POST /generate {"prompt",
"max_tokens" (1..128, default --max-new-tokens)} -> {"tokens", "text",
"latency_ms"}. Prompts are tokenized with the tokenizer saved beside the
weights (AutoTokenizer); without one, UTF-8 bytes are the ids (byte + 3),
which is what hf_mkmodel.py's byte-level tokenizer gives too. The last
--max-prompt-tokens of a prompt are kept.

Uniqueness after a restore, as torch_server.py: POST /after-restore takes
Hotboot-Instance/Hotboot-Entropy (headers) or "instance"/"entropy" (JSON
body), reseeds `random`, NumPy and torch (CPU and every CUDA device), draws a
new boot id, answers {"instance", "boot_id"}; 400 on bad entropy. GET
/random shows a few values of each generator.

Needs torch and transformers (the GPU machine: torch 2.11, transformers 5);
without them it exits 2 and says so. --help works anywhere.
"""
import argparse
import hashlib
import json
import os
import random
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_PROMPT_CHARS = 16384
MAX_NEW_TOKENS = 128
BYTE_OFFSET = 3  # ids 0..2 are <unk>, <s>, </s> (hf_mkmodel.py)


class HfEngine:
    """A causal LM from a save_pretrained directory, greedy decoding, optional CUDA graphs."""

    def __init__(self, model_dir, device="cuda", compile_mode="none", seed=1234, max_prompt_tokens=512):
        # Inductor compiles in a pool of worker processes by default: they
        # would join the process tree hotboot captures. One thread, no pool.
        if compile_mode == "torch-compile":
            os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
        import torch
        import transformers
        self.torch, self.transformers = torch, transformers
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch sees no CUDA device (use --device cpu)")
        self.dev = torch.device(device)
        self.device, self.kind = device, "hf"
        self.dtype = torch.bfloat16
        self.compile_requested, self.compile_used, self.compile_error = compile_mode, "none", None
        self.compile_note = None
        self.max_prompt = max_prompt_tokens
        self.max_len = max_prompt_tokens + MAX_NEW_TOKENS
        self.lock = threading.Lock()
        self.timings = {}
        self.load_note = None
        torch.manual_seed(seed)

        t = time.perf_counter()
        if self.dev.type == "cuda":
            torch.cuda.init()
            torch.empty(1, device=self.dev)  # creates the context
            torch.cuda.synchronize()
        self.timings["cuda_init_s"] = time.perf_counter() - t

        t = time.perf_counter()
        self.model = self._load(model_dir)
        self.timings["load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        first = next(self.model.parameters())
        if first.device.type != self.dev.type or first.dtype != self.dtype:
            self.model = self.model.to(self.dev, self.dtype)
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
        self.timings["to_device_s"] = time.perf_counter() - t
        self.model.eval()
        cfg = self.model.config
        self.config = {k: getattr(cfg, k, None) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                           "num_key_value_heads", "intermediate_size", "vocab_size")}
        self.params = sum(p.numel() for p in self.model.parameters())
        self.model_dir = os.path.abspath(model_dir)
        self.label = f"{type(self.model).__name__} {self.params / 1e9:.2f}B from {self.model_dir}"

        self.tokenizer, self.tokenizer_kind = None, "utf-8 bytes (id = byte + 3)"
        if os.path.exists(os.path.join(model_dir, "tokenizer.json")):
            try:
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
                self.tokenizer_kind = type(self.tokenizer).__name__
            except Exception as e:  # the byte ids are the same ones hf_mkmodel's tokenizer gives
                self.tokenizer_kind += f" (AutoTokenizer failed: {type(e).__name__}: {e})"
        self.cache = None  # the StaticCache of the compiled modes
        self.static_mode = None  # how a decode step on it runs: "eager", "graph", "compiled"
        self.graph = None

    # The engine interface engine_server.py uses: label, device, kind, timings,
    # compile_used, warmup(lengths), generate, text, reseed, draw.

    def _load(self, model_dir):
        cls = self.transformers.AutoModelForCausalLM
        kw = dict(attn_implementation="sdpa")
        attempts = [dict(dtype=self.dtype, device_map=str(self.dev)), dict(torch_dtype=self.dtype, device_map=str(self.dev))]
        last = None
        for extra in attempts:
            try:
                return cls.from_pretrained(model_dir, **kw, **extra)
            except TypeError as e:  # transformers before 4.56 has torch_dtype, not dtype
                last = e
            except (ImportError, ValueError) as e:  # device_map wants `accelerate` on some versions
                if "accelerate" not in str(e):
                    raise
                self.load_note = f"device_map unavailable ({e}): loaded on the CPU, then moved"
                print(f"hf_server: {self.load_note}", file=sys.stderr, flush=True)
                try:
                    return cls.from_pretrained(model_dir, **kw, dtype=self.dtype)
                except TypeError:
                    return cls.from_pretrained(model_dir, **kw, torch_dtype=self.dtype)
        raise last

    # ------------------------------------------------------------ tokens

    def encode(self, prompt):
        if self.tokenizer is not None:
            ids = list(self.tokenizer.encode(prompt, add_special_tokens=False))
        else:
            ids = [b + BYTE_OFFSET for b in prompt.encode()]
        return ids[-self.max_prompt:] or [1]  # <s> for an empty prompt

    def text(self, tokens):
        if self.tokenizer is not None:
            try:
                return self.tokenizer.decode(tokens, skip_special_tokens=True)
            except Exception:  # ids past the tokenizer's vocabulary (a random model emits any)
                pass
        return bytes(t - BYTE_OFFSET for t in tokens if BYTE_OFFSET <= t < 256 + BYTE_OFFSET).decode(errors="replace")

    # ------------------------------------------------------------ decoding

    def _prefill(self, ids):
        torch = self.torch
        n = len(ids)
        inp = torch.tensor([ids], dtype=torch.long, device=self.dev)
        pos = torch.arange(n, dtype=torch.long, device=self.dev)
        kw = dict(input_ids=inp, cache_position=pos, position_ids=pos[None], use_cache=True, logits_to_keep=1)
        if self.cache is not None:
            self.cache.reset()  # zeroes in place: the graph's addresses stay
            kw["past_key_values"] = self.cache
            kw["attention_mask"] = (self.kv_idx[None, :] <= pos[:, None])[None, None]  # (1, 1, n, max_len)
        out = self.model(**kw)
        return int(out.logits[0, -1].float().argmax()), out.past_key_values

    def _decode_eager(self, tok, p, cache):
        torch = self.torch
        pos = torch.tensor([p], dtype=torch.long, device=self.dev)
        out = self.model(input_ids=torch.tensor([[tok]], dtype=torch.long, device=self.dev), past_key_values=cache,
                         cache_position=pos, position_ids=pos[None], use_cache=True)
        return int(out.logits[0, -1].float().argmax())

    def _decode_static(self, forward):
        # One decode step on the static buffers: what the CUDA graph captures.
        mask = (self.kv_idx <= self.pos_buf).view(1, 1, 1, self.max_len)
        return forward(input_ids=self.tok_buf, past_key_values=self.cache, cache_position=self.pos_buf,
                       position_ids=self.pos_buf.view(1, 1), attention_mask=mask, use_cache=True).logits

    def _decode(self, tok, p, cache):
        if self.cache is None:
            return self._decode_eager(tok, p, cache)
        self.tok_buf.fill_(tok)
        self.pos_buf.fill_(p)
        if self.static_mode == "graph":
            self.graph.replay()
            logits = self.graph_logits
        elif self.static_mode == "compiled":
            logits = self._decode_static(self.compiled)
        else:
            logits = self._decode_static(self.model)
        return int(logits[0, -1].float().argmax())  # read now: the next replay overwrites it

    def generate(self, prompt, max_tokens):
        if not 1 <= max_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_tokens must be 1..{MAX_NEW_TOKENS}")
        ids = self.encode(prompt)
        with self.lock, self.torch.no_grad():
            nxt, cache = self._prefill(ids)
            out = [nxt]
            for i in range(max_tokens - 1):
                nxt = self._decode(nxt, len(ids) + i, cache)
                out.append(nxt)
            return out

    # ------------------------------------------------------------ compile + warmup

    def _setup_static(self):
        torch, cls = self.torch, self.transformers.StaticCache
        try:  # transformers 5: sized lazily at the first update
            self.cache = cls(config=self.model.config, max_cache_len=self.max_len)
        except TypeError:  # 4.x
            self.cache = cls(config=self.model.config, max_batch_size=1, max_cache_len=self.max_len, device=self.dev,
                             dtype=self.dtype)
        self.static_mode = "eager"
        self.kv_idx = torch.arange(self.max_len, dtype=torch.long, device=self.dev)
        self.tok_buf = torch.zeros((1, 1), dtype=torch.long, device=self.dev)
        self.pos_buf = torch.zeros((1,), dtype=torch.long, device=self.dev)
        self.generate("warm the static cache", 2)  # allocates its layers (lazily made)

    def _capture_graph(self):
        torch = self.torch
        with torch.no_grad():
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):  # cuBLAS workspaces and kernel choices before capture
                for _ in range(3):
                    self._decode_static(self.model)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                self.graph_logits = self._decode_static(self.model)
            torch.cuda.synchronize()
        self.graph = g

    def _compile(self):
        mode = self.compile_requested
        if mode == "none":
            return
        if self.dev.type != "cuda":
            raise RuntimeError(f"--compile {mode} needs --device cuda")
        self._setup_static()
        # The static path run eagerly is the reference the graph must repeat
        # token for token: a position baked into the graph, or a cache that
        # moved its buffers, shows up here and not in a user's answer.
        probe = "hotboot checks the decode graph against eager decoding"
        want = self.generate(probe, 12)
        if mode == "cuda-graphs":
            self._capture_graph()
            self.static_mode = "graph"
            got = self.generate(probe, 12)
            if got != want:  # a replay runs the captured kernels: it must agree exactly
                raise RuntimeError(f"CUDA graph decoding gives {got}, eager decoding on the same cache {want}")
        else:
            self.compiled = self.torch.compile(self.model.forward, mode="reduce-overhead", fullgraph=False)
            self.static_mode = "compiled"
            for _ in range(3):  # compiles, then records the CUDA graph tree
                self.generate(probe, 4)
            # Inductor's fused kernels round differently from eager ones, so
            # only repeatability is required (the canary needs it); a
            # difference from eager is reported, not fatal.
            got, again = self.generate(probe, 12), self.generate(probe, 12)
            if got != again:
                raise RuntimeError(f"torch.compile decoding does not repeat: {got} then {again}")
            if got != want:
                self.compile_note = f"torch.compile tokens differ from eager ones: {got} vs {want}"
        self.torch.cuda.synchronize()
        self.compile_used = mode

    def warmup(self, lengths, max_tokens=16):
        torch = self.torch
        t = time.perf_counter()
        try:
            self._compile()
        except Exception as e:  # what the stack does not offer: serve eagerly, and say so
            self.compile_error = f"{type(e).__name__}: {e}"[:2000]
            print(f"hf_server: --compile {self.compile_requested} failed, serving eagerly: {self.compile_error}",
                  file=sys.stderr, flush=True)
            self.compile_used, self.cache, self.graph, self.static_mode = "none", None, None, None
            if self.dev.type == "cuda":
                torch.cuda.synchronize()
        self.timings["compile_s"] = time.perf_counter() - t
        t = time.perf_counter()
        for n in lengths:  # kernel choices per prompt length, as real traffic has them
            self.generate("x" * n, max(1, min(max_tokens, MAX_NEW_TOKENS)))
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
        self.timings["warmup_s"] = time.perf_counter() - t

    # ------------------------------------------------------------ identity

    def reseed(self, entropy):
        seed = int.from_bytes(entropy[:8], "little")
        self.torch.manual_seed(seed)  # CPU and every CUDA device's default generator
        if self.dev.type == "cuda":
            self.torch.cuda.manual_seed_all(seed)

    def draw(self):
        return {"torch_cpu": self.torch.rand(3).tolist(),
                "torch_device": self.torch.rand(3, device=self.dev).tolist()}

    def health(self):
        h = {"device": self.device, "dtype": "bfloat16", "compile": self.compile_used,
             "compile_requested": self.compile_requested, "model": self.model_dir, "model_class": type(self.model).__name__,
             "params": self.params, "config": self.config, "tokenizer": self.tokenizer_kind,
             "versions": {"torch": self.torch.__version__, "transformers": self.transformers.__version__}}
        if self.compile_error:
            h["compile_error"] = self.compile_error
        if self.compile_note:
            h["compile_note"] = self.compile_note
        if self.load_note:
            h["load_note"] = self.load_note
        return h


class Identity:
    """What makes this process one replica and not a copy of another."""

    def __init__(self, engine):
        self.lock = threading.Lock()
        self.engine = engine
        self.boot_id = str(uuid.uuid4())  # drawn at start: frozen into a snapshot
        self.instance = None

    def after_restore(self, instance, entropy_hex):
        if not isinstance(entropy_hex, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", entropy_hex):
            raise ValueError("entropy must be 64 hex digits (header Hotboot-Entropy or body \"entropy\")")
        if not isinstance(instance, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", instance):
            raise ValueError("instance must be 1..64 of [A-Za-z0-9._-] (header Hotboot-Instance or body \"instance\")")
        entropy = bytes.fromhex(entropy_hex)
        with self.lock:
            random.seed(entropy)
            try:
                import numpy
                numpy.random.seed(numpy.frombuffer(entropy, dtype=numpy.uint32))
            except ImportError:
                pass
            self.engine.reseed(entropy)
            self.boot_id = str(uuid.UUID(bytes=hashlib.sha256(b"boot-id:" + entropy).digest()[:16], version=4))
            self.instance = instance
            return {"instance": self.instance, "boot_id": self.boot_id}

    def draw(self):
        with self.lock:
            return dict(self.engine.draw(), boot_id=self.boot_id, instance=self.instance,
                        random=[random.random() for _ in range(3)])


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a save_pretrained directory (hf_mkmodel.py)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--compile", choices=("none", "cuda-graphs", "torch-compile"), default="cuda-graphs")
    ap.add_argument("--warmup-lengths", default="8,64,256", help="prompt lengths of the warmup (comma-separated)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help=f"default max_tokens (1..{MAX_NEW_TOKENS})")
    ap.add_argument("--max-prompt-tokens", type=int, default=512, help="prompt tokens kept (the static cache's size)")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    if not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        ap.error(f"--max-new-tokens must be 1..{MAX_NEW_TOKENS}")
    if not 1 <= args.max_prompt_tokens <= 32768:
        ap.error("--max-prompt-tokens must be 1..32768")
    try:
        args.lengths = [int(n) for n in args.warmup_lengths.split(",")]
        if not all(1 <= n <= args.max_prompt_tokens for n in args.lengths):
            raise ValueError
    except ValueError:
        ap.error(f"--warmup-lengths: comma-separated lengths in 1..{args.max_prompt_tokens}, not {args.warmup_lengths!r}")
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        ap.error(f"--model {args.model}: no config.json there (make the model with hf_mkmodel.py)")
    return args


def main():
    args = parse_args()
    try:
        import torch  # noqa: F401  (checked here so the message is one line, not a traceback)
        import transformers  # noqa: F401
    except ImportError as e:
        print(f"hf_server.py needs torch and transformers ({e}); run it where they are installed "
              f"(the GPU machine has torch 2.11 and transformers 5)", file=sys.stderr)
        return 2

    state = {"ready": False, "engine": None, "identity": None, "timings": {}}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def _body(self):
            n = int(self.headers.get("Content-Length", "0"))
            if not 0 <= n <= 4 * MAX_PROMPT_CHARS:
                raise ValueError(f"a body of {n} bytes: at most {4 * MAX_PROMPT_CHARS}")
            body = json.loads(self.rfile.read(n) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            return body

        def do_GET(self):
            e = state["engine"]
            if self.path == "/health":
                body = dict(e.health() if e else {}, ready=state["ready"], timings=state["timings"])
                return self._send(200 if state["ready"] else 503, body)
            if self.path == "/random":
                if not state["ready"]:
                    return self._send(503, {"error": "warming up"})
                return self._send(200, state["identity"].draw())
            self._send(404, {"error": "not found"})

        def do_POST(self):
            if self.path not in ("/generate", "/after-restore"):
                return self._send(404, {"error": "not found"})
            if not state["ready"]:
                return self._send(503, {"error": "warming up"})
            if self.path == "/after-restore":
                try:
                    body = self._body()
                    header = (self.headers.get("Hotboot-Instance"), self.headers.get("Hotboot-Entropy"))
                    fields = (body.get("instance"), body.get("entropy"))
                    if None not in header and None not in fields and header != fields:
                        raise ValueError("the Hotboot-* headers and the body's instance/entropy differ")
                    got = state["identity"].after_restore(header[0] or fields[0], header[1] or fields[1])
                except ValueError as err:  # json.JSONDecodeError included
                    return self._send(400, {"error": str(err)})
                print(f"hf_server: restored as {got['instance']}, boot id {got['boot_id']}", flush=True)
                return self._send(200, got)
            try:
                req = self._body()
                prompt, max_tokens = req["prompt"], int(req.get("max_tokens", args.max_new_tokens))
                if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
                    raise ValueError(f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters")
                if not 1 <= max_tokens <= MAX_NEW_TOKENS:
                    raise ValueError(f"max_tokens must be 1..{MAX_NEW_TOKENS}")
            except (ValueError, KeyError, TypeError) as err:
                return self._send(400, {"error": str(err)})
            t0 = time.perf_counter()
            engine = state["engine"]
            tokens = engine.generate(prompt, max_tokens)
            self._send(200, {"tokens": tokens, "text": engine.text(tokens),
                             "latency_ms": (time.perf_counter() - t0) * 1000})

        def log_message(self, fmt, *a):
            sys.stderr.write("hf_server: " + (fmt % a) + "\n")

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    t0 = time.perf_counter()
    try:
        engine = HfEngine(args.model, args.device, args.compile, args.seed, args.max_prompt_tokens)
        state["engine"] = engine
        state["timings"] = engine.timings
        engine.warmup(args.lengths, args.max_new_tokens)
    except Exception as e:
        print(f"hf_server: boot failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    engine.timings["boot_s"] = time.perf_counter() - t0
    state["identity"] = Identity(engine)
    state["ready"] = True
    print(f"hf_server: {engine.label} on {engine.device}, compile {engine.compile_used}, warm after "
          f"{engine.timings['boot_s']:.2f} s {json.dumps(engine.timings)}, boot id {state['identity'].boot_id}",
          flush=True)
    threading.Event().wait()  # the HTTP thread serves; the main thread waits for a signal
    return 0


if __name__ == "__main__":
    sys.exit(main())
