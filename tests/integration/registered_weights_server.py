#!/usr/bin/env python3
"""A cooperative test server (server/CONTROL.md) that registers weights files
it never maps, as the GPU reference model does with its gpu-weights file:

  registered_weights_server.py --weights PATH [--register PATH]...

At boot it reads --weights once (read(2), closed after: no mapping) and takes
its SHA-256 as its warm-state digest; before_capture answers with
weights_files = every --register path. after_restore reads --weights again,
so a restore that did not put the file back fails the digest (or the
command, when the file is missing).

HTTP on 127.0.0.1: GET /readyz (200 once warm), POST /v1/generate (tokens
derived from the digest and the prompt: deterministic).
"""
import argparse
import hashlib
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--weights", required=True)
ap.add_argument("--register", action="append", default=[])
ap.add_argument("--port", type=int, default=0)
args = ap.parse_args()

state = {"name": "cold", "ready": False, "instance": "b-%d" % os.getpid(), "digest": ""}
out_lock = threading.Lock()


def emit(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def weights_digest():
    h = hashlib.sha256()
    with open(args.weights, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


class Handler(BaseHTTPRequestHandler):
    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/readyz":
            self.answer(200 if state["ready"] else 503, {"ready": state["ready"]})
        else:
            self.answer(404, {"error": "not found"})

    def do_POST(self):
        length = min(int(self.headers.get("Content-Length") or 0), 1 << 16)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path != "/v1/generate":
            self.answer(404, {"error": "not found"})
            return
        n = max(1, min(int(body.get("max_tokens", 1)), 32))
        seed = hashlib.sha256((state["digest"] + str(body.get("prompt", ""))).encode()).digest()
        tokens = list(seed[:n])
        self.answer(200, {"tokens": tokens, "text": " ".join(map(str, tokens))})

    def log_message(self, fmt, *a):
        pass


httpd = None
http_thread = None


def listen(host, port):
    global httpd, http_thread
    httpd = HTTPServer((host, port), Handler)
    http_thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    http_thread.start()
    return httpd.server_address[1]


def set_state(name):
    state["name"] = name
    port = httpd.server_address[1] if httpd else 0
    emit({"event": "state", "state": name, "port": port, "pid": os.getpid(), "instance": state["instance"]})


set_state("loading")
state["digest"] = weights_digest()
listen("127.0.0.1", args.port)
state["ready"] = True
set_state("warm")

for line in sys.stdin:
    try:
        cmd = json.loads(line)
        name = cmd["cmd"]
    except (ValueError, KeyError, TypeError):
        emit({"reply": "error", "ok": False})
        continue
    if name == "before_capture":
        state["ready"] = False
        httpd.shutdown()
        httpd.server_close()
        http_thread.join()
        httpd = None
        set_state("frozen")
        emit({"reply": name, "ok": True, "digest": state["digest"], "instance": state["instance"],
              "weights_files": args.register})
    elif name == "after_restore":
        entropy = cmd.get("entropy", "")
        if len(entropy) != 64 or any(c not in "0123456789abcdef" for c in entropy):
            emit({"reply": name, "ok": False, "error": "entropy is not 64 hex digits"})
            continue
        try:
            state["digest"] = weights_digest()
        except OSError as e:
            emit({"reply": name, "ok": False, "error": "the weights file: %s" % e})
            continue
        state["instance"] = cmd.get("instance", state["instance"])
        try:
            port = listen(cmd.get("host", "127.0.0.1"), int(cmd["port"]))
        except OSError as e:
            emit({"reply": name, "ok": False, "error": "listen: %s" % e})
            continue
        set_state("verifying")
        emit({"reply": name, "ok": True, "digest": state["digest"], "port": port, "instance": state["instance"]})
    elif name == "mark_ready":
        state["ready"] = True
        set_state("warm")
        emit({"reply": name, "ok": True})
    elif name == "status":
        emit({"reply": name, "ok": True, "state": state["name"], "pid": os.getpid(), "instance": state["instance"]})
    else:
        emit({"reply": name, "ok": False, "error": "unknown command"})
log("end of the control channel: exiting")
