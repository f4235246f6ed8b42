#!/usr/bin/env python3
"""A PyTorch inference server that knows nothing about hotboot.

hotboot captures it in transparent mode: CRIU for the process, the CUDA
driver's checkpoint API for its GPU state. It is what `tools/gpu-check`
builds and restores on a GPU machine:

    hotboot build -o torch.hbsnap --port 8000 --canary-path /generate \\
        --canary-body '{"prompt":"The quick brown fox","max_tokens":16}' \\
        --canary-compare /tokens --after-restore /after-restore \\
        -- python3 tools/examples/torch_server.py --port 8000

A decoder-only transformer (RMSNorm, rotary attention with a KV cache,
SwiGLU) with seeded random weights, bf16 on CUDA (fp32 on CPU). Its cold
start pays what real servers pay: CUDA context, weight materialization and
upload, cuBLAS/cuDNN handle creation and kernel selection in a warmup over
several shapes, and CUDA graphs captured per decode batch size. Until that
is done GET /health answers 503. POST /generate {"prompt", "max_tokens"}
decodes greedily (deterministic on one GPU model) and answers
{"tokens", "text", "latency_ms"}.

Every replica restored from one snapshot starts as a copy of the build's
process: torch's CPU and CUDA generators, Python's `random`, NumPy's and the
boot id would repeat in each (server/CONTROL.md "Uniqueness"). Hence:

  POST /after-restore  the replica's identity from the headers
      Hotboot-Instance and Hotboot-Entropy (64 hex digits: 32 bytes of the
      restoring host's getrandom), or the JSON body's "instance"/"entropy";
      reseeds `random` (all 32 bytes), NumPy's global generator when NumPy is
      importable, and torch: torch.manual_seed (the CPU generator and every
      CUDA device's default generator) with the entropy's first 8 bytes;
      derives a new boot id; answers {"instance", "boot_id"}. Bad or missing
      entropy: 400 (the replica is not ready).
  POST /before-capture  changes nothing: logs and answers the next values the
      frozen state would give (what replicas replay without /after-restore).
  GET /random  {"boot_id", "instance", "random", "numpy", "torch_cpu",
      "torch_device"}: a few values from each generator.

Build it with `--after-restore /after-restore` (or the spec's
http.after_restore). Generator objects a server makes itself
(torch.Generator, numpy.random.default_rng) must be re-created from the
entropy too; PYTHONHASHSEED cannot be changed in-process.
"""
import argparse
import hashlib
import json
import random
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
import torch.nn.functional as F

try:
    import numpy
except ImportError:
    numpy = None


class Block(torch.nn.Module):
    def __init__(self, dim, heads, ffn):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.n1 = torch.nn.RMSNorm(dim, eps=1e-5)
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.o = torch.nn.Linear(dim, dim, bias=False)
        self.n2 = torch.nn.RMSNorm(dim, eps=1e-5)
        self.up = torch.nn.Linear(dim, 2 * ffn, bias=False)
        self.down = torch.nn.Linear(ffn, dim, bias=False)

    def forward(self, x, cos, sin, cache_k, cache_v, pos):
        b, t, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, t, 3, self.heads, self.hd).unbind(2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        cache_k[:, pos:pos + t] = k
        cache_v[:, pos:pos + t] = v
        keys, vals = cache_k[:, :pos + t], cache_v[:, :pos + t]
        att = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), vals.transpose(1, 2),
                                             is_causal=(t > 1 and pos == 0))
        x = x + self.o(att.transpose(1, 2).reshape(b, t, d))
        g, u = self.up(self.n2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


def rope(x, cos, sin):
    x1, x2 = x[..., ::2], x[..., 1::2]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class Model(torch.nn.Module):
    def __init__(self, vocab, dim, layers, heads, ffn, max_seq):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.blocks = torch.nn.ModuleList(Block(dim, heads, ffn) for _ in range(layers))
        self.norm = torch.nn.RMSNorm(dim, eps=1e-5)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        hd = dim // heads
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(max_seq).float(), inv)
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)
        self.max_seq, self.heads, self.hd = max_seq, heads, hd

    def new_cache(self, batch, dtype, device):
        shape = (len(self.blocks), 2, batch, self.max_seq, self.heads, self.hd)
        return torch.zeros(shape, dtype=dtype, device=device)

    def forward(self, tokens, cache, pos):
        t = tokens.shape[1]
        cos = self.cos[pos:pos + t][None].to(cache.dtype)
        sin = self.sin[pos:pos + t][None].to(cache.dtype)
        x = self.embed(tokens)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, cache[i, 0], cache[i, 1], pos)
        return self.head(self.norm(x[:, -1]))


