#!/usr/bin/env python3
"""Fake Telegram Bot API, Slack incoming webhooks and Discord webhooks in one server, for
the notification channel tests (standard library only). It enforces the contract in
shared/contracts/notifications.md and rejects anything off it.

usage: fake_chat.py --port PORT --ready FILE [--telegram-token TOKEN]
                    [--telegram-chats 12345,-1001234567890,@alerts]
                    [--slack-path /services/T000/B000/XXXX] [--discord-webhook ID/TOKEN]

Telegram  POST|GET /bot<TOKEN>/sendMessage (method name case-insensitive): the token is
          checked (401), parameters from JSON, form or query; chat_id an int64 or
          "@name" of a known chat (else 400 "Bad Request: chat not found"); a chat listed
          as blocked answers 403 "Forbidden: bot was blocked by the user"; text 1..4096
          UTF-16 units after entity parsing; parse_mode HTML is parsed like Telegram does
          (supported tags only, entities &lt; &gt; &amp; &quot; &#N;, tags closed) and a
          violation is 400 "Bad Request: can't parse entities: ...". A scripted 429 answers
          parameters.retry_after; a request for that chat before the time is up is counted
          as a violation and refused with 429 again.
Slack     POST /services/T.../B.../X...: Content-Type application/json and a JSON object
          with text or blocks (<= 50 blocks, section text <= 3000) else 400
          invalid_payload / no_text / invalid_blocks; unknown path 404 no_service;
          success 200 text/plain "ok". A scripted 429 carries Retry-After, enforced.
Discord   POST /api/webhooks/{id}/{token} (or /api/v10/...): unknown id 404 code 10015,
          wrong token 401 code 50027, JSON only (400 code 50109), at least one of
          content/embeds/components/poll (400 code 50006), the content and embed limits
          (400 code 50035); ?wait=true 200 with the message, else 204. Every answer
          carries X-RateLimit-Limit/Remaining/Reset/Reset-After/Bucket of a bucket of
          `discord_limit` calls per `discord_window_s`; a call on an empty bucket is a
          violation and gets 429 {message, retry_after (float), global}. A scripted 429
          does the same.

Control  POST /__control JSON: {"reset": true, "telegram": [...], "slack": [...],
         "discord": [...], "telegram_blocked": ["666"], "discord_limit": 5,
         "discord_window_s": 2.0}. Script entries are consumed one per request of that
         service: "429:SECONDS" (float for discord), "STATUS[:text]" (slack error text /
         telegram description), "hang:MS" (answer 200 after MS). reset forgets messages,
         stats, scripts and rate limits.
         GET /__messages  JSON list of accepted messages {service, chat_id?, text, json}
         GET /__stats     {"requests": {service: n}, "violations": n, "refused": n}
The ready FILE is written once the socket listens."""
import argparse
import html.parser
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOCK = threading.Lock()
STATE = {}
CONFIG = {}

TELEGRAM_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "code", "pre",
                 "a", "span", "tg-spoiler", "tg-emoji", "blockquote"}
SLACK_PATH = re.compile(r"^/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+$")
DISCORD_PATH = re.compile(r"^/api(?:/v\d+)?/webhooks/(\d+)/([A-Za-z0-9_\-.]+)$")


def reset():
    STATE.clear()
    STATE.update({
        "messages": [],
        "requests": {"telegram": 0, "slack": 0, "discord": 0},
        "violations": 0,
        "refused": 0,
        "scripts": {"telegram": [], "slack": [], "discord": []},
        "telegram_blocked": set(),
        "not_before": {},  # key -> monotonic time before which a request is a violation
        "discord_limit": 5,
        "discord_window_s": 2.0,
        "discord_bucket": None,  # (remaining, reset_at_monotonic)
        "next_id": 1000,
    })


def utf16_len(s):
    return len(s.encode("utf-16-le")) // 2


