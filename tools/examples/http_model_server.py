#!/usr/bin/env python3
"""A server hotboot knows nothing about: plain Python, standard library only.

It stands for any third-party inference server in hotboot's transparent-mode
tests (the PyTorch twin is torch_server.py): at start it builds its "weights"
(a seeded random embedding table and one hidden layer, real arithmetic that
takes a while in pure Python), runs a warmup, and only then answers
GET /health with 200. POST /generate {"prompt": str, "max_tokens": int}
greedily decodes tokens, deterministically, and answers
{"tokens": [...], "text": str, "latency_ms": float}.

    python3 http_model_server.py --port 8000 [--vocab 512 --dim 64]
"""
import argparse
import json
import random
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self):
            if self.path != "/generate":
                return self._send(404, {"error": "not found"})
            if not state["ready"]:
                return self._send(503, {"error": "warming up"})
            try:
                n = int(self.headers.get("Content-Length", "0"))
                req = json.loads(self.rfile.read(n) or b"{}")
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
    print(f"http_model_server: warm on port {args.port} after {time.perf_counter() - t0:.2f} s", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
