#!/usr/bin/env python3
"""A fake of Google's OAuth2 token endpoint, Firebase Hosting REST v1beta1 and Cloud
Functions v2 that enforces ../shared/contracts/firebase.md and serves the released sites.

Usage: fake_firebase.py --port P --ready FILE --public-key PEM [--project P] [--site S]

Token endpoint  POST /token (form: grant_type=jwt-bearer, assertion=JWT). The JWT's RS256
                signature is VERIFIED with --public-key (python3-cryptography), and its
                claims checked: iss, scope (cloud-platform or firebase), aud = this URL,
                iat within 300 s of now, 0 < exp - iat <= 3600. Tokens: "fake-at-N".
Hosting         /v1beta1/... (Bearer token from /token required, else 401):
                GET projects/P/sites/S; POST projects/-/sites/S/versions (labels:
                lowercase keys/values); GET sites/S/versions/V; POST
                sites/S/versions/V:populateFiles {files:{"/path": sha256hex}};
                POST /upload/sites/S/versions/V/files/<sha256> (Bearer; the body must be
                gzip whose sha256 is <sha256>); PATCH projects/-/sites/S/versions/V
                ?updateMask=status[,config] {status: FINALIZED} (all required files
                uploaded, CREATED -> FINALIZED only); POST projects/-/sites/S/channels
                ?channelId=C {ttl}; GET .../channels/C; POST .../channels/C/releases
                ?versionName=V; GET .../channels/C/releases (newest first).
                Both sites/S/... and projects/-/sites/S/... are accepted.
Functions v2    /v2/projects/P/locations/R/functions:generateUploadUrl -> a signed URL on
                this server (GoogleAccessId=...); PUT /gcs/<object>?GoogleAccessId=..
                (an Authorization header is REJECTED 400; Content-Type application/zip;
                the body must be a zip); GET/POST(?functionId=)/PATCH(?updateMask=)
                functions/F -> Operation; GET /v2/projects/P/locations/R/operations/O:
                done after `op_polls` polls; functions named in `fail_functions` fail.
Served sites    GET /__site/S/live/<path> and /__site/S/channel/C/<path> serve the files of
                the version released last on that channel (gunzipped), "/" -> index.html.
                The site's defaultUrl and each channel's url point here, each on an
                origin of its own (a port per channel, as SITE--CHANNEL.web.app is one):
                on that port every path outside /__ is the channel's, so
                <origin>/.well-known/sentinel-release.json is the channel's identity.
Deploy ids      reach the fake as the label `sentinel-deploy` of versions and functions;
                /__stats counts versions, releases and function deployments per deploy id.
Errors          Google's {"error": {"code", "message", "status"}}; the token endpoint's
                {"error", "error_description"}.
Control         GET /__control?key=value&... (reset=1 restores defaults first):
                fail_next=N fail_status=429|503|500 retry_after=S fault_match=SUBSTR
                (the next N requests whose path contains SUBSTR, default "/v", get the
                error), hang_next=N hang_ms=MS (they answer only after MS), html_next=N
                (they answer 200 with an HTML page), upload_delay_ms=MS (every hosting
                upload and zip PUT), op_polls=N (default 2), fail_functions=a,b,
                token_expires_in=S (default 3599).
                GET /__stats answers the counters as JSON; GET /__versions the versions
                (status, labels, config, files path -> hash); GET /__functions the functions
                (state, labels, sha256 of the deployed source zip)."""
import argparse
import base64
import fnmatch
import gzip
import hashlib
import io
import json
import re
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

DEFAULTS = {
    "fail_next": 0, "fail_status": 503, "retry_after": "", "fault_match": "/v",
    "hang_next": 0, "hang_ms": 0, "html_next": 0, "upload_delay_ms": 0, "op_polls": 2,
    "fail_functions": "", "token_expires_in": 3599,
}
LABEL_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
CHANNEL_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "NOT_FOUND", 409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED",
                500: "INTERNAL", 503: "UNAVAILABLE"}

