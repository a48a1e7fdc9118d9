#!/usr/bin/env python3
"""A fake webhook receiver for the notifier's tests (standard library only).

It checks every delivery the way a careful receiver would: the signature header
X-Sentinel-Signature "t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>" over the
raw bytes, compared in constant time, with the timestamp within 300 s; and the body as a
CloudEvents 1.0 structured-mode JSON event (Content-Type application/cloudevents+json,
specversion "1.0", non-empty id/source/type, RFC 3339 time, datacontenttype
application/json, data an object). It records each delivery and answers with the next
scripted status (default 200), so tests can make it fail on demand.

  POST /_control  {"script": ["500", "500", "429:1", "400"], "reset": true}
                  queue statuses ("429:1" adds Retry-After: 1); reset forgets deliveries
  GET  /_deliveries   JSON list of {id, type, status, signature_ok, cloudevent_ok,
                      problems, severity, at, path, event_ids, repeat} (event_ids and
                      repeat: of a grouped notification's data.events / data.repeat)
  GET  /_health       200
  POST anything else  a delivery

usage: webhook_sink.py --port PORT --secret SECRET
"""
import argparse
import hashlib
import hmac
import json
import signal
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20
SKEW_S = 300

LOCK = threading.Lock()
DELIVERIES = []
SCRIPT = []


def check_signature(secret, header, body):
    if not header:
        return False, "no signature header"
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    t, v1 = parts.get("t"), parts.get("v1")
    if not t or not v1 or not t.isdigit():
        return False, "malformed signature header"
    if abs(time.time() - int(t)) > SKEW_S:
        return False, "timestamp outside the allowed skew"
    want = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, v1):
        return False, "signature mismatch"
    return True, ""


def check_cloudevent(content_type, body):
    problems = []
    if not (content_type or "").lower().startswith("application/cloudevents+json"):
        problems.append("content-type is not application/cloudevents+json")
    try:
        ev = json.loads(body)
    except ValueError as e:
        return None, problems + ["body is not JSON: %s" % e]
    if not isinstance(ev, dict):
        return None, problems + ["body is not an object"]
    if ev.get("specversion") != "1.0":
        problems.append("specversion is not 1.0")
    for attr in ("id", "source", "type"):
        if not isinstance(ev.get(attr), str) or not ev[attr]:
            problems.append("%s missing or empty" % attr)
    for name in ev:
        if name not in ("data", "data_base64") and not (
            name.isascii() and name.isalnum() and name == name.lower()
        ):
            problems.append("attribute name %r is not [a-z0-9]" % name)
    try:
        datetime.fromisoformat(ev.get("time", "").replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        problems.append("time is not RFC 3339")
    if ev.get("datacontenttype") != "application/json":
        problems.append("datacontenttype is not application/json")
    if not isinstance(ev.get("data"), dict):
        problems.append("data is not a JSON object")
    return ev, problems


def group_event_ids(ev):
    """The ids of the events a grouped notification (type dev.sentinel.notification)
    carries in data.events; [] for a single event."""
    events = ((ev or {}).get("data") or {}).get("events")
    if not isinstance(events, list):
        return []
    return [e.get("id") for e in events if isinstance(e, dict)]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    secret = b""

    def log_message(self, fmt, *args):  # quiet: the test prints what it needs
        pass

    def _answer(self, status, body=b"", headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n < 0 or n > MAX_BODY:
            return None
        return self.rfile.read(n)

    def do_GET(self):
        if self.path == "/_health":
            return self._answer(200, b"ok")
        if self.path.startswith("/_deliveries"):
            with LOCK:
                data = json.dumps(DELIVERIES).encode()
            return self._answer(200, data, {"Content-Type": "application/json"})
        return self._answer(404)

    def do_POST(self):
        body = self._body()
        if body is None:
            return self._answer(413)
        if self.path == "/_control":
            try:
                ctl = json.loads(body or b"{}")
            except ValueError:
                return self._answer(400, b"bad control json")
            with LOCK:
                if ctl.get("reset"):
                    DELIVERIES.clear()
                    SCRIPT.clear()
                SCRIPT.extend(str(s) for s in ctl.get("script", []))
            return self._answer(200, b"ok")
        sig_ok, sig_why = check_signature(
            self.secret, self.headers.get("X-Sentinel-Signature"), body
        )
        ev, problems = check_cloudevent(self.headers.get("Content-Type"), body)
        if not sig_ok:
            problems.append(sig_why)
        with LOCK:
            step = SCRIPT.pop(0) if SCRIPT else "200"
            status, _, retry_after = step.partition(":")
            status = int(status)
            if not sig_ok and status < 300:
                status = 401  # a real receiver refuses what it cannot authenticate
            DELIVERIES.append(
                {
                    "id": (ev or {}).get("id") or self.headers.get("X-Sentinel-Event-Id"),
                    "type": (ev or {}).get("type"),
                    "severity": (ev or {}).get("severity"),
                    "status": status,
                    "signature_ok": sig_ok,
                    "cloudevent_ok": not problems,
                    "problems": problems,
                    "at": time.time(),
                    "path": self.path,
                    "event_ids": group_event_ids(ev),
                    "repeat": bool(((ev or {}).get("data") or {}).get("repeat")),
                }
            )
        headers = {"Retry-After": retry_after} if retry_after else {}
        return self._answer(status, b"{}", dict(headers, **{"Content-Type": "application/json"}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--secret", required=True)
    args = ap.parse_args()
    Handler.secret = args.secret.encode()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