class TelegramHTML(html.parser.HTMLParser):
    """Telegram's HTML parse mode: the visible text, or an error like the Bot API's."""

    def __init__(self):
        super().__init__(convert_charrefs=False)
        self.text = []
        self.stack = []
        self.error = None

    def fail(self, why):
        if self.error is None:
            self.error = why

    def handle_starttag(self, tag, attrs):
        if tag not in TELEGRAM_TAGS:
            self.fail("Unsupported start tag \"%s\"" % tag)
            return
        if tag == "a" and not dict(attrs).get("href"):
            self.fail("Can't find end of the entity: a without href")
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.fail("Can't find end tag corresponding to start tag \"%s\"" % tag)
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)

    def handle_entityref(self, name):
        table = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
        if name not in table:
            self.fail("Unsupported HTML entity \"&%s;\"" % name)
            return
        self.text.append(table[name])

    def handle_charref(self, name):
        try:
            self.text.append(chr(int(name[1:], 16) if name[:1] in "xX" else int(name)))
        except ValueError:
            self.fail("Wrong character reference")


def parse_telegram_html(text):
    # html.parser accepts things Telegram refuses: a bare '<' not starting a tag, and a
    # bare '&' not starting an entity. Check those first, as Telegram does.
    for m in re.finditer(r"<", text):
        rest = text[m.start() + 1:]
        tm = re.match(r"/?([A-Za-z][A-Za-z0-9\-]*)", rest)
        if not tm:
            return None, "Unexpected character '<' at byte offset %d" % m.start()
        if tm.group(1).lower() not in TELEGRAM_TAGS:
            return None, "Unsupported start tag \"%s\" at byte offset %d" % (tm.group(1),
                                                                             m.start())
    for m in re.finditer(r"&", text):
        if not re.match(r"&(lt|gt|amp|quot|#\d+|#[xX][0-9a-fA-F]+);", text[m.start():]):
            return None, "Unsupported HTML entity at byte offset %d" % m.start()
    p = TelegramHTML()
    p.feed(text)
    p.close()
    if p.error:
        return None, p.error
    if p.stack:
        return None, "Can't find end tag corresponding to start tag \"%s\"" % p.stack[-1]
    return "".join(p.text), None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def send(self, status, body=b"", ctype="application/json", headers=()):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if status != 204:
            self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def do_GET(self):
        u = urlsplit(self.path)
        if u.path == "/__messages":
            with LOCK:
                return self.send(200, STATE["messages"])
        if u.path == "/__stats":
            with LOCK:
                return self.send(200, {"requests": STATE["requests"],
                                       "violations": STATE["violations"],
                                       "refused": STATE["refused"]})
        if u.path.startswith("/bot"):
            return self.telegram(u, b"")
        self.send(404, {"error": "not found"})

    def do_POST(self):
        u = urlsplit(self.path)
        raw = self.body()
        if u.path == "/__control":
            return self.control(raw)
        if u.path.startswith("/bot"):
            return self.telegram(u, raw)
        if u.path.startswith("/services/"):
            return self.slack(u, raw)
        if u.path.startswith("/api/"):
            return self.discord(u, raw)
        self.send(404, {"error": "not found"})

    def control(self, raw):
        try:
            c = json.loads(raw or b"{}")
        except ValueError:
            return self.send(400, {"error": "bad json"})
        with LOCK:
            if c.get("reset"):
                reset()
            for svc in ("telegram", "slack", "discord"):
                STATE["scripts"][svc].extend(str(x) for x in c.get(svc, []))
            STATE["telegram_blocked"].update(str(x) for x in c.get("telegram_blocked", []))
            if "discord_limit" in c:
                STATE["discord_limit"] = int(c["discord_limit"])
                STATE["discord_bucket"] = None
            if "discord_window_s" in c:
                STATE["discord_window_s"] = float(c["discord_window_s"])
                STATE["discord_bucket"] = None
        self.send(200, {"ok": True})

    # -- shared -------------------------------------------------------------------------

    def script(self, svc):
        """The next scripted answer for @svc, or None. Counts the request."""
        with LOCK:
            STATE["requests"][svc] += 1
            return STATE["scripts"][svc].pop(0) if STATE["scripts"][svc] else None

    def too_early(self, key):
        """Seconds left before @key may be called again (a violation when > 0)."""
        with LOCK:
            left = STATE["not_before"].get(key, 0) - time.monotonic()
            if left > 0:
                STATE["violations"] += 1
                return left
            return 0

    def hold(self, key, seconds):
        with LOCK:
            STATE["not_before"][key] = time.monotonic() + seconds

    def refuse(self):
        with LOCK:
            STATE["refused"] += 1

    def record(self, msg):
        with LOCK:
            STATE["messages"].append(msg)
            STATE["next_id"] += 1
            return STATE["next_id"]

    # -- Telegram -----------------------------------------------------------------------

    def tg_error(self, code, description, parameters=None):
        self.refuse()
        body = {"ok": False, "error_code": code, "description": description}
        if parameters:
            body["parameters"] = parameters
        self.send(code, body)

    def telegram(self, u, raw):
        m = re.match(r"^/bot([^/]+)/([A-Za-z]+)$", u.path)
        sc = self.script("telegram")
        if not m or m.group(1) != CONFIG["telegram_token"]:
            return self.tg_error(401, "Unauthorized")
        if m.group(2).lower() != "sendmessage":
            return self.tg_error(404, "Not Found")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            if ctype == "application/json":
                p = json.loads(raw)
                if not isinstance(p, dict):
                    raise ValueError
            elif ctype == "application/x-www-form-urlencoded" or not raw:
                q = parse_qs(raw.decode() if raw else u.query, keep_blank_values=True)
                p = {k: v[0] for k, v in q.items()}
            else:
                return self.tg_error(400, "Bad Request: unsupported content type")
        except (ValueError, UnicodeDecodeError):
            return self.tg_error(400, "Bad Request: can't parse JSON")
        chat = p.get("chat_id")
        if isinstance(chat, bool) or chat is None or chat == "":
            return self.tg_error(400, "Bad Request: chat_id is empty")
        if isinstance(chat, str) and re.fullmatch(r"-?\d+", chat):
            chat = int(chat)
        if isinstance(chat, int):
            if not -(1 << 63) <= chat < (1 << 63):
                return self.tg_error(400, "Bad Request: chat not found")
        elif not (isinstance(chat, str) and re.fullmatch(r"@[A-Za-z][A-Za-z0-9_]{3,}", chat)):
            return self.tg_error(400, "Bad Request: chat not found")
        key = "telegram:%s" % chat
        left = self.too_early(key)
        if left > 0:
            ra = int(math.ceil(left))
            return self.tg_error(429, "Too Many Requests: retry after %d" % ra,
                                 {"retry_after": ra})
        if sc and sc.startswith("429:"):
            ra = int(sc.split(":", 1)[1])
            self.hold(key, ra)
            return self.tg_error(429, "Too Many Requests: retry after %d" % ra,
                                 {"retry_after": ra})
        if sc and sc.startswith("hang:"):
            time.sleep(int(sc.split(":", 1)[1]) / 1000.0)
            sc = None
        if sc:
            code, _, desc = sc.partition(":")
            return self.tg_error(int(code), desc or "Internal Server Error")
        if str(chat) not in CONFIG["telegram_chats"]:
            return self.tg_error(400, "Bad Request: chat not found")
        with LOCK:
            blocked = str(chat) in STATE["telegram_blocked"]
        if blocked:
            return self.tg_error(403, "Forbidden: bot was blocked by the user")
        text = p.get("text")
        if not isinstance(text, str) or not text:
            return self.tg_error(400, "Bad Request: message text is empty")
        mode = p.get("parse_mode")
        if mode not in (None, "", "HTML", "MarkdownV2", "Markdown"):
            return self.tg_error(400, "Bad Request: unsupported parse_mode")
        visible = text
        if mode == "HTML":
            visible, err = parse_telegram_html(text)
            if err:
                return self.tg_error(400, "Bad Request: can't parse entities: " + err)
        if not visible.strip():
            return self.tg_error(400, "Bad Request: message text is empty")
        if utf16_len(visible) > 4096:
            return self.tg_error(400, "Bad Request: message is too long")
        mid = self.record({"service": "telegram", "chat_id": chat, "text": visible,
                           "raw": text, "parse_mode": mode, "json": p})
        self.send(200, {"ok": True, "result": {
            "message_id": mid, "date": int(time.time()),
            "chat": {"id": chat, "type": "group" if isinstance(chat, int) and chat < 0
                     else "private"}, "text": visible}})

    # -- Slack --------------------------------------------------------------------------

    def slack_error(self, status, text, headers=()):
        self.refuse()
        self.send(status, text, "text/plain; charset=utf-8", headers)

    def slack(self, u, raw):
        sc = self.script("slack")
        if not SLACK_PATH.match(u.path) or u.path != CONFIG["slack_path"]:
            return self.slack_error(404, "no_service")
        key = "slack:" + u.path
        left = self.too_early(key)
        if left > 0:
            return self.slack_error(429, "rate_limited",
                                    [("Retry-After", str(int(math.ceil(left))))])
        if sc and sc.startswith("429:"):
            ra = int(sc.split(":", 1)[1])
            self.hold(key, ra)
            return self.slack_error(429, "rate_limited", [("Retry-After", str(ra))])
        if sc and sc.startswith("hang:"):
            time.sleep(int(sc.split(":", 1)[1]) / 1000.0)
            sc = None
        if sc:
            code, _, text = sc.partition(":")
            return self.slack_error(int(code), text or "rollup_error")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return self.slack_error(400, "invalid_payload")
        try:
            p = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return self.slack_error(400, "invalid_payload")
        if not isinstance(p, dict):
            return self.slack_error(400, "invalid_payload")
        text, blocks = p.get("text"), p.get("blocks")
        if not (isinstance(text, str) and text) and not blocks:
            return self.slack_error(400, "no_text")
        if blocks is not None:
            if not isinstance(blocks, list) or len(blocks) > 50:
                return self.slack_error(400, "invalid_blocks")
            for b in blocks:
                if not isinstance(b, dict) or b.get("type") not in (
                        "section", "context", "header", "divider"):
                    return self.slack_error(400, "invalid_blocks")
                if b["type"] == "section":
                    t = b.get("text")
                    if not isinstance(t, dict) or t.get("type") not in ("mrkdwn", "plain_text") \
                            or not isinstance(t.get("text"), str) or not t["text"] \
                            or len(t["text"]) > 3000:
                        return self.slack_error(400, "invalid_blocks")
                if b["type"] == "context":
                    el = b.get("elements")
                    if not isinstance(el, list) or not 1 <= len(el) <= 10:
                        return self.slack_error(400, "invalid_blocks")
        self.record({"service": "slack", "text": text, "json": p})
        self.send(200, "ok", "text/plain; charset=utf-8")

    # -- Discord ------------------------------------------------------------------------

    def discord_headers(self, consume):
        """The bucket's rate-limit headers after this call; None when it was empty."""
        with LOCK:
            now = time.monotonic()
            limit, window = STATE["discord_limit"], STATE["discord_window_s"]
            b = STATE["discord_bucket"]
            if b is None or now >= b[1]:
                b = [limit, now + window]
            empty = b[0] <= 0
            if consume and not empty:
                b[0] -= 1
            STATE["discord_bucket"] = b
            reset_after = max(0.0, b[1] - now)
            hdrs = [("X-RateLimit-Limit", str(limit)), ("X-RateLimit-Remaining", str(b[0])),
                    ("X-RateLimit-Reset", "%.3f" % (time.time() + reset_after)),
                    ("X-RateLimit-Reset-After", "%.3f" % reset_after),
                    ("X-RateLimit-Bucket", "fakebucket")]
            return (None if empty else hdrs), reset_after, hdrs

    def discord_error(self, status, code, message, headers=()):
        self.refuse()
        self.send(status, {"code": code, "message": message}, headers=headers)

    def discord_429(self, retry_after, hdrs):
        self.refuse()
        self.send(429, {"message": "You are being rate limited.", "retry_after": retry_after,
                        "global": False},
                  headers=list(hdrs) + [("Retry-After", str(int(math.ceil(retry_after)))),
                                        ("X-RateLimit-Scope", "user")])

    def discord(self, u, raw):
        sc = self.script("discord")
        m = DISCORD_PATH.match(u.path)
        wid, wtoken = CONFIG["discord_webhook"].split("/", 1)
        if not m or m.group(1) != wid:
            return self.discord_error(404, 10015, "Unknown Webhook")
        if m.group(2) != wtoken:
            return self.discord_error(401, 50027, "Invalid Webhook Token")
        key = "discord:" + wid
        left = self.too_early(key)
        if left > 0:
            return self.discord_429(round(left, 3), [])
        if sc and sc.startswith("429:"):
            ra = float(sc.split(":", 1)[1])
            self.hold(key, ra)
            return self.discord_429(ra, [])
        ok_hdrs, reset_after, hdrs = self.discord_headers(True)
        if ok_hdrs is None:
            with LOCK:
                STATE["violations"] += 1
            return self.discord_429(round(reset_after, 3), hdrs)
        if sc and sc.startswith("hang:"):
            time.sleep(int(sc.split(":", 1)[1]) / 1000.0)
            sc = None
        if sc:
            code, _, message = sc.partition(":")
            return self.discord_error(int(code), 0, message or "error", hdrs)
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            if ctype != "application/json":
                raise ValueError
            p = json.loads(raw)
            if not isinstance(p, dict):
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            return self.discord_error(400, 50109, "The request body contains invalid JSON.",
                                      hdrs)
        if not any(p.get(k) for k in ("content", "embeds", "components", "poll")):
            return self.discord_error(400, 50006, "Cannot send an empty message", hdrs)
        problem = discord_limits(p)
        if problem:
            self.refuse()
            return self.send(400, {"code": 50035, "message": "Invalid Form Body",
                                   "errors": {"_problem": problem}}, headers=hdrs)
        mid = self.record({"service": "discord", "text": p.get("content") or "", "json": p})
        wait = parse_qs(u.query).get("wait", ["false"])[0] == "true"
        if wait:
            return self.send(200, {"id": str(mid), "channel_id": "1", "type": 0,
                                   "content": p.get("content") or "",
                                   "embeds": p.get("embeds") or []}, headers=hdrs)
        self.send(204, headers=hdrs)


