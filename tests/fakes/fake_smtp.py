#!/usr/bin/env python3
"""A fake SMTP server for the email channel tests, on Debian's python3-aiosmtpd (1.4.3).

usage: fake_smtp.py --port PORT --ready FILE --record FILE
                    [--tls starttls|implicit|none] --cert PEM --key PEM
                    [--user NAME --password SECRET]

--tls starttls (default): plain SMTP that offers STARTTLS and refuses MAIL before it
(530); implicit: TLS from the first byte (smtps); none: no TLS at all (a client that
requires STARTTLS must give up). With --user, AUTH (PLAIN or LOGIN, only over TLS) is
required and a wrong password is 535.

Scripted replies by recipient: tempfail@... -> 451 4.3.0 at RCPT, reject@... -> 550
5.1.1 at RCPT.

Each accepted message is appended to the --record file as one JSON line: {mail_from,
rcpt_tos, tls, auth_user, headers: {name: [values]}, subject (RFC 2047 decoded), body
(decoded text), problems: [...]} where problems lists every way the message breaks
RFC 5322 / RFC 2045 as the channel promises them: a line not ending in CRLF, a line
over 998 octets, non-ASCII header bytes, Date / From / To / Subject / Message-ID missing
or repeated, an unparseable Date or a Date without a zone, a malformed Message-ID,
MIME-Version not 1.0, Content-Type not text/plain; charset=utf-8."""
import argparse
import asyncio
import email.policy
import email.utils
import json
import re
import signal
import ssl
import sys
import warnings
from email.parser import BytesParser

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

ARGS = None
warnings.filterwarnings("ignore", category=DeprecationWarning)  # aiosmtpd's own


def check_message(raw):
    problems = []
    lines = raw.split(b"\r\n")
    for i, line in enumerate(lines):
        if b"\r" in line or b"\n" in line:
            problems.append("line %d has a bare CR or LF" % (i + 1))
            break
    for i, line in enumerate(lines):
        if len(line) > 998:
            problems.append("line %d is %d octets long" % (i + 1, len(line)))
    head = raw.split(b"\r\n\r\n", 1)[0]
    try:
        head.decode("ascii")
    except UnicodeDecodeError:
        problems.append("non-ASCII bytes in the header")
    msg = BytesParser(policy=email.policy.default).parsebytes(raw)
    headers = {}
    for k, v in msg.raw_items():
        headers.setdefault(k.lower(), []).append(str(v))
    for name in ("date", "from", "to", "subject", "message-id"):
        n = len(headers.get(name, []))
        if n != 1:
            problems.append("%s appears %d times" % (name, n))
    if headers.get("date"):
        try:
            d = email.utils.parsedate_to_datetime(headers["date"][0])
            if d.tzinfo is None:
                problems.append("Date has no zone")
        except (TypeError, ValueError):
            problems.append("Date does not parse: %r" % headers["date"][0])
    if headers.get("message-id") and not re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>",
                                                       headers["message-id"][0].strip()):
        problems.append("Message-ID is malformed: %r" % headers["message-id"][0])
    if [v.strip() for v in headers.get("mime-version", [])] != ["1.0"]:
        problems.append("MIME-Version is not 1.0")
    if msg.get_content_type() != "text/plain" or \
            (msg.get_content_charset() or "").lower() != "utf-8":
        problems.append("Content-Type is not text/plain; charset=utf-8")
    try:
        body = msg.get_content().replace("\r\n", "\n")  # lines checked on the raw bytes
    except (LookupError, ValueError) as e:
        body = ""
        problems.append("body does not decode: %s" % e)
    subject = str(msg["subject"]) if msg["subject"] is not None else None
    return headers, subject, body, problems


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local == "tempfail":
            return "451 4.3.0 Try again later"
        if local == "reject":
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if ARGS.tls == "starttls" and not session.ssl:
            return "530 5.7.0 Must issue a STARTTLS command first"
        if ARGS.user and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content
        headers, subject, body, problems = check_message(raw)
        is_tls = bool(session.ssl) or \
            server.transport.get_extra_info("ssl_object") is not None
        rec = {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
               "tls": is_tls, "auth_user": ARGS.user if session.authenticated
               else None, "headers": headers, "subject": subject, "body": body,
               "problems": problems, "raw": raw.decode("utf-8", "replace")}
        with open(ARGS.record, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        return "250 2.0.0 Message accepted"


def authenticator(server, session, envelope, mechanism, auth_data):
    if not isinstance(auth_data, LoginPassword):
        return AuthResult(success=False, handled=False)
    ok = auth_data.login.decode() == ARGS.user and auth_data.password.decode() == ARGS.password
    return AuthResult(success=ok, handled=False)


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--record", required=True)
    ap.add_argument("--tls", choices=("starttls", "implicit", "none"), default="starttls")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ARGS = ap.parse_args()
    ctx = None
    if ARGS.tls != "none":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(ARGS.cert, ARGS.key)
    kwargs = {"hostname": "fake-smtp.test", "ident": "fake-smtp"}
    if ARGS.tls == "starttls":
        kwargs.update(tls_context=ctx, require_starttls=True)
    if ARGS.user:
        kwargs.update(authenticator=authenticator, auth_required=True,
                      auth_require_tls=ARGS.tls != "none")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = Handler()
    server = loop.run_until_complete(loop.create_server(
        lambda: SMTP(handler, loop=loop, **kwargs), "127.0.0.1", ARGS.port,
        ssl=ctx if ARGS.tls == "implicit" else None))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    with open(ARGS.ready, "w") as f:
        f.write("ready\n")
    try:
        loop.run_forever()
    finally:
        server.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