lock = threading.Lock()
ctl = dict(DEFAULTS)
args = None
public_key = None
tokens = set()
contents = {}       # sha256 -> gzipped bytes uploaded
versions = {}       # version name -> {status, files{path: hash}, labels, site}
channels = {}       # channel id -> {name, url, releases[]}
objects = {}        # GCS object name -> zip bytes
functions = {}      # function id -> Function dict (+ "_source_sha256")
operations = {}     # operation name -> {polls, function, fails}
stats = {"requests": 0, "token_requests": 0, "tokens_issued": 0, "token_refused": 0,
         "faults": 0, "uploads": 0, "upload_rejected": 0, "zip_uploads": 0,
         "zip_auth_rejected": 0, "off_contract": 0, "versions_by_deploy": {},
         "releases_by_deploy": {}, "function_deploys_by_deploy": {}, "op_polls": 0,
         "site_requests": 0, "last_error": ""}
counter = [0]


def next_id():
    counter[0] += 1
    return "%08x" % (counter[0] * 2654435761 % (1 << 32))


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Refused(Exception):
    def __init__(self, code, message, status=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_NAMES.get(code, "UNKNOWN")


origins = {}        # "SITE/live" | "SITE/channel/C" -> its own server
origins_lock = threading.Lock()


def origin_url(site, kind):
    """The URL of a channel (kind "live" or "channel/C") on an origin of its own: a
    listener on a free port that serves every path outside /__ from that channel."""
    key = "%s/%s" % (site, kind)
    with origins_lock:
        srv = origins.get(key)
        if srv is None:
            prefix = "/__site/" + key

            class ChannelHandler(Handler):
                def _handle(self, method):
                    if not self.path.startswith("/__"):
                        self.path = prefix + self.path
                    return Handler._handle(self, method)

            srv = ThreadingHTTPServer(("127.0.0.1", 0), ChannelHandler)
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            origins[key] = srv
    return "http://127.0.0.1:%d/__site/%s" % (srv.server_address[1], key)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):  # quiet
        pass

    def base(self):
        return "http://127.0.0.1:%d" % args.port

    def _send(self, status, body, ctype="application/json", headers=()):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _error(self, e, headers=()):
        with lock:
            stats["last_error"] = "%d %s" % (e.code, e.message)
            if e.code == 400:
                stats["off_contract"] += 1
        self._send(e.code, {"error": {"code": e.code, "message": e.message,
                                      "status": e.status}}, headers=headers)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _json(self, raw):
        if not raw:
            return {}
        try:
            v = json.loads(raw)
        except ValueError:
            raise Refused(400, "Invalid JSON payload received.")
        if not isinstance(v, dict):
            raise Refused(400, "Invalid JSON payload: expected an object")
        return v

    def _auth(self):
        h = self.headers.get("Authorization") or ""
        if not h.startswith("Bearer ") or h[7:] not in tokens:
            raise Refused(401, "Request had invalid authentication credentials.")

    # ---- dispatch -------------------------------------------------------------------

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    def _handle(self, method):
        u = urlsplit(self.path)
        path, q = u.path, parse_qs(u.query)
        raw = self._body()
        if path == "/__control":
            return self._control(q)
        if path == "/__stats":
            with lock:
                return self._send(200, stats)
        if path == "/__versions":
            with lock:
                return self._send(200, {n: {"status": v["status"], "labels": v["labels"],
                                            "files": v["files"], "config": v["config"]}
                                        for n, v in versions.items()})
        if path == "/__functions":
            with lock:
                return self._send(200, {k: {"state": f["state"], "labels": f.get("labels", {}),
                                            "source_sha256": f["_source_sha256"]}
                                        for k, f in functions.items()})
        if path.startswith("/__site/"):
            return self._serve_site(path)
        with lock:
            stats["requests"] += 1
            fault = None
            if ctl["fault_match"] in path:
                if ctl["hang_next"] > 0:
                    ctl["hang_next"] -= 1
                    fault = ("hang", ctl["hang_ms"])
                elif ctl["fail_next"] > 0:
                    ctl["fail_next"] -= 1
                    fault = ("fail", ctl["fail_status"])
                elif ctl["html_next"] > 0:
                    ctl["html_next"] -= 1
                    fault = ("html", 0)
            if fault:
                stats["faults"] += 1
        if fault and fault[0] == "hang":
            time.sleep(fault[1] / 1000.0)
        elif fault and fault[0] == "fail":
            headers = [("Retry-After", str(ctl["retry_after"]))] if ctl["retry_after"] != "" else []
            return self._error(Refused(fault[1], "fault injected"), headers)
        elif fault and fault[0] == "html":
            return self._send(200, "<html><body>Service temporarily unavailable</body></html>",
                              "text/html")
        try:
            if path == "/token":
                return self._token(method, raw)
            if path.startswith("/upload/"):
                return self._upload(method, path, raw)
            if path.startswith("/gcs/"):
                return self._gcs_put(method, path, q, raw)
            if path.startswith("/v1beta1/"):
                self._auth()
                return self._hosting(method, path[len("/v1beta1/"):], q, raw)
            if path.startswith("/v2/"):
                self._auth()
                return self._functions(method, path[len("/v2/"):], q, raw)
            raise Refused(404, "no such path %s" % path)
        except Refused as e:
            return self._error(e)

    def _control(self, q):
        with lock:
            if q.get("reset", ["0"])[0] == "1":
                ctl.clear()
                ctl.update(DEFAULTS)
            for k, v in q.items():
                if k in DEFAULTS:
                    ctl[k] = v[0] if isinstance(DEFAULTS[k], str) else int(v[0])
        self._send(200, {"ok": True})

    # ---- OAuth2 ---------------------------------------------------------------------

    def _token(self, method, raw):
        with lock:
            stats["token_requests"] += 1
        if method != "POST":
            raise Refused(405, "POST only")
        if not (self.headers.get("Content-Type") or "").startswith(
                "application/x-www-form-urlencoded"):
            return self._oauth_err(400, "invalid_request", "form body required")
        form = parse_qs(raw.decode("ascii", "replace"))
        if form.get("grant_type", [""])[0] != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._oauth_err(400, "unsupported_grant_type", "jwt-bearer only")
        jwt = form.get("assertion", [""])[0]
        parts = jwt.split(".")
        if len(parts) != 3:
            return self._oauth_err(400, "invalid_grant", "malformed assertion")
        try:
            header = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            sig = b64url_decode(parts[2])
        except ValueError:
            return self._oauth_err(400, "invalid_grant", "undecodable assertion")
        if header.get("alg") != "RS256" or header.get("typ", "JWT") != "JWT":
            return self._oauth_err(400, "invalid_grant", "alg must be RS256")
        try:
            public_key.verify(sig, (parts[0] + "." + parts[1]).encode(), padding.PKCS1v15(),
                              hashes.SHA256())
        except InvalidSignature:
            return self._oauth_err(400, "invalid_grant", "Invalid JWT Signature.")
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        scope = claims.get("scope", "")
        if (not isinstance(claims.get("iss"), str) or "@" not in claims["iss"]
                or claims.get("aud") != self.base() + "/token"
                or not isinstance(iat, int) or not isinstance(exp, int)
                or abs(iat - now) > 300 or exp <= now or not 0 < exp - iat <= 3600
                or not ("auth/cloud-platform" in scope or "auth/firebase" in scope)):
            return self._oauth_err(400, "invalid_grant", "Invalid JWT: claims")
        with lock:
            stats["tokens_issued"] += 1
            tok = "fake-at-%d" % stats["tokens_issued"]
            tokens.add(tok)
            expires = ctl["token_expires_in"]
        self._send(200, {"access_token": tok, "expires_in": expires, "token_type": "Bearer"})

    def _oauth_err(self, code, err, desc):
        with lock:
            stats["token_refused"] += 1
        self._send(code, {"error": err, "error_description": desc})

    # ---- Hosting --------------------------------------------------------------------

    def _site_path(self, p):
        """Strips projects/-/ or projects/P/ so both resource forms work."""
        m = re.match(r"^projects/([^/]+)/(sites/.*)$", p)
        if m:
            if m.group(1) not in ("-", args.project):
                raise Refused(403, "project %s not allowed" % m.group(1))
            return m.group(2)
        return p

    def _version(self, name):
        v = versions.get(name)
        if not v:
            raise Refused(404, "Requested entity was not found.")
        return v

    def _hosting(self, method, p, q, raw):
        p = self._site_path(p)
        m = re.match(r"^sites/([^/:]+)(.*)$", p)
        if not m or m.group(1) != args.site:
            raise Refused(404, "Requested entity was not found.")
        site, rest = m.group(1), m.group(2)
        with lock:
            if rest == "" and method == "GET":
                return self._send(200, {"name": "projects/%s/sites/%s" % (args.project, site),
                                        "defaultUrl": origin_url(site, "live"),
                                        "appId": "1:0:web:fake", "type": "DEFAULT_SITE"})
            if rest == "/versions" and method == "POST":
                body = self._json(raw)
                labels = body.get("labels") or {}
                for k, v in labels.items():
                    if not LABEL_RE.match(k) or not k or not isinstance(v, str) or not LABEL_RE.match(v):
                        raise Refused(400, "invalid label %r" % k)
                if body.get("status", "CREATED") != "CREATED":
                    raise Refused(400, "a new version must be CREATED")
                name = "sites/%s/versions/%s" % (site, next_id())
                versions[name] = {"name": name, "status": "CREATED", "files": {},
                                  "labels": labels, "config": body.get("config") or {},
                                  "createTime": now_rfc3339()}
                dep = labels.get("sentinel-deploy")
                if dep:
                    d = stats["versions_by_deploy"]
                    d[dep] = d.get(dep, 0) + 1
                return self._send(200, self._vview(versions[name]))
            m2 = re.match(r"^/versions/([^/:]+)(:populateFiles)?$", rest)
            if m2:
                name = "sites/%s/versions/%s" % (site, m2.group(1))
                v = self._version(name)
                if m2.group(2) and method == "POST":
                    if v["status"] != "CREATED":
                        raise Refused(400, "version is not CREATED", "FAILED_PRECONDITION")
                    files = self._json(raw).get("files")
                    if not isinstance(files, dict) or len(files) > 1000:
                        raise Refused(400, "files: a map of at most 1000 paths")
                    for path, h in files.items():
                        if not path.startswith("/") or not isinstance(h, str) or not HEX64.match(h):
                            raise Refused(400, "bad file entry %r" % path)
                        v["files"][path] = h
                    need = sorted({h for h in files.values() if h not in contents})
                    body = {"uploadUrl": "%s/upload/%s/files" % (self.base(), name)}
                    if need:
                        body["uploadRequiredHashes"] = need
                    return self._send(200, body)
                if method == "GET" and not m2.group(2):
                    return self._send(200, self._vview(v))
                if method == "PATCH" and not m2.group(2):
                    mask = (q.get("updateMask") or [""])[0].split(",")
                    body = self._json(raw)
                    if "status" not in mask or body.get("status") != "FINALIZED":
                        raise Refused(400, "updateMask must name status, status FINALIZED")
                    if v["status"] != "CREATED":
                        raise Refused(400, "version is %s, not CREATED" % v["status"],
                                      "FAILED_PRECONDITION")
                    missing = [p2 for p2, h in v["files"].items() if h not in contents]
                    if missing:
                        raise Refused(400, "files not uploaded: %s" % missing[0],
                                      "FAILED_PRECONDITION")
                    if "config" in mask:
                        self._check_config(body.get("config") or {})
                    v["status"] = "FINALIZED"
                    if "config" in mask:
                        v["config"] = body.get("config") or {}
                    return self._send(200, self._vview(v))
            if rest == "/channels" and method == "POST":
                cid = (q.get("channelId") or [""])[0]
                if not CHANNEL_RE.match(cid) or cid == "live":
                    raise Refused(400, "invalid channelId %r" % cid)
                body = self._json(raw)
                ttl = body.get("ttl", "604800s")
                if not isinstance(ttl, str) or not re.match(r"^[0-9]+s$", ttl):
                    raise Refused(400, "ttl must be a duration string")
                if cid in channels:
                    raise Refused(409, "channel %s already exists" % cid)
                channels[cid] = self._new_channel(site, cid)
                return self._send(200, self._cview(channels[cid]))
            m3 = re.match(r"^/channels/([^/]+)(/releases)?$", rest)
            if m3:
                cid = m3.group(1)
                if cid == "live" and "live" not in channels:
                    channels["live"] = self._new_channel(site, "live")
                ch = channels.get(cid)
                if not ch:
                    raise Refused(404, "channel %s not found" % cid)
                if not m3.group(2) and method == "GET":
                    return self._send(200, self._cview(ch))
                if m3.group(2) and method == "GET":
                    size = int((q.get("pageSize") or ["100"])[0])
                    rels = list(reversed(ch["releases"]))[:max(1, min(size, 100))]
                    return self._send(200, {"releases": rels})
                if m3.group(2) and method == "POST":
                    vname = (q.get("versionName") or [""])[0]
                    v = self._version(vname)
                    if v["status"] != "FINALIZED":
                        raise Refused(400, "version %s is not FINALIZED" % vname,
                                      "FAILED_PRECONDITION")
                    msg = self._json(raw).get("message", "")
                    if len(msg) > 512:
                        raise Refused(400, "message over 512 characters")
                    rel = {"name": "sites/%s/channels/%s/releases/%s" % (site, cid, next_id()),
                           "version": self._vview(v), "type": "DEPLOY",
                           "releaseTime": now_rfc3339(), "message": msg,
                           "releaseUser": {"email": "fake@example.com"}}
                    ch["releases"].append(rel)
                    dep = v["labels"].get("sentinel-deploy")
                    if dep:
                        key = "%s/%s" % (dep, cid if cid == "live" else "preview")
                        d = stats["releases_by_deploy"]
                        d[key] = d.get(key, 0) + 1
                    return self._send(200, rel)
        raise Refused(404, "Requested entity was not found.")

    def _check_config(self, cfg):
        """ServingConfig: known keys, one pattern per rule, one target per rewrite."""
        if not isinstance(cfg, dict):
            raise Refused(400, "config must be an object")
        known = {"headers", "redirects", "rewrites", "cleanUrls", "trailingSlashBehavior",
                 "i18n", "appAssociation"}
        for k in cfg:
            if k not in known:
                raise Refused(400, "Invalid JSON payload received. Unknown name \"%s\" at 'config'" % k)
        for kind in ("headers", "redirects", "rewrites"):
            rules = cfg.get(kind, [])
            if not isinstance(rules, list):
                raise Refused(400, "config.%s must be a list" % kind)
            for r in rules:
                if not isinstance(r, dict) or (("glob" in r) == ("regex" in r)):
                    raise Refused(400, "config.%s: each rule needs exactly one of glob, regex" % kind)
                if kind == "headers" and (not isinstance(r.get("headers"), dict) or not all(
                        isinstance(x, str) for x in r["headers"].values())):
                    raise Refused(400, "config.headers: headers must be a map of strings")
                if kind == "redirects" and (r.get("statusCode") not in (301, 302)
                                            or not isinstance(r.get("location"), str)):
                    raise Refused(400, "config.redirects: statusCode 301/302 and location")
                if kind == "rewrites" and sum(k in r for k in ("path", "function", "run",
                                                               "dynamicLinks")) != 1:
                    raise Refused(400, "config.rewrites: exactly one of path, function, run")
        if cfg.get("trailingSlashBehavior", "ADD") not in ("ADD", "REMOVE"):
            raise Refused(400, "config.trailingSlashBehavior must be ADD or REMOVE")
        if not isinstance(cfg.get("cleanUrls", False), bool):
            raise Refused(400, "config.cleanUrls must be a boolean")

    def _new_channel(self, site, cid):
        url = origin_url(site, "live" if cid == "live" else "channel/" + cid)
        return {"name": "sites/%s/channels/%s" % (site, cid), "url": url, "releases": [],
                "createTime": now_rfc3339(), "retainedReleaseCount": 10}

    def _cview(self, ch):
        out = {k: v for k, v in ch.items() if k != "releases"}
        if ch["releases"]:
            out["release"] = ch["releases"][-1]
        return out

    def _vview(self, v):
        return {"name": v["name"], "status": v["status"], "labels": v["labels"],
                "config": v["config"], "createTime": v["createTime"],
                "fileCount": str(len(v["files"]))}

    def _upload(self, method, path, raw):
        m = re.match(r"^/upload/(sites/[^/]+/versions/[^/]+)/files/([0-9a-f]{64})$", path)
        if method != "POST" or not m:
            raise Refused(404, "no such upload path")
        self._auth()
        delay = ctl["upload_delay_ms"]
        if delay:
            time.sleep(delay / 1000.0)
        with lock:
            v = self._version(m.group(1))
            h = m.group(2)
            ok = hashlib.sha256(raw).hexdigest() == h
            if ok:
                try:
                    gzip.decompress(raw)
                except (OSError, EOFError):
                    ok = False
            if not ok or h not in v["files"].values():
                stats["upload_rejected"] += 1
                raise Refused(400, "uploaded bytes do not hash (sha256 of gzip) to %s" % h)
            contents[h] = raw
            stats["uploads"] += 1
        self._send(200, "", "text/plain")

    def _serve_site(self, path):
        m = re.match(r"^/__site/([^/]+)/(live|channel/([^/]+))(/.*)?$", path)
        with lock:
            stats["site_requests"] += 1
            if not m or m.group(1) != args.site:
                return self._send(404, "no such site", "text/plain")
            cid = m.group(3) or "live"
            ch = channels.get(cid)
            if not ch or not ch["releases"]:
                return self._send(404, "Site Not Found", "text/html")
            v = versions[ch["releases"][-1]["version"]["name"]]
            cfg = v["config"] or {}
            fpath = unquote(m.group(4) or "/")
            for r in cfg.get("redirects", []):
                if self._rule_matches(r, fpath):
                    return self._send(r["statusCode"], "", "text/plain",
                                      [("Location", r["location"])])
            if fpath.endswith("/"):
                fpath += "index.html"
            h = v["files"].get(fpath)
            if not h and cfg.get("cleanUrls"):
                h = v["files"].get(fpath + ".html")
            if not h:
                for r in cfg.get("rewrites", []):
                    if "path" in r and self._rule_matches(r, fpath):
                        h = v["files"].get(r["path"])
                        break
            if not h or h not in contents:
                return self._send(404, "Page Not Found", "text/html")
            body = gzip.decompress(contents[h])
            extra = [("Cache-Control", "no-store")]
            for r in cfg.get("headers", []):
                if self._rule_matches(r, fpath):
                    extra += list(r["headers"].items())
        ctype = "application/json" if fpath.endswith(".json") else "text/html"
        self._send(200, body, ctype, extra)

    @staticmethod
    def _rule_matches(rule, path):
        if "regex" in rule:
            return re.fullmatch(rule["regex"], path) is not None
        glob = rule["glob"]
        return fnmatch.fnmatchcase(path, glob.replace("**", "*")) or (
            glob.startswith("**") and fnmatch.fnmatchcase(path, glob[2:].replace("**", "*")))

    # ---- Functions v2 -----------------------------------------------------------------

    def _functions(self, method, p, q, raw):
        m = re.match(r"^projects/([^/]+)/locations/([^/]+)/(.*)$", p)
        if not m or m.group(1) != args.project:
            raise Refused(404, "Requested entity was not found.")
        region, rest = m.group(2), m.group(3)
        prefix = "projects/%s/locations/%s" % (args.project, region)
        with lock:
            if rest == "functions:generateUploadUrl" and method == "POST":
                obj = "src-%s.zip" % next_id()
                return self._send(200, {
                    "uploadUrl": "%s/gcs/%s?GoogleAccessId=fake%%40example.com&Expires=%d&Signature=abc"
                                 % (self.base(), obj, int(time.time()) + 3600),
                    "storageSource": {"bucket": "gcf-v2-uploads-fake", "object": obj}})
            m2 = re.match(r"^operations/([^/]+)$", rest)
            if m2 and method == "GET":
                name = "%s/operations/%s" % (prefix, m2.group(1))
                op = operations.get(name)
                if not op:
                    raise Refused(404, "operation not found")
                op["polls"] += 1
                stats["op_polls"] += 1
                body = {"name": name, "done": False,
                        "metadata": {"@type": "type.googleapis.com/google.cloud.functions.v2.OperationMetadata"}}
                if op["polls"] >= ctl["op_polls"]:
                    body["done"] = True
                    fn = functions[op["function"]]
                    if op["fails"]:
                        fn["state"] = "FAILED"
                        body["error"] = {"code": 3, "message": "Build failed: function %s did not start"
                                         % op["function"]}
                    else:
                        fn["state"] = "ACTIVE"
                        body["response"] = {k: v for k, v in fn.items() if not k.startswith("_")}
                return self._send(200, body)
            if rest == "functions" and method == "POST":
                fid = (q.get("functionId") or [""])[0]
                if not re.match(r"^[a-z][a-z0-9-]{0,62}$", fid):
                    raise Refused(400, "invalid functionId %r" % fid)
                if fid in functions:
                    raise Refused(409, "function %s already exists" % fid)
                fn = self._check_function(self._json(raw), prefix, fid)
                functions[fid] = fn
                return self._send(200, self._start_op(prefix, fid))
            m3 = re.match(r"^functions/([^/:]+)$", rest)
            if m3:
                fid = m3.group(1)
                if fid not in functions:
                    raise Refused(404, "Resource '%s/functions/%s' was not found" % (prefix, fid))
                if method == "GET":
                    return self._send(200, {k: v for k, v in functions[fid].items()
                                            if not k.startswith("_")})
                if method == "PATCH":
                    mask = (q.get("updateMask") or [""])[0]
                    if not mask:
                        raise Refused(400, "updateMask required")
                    body = self._json(raw)
                    merged = json.loads(json.dumps({k: v for k, v in functions[fid].items()
                                                    if not k.startswith("_")}))
                    for path in mask.split(","):
                        keys = path.strip().split(".")
                        if not all(keys) or keys[0] not in ("buildConfig", "serviceConfig",
                                                            "labels", "description",
                                                            "eventTrigger"):
                            raise Refused(400, "invalid updateMask path %r" % path)
                        src, dst = body, merged
                        for k in keys[:-1]:
                            src = src.get(k) if isinstance(src, dict) else None
                            dst = dst.setdefault(k, {})
                        if isinstance(src, dict) and keys[-1] in src:
                            dst[keys[-1]] = src[keys[-1]]
                        else:
                            dst.pop(keys[-1], None)
                    fn = self._check_function(merged, prefix, fid)
                    functions[fid] = fn
                    return self._send(200, self._start_op(prefix, fid))
        raise Refused(404, "Requested entity was not found.")

    def _check_function(self, body, prefix, fid):
        name = "%s/functions/%s" % (prefix, fid)
        if body.get("name") not in (None, name):
            raise Refused(400, "name must be %s" % name)
        bc = body.get("buildConfig") or {}
        src = ((bc.get("source") or {}).get("storageSource") or {})
        if not bc.get("runtime") or not bc.get("entryPoint"):
            raise Refused(400, "buildConfig.runtime and entryPoint are required")
        obj = src.get("object")
        if src.get("bucket") != "gcf-v2-uploads-fake" or obj not in objects:
            raise Refused(400, "buildConfig.source.storageSource names no uploaded object")
        labels = body.get("labels") or {}
        for k, v in labels.items():
            if not k or not LABEL_RE.match(k) or not isinstance(v, str) or not LABEL_RE.match(v):
                raise Refused(400, "invalid label %r" % k)
        dep = labels.get("sentinel-deploy")
        if dep:
            d = stats["function_deploys_by_deploy"]
            d[dep] = d.get(dep, 0) + 1
        fn = dict(body)
        fn.update({"name": name, "state": "DEPLOYING", "environment": "GEN_2",
                   "updateTime": now_rfc3339(),
                   "url": "%s/__fn/%s" % (self.base(), fid),
                   "_source_sha256": hashlib.sha256(objects[obj]).hexdigest()})
        return fn

    def _start_op(self, prefix, fid):
        name = "%s/operations/op-%s" % (prefix, next_id())
        fails = fid in [x for x in ctl["fail_functions"].split(",") if x]
        operations[name] = {"polls": 0, "function": fid, "fails": fails}
        return {"name": name, "done": False}

    def _gcs_put(self, method, path, q, raw):
        obj = path[len("/gcs/"):]
        if method != "PUT" or "GoogleAccessId" not in q or "Signature" not in q:
            raise Refused(403, "SignatureDoesNotMatch")
        if self.headers.get("Authorization"):
            with lock:
                stats["zip_auth_rejected"] += 1
            raise Refused(400, "a signed URL upload must not carry an Authorization header")
        if (self.headers.get("Content-Type") or "") != "application/zip":
            raise Refused(400, "Content-Type must be application/zip")
        delay = ctl["upload_delay_ms"]
        if delay:
            time.sleep(delay / 1000.0)
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as z:
                if z.testzip() is not None or not z.namelist():
                    raise zipfile.BadZipFile("bad member")
        except zipfile.BadZipFile:
            raise Refused(400, "the upload is not a valid zip")
        with lock:
            objects[obj] = raw
            stats["zip_uploads"] += 1
        self._send(200, "", "text/plain", [("x-goog-generation", "1")])


def main():
    global args, public_key
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--public-key", required=True)
    ap.add_argument("--project", default="demo-project")
    ap.add_argument("--site", default="demo-site")
    args = ap.parse_args()
    with open(args.public_key, "rb") as f:
        public_key = serialization.load_pem_public_key(f.read())
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    with open(args.ready, "w") as f:
        f.write("ready\n")
    srv.serve_forever()


if __name__ == "__main__":
    main()
