#!/usr/bin/env python3
"""An inference server laid out the way vLLM lays itself out: an HTTP front
process that never touches the accelerator, and an engine child process that
holds the model and does all the compute. hotboot knows nothing about it and
captures both processes whole in transparent mode (CRIU for the tree, the
CUDA driver's checkpoint API for every CUDA process in it: here the engine).

    hotboot build -o engine.hbsnap --port 8000 --canary-path /generate \\
        --canary-body '{"prompt":"The quick brown fox","max_tokens":16}' \\
        --canary-compare /tokens --after-restore /after-restore \\
        -- python3 tools/examples/engine_server.py --port 8000 --device cuda
    hotboot restore engine.hbsnap          # on its build port, 8000

The front starts the engine with subprocess (fork + exec of this script with
--engine-fd: the "spawn" way, so the engine's CUDA context is its own) and
talks to it over a Unix socketpair, which CRIU dumps and restores with both
ends (no TCP between them). Messages are a 4-byte little-endian length and
UTF-8 JSON, at most 16 MiB. The front serializes requests to the engine.

The engine is, by what the host offers:
  --model DIR              hf_server.HfEngine: a Hugging Face Llama loaded with
                           from_pretrained (needs torch and transformers).
  --device cuda            torch_server.Engine: a PyTorch transformer with a KV
                           cache, bf16 on the GPU, CUDA graphs captured at warmup.
  --device cpu (or no torch/CUDA: said on stderr and in /health)
                           a NumPy model: a seeded recurrent net (embedding,
                           two tanh layers, an output projection over a 4096
                           vocabulary) decoded greedily; OpenBLAS on one
                           thread, so its tokens repeat exactly.

HTTP (the same as torch_server.py, so the same build flags work):
  GET /health      503 until the engine answered its warmup; then 200
      {"ready", "device", "engine", "model", "front_pid", "engine_pid",
       "timings": {"engine_start_s", "load_s", "warmup_s", ...}}.
  POST /generate   {"prompt", "max_tokens" (1..128)} -> {"tokens", "text",
      "latency_ms"}: greedy, deterministic.
  POST /after-restore  the identity from the headers Hotboot-Instance and
      Hotboot-Entropy (64 hex digits) or the JSON body's "instance"/"entropy";
      the front reseeds `random`, forwards it to the engine, which reseeds
      `random`, NumPy and torch (every device); both derive new boot ids.
      Answers {"instance", "boot_id", "engine_boot_id"}; 400 on bad entropy.
  GET /random      {"boot_id", "instance", "random", "engine": {...}}: a few
      values of each process's generators (uniqueness made observable).

If the engine dies the front exits (status 1), as vLLM's API server does;
if the front dies the engine reads end-of-file and exits.
"""
import argparse
import hashlib
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_MESSAGE = 16 << 20
MAX_PROMPT = 16384
HERE = os.path.dirname(os.path.abspath(__file__))


class ProtocolError(Exception):
    pass


def send_msg(sock, obj):
    body = json.dumps(obj).encode()
    if len(body) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE}")
    sock.sendall(struct.pack("<I", len(body)) + body)


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("the other process closed the engine socket")
        buf += chunk
    return bytes(buf)


def recv_msg(sock):
    (n,) = struct.unpack("<I", _recv_exact(sock, 4))
    if n > MAX_MESSAGE:
        raise ProtocolError(f"message length {n} exceeds {MAX_MESSAGE}: the engine socket is out of step")
    obj = json.loads(_recv_exact(sock, n))
    if not isinstance(obj, dict):
        raise ProtocolError("an engine message is not a JSON object")
    return obj


def boot_id_from(entropy):
    return str(uuid.UUID(bytes=hashlib.sha256(b"boot-id:" + entropy).digest()[:16], version=4))


