#!/usr/bin/env python3
"""A server hotboot knows nothing about: plain Python, standard library only
(NumPy, when importable, is reseeded after a restore like the rest).

It stands for any third-party inference server in hotboot's transparent-mode
tests (the PyTorch twin is torch_server.py): at start it builds its "weights"
(a seeded random embedding table and one hidden layer, real arithmetic that
takes a while in pure Python), runs a warmup, and only then answers
GET /health with 200. POST /generate {"prompt": str, "max_tokens": int}
greedily decodes tokens, deterministically, and answers
{"tokens": [...], "text": str, "latency_ms": float}.

A restored process is a copy of the build's: Python's `random`, NumPy's
global generator and the boot id drawn at start would be the same in every
replica. So it has the hooks hotboot's transparent mode calls (README
"Transparent mode", server/CONTROL.md "Uniqueness"):

  POST /after-restore  takes the replica's identity from the headers
      Hotboot-Instance and Hotboot-Entropy (64 hex digits = 32 bytes from the
      restoring host's getrandom), or from the JSON body's "instance" and
      "entropy"; reseeds `random` and, when NumPy is importable, NumPy's
      global generator from the entropy; derives a new boot id from it; and
      answers {"instance", "boot_id"}. Bad or missing entropy: 400, and the
      replica is not ready.
  POST /before-capture  changes nothing: logs (stdout) and answers the boot
      id and the next random values the frozen state would produce, i.e. what
      every replica would replay without /after-restore.
  GET /random  {"boot_id", "instance", "identity_from" (["headers",
      "body"]: what carried it), "random": [3 floats], "numpy": [3 floats] or
      null}: uniqueness made observable.

    python3 http_model_server.py --port 8000 [--vocab 512 --dim 64]
    hotboot build -o py.hbsnap --port 8000 --canary-path /generate \\
        --canary-body '{"prompt":"hi","max_tokens":8}' --canary-compare /tokens \\
        --after-restore /after-restore -- python3 http_model_server.py --port 8000

Python's hash randomization (PYTHONHASHSEED) is fixed at interpreter start
and cannot be reseeded in-process: replicas share it. os.urandom, secrets
and uuid.uuid4 read the kernel on every call and need nothing.
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

try:
    import numpy
except ImportError:  # standard library only; NumPy is reseeded when present
    numpy = None


class Identity:
    """What makes this process one replica and not a copy of another."""

    def __init__(self):
        self.lock = threading.Lock()
        self.boot_id = str(uuid.uuid4())  # drawn at start: frozen into a snapshot
        self.instance = None
        self.source = []  # where after_restore found the identity: "headers", "body"

    def after_restore(self, instance, entropy_hex):
        if not isinstance(entropy_hex, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", entropy_hex):
            raise ValueError("entropy must be 64 hex digits (header Hotboot-Entropy or body \"entropy\")")
        if not isinstance(instance, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", instance):
            raise ValueError("instance must be 1..64 of [A-Za-z0-9._-] (header Hotboot-Instance or body \"instance\")")
        entropy = bytes.fromhex(entropy_hex)
        with self.lock:
            random.seed(entropy)  # all 32 bytes (seed version 2 hashes them in)
            if numpy is not None:
                numpy.random.seed(numpy.frombuffer(entropy, dtype=numpy.uint32))
            self.boot_id = str(uuid.UUID(bytes=hashlib.sha256(b"boot-id:" + entropy).digest()[:16], version=4))
            self.instance = instance
            return {"instance": self.instance, "boot_id": self.boot_id}

    def peek(self):
        """The next values the current state gives, without drawing them."""
        with self.lock:
            state = random.getstate()
            values = [random.random() for _ in range(3)]
            random.setstate(state)
            np_values = None
            if numpy is not None:
                np_state = numpy.random.get_state()
                np_values = numpy.random.random(3).tolist()
                numpy.random.set_state(np_state)
            return {"boot_id": self.boot_id, "instance": self.instance, "random": values, "numpy": np_values}

    def draw(self):
        with self.lock:
            return {"boot_id": self.boot_id, "instance": self.instance, "identity_from": self.source,
                    "random": [random.random() for _ in range(3)],
                    "numpy": numpy.random.random(3).tolist() if numpy is not None else None}


class Model:
    def __init__(self, vocab, dim, seed):
        rng = random.Random(seed)
        self.vocab, self.dim = vocab, dim
        self.embed = [[rng.gauss(0.0, 0.5) for _ in range(dim)] for _ in range(vocab)]
        self.hidden = [[rng.gauss(0.0, 1.0 / dim ** 0.5) for _ in range(dim)] for _ in range(dim)]
        self.cache = {}  # prompt -> state: what warmup fills, what a cold replica lacks

    def _state(self, tokens):
        key = tuple(tokens)
        if key not in self.cache:
            acc = [0.0] * self.dim
            for i, t in enumerate(tokens):
                e = self.embed[t % self.vocab]
                for j in range(self.dim):
                    acc[j] = 0.9 * acc[j] + e[j] * (1.0 + 0.01 * i)
            self.cache[key] = acc
        return list(self.cache[key])

    def next_token(self, state):
        h = [max(0.0, sum(state[k] * self.hidden[k][j] for k in range(self.dim))) for j in range(self.dim)]
        best, best_score = 0, None
        for t in range(self.vocab):
            e = self.embed[t]
            s = sum(h[j] * e[j] for j in range(self.dim))
            if best_score is None or s > best_score:
                best, best_score = t, s
        return best

    def generate(self, prompt, max_tokens):
        tokens = [b % self.vocab for b in prompt.encode()]
        state = self._state(tokens)
        out = []
        for _ in range(max_tokens):
            t = self.next_token(state)
            out.append(t)
            e = self.embed[t]
            state = [0.9 * s + x for s, x in zip(state, e)]
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    state = {"ready": False}
    model = None
    identity = Identity()

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
                self._send(200 if state["ready"] else 503, {"ready": state["ready"]})
            elif self.path == "/random":
                self._send(200, identity.draw())
            else:
                self._send(404, {"error": "not found"})

        def _body(self):
            n = int(self.headers.get("Content-Length", "0"))
            return json.loads(self.rfile.read(n) or b"{}")

        def do_POST(self):
            if self.path == "/after-restore":
                try:
                    body = self._body()
                    if not isinstance(body, dict):
                        body = {}
                    header = (self.headers.get("Hotboot-Instance"), self.headers.get("Hotboot-Entropy"))
                    fields = (body.get("instance"), body.get("entropy"))
                    if None not in header and None not in fields and header != fields:
                        raise ValueError("the Hotboot-* headers and the body's instance/entropy differ")
                    got = identity.after_restore(header[0] or fields[0], header[1] or fields[1])
                    got["from"] = [k for k, v in (("headers", header), ("body", fields)) if None not in v]
                    identity.source = got["from"]
                except ValueError as e:  # json.JSONDecodeError included
                    return self._send(400, {"error": str(e)})
                print(f"http_model_server: restored as {got['instance']}, boot id {got['boot_id']}", flush=True)
                return self._send(200, got)
            if self.path == "/before-capture":
                frozen = identity.peek()
                print("http_model_server: before capture: " + json.dumps(frozen), flush=True)
                return self._send(200, frozen)
            if self.path != "/generate":
                return self._send(404, {"error": "not found"})
            if not state["ready"]:
                return self._send(503, {"error": "warming up"})
            try:
                req = self._body()
                prompt, max_tokens = str(req["prompt"]), int(req.get("max_tokens", 8))
                if not 1 <= max_tokens <= 64:
                    raise ValueError("max_tokens must be 1..64")
            except (ValueError, KeyError, TypeError) as e:
                return self._send(400, {"error": str(e)})
            t0 = time.perf_counter()
            tokens = model.generate(prompt, max_tokens)
            self._send(200, {"tokens": tokens, "text": " ".join(map(str, tokens)),
                             "latency_ms": (time.perf_counter() - t0) * 1000})

        def log_message(self, fmt, *a):
            sys.stderr.write("http_model_server: " + (fmt % a) + "\n")

    # Listen first (a probe gets 503, not a refused connection), then load.
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    t0 = time.perf_counter()
    model = Model(args.vocab, args.dim, args.seed)
    for prompt in ("The quick brown fox", "hello", "warm me up"):
        model.generate(prompt, 4)
    state["ready"] = True
    print(f"http_model_server: warm on port {args.port} after {time.perf_counter() - t0:.2f} s, "
          f"boot id {identity.boot_id}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
