#!/usr/bin/env python3
"""A fake Cloudflare API v4 (Pages Direct Upload) that enforces the contract of
shared/contracts/cloudflare-pages.md, for tests of cloudflare-deployer.

Usage: fake_cloudflare.py --port PORT --ready FILE --token TOKEN [--token TOKEN2]
                          [--account ACCT] [--project NAME] [--production-branch main]
                          [--budget N] [--window-ms MS] [--deploy-latency-ms MS]

API (under /client/v4; every answer is the v4 envelope {success, errors, messages,
result}; wrong method -> 405, unknown path -> 404, both enveloped):
  GET  /accounts/{acct}/pages/projects/{name}                   project (canonical_deployment)
  GET  /accounts/{acct}/pages/projects/{name}/upload-token      {jwt}
  POST /pages/assets/check-missing   {"hashes": [...]}          -> hashes not stored
  POST /pages/assets/upload          [{key, value, metadata{contentType}, base64: true}]
  POST /pages/assets/upsert-hashes   {"hashes": [...]}
  POST /accounts/{acct}/pages/projects/{name}/deployments       multipart: manifest, branch,
                                      commit_hash, commit_message, commit_dirty
  GET  /accounts/{acct}/pages/projects/{name}/deployments       ?env=&page=&per_page=
  GET  /accounts/{acct}/pages/projects/{name}/deployments/{id}
  POST /accounts/{acct}/pages/projects/{name}/deployments/{id}/rollback
  GET  /accounts/{acct}/pages/projects/{name}/deployments/{id}/history/logs
Account endpoints need `Authorization: Bearer <API token>` (one of --token); asset
endpoints need `Authorization: Bearer <upload JWT>` (unexpired; code 8000013 otherwise).

Hashes: the manifest of a deployment is checked file by file: every hash must have been
uploaded, and BLAKE3(value_base64_text + extension)[0:32 hex] must equal it (BLAKE3 is
implemented below from the specification, in pure Python: Debian has no python3-blake3).
Uploads check the key shape (32 lowercase hex), base64 validity and contentType.

Per-token request budget: every /client/v4 request is counted against the API token it
acts for (asset calls count against the token that obtained the JWT), in a sliding window
of window_ms. A request over budget answers 429 with Retry-After (and blocks the token
for the rest of the window, like Cloudflare) and is recorded in /__stats
(budget_violations, max_in_window).

Deploy ids: the fake reads `deploy=<id>` from the deployment's commit_message (the
deployer writes "sentinel <op> deploy=<deploy id>") and counts deployments per deploy id.

Sites: every deployment is served on a listening port of its own (its `url`, so its
origin is its own, as <short_id>.<project>.pages.dev is); a preview deployment's alias
is a port per branch (the branch's newest successful deployment), a production
deployment's alias is the project's port (the canonical deployment: newest successful
production deployment, or the rollback target). All on 127.0.0.1. "/" serves
/index.html, "/x/" serves /x/index.html.

Control: GET /__control?key=value&... (reset=1 first restores defaults and forgets all):
  rate_limit_next=N retry_after=S   next N API requests answer 429 + Retry-After S
  error_next=N error_status=503     next N API requests answer that 5xx (enveloped)
  hang_next=N hang_ms=MS            next N API requests: wait MS, then close, unprocessed
  html_next=N                       next N API requests: 200 text/html, unprocessed
  fault_path=SUBSTR                 faults apply only to paths containing SUBSTR
  fault_method=GET|POST             ... and only to that method
  fail_deploys=N                    next N deployments fail in their deploy stage
  deploy_latency_ms=MS              queued -> initialize -> deploy -> success takes MS
  budget=N window_ms=MS             the per-token budget
  jwt_ttl_s=S                       lifetime of upload JWTs
GET /__stats: JSON counters (requests, by_token, budget_violations, max_in_window,
rate_limited, deployments, deployments_by_deploy_id, uploads, files_uploaded, ...).
The ready FILE is written once the API socket listens."""
import argparse
import base64
import binascii
import json
import re
import selectors
import socket
import struct
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# ---- BLAKE3 (hash mode, 32-byte output) from the specification ---------------------------