def check_identity(instance, entropy_hex):
    if not isinstance(entropy_hex, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", entropy_hex):
        raise ValueError("entropy must be 64 hex digits (header Hotboot-Entropy or body \"entropy\")")
    if not isinstance(instance, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", instance):
        raise ValueError("instance must be 1..64 of [A-Za-z0-9._-] (header Hotboot-Instance or body \"instance\")")
    return bytes.fromhex(entropy_hex)


# ---------------------------------------------------------------- the engine

class NumpyEngine:
    """A small deterministic model: h = tanh(E[x] + h W1); h = tanh(h W2); logits = h Wo."""

    def __init__(self, seed, vocab=4096, dim=256):
        import numpy
        self.np = numpy
        self.device, self.kind, self.label = "cpu", "numpy", f"numpy-rnn vocab {vocab} dim {dim} seed {seed}"
        self.timings = {}
        t = time.perf_counter()
        rng = numpy.random.default_rng(seed)  # its own generator: reseeding the globals leaves the model be
        scale = numpy.float32(1.0 / numpy.sqrt(dim))
        self.embed = rng.standard_normal((vocab, dim), dtype=numpy.float32)
        self.w1 = rng.standard_normal((dim, dim), dtype=numpy.float32) * scale
        self.w2 = rng.standard_normal((dim, dim), dtype=numpy.float32) * scale
        self.wo = rng.standard_normal((dim, vocab), dtype=numpy.float32) * scale
        self.vocab, self.dim = vocab, dim
        self.timings["load_s"] = time.perf_counter() - t

    def _step(self, h, tok):
        np = self.np
        h = np.tanh(self.embed[tok] + h @ self.w1)
        return np.tanh(h @ self.w2)

    def generate(self, prompt, max_tokens):
        np = self.np
        ids = [b % self.vocab for b in prompt.encode()] or [0]
        h = np.zeros(self.dim, dtype=np.float32)
        for tok in ids:
            h = self._step(h, tok)
        out = []
        for _ in range(max_tokens):
            nxt = int(np.argmax(h @ self.wo))
            out.append(nxt)
            h = self._step(h, nxt)
        return out

    def text(self, tokens):
        return " ".join(map(str, tokens))

    def warmup(self, lengths):
        t = time.perf_counter()
        for n in lengths:
            self.generate("x" * n, 4)
        self.timings["warmup_s"] = time.perf_counter() - t

    def reseed(self, entropy):
        self.np.random.seed(self.np.frombuffer(entropy, dtype=self.np.uint32))

    def draw(self):
        return {"numpy": self.np.random.random(3).tolist()}


class TorchEngine:
    """torch_server.py's model and warmup (CUDA graphs included), in this process."""

    def __init__(self, seed):
        sys.path.insert(0, HERE)
        import torch_server
        self.torch = torch_server.torch
        args = argparse.Namespace(vocab=32000, dim=1024, layers=12, heads=16, ffn=2816, max_seq=512,
                                  seed=seed, cpu=False)
        t = time.perf_counter()
        self.inner = torch_server.Engine(args)
        self.device, self.kind = str(self.inner.device), "torch"
        self.label = "torch_server dim 1024 layers 12 vocab 32000"
        self.timings = dict(self.inner.timings, load_s=time.perf_counter() - t)

    def generate(self, prompt, max_tokens):
        return self.inner.generate(prompt, max_tokens)

    def text(self, tokens):
        return " ".join(map(str, tokens))

    def warmup(self, lengths):
        t = time.perf_counter()
        self.inner.warmup()  # its own prompt lengths, then one CUDA graph per decode batch size
        self.timings.update(self.inner.timings, warmup_s=time.perf_counter() - t)

    def reseed(self, entropy):
        seed = int.from_bytes(entropy[:8], "little")
        self.torch.manual_seed(seed)
        if self.torch.cuda.is_available():
            self.torch.cuda.manual_seed_all(seed)

    def draw(self):
        return {"torch_cpu": self.torch.rand(3).tolist()}


def make_engine(args):
    """The engine this host can run, and why when it is not the one asked for."""
    if args.model:
        sys.path.insert(0, HERE)
        import hf_server  # torch and transformers: an ImportError here is the message to show
        return hf_server.HfEngine(args.model, args.device, args.compile, args.seed), None
    if args.device == "cuda":
        try:
            import torch
            if torch.cuda.is_available():
                return TorchEngine(args.seed), None
            note = "torch sees no CUDA device"
        except ImportError as e:
            note = f"torch is not importable ({e})"
        return NumpyEngine(args.seed), f"--device cuda asked, {note}: the NumPy engine runs on the CPU"
    return NumpyEngine(args.seed), None


def engine_main(args):
    sock = socket.socket(fileno=args.engine_fd)
    try:
        import numpy
    except ImportError:
        numpy = None
    try:
        engine, note = make_engine(args)
    except Exception as e:  # tell the front what failed, then exit: it answers 503 and exits too
        send_msg(sock, {"ok": False, "error": f"engine start failed: {type(e).__name__}: {e}"})
        return 1
    if note:
        print(f"engine_server: engine: {note}", file=sys.stderr, flush=True)
    boot_id = str(uuid.uuid4())
    while True:
        try:
            req = recv_msg(sock)
        except EOFError:
            return 0  # the front is gone
        op = req.get("op")
        try:
            if op == "warmup":
                lengths = [int(n) for n in req.get("lengths", [8, 64, 256])]
                engine.warmup(lengths)
                reply = {"device": engine.device, "engine": engine.kind, "model": engine.label,
                         "timings": engine.timings, "pid": os.getpid(), "note": note,
                         "compile": getattr(engine, "compile_used", "none")}
            elif op == "generate":
                tokens = engine.generate(str(req["prompt"]), int(req["max_tokens"]))
                reply = {"tokens": tokens, "text": engine.text(tokens)}
            elif op == "after_restore":
                entropy = check_identity(req.get("instance"), req.get("entropy"))
                entropy = hashlib.sha256(b"engine:" + entropy).digest()  # streams apart from the front's
                random.seed(entropy)
                if numpy is not None:
                    numpy.random.seed(numpy.frombuffer(entropy, dtype=numpy.uint32))
                engine.reseed(entropy)
                boot_id = boot_id_from(entropy)
                reply = {"boot_id": boot_id, "pid": os.getpid()}
            elif op == "random":
                reply = dict(engine.draw(), boot_id=boot_id, random=[random.random() for _ in range(3)])
            else:
                raise ValueError(f"unknown engine op {op!r}")
            send_msg(sock, dict(reply, ok=True))
        except (ValueError, KeyError, TypeError) as e:
            send_msg(sock, {"ok": False, "error": str(e)})


# ----------------------------------------------------------------- the front

class EngineClient:
    """The front's end of the socketpair; one request at a time."""

    def __init__(self, args):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cmd = [sys.executable, os.path.abspath(__file__), "--engine-fd", str(child.fileno()),
               "--device", args.device, "--seed", str(args.seed), "--compile", args.compile]
        if args.model:
            cmd += ["--model", args.model]
        env = dict(os.environ)
        # One BLAS thread: the NumPy engine's sums then run in one order, so tokens repeat exactly.
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(cmd, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env=env)
        child.close()
        self.sock = parent
        self.lock = threading.Lock()

    def call(self, op, **fields):
        with self.lock:
            send_msg(self.sock, dict(fields, op=op))
            reply = recv_msg(self.sock)
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error", "the engine failed"))
        return reply


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--model", help="a save_pretrained directory (hf_mkmodel.py): the Hugging Face engine")
    ap.add_argument("--compile", choices=("none", "cuda-graphs", "torch-compile"), default="none",
                    help="with --model: hf_server.py's --compile")
    ap.add_argument("--warmup-lengths", default="8,64,256", help="prompt lengths of the warmup (comma-separated)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--engine-fd", type=int, help=argparse.SUPPRESS)  # set by the front for its child
    args = ap.parse_args(argv)
    try:
        args.lengths = [int(n) for n in args.warmup_lengths.split(",")]
        if not args.lengths or not all(1 <= n <= MAX_PROMPT for n in args.lengths):
            raise ValueError
    except ValueError:
        ap.error(f"--warmup-lengths: comma-separated lengths in 1..{MAX_PROMPT}, not {args.warmup_lengths!r}")
    if args.model and not os.path.isdir(args.model):
        ap.error(f"--model {args.model}: not a directory (make one with hf_mkmodel.py)")
    return args


def front_main(args):
    state = {"ready": False, "error": None, "info": {}, "boot_id": str(uuid.uuid4()), "instance": None}
    t_start = time.perf_counter()
    engine = EngineClient(args)

    def boot():
        try:
            info = engine.call("warmup", lengths=args.lengths)
        except (RuntimeError, EOFError, ProtocolError, OSError) as e:
            state["error"] = f"engine warmup failed: {e}"
            print(f"engine_server: {state['error']}", file=sys.stderr, flush=True)
            return
        info["timings"]["engine_start_s"] = time.perf_counter() - t_start
        state["info"] = info
        state["ready"] = True
        print(f"engine_server: ready: front pid {os.getpid()}, engine pid {info['pid']} ({info['engine']} on "
              f"{info['device']}), {json.dumps(info['timings'])}", flush=True)

    def watch():
        code = engine.proc.wait()
        print(f"engine_server: the engine (pid {engine.proc.pid}) exited with {code}: exiting", file=sys.stderr,
              flush=True)
        os._exit(1)

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
            if not 0 <= n <= MAX_PROMPT * 4:
                raise ValueError(f"a body of {n} bytes: at most {MAX_PROMPT * 4}")
            return json.loads(self.rfile.read(n) or b"{}")

        def _engine(self, op, **fields):
            try:
                return 200, engine.call(op, **fields)
            except RuntimeError as e:
                return 400, {"error": str(e)}
            except (EOFError, ProtocolError, OSError) as e:
                return 503, {"error": f"the engine is gone: {e}"}

        def do_GET(self):
            if self.path == "/health":
                info = state["info"]
                body = {"ready": state["ready"], "front_pid": os.getpid(), "engine_pid": engine.proc.pid,
                        "device": info.get("device"), "engine": info.get("engine"), "model": info.get("model"),
                        "compile": info.get("compile"), "timings": info.get("timings", {})}
                if info.get("note"):
                    body["note"] = info["note"]
                if state["error"]:
                    body["error"] = state["error"]
                return self._send(200 if state["ready"] else 503, body)
            if self.path == "/random":
                if not state["ready"]:
                    return self._send(503, {"error": "warming up"})
                code, eng = self._engine("random")
                eng.pop("ok", None)
                return self._send(code, {"boot_id": state["boot_id"], "instance": state["instance"],
                                         "random": [random.random() for _ in range(3)], "engine": eng})
            self._send(404, {"error": "not found"})

        def do_POST(self):
            if self.path not in ("/generate", "/after-restore"):
                return self._send(404, {"error": "not found"})
            if not state["ready"]:
                return self._send(503, {"error": state["error"] or "warming up"})
            try:
                body = self._body()
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
                if self.path == "/generate":
                    prompt, max_tokens = body["prompt"], int(body.get("max_tokens", 16))
                    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT:
                        raise ValueError(f"prompt must be a string of at most {MAX_PROMPT} characters")
                    if not 1 <= max_tokens <= 128:
                        raise ValueError("max_tokens must be 1..128")
                else:
                    header = (self.headers.get("Hotboot-Instance"), self.headers.get("Hotboot-Entropy"))
                    fields = (body.get("instance"), body.get("entropy"))
                    if None not in header and None not in fields and header != fields:
                        raise ValueError("the Hotboot-* headers and the body's instance/entropy differ")
                    instance, entropy_hex = header[0] or fields[0], header[1] or fields[1]
                    entropy = check_identity(instance, entropy_hex)
            except (ValueError, KeyError, TypeError) as e:  # json.JSONDecodeError included
                return self._send(400, {"error": str(e)})
            if self.path == "/generate":
                t0 = time.perf_counter()
                code, got = self._engine("generate", prompt=prompt, max_tokens=max_tokens)
                if code != 200:
                    return self._send(code, got)
                return self._send(200, {"tokens": got["tokens"], "text": got["text"],
                                        "latency_ms": (time.perf_counter() - t0) * 1000})
            code, got = self._engine("after_restore", instance=instance, entropy=entropy_hex)
            if code != 200:
                return self._send(code, got)
            random.seed(entropy)
            state["boot_id"], state["instance"] = boot_id_from(b"front:" + entropy), instance
            print(f"engine_server: restored as {instance}, boot id {state['boot_id']}, engine boot id "
                  f"{got['boot_id']}", flush=True)
            return self._send(200, {"instance": instance, "boot_id": state["boot_id"],
                                    "engine_boot_id": got["boot_id"], "engine_pid": got["pid"]})

        def log_message(self, fmt, *a):
            sys.stderr.write("engine_server: " + (fmt % a) + "\n")

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    threading.Thread(target=watch, name="engine-watch", daemon=True).start()
    threading.Thread(target=boot, name="engine-boot", daemon=True).start()
    server.serve_forever()


def main():
    args = parse_args()
    if args.engine_fd is not None:
        sys.exit(engine_main(args))
    front_main(args)


if __name__ == "__main__":
    main()