class Engine:
    def __init__(self, args):
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.timings = {}
        t = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.init()
            torch.empty(1, device=self.device)  # creates the context
        self.timings["cuda_init_s"] = time.perf_counter() - t
        t = time.perf_counter()
        torch.manual_seed(args.seed)
        m = Model(args.vocab, args.dim, args.layers, args.heads, args.ffn, args.max_seq)
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0.0, 0.02)
        self.model = m.to(self.device, self.dtype).eval()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.timings["weights_s"] = time.perf_counter() - t
        self.lock = threading.Lock()
        self.graphs = {}
        self.vocab = args.vocab

    @torch.no_grad()
    def generate(self, prompt, max_tokens):
        ids = [b % self.vocab for b in prompt.encode()][: self.model.max_seq - max_tokens] or [0]
        with self.lock:
            cache = self.model.new_cache(1, self.dtype, self.device)
            logits = self.model(torch.tensor([ids], device=self.device), cache, 0)
            out, pos = [], len(ids)
            for _ in range(max_tokens):
                nxt = int(torch.argmax(logits[0].float()))
                out.append(nxt)
                logits = self.model(torch.tensor([[nxt]], device=self.device), cache, pos)
                pos += 1
            return out

    @torch.no_grad()
    def warmup(self):
        # Kernel selection (cuBLAS heuristics, SDPA backend choice) happens on
        # first use of each shape: run the shapes real traffic has.
        t = time.perf_counter()
        for prompt_len, n in ((8, 4), (64, 8), (200, 8)):
            self.generate("x" * prompt_len, n)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.timings["warmup_s"] = time.perf_counter() - t
        # A CUDA graph of one decode step per batch size: what serving
        # engines capture at start so that decode launches one graph.
        t = time.perf_counter()
        if self.device.type == "cuda":
            for batch in (1, 2, 4, 8):
                cache = self.model.new_cache(batch, self.dtype, self.device)
                tok = torch.zeros((batch, 1), dtype=torch.long, device=self.device)
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(2):
                        self.model(tok, cache, 16)
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    out = self.model(tok, cache, 16)
                self.graphs[batch] = (g, tok, cache, out)
            torch.cuda.synchronize()
        self.timings["graphs_s"] = time.perf_counter() - t


class Identity:
    """What makes this process one replica and not a copy of another."""

    def __init__(self, device):
        self.lock = threading.Lock()
        self.device = device
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
            if numpy is not None:
                numpy.random.seed(numpy.frombuffer(entropy, dtype=numpy.uint32))
            seed = int.from_bytes(entropy[:8], "little")
            torch.manual_seed(seed)  # CPU, and every CUDA device's default generator
            if self.device.type == "cuda":
                torch.cuda.manual_seed_all(seed)  # explicit: the same, should manual_seed's reach change
            self.boot_id = str(uuid.UUID(bytes=hashlib.sha256(b"boot-id:" + entropy).digest()[:16], version=4))
            self.instance = instance
            return {"instance": self.instance, "boot_id": self.boot_id}

    def _values(self):
        return {"boot_id": self.boot_id, "instance": self.instance,
                "random": [random.random() for _ in range(3)],
                "numpy": numpy.random.random(3).tolist() if numpy is not None else None,
                "torch_cpu": torch.rand(3).tolist(),
                "torch_device": torch.rand(3, device=self.device).tolist()}

    def draw(self):
        with self.lock:
            return self._values()

    def peek(self):
        """The next values the current state gives, without drawing them."""
        with self.lock:
            state = random.getstate()
            np_state = numpy.random.get_state() if numpy is not None else None
            devices = [torch.cuda.current_device()] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):  # puts the torch generators back
                values = self._values()
            random.setstate(state)
            if np_state is not None:
                numpy.random.set_state(np_state)
            return values


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--max-seq", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    args = ap.parse_args()

    state = {"ready": False, "engine": None, "identity": None}

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

        def do_GET(self):
            if self.path == "/health":
                e = state["engine"]
                self._send(200 if state["ready"] else 503,
                           {"ready": state["ready"], "timings": e.timings if e else {}})
            elif self.path == "/random":
                if not state["ready"]:
                    return self._send(503, {"error": "warming up"})
                self._send(200, state["identity"].draw())
            else:
                self._send(404, {"error": "not found"})

        def _body(self):
            n = int(self.headers.get("Content-Length", "0"))
            return json.loads(self.rfile.read(n) or b"{}")

        def do_POST(self):
            if self.path in ("/after-restore", "/before-capture") and not state["ready"]:
                return self._send(503, {"error": "warming up"})
            if self.path == "/after-restore":
                try:
                    body = self._body()
                    if not isinstance(body, dict):
                        body = {}
                    header = (self.headers.get("Hotboot-Instance"), self.headers.get("Hotboot-Entropy"))
                    fields = (body.get("instance"), body.get("entropy"))
                    if None not in header and None not in fields and header != fields:
                        raise ValueError("the Hotboot-* headers and the body's instance/entropy differ")
                    got = state["identity"].after_restore(header[0] or fields[0], header[1] or fields[1])
                except ValueError as e:  # json.JSONDecodeError included
                    return self._send(400, {"error": str(e)})
                print(f"torch_server: restored as {got['instance']}, boot id {got['boot_id']}", flush=True)
                return self._send(200, got)
            if self.path == "/before-capture":
                frozen = state["identity"].peek()
                print("torch_server: before capture: " + json.dumps(frozen), flush=True)
                return self._send(200, frozen)
            if self.path != "/generate":
                return self._send(404, {"error": "not found"})
            if not state["ready"]:
                return self._send(503, {"error": "warming up"})
            try:
                req = self._body()
                prompt, max_tokens = str(req["prompt"]), int(req.get("max_tokens", 16))
                if not 1 <= max_tokens <= 128:
                    raise ValueError("max_tokens must be 1..128")
            except (ValueError, KeyError, TypeError) as e:
                return self._send(400, {"error": str(e)})
            t0 = time.perf_counter()
            tokens = state["engine"].generate(prompt, max_tokens)
            self._send(200, {"tokens": tokens, "text": " ".join(map(str, tokens)),
                             "latency_ms": (time.perf_counter() - t0) * 1000})

        def log_message(self, fmt, *a):
            sys.stderr.write("torch_server: " + (fmt % a) + "\n")

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    t0 = time.perf_counter()
    engine = Engine(args)
    state["engine"] = engine
    engine.warmup()
    state["identity"] = Identity(engine.device)
    state["ready"] = True
    params = sum(p.numel() for p in engine.model.parameters())
    print(f"torch_server: {params / 1e6:.0f}M params on {engine.device}, warm after "
          f"{time.perf_counter() - t0:.2f} s {json.dumps(engine.timings)}, boot id {state['identity'].boot_id}",
          flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