_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
       0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
_PERM = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
_CHUNK_START, _CHUNK_END, _PARENT, _ROOT = 1, 2, 4, 8
_M = 0xFFFFFFFF


def _g(s, a, b, c, d, x, y):
    s[a] = (s[a] + s[b] + x) & _M
    v = s[d] ^ s[a]
    s[d] = ((v >> 16) | (v << 16)) & _M
    s[c] = (s[c] + s[d]) & _M
    v = s[b] ^ s[c]
    s[b] = ((v >> 12) | (v << 20)) & _M
    s[a] = (s[a] + s[b] + y) & _M
    v = s[d] ^ s[a]
    s[d] = ((v >> 8) | (v << 24)) & _M
    s[c] = (s[c] + s[d]) & _M
    v = s[b] ^ s[c]
    s[b] = ((v >> 7) | (v << 25)) & _M


def _compress(cv, m, counter, block_len, flags):
    s = list(cv) + list(_IV[:4]) + [counter & _M, (counter >> 32) & _M, block_len, flags]
    m = list(m)
    for r in range(7):
        _g(s, 0, 4, 8, 12, m[0], m[1])
        _g(s, 1, 5, 9, 13, m[2], m[3])
        _g(s, 2, 6, 10, 14, m[4], m[5])
        _g(s, 3, 7, 11, 15, m[6], m[7])
        _g(s, 0, 5, 10, 15, m[8], m[9])
        _g(s, 1, 6, 11, 12, m[10], m[11])
        _g(s, 2, 7, 8, 13, m[12], m[13])
        _g(s, 3, 4, 9, 14, m[14], m[15])
        if r < 6:
            m = [m[i] for i in _PERM]
    return [s[i] ^ s[i + 8] for i in range(8)]


def _chunk_cv(chunk, index, is_root):
    cv = _IV
    blocks = [chunk[i:i + 64] for i in range(0, len(chunk), 64)] or [b""]
    for j, blk in enumerate(blocks):
        flags = (_CHUNK_START if j == 0 else 0) | (_CHUNK_END if j == len(blocks) - 1 else 0)
        if is_root and j == len(blocks) - 1:
            flags |= _ROOT
        cv = _compress(cv, struct.unpack("<16I", blk.ljust(64, b"\0")), index, len(blk), flags)
    return cv