def discord_limits(p):
    content = p.get("content")
    if content is not None and (not isinstance(content, str) or len(content) > 2000):
        return "content longer than 2000"
    embeds = p.get("embeds") or []
    if not isinstance(embeds, list) or len(embeds) > 10:
        return "more than 10 embeds"
    total = 0
    for e in embeds:
        if not isinstance(e, dict):
            return "embed is not an object"
        for k, lim in (("title", 256), ("description", 4096)):
            v = e.get(k)
            if v is not None:
                if not isinstance(v, str) or utf16_len(v) > lim:
                    return "embed %s too long" % k
                total += utf16_len(v)
        if "color" in e and not isinstance(e["color"], int):
            return "embed color is not an integer"
        footer = e.get("footer")
        if footer is not None:
            if not isinstance(footer, dict) or not isinstance(footer.get("text"), str) \
                    or utf16_len(footer["text"]) > 2048:
                return "embed footer invalid"
            total += utf16_len(footer["text"])
        fields = e.get("fields") or []
        if not isinstance(fields, list) or len(fields) > 25:
            return "more than 25 fields"
        for f in fields:
            if not isinstance(f, dict) or not isinstance(f.get("name"), str) \
                    or not isinstance(f.get("value"), str) or not f["name"] or not f["value"] \
                    or utf16_len(f["name"]) > 256 or utf16_len(f["value"]) > 1024:
                return "embed field invalid"
            total += utf16_len(f["name"]) + utf16_len(f["value"])
    if total > 6000:
        return "embeds longer than 6000 in total"
    am = p.get("allowed_mentions")
    if am is not None and (not isinstance(am, dict) or not isinstance(am.get("parse", []),
                                                                      list)):
        return "allowed_mentions invalid"
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--telegram-token", default="123456:TEST-token_abcdefghijklmnop")
    ap.add_argument("--telegram-chats", default="12345,-1001234567890,@alerts,666")
    ap.add_argument("--slack-path", default="/services/T0001/B0001/XXXXsecretXXXX")
    ap.add_argument("--discord-webhook", default="112233445566778899/secret-discord-token")
    args = ap.parse_args()
    CONFIG["telegram_token"] = args.telegram_token
    CONFIG["telegram_chats"] = set(args.telegram_chats.split(","))
    CONFIG["slack_path"] = args.slack_path
    CONFIG["discord_webhook"] = args.discord_webhook
    reset()
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    with open(args.ready, "w") as f:
        f.write("ready\n")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    import signal
    import sys
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
