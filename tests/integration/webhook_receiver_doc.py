#!/usr/bin/env python3
"""A receiver of Sentinel's signed webhook written from its documentation alone
(docs/notifications.md "Verifying the signed webhook", docs/operations.md "Notifier"),
standard library only, as an operator would write one. It shares no code with Sentinel.

What the documentation says a receiver does, step by step:
  1. Take the raw request body bytes, before any JSON parsing.
  2. Read the header X-Sentinel-Signature: "t=<unix seconds>,v1=<64 lower-case hex>".
  3. Refuse when |now - t| > 300 s (replay window).
  4. Compute HMAC-SHA256 with the channel secret (UTF-8 bytes) as the key over the bytes
     "<t>" + "." + raw body; hex-encode it (lower case).
  5. Compare with v1 in constant time (hmac.compare_digest); refuse on mismatch.
  6. Content-Type is application/cloudevents+json; the body is a CloudEvents 1.0
     structured-mode event whose `id` equals the X-Sentinel-Event-Id header; receivers may
     deduplicate on `id`.
Answer 2xx to accept (anything else in 4xx is final for the sender, 408/429/5xx retried).

usage: webhook_receiver_doc.py --port PORT --ready FILE --secret SECRET --record FILE
                               --bodies FILE
--record gets one JSON line per request {verified, why, id, header_event_id};
--bodies gets the raw body of each verified delivery, one per line (JSON lines), for
validate_cdevents.py. Verified deliveries are answered 200, others 401."""
import argparse
import hashlib
import hmac
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WINDOW_S = 300
LOCK = threading.Lock()
ARGS = None


def verify(secret, header, body, now):
    """(ok, why) for one delivery, following the documented steps."""
    if not header:
        return False, "missing X-Sentinel-Signature"
    fields = {}
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name in fields:
            return False, "malformed signature header"
        fields[name] = value
    t, v1 = fields.get("t"), fields.get("v1")
    if t is None or v1 is None or not t.isdigit() or len(v1) != 64:
        return False, "malformed signature header"
    if abs(now - int(t)) > WINDOW_S:
        return False, "timestamp outside the 300 s window"
    mac = hmac.new(secret.encode("utf-8"), t.encode("ascii") + b"." + body,
                   hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, v1):
        return False, "signature mismatch"
    return True, ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n > 0 else b""
        ok, why = verify(ARGS.secret, self.headers.get("X-Sentinel-Signature"), body,
                         time.time())
        ev_id = None
        if ok:
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            try:
                ev = json.loads(body)
                ev_id = ev.get("id") if isinstance(ev, dict) else None
            except ValueError:
                ev = None
            if ctype != "application/cloudevents+json":
                ok, why = False, "content type %r" % ctype
            elif not isinstance(ev, dict) or ev.get("specversion") != "1.0":
                ok, why = False, "not a CloudEvents 1.0 structured-mode body"
            elif ev_id != self.headers.get("X-Sentinel-Event-Id"):
                ok, why = False, "id differs from X-Sentinel-Event-Id"
        with LOCK:
            with open(ARGS.record, "a", encoding="utf-8") as f:
                f.write(json.dumps({"verified": ok, "why": why, "id": ev_id,
                                    "header_event_id": self.headers.get(
                                        "X-Sentinel-Event-Id")}) + "\n")
            if ok:
                with open(ARGS.bodies, "ab") as f:
                    f.write(body + b"\n")
        status = 200 if ok else 401
        out = b"accepted" if ok else why.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--record", required=True)
    ap.add_argument("--bodies", required=True)
    ARGS = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    srv.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(ARGS.ready, "w") as f:
        f.write("ready\n")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
