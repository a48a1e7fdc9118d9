#!/usr/bin/env python3
"""A stand-in for the edge in front of a live site: forwards GET and HEAD to an upstream
(nginx serving the target's live release) and answers 503 while the file named by
--fail-flag exists. The end-to-end tests point a target's live `url` at it to make a
release pass its preview checks and fail live, as a broken CDN or load balancer would.

usage: flaky_proxy.py --port P --upstream http://127.0.0.1:Q --fail-flag PATH
"""
import argparse
import http.server
import os
import sys
import urllib.error
import urllib.request


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--fail-flag", required=True)
    args = ap.parse_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _forward(self, with_body):
            if os.path.exists(args.fail_flag):
                body = b"upstream unavailable\n"
                self.send_response(503)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)
                return
            try:
                with urllib.request.urlopen(args.upstream + self.path, timeout=5) as r:
                    status, body, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
            except urllib.error.HTTPError as e:
                status, body, ctype = e.code, e.read(), "text/plain"
            except OSError:
                status, body, ctype = 502, b"bad gateway\n", "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self):
            self._forward(True)

        def do_HEAD(self):
            self._forward(False)

        def log_message(self, fmt, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    sys.stderr.write("flaky_proxy: listening on %d -> %s\n" % (args.port, args.upstream))
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
