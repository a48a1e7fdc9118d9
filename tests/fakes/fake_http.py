#!/usr/bin/env python3
"""A scriptable fake web site for tests of sn_http and deployment-watcher.

Usage: fake_http.py --port PORT --ready FILE

Every path except the control paths answers with the current behaviour:
  status (default 200), body (default "hello sentinel"), delay_ms before answering,
  fail_first N: the next N answers use fail_status (default 503) instead, then status,
  body_size N: a body of N 'x' bytes instead of body, no_length=1: no Content-Length
  (the body ends when the connection closes), many_headers N: N extra headers,
  header "Name:value": one extra header (e.g. Retry-After:7).
/.well-known/sentinel-release.json serves the release identity {"deployId", "commit", ...}
of deploy_id / commit (404 while deploy_id is empty), never delayed.
GET /__control?key=value&... sets behaviour keys (reset=1 first restores the defaults);
GET /__stats answers {"requests": N, "identity_requests": M} as JSON.
The ready FILE is written once the socket listens."""
import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DEFAULTS = {
    "status": "200",
    "body": "hello sentinel",
    "delay_ms": "0",
    "fail_first": "0",
    "fail_status": "503",
    "body_size": "0",
    "no_length": "0",
    "many_headers": "0",
    "header": "",
    "deploy_id": "",
    "commit": "",
}

lock = threading.Lock()
state = dict(DEFAULTS)
stats = {"requests": 0, "identity_requests": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *args):  # quiet
        pass

    def _send(self, status, body, headers=(), length=True):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/__control":
            with lock:
                q = parse_qs(url.query, keep_blank_values=True)
                if q.get("reset", ["0"])[0] == "1":
                    state.clear()
                    state.update(DEFAULTS)
                    stats["requests"] = 0
                    stats["identity_requests"] = 0
                for k, v in q.items():
                    if k in state:
                        state[k] = v[0]
            self._send(200, b"ok")
            return
        if url.path == "/__stats":
            with lock:
                body = json.dumps(stats).encode()
            self._send(200, body, [("Content-Type", "application/json")])
            return
        if url.path == "/.well-known/sentinel-release.json":
            with lock:
                stats["identity_requests"] += 1
                ident = {"deployId": state["deploy_id"], "commit": state["commit"],
                         "project": "p", "environment": "e", "target": "t"}
                present = state["deploy_id"] != ""
            if not present:
                self._send(404, b"no release")
            else:
                self._send(200, json.dumps(ident).encode(), [("Content-Type", "application/json")])
            return
        with lock:
            stats["requests"] += 1
            s = dict(state)
            if int(s["fail_first"]) > 0:
                state["fail_first"] = str(int(s["fail_first"]) - 1)
                status = int(s["fail_status"])
            else:
                status = int(s["status"])
        delay = int(s["delay_ms"])
        if delay > 0:
            time.sleep(delay / 1000.0)
        n = int(s["body_size"])
        body = b"x" * n if n > 0 else s["body"].encode()
        headers = [("Content-Type", "text/plain")]
        for i in range(int(s["many_headers"])):
            headers.append(("X-Extra-%d" % i, "v" * 40))
        if s["header"]:
            name, _, value = s["header"].partition(":")
            headers.append((name, value))
        self._send(status, body, headers, length=s["no_length"] != "1")

    do_HEAD = do_GET


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ready", required=True)
    args = ap.parse_args()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    with open(args.ready, "w") as f:
        f.write("%d\n" % args.port)
    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    import signal
    import sys
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