def _subtree(data, first_chunk, is_root):
    n = max(1, (len(data) + 1023) // 1024)
    if n == 1:
        return _chunk_cv(data, first_chunk, is_root)
    left = 1 << ((n - 1).bit_length() - 1)  # largest power of two leaving bytes on the right
    lcv = _subtree(data[:left * 1024], first_chunk, False)
    rcv = _subtree(data[left * 1024:], first_chunk + left, False)
    return _compress(_IV, lcv + rcv, 0, 64, _PARENT | (_ROOT if is_root else 0))


def blake3_hex(data):
    return struct.pack("<8I", *_subtree(bytes(data), 0, True)).hex()


def asset_hash(b64_text, path):
    """wrangler's hash: BLAKE3(base64 text + extension without the dot)[0:32]."""
    name = path.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[1] if "." in name else ""
    return blake3_hex((b64_text + ext).encode())[:32]


# ---- state --------------------------------------------------------------------------------

DEFAULTS = {
    "rate_limit_next": 0, "retry_after": 1, "error_next": 0, "error_status": 503,
    "hang_next": 0, "hang_ms": 3000, "html_next": 0, "fault_path": "", "fault_method": "",
    "fail_deploys": 0, "deploy_latency_ms": 0, "budget": 1200, "window_ms": 300000,
    "jwt_ttl_s": 300,
}
HEX32 = re.compile(r"^[0-9a-f]{32}$")
SLUG_BAD = re.compile(r"[^a-z0-9-]+")

lock = threading.RLock()
ctl = {}
args = None
tokens = {}       # api token -> label
jwts = {}         # jwt -> (api token, exp)
assets = {}       # hash -> {"value": b64 text, "content_type": str}
deployments = []  # newest last
by_id = {}
canonical = [None]  # production deployment id that is live
hits = {}         # api token -> deque of request times (s)
blocked_until = {}
stats = {}
sites = {}        # port -> ("deployment", id) | ("branch", slug) | ("project", name)
site_sockets = {}  # key -> listening socket
selector = selectors.DefaultSelector()


def reset():
    ctl.clear()
    ctl.update(DEFAULTS)
    if args is not None:
        ctl["budget"] = args.budget
        ctl["window_ms"] = args.window_ms
        ctl["deploy_latency_ms"] = args.deploy_latency_ms
    jwts.clear()
    assets.clear()
    deployments.clear()
    by_id.clear()
    canonical[0] = None
    hits.clear()
    blocked_until.clear()
    stats.clear()
    stats.update({
        "requests": 0, "by_token": {}, "budget_violations": 0, "max_in_window": {},
        "rate_limited": 0, "auth_failures": 0, "bad_requests": 0, "faults": 0,
        "deployments": 0, "deployments_by_deploy_id": {}, "deployments_by_deploy_env": {},
        "check_missing": 0, "upload_requests": 0, "files_uploaded": 0, "upserts": 0,
        "rollbacks": 0, "upload_tokens": 0, "hash_mismatches": 0, "gets": 0,
        "site_requests": 0,
    })


def envelope(result=None, errors=None, success=None, info=None):
    e = {"success": (not errors) if success is None else success, "errors": errors or [],
         "messages": [], "result": result}
    if info is not None:
        e["result_info"] = info
    return e


def err(code, message):
    return [{"code": code, "message": message}]


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


# ---- sites --------------------------------------------------------------------------------

def site_port(key):
    """A listening socket for site @key (created once); returns its port."""
    if key in site_sockets:
        return site_sockets[key].getsockname()[1]
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    s.setblocking(False)
    site_sockets[key] = s
    port = s.getsockname()[1]
    sites[port] = key
    selector.register(s, selectors.EVENT_READ, key)
    return port


def site_loop():
    while True:
        for k, _ in selector.select(timeout=0.2):
            try:
                conn, addr = k.fileobj.accept()
            except OSError:
                continue
            conn.setblocking(True)
            threading.Thread(target=serve_site_conn, args=(conn, addr, k.data),
                             daemon=True).start()


def _stage_state(d):
    """(latest stage name, status, stages[]) of deployment @d now."""
    lat = ctl["deploy_latency_ms"] / 1000.0
    el = time.time() - d["created"]
    names = ["queued", "initialize", "deploy"]
    if lat <= 0 or el >= lat:
        cur, done = 2, True
    else:
        cur, done = min(2, int(el / (lat / 3.0))), False
    final = "failure" if d["fails"] else "success"
    stages = []
    for i, n in enumerate(names):
        if i < cur:
            st = "success"
        elif i == cur:
            st = final if done else "active"
        else:
            st = "idle"
        stages.append({"name": n, "status": st,
                       "started_on": iso(d["created"]) if i <= cur else None,
                       "ended_on": iso(d["created"]) if (i < cur or done) and i <= cur
                       else None})
    return names[cur], stages[cur]["status"], stages


def is_success(d):
    name, status, _ = _stage_state(d)
    return name == "deploy" and status == "success"


def live_deployment_for(key):
    kind, val = key
    with lock:
        if kind == "deployment":
            d = by_id.get(val)
            return d if d and is_success(d) else None
        if kind == "branch":
            for d in reversed(deployments):
                if d["slug"] == val and is_success(d):
                    return d
            return None
        cid = canonical[0]
        if cid is None:
            for d in reversed(deployments):
                if d["environment"] == "production" and is_success(d):
                    return d
            return None
        return by_id.get(cid)


class SiteHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *a):
        pass

    def do_GET(self):
        path = urlsplit(self.path).path or "/"
        with lock:
            stats["site_requests"] += 1
        d = live_deployment_for(self.server_key)
        body, ctype, status = b"no deployment here", "text/plain", 404
        if d is not None:
            cands = [path + "index.html"] if path.endswith("/") else [path, path + ".html",
                                                                      path + "/index.html"]
            for c in cands:
                h = d["manifest"].get(c)
                if h is not None:
                    with lock:
                        a = assets.get(h)
                    if a is not None:
                        body, ctype, status = base64.b64decode(a["value"]), a["content_type"], 200
                    break
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            try:
                self.wfile.write(body)
            except OSError:
                pass

    do_HEAD = do_GET


