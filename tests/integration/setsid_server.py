#!/usr/bin/env python3
"""A transparent-mode test server that daemonizes a helper, as real servers
do (a tokenizer pool, a metrics agent): at start it forks a child that calls
setsid(), leaving the server's process group and session, so that neither a
kill of the group nor PDEATHSIG reaches it; only a cgroup does. Slow phases
on purpose (loading, warmup, before_capture), so a test can kill the build
inside each of them.

  setsid_server.py --port P --tag T [--load-seconds S] [--pidfile F]

GET /health 200 once loaded; GET /canary {"tokens": [..]} (deterministic);
GET /warm and POST /before-capture answer after a pause.
"""
import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--tag", default="")  # only there to mark the command line
ap.add_argument("--load-seconds", type=float, default=0.5)
ap.add_argument("--pidfile", default="")
args = ap.parse_args()

helper = os.fork()
if helper == 0:
    os.setsid()
    # The helper holds nothing of the server's: it just lives on.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    while True:
        time.sleep(3600)
if args.pidfile:
    with open(args.pidfile, "w") as f:
        f.write("%d %d\n" % (os.getpid(), helper))

time.sleep(args.load_seconds)  # "loading weights"


class Handler(BaseHTTPRequestHandler):
    def answer(self, body, pause=0.0):
        time.sleep(pause)
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.answer({"ok": True})
        elif self.path == "/canary":
            self.answer({"tokens": [3, 1, 4, 1, 5]}, 0.05)
        elif self.path == "/warm":
            self.answer({"warm": True}, 0.4)
        else:
            self.send_error(404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path == "/before-capture":
            self.answer({"frozen": True}, 0.4)
        elif self.path == "/after-restore":
            self.answer({"ok": True})
        else:
            self.send_error(404)

    def log_message(self, fmt, *a):
        pass


print("listening on", args.port, flush=True)
HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
