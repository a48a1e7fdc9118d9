#!/usr/bin/env python3
"""A fake gateway for the artifact downloads of local-deployer (tests of the fetch path).

Usage: fake_artifact_gateway.py --port PORT --ready FILE --store DIR

GET /api/v1/artifacts/<sha> answers according to the current mode:
  good      the bytes of DIR/<sha>.tar (404 if absent)
  bad       200 with other bytes than the artifact's (a tampered source)
  bad_once  the first answer is bad, the next ones good
  truncate  a Content-Length of the whole file, then half of it and a closed connection
  status    an empty answer with status S (mode=status&status=503)
GET /__control?mode=M[&status=S] sets the mode (and resets the counters);
GET /__stats answers {"requests": N, "auth": [the Authorization values seen]} as JSON.
The ready FILE is written once the socket listens."""
import argparse
import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

lock = threading.Lock()
state = {"mode": "good", "status": 503, "requests": 0, "auth": []}
args = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *a):  # quiet
        pass

    def _send(self, status, body, ctype="application/octet-stream", length=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        try:
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):  # noqa: N802 (http.server's naming)
        url = urlsplit(self.path)
        if url.path == "/__control":
            q = parse_qs(url.query)
            with lock:
                state["mode"] = q.get("mode", ["good"])[0]
                state["status"] = int(q.get("status", ["503"])[0])
                state["requests"] = 0
                state["auth"] = []
            self._send(200, b"ok\n", "text/plain")
            return
        if url.path == "/__stats":
            with lock:
                body = json.dumps({"requests": state["requests"], "auth": state["auth"]})
            self._send(200, body.encode(), "application/json")
            return
        prefix = "/api/v1/artifacts/"
        if not url.path.startswith(prefix):
            self._send(404, b"{}", "application/json")
            return
        sha = url.path[len(prefix):]
        with lock:
            state["requests"] += 1
            state["auth"].append(self.headers.get("Authorization", ""))
            mode = state["mode"]
            status = state["status"]
            if mode == "bad_once":
                state["mode"] = "good"
                mode = "bad"
        path = os.path.join(args.store, sha + ".tar")
        if mode == "status":
            self._send(status, b"", "application/json")
            return
        if not os.path.isfile(path) or "/" in sha:
            self._send(404, b'{"error":{"code":"not_found","message":"no"}}', "application/json")
            return
        with open(path, "rb") as f:
            data = f.read()
        if mode == "bad":
            tampered = bytearray(data)
            tampered[len(tampered) // 2] ^= 0x01
            self._send(200, bytes(tampered), "application/x-tar")
        elif mode == "truncate":
            self._send(200, data[: len(data) // 2], "application/x-tar", length=len(data))
            self.close_connection = True
        else:
            self._send(200, data, "application/x-tar")


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ready", required=True)
    p.add_argument("--store", required=True)
    args = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    with open(args.ready, "w") as f:
        f.write("ready\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