def serve_site_conn(conn, addr, key):
    class _Srv:
        server_key = key
    try:
        h = type("H", (SiteHandler,), {"server_key": key})
        h(conn, addr, _Srv())
    except Exception:  # noqa: BLE001 - a broken client must not kill the fake
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def deployment_view(d):
    name, status, stages = _stage_state(d)
    base = "http://127.0.0.1:%d" % site_port(("deployment", d["id"]))
    if d["environment"] == "production":
        aliases = ["http://127.0.0.1:%d" % site_port(("project", args.project))]
    else:
        aliases = ["http://127.0.0.1:%d" % site_port(("branch", d["slug"]))]
    return {
        "id": d["id"], "short_id": d["id"][:8], "project_id": "p-" + args.project,
        "project_name": args.project, "environment": d["environment"], "url": base,
        "aliases": aliases, "created_on": iso(d["created"]), "modified_on": iso(d["created"]),
        "is_skipped": False, "uses_functions": False,
        "latest_stage": {"name": name, "status": status,
                         "started_on": iso(d["created"]), "ended_on": None},
        "stages": stages,
        "deployment_trigger": {"type": "ad_hoc", "metadata": {
            "branch": d["branch"], "commit_hash": d["commit_hash"],
            "commit_message": d["commit_message"], "commit_dirty": False}},
        "build_config": {"build_command": None, "destination_dir": None, "root_dir": None},
        "source": None, "env_vars": {},
    }


def project_view():
    canon = None
    d = live_deployment_for(("project", args.project))
    if d is not None:
        canon = deployment_view(d)
    return {"id": "p-" + args.project, "name": args.project,
            "subdomain": args.project + ".pages.dev", "domains": [],
            "production_branch": args.production_branch, "created_on": iso(0),
            "canonical_deployment": canon,
            "latest_deployment": deployment_view(deployments[-1]) if deployments else None}


# ---- multipart ----------------------------------------------------------------------------

def parse_multipart(ctype, body):
    m = re.search(r'boundary="?([^";]+)"?', ctype or "")
    if not ctype or not ctype.startswith("multipart/form-data") or not m:
        return None
    delim = b"--" + m.group(1).encode()
    parts = body.split(delim)
    if len(parts) < 3 or not parts[-1].startswith(b"--"):
        return None
    fields = {}
    for p in parts[1:-1]:
        if not p.startswith(b"\r\n") or not p.endswith(b"\r\n"):
            return None
        p = p[2:-2]
        head, sep, value = p.partition(b"\r\n\r\n")
        if not sep:
            return None
        nm = re.search(rb'content-disposition:\s*form-data;\s*name="([^"]+)"', head, re.I)
        if not nm:
            return None
        fields[nm.group(1).decode()] = value.decode("utf-8", "replace")
    return fields


# ---- the API ------------------------------------------------------------------------------

class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):
        pass

    def _send(self, status, obj=None, headers=(), raw=None, ctype="application/json"):
        body = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    def do_PATCH(self):
        self._handle("PATCH")

    # -- control --
    def _control(self, url):
        q = parse_qs(url.query, keep_blank_values=True)
        with lock:
            if q.get("reset", ["0"])[0] == "1":
                reset()
            for k, v in q.items():
                if k in DEFAULTS:
                    ctl[k] = v[0] if isinstance(DEFAULTS[k], str) else int(v[0])
        self._send(200, raw=b"ok", ctype="text/plain")

    def _stats(self):
        with lock:
            s = json.loads(json.dumps(stats))
            s["deployments_list"] = [{"id": d["id"], "environment": d["environment"],
                                      "branch": d["branch"], "deploy_id": d["deploy_id"]}
                                     for d in deployments]
            s["canonical"] = canonical[0]
        self._send(200, s)

    # -- helpers --
    def _auth_token(self):
        a = self.headers.get("Authorization") or ""
        return a[7:] if a.startswith("Bearer ") else None

    def _fault(self, method, path):
        """An injected fault for this request, or None."""
        with lock:
            if ctl["fault_path"] and ctl["fault_path"] not in path:
                return None
            if ctl["fault_method"] and ctl["fault_method"] != method:
                return None
            for k in ("hang_next", "rate_limit_next", "error_next", "html_next"):
                if ctl[k] > 0:
                    ctl[k] -= 1
                    stats["faults"] += 1
                    return k
        return None

    def _count(self, api_token):
        """Counts a request against @api_token's budget; False if over (429 sent)."""
        with lock:
            now = time.time()  # under the lock: the log stays in arrival order
            label = tokens[api_token]
            stats["by_token"][label] = stats["by_token"].get(label, 0) + 1
            w = ctl["window_ms"] / 1000.0
            q = hits.setdefault(api_token, deque())
            while q and q[0] <= now - w:
                q.popleft()
            over = len(q) >= ctl["budget"] or blocked_until.get(api_token, 0) > now
            if over:
                stats["last_violation"] = {"token": label, "in_window": len(q),
                                           "oldest_age_ms": int((now - q[0]) * 1000) if q else 0,
                                           "blocked": blocked_until.get(api_token, 0) > now}
                stats["budget_violations"] += 1
                stats["rate_limited"] += 1
                if blocked_until.get(api_token, 0) <= now:
                    # Cloudflare blocks the rest of the window.
                    blocked_until[api_token] = q[0] + w if q else now + w
                wait = max(1, int(blocked_until[api_token] - now + 0.999))
            else:
                q.append(now)
                mx = stats["max_in_window"]
                mx[label] = max(mx.get(label, 0), len(q))
        if over:
            self._send(429, envelope(None, err(971, "Please wait and consider throttling your "
                                                    "request speed")),
                       [("Retry-After", str(wait)),
                        ("Ratelimit", '"default";r=0;t=%d' % wait),
                        ("Ratelimit-Policy", '"burst";q=%d;w=%d' % (
                            ctl["budget"], ctl["window_ms"] // 1000))])
            return False
        return True

    def _handle(self, method):
        url = urlsplit(self.path)
        path = url.path
        if path == "/__control":
            return self._control(url)
        if path == "/__stats":
            return self._stats()
        body = self._body()
        with lock:
            stats["requests"] += 1
        if not path.startswith("/client/v4/"):
            return self._send(404, envelope(None, err(7003, "Could not route to %s" % path)))
        rest = path[len("/client/v4"):]
        asset = rest.startswith("/pages/assets/")
        tok = self._auth_token()
        # Authentication first (an unauthenticated request counts against nothing).
        with lock:
            if asset:
                j = jwts.get(tok)
                if tok in tokens:
                    api = None
                    bad = (401, 8000013, "Authorization failed: an upload JWT is required")
                elif j is None:
                    api, bad = None, (401, 8000013, "Authorization failed")
                elif j[1] < time.time():
                    api, bad = None, (401, 8000013, "Authorization failed: the JWT expired")
                else:
                    api, bad = j[0], None
            else:
                api = tok if tok in tokens else None
                bad = None if api else (401, 10000, "Authentication error")
            if bad:
                stats["auth_failures"] += 1
        if bad:
            return self._send(bad[0], envelope(None, err(bad[1], bad[2])))
        if not self._count(api):
            return
        f = self._fault(method, rest)
        if f == "hang_next":
            time.sleep(ctl["hang_ms"] / 1000.0)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if f == "rate_limit_next":
            with lock:
                stats["rate_limited"] += 1
            ra = str(ctl["retry_after"])
            return self._send(429, envelope(None, err(971, "Please wait and consider "
                                                           "throttling your request speed")),
                              [("Retry-After", ra)])
        if f == "error_next":
            return self._send(ctl["error_status"],
                              envelope(None, err(8000000, "An unknown error occurred")))
        if f == "html_next":
            return self._send(200, raw=b"<html><body><h1>502 Bad gateway</h1></body></html>",
                              ctype="text/html")
        try:
            self._route(method, rest, url, body, api)
        except ValueError as e:
            with lock:
                stats["bad_requests"] += 1
            self._send(400, envelope(None, err(8000000 + 7, "bad request: %s" % e)))

    def _route(self, method, rest, url, body, api):
        acct = "/accounts/%s/pages/projects" % args.account
        proj = "%s/%s" % (acct, args.project)
        q = parse_qs(url.query)
        if rest.startswith("/pages/assets/"):
            if method != "POST":
                return self._send(405, envelope(None, err(10405, "Method not allowed")))
            return self._assets(rest[len("/pages/assets/"):], body)
        if not rest.startswith(acct + "/"):
            if rest.startswith("/accounts/"):
                return self._send(403, envelope(None, err(10000, "Authentication error")))
            return self._send(404, envelope(None, err(7003, "Could not route")))
        if not (rest == proj or rest.startswith(proj + "/")):
            return self._send(404, envelope(None, err(8000007, "Project not found")))
        sub = rest[len(proj):]
        if sub == "":
            if method != "GET":
                return self._send(405, envelope(None, err(10405, "Method not allowed")))
            with lock:
                stats["gets"] += 1
                return self._send(200, envelope(project_view()))
        if sub == "/upload-token":
            if method != "GET":
                return self._send(405, envelope(None, err(10405, "Method not allowed")))
            return self._upload_token(api)
        if sub == "/deployments":
            if method == "POST":
                return self._create(body)
            if method == "GET":
                return self._list(q)
            return self._send(405, envelope(None, err(10405, "Method not allowed")))
        m = re.match(r"^/deployments/([0-9a-f-]{36})(/rollback|/history/logs)?$", sub)
        if not m:
            return self._send(404, envelope(None, err(7003, "Could not route")))
        with lock:
            d = by_id.get(m.group(1))
        if d is None:
            return self._send(404, envelope(None, err(8000009, "Deployment not found")))
        what = m.group(2) or ""
        if what == "" and method == "GET":
            with lock:
                stats["gets"] += 1
                return self._send(200, envelope(deployment_view(d)))
        if what == "/rollback" and method == "POST":
            with lock:
                if d["environment"] != "production" or not is_success(d):
                    return self._send(400, envelope(None, err(
                        8000036, "Can only roll back to a successful production deployment")))
                canonical[0] = d["id"]
                stats["rollbacks"] += 1
                return self._send(200, envelope(deployment_view(d)))
        if what == "/history/logs" and method == "GET":
            lines = [{"ts": iso(d["created"]), "line": "Deploying your site"}]
            if d["fails"] and is_success(d) is False:
                lines.append({"ts": iso(d["created"]), "line": "Error: simulated deploy failure"})
            return self._send(200, envelope({"total": len(lines),
                                             "includes_container_logs": False, "data": lines}))
        return self._send(405, envelope(None, err(10405, "Method not allowed")))

    def _upload_token(self, api):
        exp = int(time.time()) + ctl["jwt_ttl_s"]
        hdr = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
        pl = base64.urlsafe_b64encode(json.dumps({
            "max_file_count_allowed": 20000, "exp": exp, "sub": args.project,
            "jti": uuid.uuid4().hex}).encode()).rstrip(b"=")
        jwt = (hdr + b"." + pl + b"." + base64.urlsafe_b64encode(
            uuid.uuid4().bytes).rstrip(b"=")).decode()
        with lock:
            jwts[jwt] = (api, exp)
            stats["upload_tokens"] += 1
        self._send(200, envelope({"jwt": jwt}))

    def _json(self, body):
        try:
            return json.loads(body.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError("body is not JSON")

    def _hash_list(self, body):
        j = self._json(body)
        if not isinstance(j, dict) or not isinstance(j.get("hashes"), list):
            raise ValueError("expected {\"hashes\": [...]}")
        for h in j["hashes"]:
            if not isinstance(h, str) or not HEX32.match(h):
                raise ValueError("hash %r is not 32 hex characters" % (h,))
        return j["hashes"]

    def _assets(self, what, body):
        if what == "check-missing":
            hs = self._hash_list(body)
            with lock:
                stats["check_missing"] += 1
                missing = [h for h in hs if h not in assets]
            return self._send(200, envelope(missing))
        if what == "upsert-hashes":
            self._hash_list(body)
            with lock:
                stats["upserts"] += 1
            return self._send(200, envelope(True))
        if what == "upload":
            j = self._json(body)
            if not isinstance(j, list) or not j:
                raise ValueError("expected a non-empty array")
            staged = {}
            for it in j:
                if not isinstance(it, dict) or set(it) - {"key", "value", "metadata", "base64"}:
                    raise ValueError("bad upload item")
                k, v, md = it.get("key"), it.get("value"), it.get("metadata")
                if not isinstance(k, str) or not HEX32.match(k):
                    raise ValueError("bad key")
                if it.get("base64") is not True or not isinstance(v, str):
                    raise ValueError("base64 must be true and value a string")
                try:
                    base64.b64decode(v, validate=True)
                except (binascii.Error, ValueError):
                    raise ValueError("value is not base64")
                if not isinstance(md, dict) or not isinstance(md.get("contentType"), str) \
                        or not md["contentType"]:
                    raise ValueError("metadata.contentType missing")
                staged[k] = {"value": v, "content_type": md["contentType"]}
            with lock:
                assets.update(staged)
                stats["upload_requests"] += 1
                stats["files_uploaded"] += len(staged)
            return self._send(200, envelope(None, success=True))
        return self._send(404, envelope(None, err(7003, "Could not route")))

    def _create(self, body):
        f = parse_multipart(self.headers.get("Content-Type"), body)
        if f is None:
            raise ValueError("expected multipart/form-data")
        if "manifest" not in f:
            raise ValueError("manifest is required for a Direct Upload project")
        try:
            manifest = json.loads(f["manifest"])
        except json.JSONDecodeError:
            raise ValueError("manifest is not JSON")
        if not isinstance(manifest, dict) or len(manifest) > 20000:
            raise ValueError("manifest must be an object of at most 20000 entries")
        with lock:
            for p, h in manifest.items():
                if not p.startswith("/") or not isinstance(h, str) or not HEX32.match(h):
                    raise ValueError("bad manifest entry %r" % p)
                a = assets.get(h)
                if a is None:
                    return self._send(400, envelope(None, err(
                        8000096, "Hash %s of %s was never uploaded" % (h, p))))
                ok = a.setdefault("verified", {}).get(p)
            if ok is None:
                pass
        # Hash verification outside the lock (pure python BLAKE3 is slow), cached per path.
        for p, h in manifest.items():
            with lock:
                a = assets[h]
                known = a["verified"].get(p)
            if known is None:
                known = asset_hash(a["value"], p) == h
                with lock:
                    a["verified"][p] = known
            if not known:
                with lock:
                    stats["hash_mismatches"] += 1
                return self._send(400, envelope(None, err(
                    8000096, "Hash of %s does not match its content" % p)))
        branch = f.get("branch") or args.production_branch
        msg = f.get("commit_message", "")
        m = re.search(r"deploy=([A-Za-z0-9._-]+)", msg)
        did = m.group(1) if m else ""
        env = "production" if branch == args.production_branch else "preview"
        with lock:
            fails = ctl["fail_deploys"] > 0
            if fails:
                ctl["fail_deploys"] -= 1
            d = {"id": str(uuid.uuid4()), "created": time.time(), "manifest": manifest,
                 "branch": branch, "slug": SLUG_BAD.sub("-", branch.lower()).strip("-")[:28],
                 "environment": env, "commit_hash": f.get("commit_hash", ""),
                 "commit_message": msg, "deploy_id": did, "fails": fails}
            deployments.append(d)
            by_id[d["id"]] = d
            stats["deployments"] += 1
            byd = stats["deployments_by_deploy_id"]
            byd[did] = byd.get(did, 0) + 1
            bde = stats["deployments_by_deploy_env"]
            bde[did + "/" + env] = bde.get(did + "/" + env, 0) + 1
            view = deployment_view(d)
        self._send(200, envelope(view))

    def _list(self, q):
        env = (q.get("env") or [""])[0]
        page = int((q.get("page") or ["1"])[0])
        per = int((q.get("per_page") or ["25"])[0])
        if page < 1 or per < 1 or per > 100:
            raise ValueError("bad page or per_page")
        if env not in ("", "production", "preview"):
            raise ValueError("env must be production or preview")
        with lock:
            stats["gets"] += 1
            ds = [d for d in reversed(deployments) if not env or d["environment"] == env]
            total = len(ds)
            view = [deployment_view(d) for d in ds[(page - 1) * per:page * per]]
        info = {"page": page, "per_page": per, "count": len(view), "total_count": total,
                "total_pages": (total + per - 1) // per}
        self._send(200, envelope(view, info=info))


def self_test(path):
    """Checks blake3_hex against the official vectors (hash mode)."""
    with open(path) as fh:
        vec = json.load(fh)
    for c in vec["cases"]:
        n = c["input_len"]
        data = bytes(i % 251 for i in range(n))
        if blake3_hex(data) != c["hash"][:64]:
            print("BLAKE3 mismatch at input_len %d" % n)
            return 1
    print("BLAKE3 ok: %d vectors" % len(vec["cases"]))
    return 0


def main():
    global args
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int)
    ap.add_argument("--ready")
    ap.add_argument("--token", action="append", default=[])
    ap.add_argument("--account", default="acct0123")
    ap.add_argument("--project", default="site")
    ap.add_argument("--production-branch", default="main")
    ap.add_argument("--budget", type=int, default=1200)
    ap.add_argument("--window-ms", type=int, default=300000)
    ap.add_argument("--deploy-latency-ms", type=int, default=0)
    ap.add_argument("--self-test", metavar="VECTORS_JSON")
    args = ap.parse_args()
    if args.self_test:
        return self_test(args.self_test)
    if not args.port or not args.ready or not args.token:
        ap.error("--port, --ready and --token are required")
    for i, t in enumerate(args.token):
        tokens[t] = "t%d" % i
    reset()
    threading.Thread(target=site_loop, daemon=True).start()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer(("127.0.0.1", args.port), ApiHandler)
    with open(args.ready, "w") as fh:
        fh.write("%d\n" % args.port)
    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    import signal
    import sys
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.exit(main())
