#!/usr/bin/env python3
"""A fake of the GitHub REST API (api.github.com, version 2022-11-28) for tests.

Usage: fake_github.py --port PORT --ready FILE [--blob-port PORT2]

It enforces the contract in shared/contracts/github.md and answers off-contract requests
the way GitHub does, with a BasicError body {"message", "documentation_url", "status"}:
  - Authorization must be "Bearer <token>" (or the legacy "token <token>") with an accepted
    token (see "tokens" below) -> else 401 "Requires authentication" / "Bad credentials";
    /app/... endpoints need the App's RS256 JWT instead (401 "A JSON web token could not be
    decoded" / "'Expiration time' claim ('exp') is too far in the future" ...).
  - Accept must be application/vnd.github+json (application/json and */* are NOT accepted
    here, to enforce the contract) -> else 415;
  - X-GitHub-Api-Version must be 2022-11-28 or 2026-03-10 -> else 400;
  - User-Agent must be present and non-empty -> else 400;
  - POST/PATCH/PUT bodies must be JSON objects (Content-Type application/json) -> else 400
    "Problems parsing JSON"; validation errors are 422 "Validation Failed" with errors[].
Every API response carries x-ratelimit-limit/-remaining/-reset/-used/-resource (resource
"core"); each request costs one unit of the (global) core budget except a 304 (conditional
GET that matched) and GET /rate_limit, exactly like GitHub. When remaining reaches 0, every
request answers 403 "API rate limit exceeded" with remaining 0 until reset (then the budget
refills). Every 200 GET JSON answer carries an ETag (W/"<sha256 of the body>"); a request
with a matching If-None-Match gets 304 with no body.

A SECOND listener (the "blob host", --blob-port, default: an ephemeral port; the ready file
gets "PORT\\nBLOBPORT\\n") serves the targets of the 302 redirects of job logs and artifact
downloads: http://127.0.0.1:BLOBPORT/_blob/<random>. It REJECTS any request carrying an
Authorization header (400 "Authentication information is not given in the correct format",
like a storage service would), and a blob link expires blob_ttl_s (default 60) after it was
handed out (403 "expired").

Endpoints (o/r = any owner/repo; everything lives per repo):
  POST /repos/o/r/statuses/{sha}                         201 (state error|failure|pending|success)
  GET  /repos/o/r/commits/{ref}/statuses                 200 [] newest first
  GET  /repos/o/r/commits/{ref}/status                   200 combined {state, statuses, ...}
  POST /repos/o/r/deployments                            201 | 409 (required_contexts omitted and
                                                         a status of the sha is not success) | 422
  GET  /repos/o/r/deployments[?environment=&sha=&ref=]   200 [] newest first
  GET  /repos/o/r/deployments/{id}                       200 | 404
  POST /repos/o/r/deployments/{id}/statuses              201 (auto_inactive as GitHub: default
                                                         true; marks prior success deployments of
                                                         the same env inactive when both are
                                                         non-transient and non-production)
  GET  /repos/o/r/deployments/{id}/statuses              200 [] newest first
  GET  /repos/o/r/actions/runs[?branch=&status=&head_sha=&event=]
  GET  /repos/o/r/actions/workflows/{id|file}/runs[...]  200 {total_count, workflow_runs}
  GET  /repos/o/r/actions/runs/{run_id}                  200 | 404
  GET  /repos/o/r/actions/runs/{run_id}/jobs             200 {total_count, jobs (with steps)}
  GET  /repos/o/r/actions/jobs/{job_id}                  200 | 404
  GET  /repos/o/r/actions/jobs/{job_id}/logs             302 Location: blob host (text/plain)
  POST /repos/o/r/actions/runs/{run_id}/rerun-failed-jobs 201 {} (403 when the run is not
                                                         completed or has no failed job)
  POST /repos/o/r/actions/runs/{run_id}/rerun            201 {}
  POST /repos/o/r/actions/workflows/{id|file}/dispatches 204, or 200 {workflow_run_id, run_url,
                                                         html_url} with return_run_details; 422
                                                         unknown ref / inputs not strings / >25;
                                                         404 unknown workflow. Creates a queued run.
  GET  /repos/o/r/actions/runs/{run_id}/artifacts[?name=] 200 {total_count, artifacts} with digest
  GET  /repos/o/r/actions/artifacts/{id}/zip             302 Location: blob host | 410 expired
  GET  /repos/o/r/branches/{branch}/protection           200 | 404 "Branch not protected"
  GET  /repos/o/r/pulls/{n}/reviews                      200 [] chronological, UPPERCASE states
  GET  /repos/o/r/commits/{sha}/pulls                    200 [] PRs whose head/merge/commits hold sha
  GET  /repos/o/r/commits/{ref}                          200 {sha, commit.verification} | 422
  POST /app/installations/{id}/access_tokens             201 {token, expires_at, permissions,
                                                         repository_selection} (JWT verified with
                                                         the App's public key via openssl)
  GET  /rate_limit                                       200 {resources:{core}, rate} (free)
Lists honour per_page (<= 100) / page and send a Link header with rel="next"/"last".

CONTROL API (no auth; JSON bodies; all answer 200 {"ok": true} or 400):
  POST /__control/reset                     forget everything (state, log, stats, failures)
  POST /__control/tokens {"tokens": [...]}  accepted Bearer tokens (default ["test-token"])
  POST /__control/app {"app_id": "123", "installation_id": "42",
                       "public_key_pem": "-----BEGIN PUBLIC KEY-----...", "token_ttl_s": 3600}
                                            an App; minted installation tokens are accepted
                                            until their expires_at (then 401 "Bad credentials")
  POST /__control/rate {"limit": 5000, "remaining": N, "reset_in": S}   the core budget
  POST /__control/run {"repo": "o/r", "id": 1, "name": "CI", "workflow_id": 7,
        "path": ".github/workflows/ci.yml", "head_branch": "main", "head_sha": "...",
        "event": "push", "status": "completed", "conclusion": "success"|"failure"|null,
        "run_attempt": 1,
        "jobs": [{"id": 11, "name": "build", "status": "completed", "conclusion": "failure",
                  "steps": [{"name": "make", "number": 1, "conclusion": "failure"}],
                  "log": "plain text log"}],
        "artifacts": [{"id": 21, "name": "site", "files": {"index.html": "<h1>hi</h1>"},
                       "expired": false, "digest": "sha256:..." (default: the real one;
                       "none" omits it)}]}
                                            adds or replaces a workflow run (defaults for
                                            anything missing)
  POST /__control/workflow {"repo": "o/r", "id": 7, "path": ".github/workflows/ci.yml",
                            "name": "CI", "dispatch": true, "refs": ["main"]}
                                            a workflow (dispatch: has on: workflow_dispatch;
                                            refs: accepted refs, default any)
  POST /__control/protection {"repo": "o/r", "branch": "main", "protection": {...} | null}
                                            the GitHub protection object (null: unprotected)
  POST /__control/pull {"repo": "o/r", "number": 5, "head_sha": "...", "merge_commit_sha": "...",
                        "commits": ["sha", ...], "state": "closed", "merged": true,
                        "reviews": [{"user": "alice", "state": "APPROVED", "commit_id": "..."}]}
  POST /__control/commit {"repo": "o/r", "sha": "...", "verified": true, "reason": "valid"}
  POST /__control/blob_ttl {"seconds": 60}  how long a redirect (blob) link stays valid
  POST /__control/fail {"path": "substring of the path", "method": "GET" (optional),
                        "mode": MODE, "count": 1, "retry_after": S, "reset_in": S,
                        "hang_ms": 30000, "status": 500}
        scripts the next `count` matching API requests (rules are tried in order; a request
        matches the first rule with count > 0). MODE:
          primary      403 "API rate limit exceeded..." with x-ratelimit-remaining 0 and
                       x-ratelimit-reset = now + reset_in (default 1)
          primary429   the same with 429
          secondary    403 "You have exceeded a secondary rate limit..." (+ retry-after when
                       retry_after is given), x-ratelimit-* present with remaining > 0
          secondary429 429 with the same message (+ retry-after when given)
          bare403 / bare429   a secondary limit WITHOUT any rate-limit or retry-after header
          server       `status` (default 500) {"message": "Server Error"}
          hang         sleeps hang_ms (default 30000) then closes without answering
          html         200 text/html "<html>...unicorn...</html>"
          garbage      200 application/json with a body that is not JSON
          permission   403 "Resource not accessible by integration" (a permission error)
          unauthorized 401 "Bad credentials"
          gone         410 "Gone"
  GET  /__stats     {"requests", "api_requests", "not_modified", "rate_used", "rate_remaining",
                     "blob_requests", "blob_auth_rejected", "tokens_minted", "blob_port",
                     "failures_served"}
  GET  /__requests[?since=SEQ&path=SUBSTR]  the request log, oldest first: [{"seq", "method",
                     "path", "query", "status", "auth" ("bearer:<token>" | "jwt" | "none"),
                     "if_none_match", "body" (parsed JSON or null), "host" ("api"|"blob"),
                     "blob_auth" (blob host: an Authorization header was sent)}]
  GET  /__state     the whole scripted state as JSON (statuses, deployments, runs ...)
The ready FILE is written once both sockets listen."""
import argparse
import base64
import hashlib
import io
import json
import os
import secrets
import subprocess
import tempfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit, unquote

DOCS = "https://docs.github.com/rest"
API_VERSIONS = ("2022-11-28", "2026-03-10")
ACCEPTS = ("application/vnd.github+json",)

lock = threading.Lock()
S = {}
BLOB_PORT = [0]
API_PORT = [0]


def fresh_state():
    return {
        "tokens": {"test-token": None},  # token -> expiry epoch (None: never)
        "app": None,
        "rate": {"limit": 5000, "remaining": 5000, "reset": int(time.time()) + 3600},
        "repos": {},
        "blobs": {},  # key -> {"data", "ctype", "expires"}
        "fails": [],
        "log": [],
        "seq": 0,
        "next_id": 1000,
        "stats": {"requests": 0, "api_requests": 0, "not_modified": 0, "rate_used": 0,
                  "blob_requests": 0, "blob_auth_rejected": 0, "tokens_minted": 0,
                  "failures_served": 0},
        "blob_ttl_s": 60,
    }


def repo_state(name):
    r = S["repos"].get(name)
    if r is None:
        r = {"statuses": [], "deployments": [], "deployment_statuses": {}, "runs": {},
             "workflows": {}, "protection": {}, "pulls": {}, "commits": {}, "dispatches": []}
        S["repos"][name] = r
    return r


def next_id():
    S["next_id"] += 1
    return S["next_id"]


def now_iso(t=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t if t is not None else time.time()))


def error_body(status, message, extra=None):
    b = {"message": message, "documentation_url": DOCS, "status": str(status)}
    if extra:
        b.update(extra)
    return b


def b64url_decode(s):
    """Strict base64url without padding (a JWT segment): anything else raises ValueError."""
    out = base64.urlsafe_b64decode((s + "=" * (-len(s) % 4)).encode())
    if base64.urlsafe_b64encode(out).decode().rstrip("=") != s:
        raise ValueError("not canonical base64url")
    return out


def make_zip(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(files):
            data = files[name]
            z.writestr(name, data.encode() if isinstance(data, str) else data)
    return buf.getvalue()


class Reply(Exception):
    def __init__(self, status, body=None, headers=(), raw=None, ctype="application/json"):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = list(headers)
        self.raw = raw
        self.ctype = ctype


def validation(field, code="missing_field", resource="Resource"):
    raise Reply(422, error_body(422, "Validation Failed",
                                {"errors": [{"resource": resource, "field": field, "code": code}]}))


def paginate(items, q, path):
    try:
        per_page = min(max(int(q.get("per_page", ["30"])[0]), 1), 100)
        page = max(int(q.get("page", ["1"])[0]), 1)
    except ValueError:
        raise Reply(400, error_body(400, "Invalid per_page or page"))
    start = (page - 1) * per_page
    chunk = items[start:start + per_page]
    last = max((len(items) + per_page - 1) // per_page, 1)
    links = []
    base = "http://127.0.0.1:%d%s" % (API_PORT[0], path)
    other = "&".join("%s=%s" % (k, v[0]) for k, v in sorted(q.items()) if k not in ("page", "per_page"))
    sep = "?" + (other + "&" if other else "")
    if page < last:
        links.append('<%s%sper_page=%d&page=%d>; rel="next"' % (base, sep, per_page, page + 1))
        links.append('<%s%sper_page=%d&page=%d>; rel="last"' % (base, sep, per_page, last))
    if page > 1:
        links.append('<%s%sper_page=%d&page=%d>; rel="prev"' % (base, sep, per_page, page - 1))
        links.append('<%s%sper_page=%d&page=1>; rel="first"' % (base, sep, per_page))
    headers = [("Link", ", ".join(links))] if links else []
    return chunk, headers


def run_json(repo, run):
    base = "http://127.0.0.1:%d/repos/%s/actions/runs/%d" % (API_PORT[0], repo, run["id"])
    out = {k: v for k, v in run.items() if k not in ("jobs", "artifacts", "reruns")}
    out.update({"url": base, "jobs_url": base + "/jobs", "logs_url": base + "/logs",
                "artifacts_url": base + "/artifacts", "rerun_url": base + "/rerun",
                "cancel_url": base + "/cancel",
                "html_url": "https://github.com/%s/actions/runs/%d" % (repo, run["id"])})
    return out


def job_json(repo, run, job):
    out = {k: v for k, v in job.items() if k != "log"}
    out["run_id"] = run["id"]
    out["run_attempt"] = run["run_attempt"]
    out["head_sha"] = run["head_sha"]
    out["head_branch"] = run["head_branch"]
    out["workflow_name"] = run["name"]
    out["url"] = "http://127.0.0.1:%d/repos/%s/actions/jobs/%d" % (API_PORT[0], repo, job["id"])
    out["html_url"] = "https://github.com/%s/actions/runs/%d/job/%d" % (repo, run["id"], job["id"])
    return out


def artifact_json(repo, run, a):
    api = "http://127.0.0.1:%d/repos/%s/actions/artifacts/%d" % (API_PORT[0], repo, a["id"])
    out = {"id": a["id"], "node_id": "MDg6QXJ0aWZhY3Q%d" % a["id"], "name": a["name"],
           "size_in_bytes": len(a["zip"]), "url": api, "archive_download_url": api + "/zip",
           "expired": a["expired"], "created_at": a["created_at"], "updated_at": a["created_at"],
           "expires_at": now_iso(time.time() + 86400 * 90),
           "workflow_run": {"id": run["id"], "repository_id": 1, "head_repository_id": 1,
                            "head_branch": run["head_branch"], "head_sha": run["head_sha"]}}
    if a["digest"] is not None:
        out["digest"] = a["digest"]
    return out


def find_run(r, run_id):
    try:
        run = r["runs"].get(int(run_id))
    except ValueError:
        run = None
    if run is None:
        raise Reply(404, error_body(404, "Not Found"))
    return run


def find_job(r, job_id):
    for run in r["runs"].values():
        for job in run["jobs"]:
            if str(job["id"]) == job_id:
                return run, job
    raise Reply(404, error_body(404, "Not Found"))


def find_workflow(r, wid):
    for w in r["workflows"].values():
        if str(w["id"]) == wid or os.path.basename(w["path"]) == wid:
            return w
    for run in r["runs"].values():  # workflows known only through their runs
        if str(run["workflow_id"]) == wid or os.path.basename(run["path"]) == wid:
            return {"id": run["workflow_id"], "path": run["path"], "name": run["name"],
                    "dispatch": False, "refs": None}
    raise Reply(404, error_body(404, "Not Found"))


def add_blob(data, ctype):
    key = secrets.token_urlsafe(18)
    S["blobs"][key] = {"data": data, "ctype": ctype, "expires": time.time() + S["blob_ttl_s"]}
    return "http://127.0.0.1:%d/_blob/%s?sig=%s" % (BLOB_PORT[0], key, secrets.token_hex(8))


def verify_jwt(tok):
    """Raises Reply(401) unless tok is a valid RS256 JWT of the configured App."""
    app = S["app"]
    if app is None:
        raise Reply(401, error_body(401, "A JSON web token could not be decoded"))
    parts = tok.split(".")
    if len(parts) != 3:
        raise Reply(401, error_body(401, "A JSON web token could not be decoded"))
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        sig = b64url_decode(parts[2])
    except Exception:
        raise Reply(401, error_body(401, "A JSON web token could not be decoded"))
    if header.get("alg") != "RS256":
        raise Reply(401, error_body(401, "A JSON web token could not be decoded"))
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(sig)
        sigfile = f.name
    try:
        p = subprocess.run(["openssl", "dgst", "-sha256", "-verify", app["pubfile"],
                            "-signature", sigfile],
                           input=(parts[0] + "." + parts[1]).encode(), capture_output=True)
    finally:
        os.unlink(sigfile)
    if p.returncode != 0:
        raise Reply(401, error_body(401, "A JSON web token could not be decoded"))
    now = time.time()
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int) or not isinstance(exp, int):
        raise Reply(401, error_body(401, "Missing 'issued at' or 'expiration time' claim"))
    if iat > now + 60:
        raise Reply(401, error_body(401, "'Issued at' claim ('iat') must be an Integer "
                                         "representing a time in the past."))
    if exp <= now:
        raise Reply(401, error_body(401, "'Expiration time' claim ('exp') must be a numeric "
                                         "value representing the future time at which the "
                                         "assertion expires."))
    if exp > now + 600 + 5:
        raise Reply(401, error_body(401, "'Expiration time' claim ('exp') is too far in the future"))
    if str(claims.get("iss")) != app["app_id"]:
        raise Reply(401, error_body(401, "'Issuer' claim ('iss') must be an Integer"))


class Api:
    """Route handlers; called with the lock held."""

    def __init__(self, method, path, q, body):
        self.method, self.path, self.q, self.body = method, path, q, body

    def route(self):
        p = [unquote(x) for x in self.path.strip("/").split("/")]
        m = self.method
        if p == ["rate_limit"] and m == "GET":
            rt = S["rate"]
            core = {"limit": rt["limit"], "remaining": rt["remaining"], "reset": rt["reset"],
                    "used": rt["limit"] - rt["remaining"]}
            return 200, {"resources": {"core": core}, "rate": core}, []
        if len(p) == 4 and p[0] == "app" and p[1] == "installations" and p[3] == "access_tokens" and m == "POST":
            return self.mint(p[2])
        if len(p) < 4 or p[0] != "repos":
            raise Reply(404, error_body(404, "Not Found"))
        repo = p[1] + "/" + p[2]
        r = repo_state(repo)
        rest = p[3:]
        if m == "POST" and len(rest) == 2 and rest[0] == "statuses":
            return self.create_status(r, repo, rest[1])
        if m == "GET" and len(rest) == 3 and rest[0] == "commits" and rest[2] == "statuses":
            return self.list_statuses(r, rest[1])
        if m == "GET" and len(rest) == 3 and rest[0] == "commits" and rest[2] == "status":
            return self.combined(r, rest[1])
        if m == "GET" and len(rest) == 3 and rest[0] == "commits" and rest[2] == "pulls":
            return self.commit_pulls(r, repo, rest[1])
        if m == "GET" and len(rest) == 2 and rest[0] == "commits":
            return self.get_commit(r, rest[1])
        if rest[0] == "deployments":
            return self.deployments(r, repo, rest)
        if rest[0] == "actions":
            return self.actions(r, repo, rest[1:])
        if m == "GET" and len(rest) >= 3 and rest[0] == "branches" and rest[-1] == "protection":
            branch = "/".join(rest[1:-1])
            prot = r["protection"].get(branch)
            if prot is None:
                raise Reply(404, error_body(404, "Branch not protected"))
            return 200, prot, []
        if m == "GET" and len(rest) == 3 and rest[0] == "pulls" and rest[2] == "reviews":
            pr = r["pulls"].get(rest[1])
            if pr is None:
                raise Reply(404, error_body(404, "Not Found"))
            items, hdrs = paginate(pr["reviews"], self.q, self.path)
            return 200, items, hdrs
        raise Reply(404, error_body(404, "Not Found"))

    # --- App tokens
    def mint(self, inst):
        app = S["app"]
        if app is None or inst != app["installation_id"]:
            raise Reply(404, error_body(404, "Integration not found"))
        tok = "ghs_" + secrets.token_hex(18)
        exp = int(time.time()) + int(app["token_ttl_s"])
        S["tokens"][tok] = exp
        S["stats"]["tokens_minted"] += 1
        return 201, {"token": tok, "expires_at": now_iso(exp),
                     "permissions": {"actions": "write", "statuses": "write",
                                     "deployments": "write", "contents": "read",
                                     "pull_requests": "read", "administration": "read"},
                     "repository_selection": "all"}, []

    # --- statuses
    def create_status(self, r, repo, sha):
        b = self.body
        state = b.get("state")
        if state is None:
            validation("state")
        if state not in ("error", "failure", "pending", "success"):
            validation("state", "invalid", "Status")
        for k in ("target_url", "description", "context"):
            if k in b and b[k] is not None and not isinstance(b[k], str):
                validation(k, "invalid", "Status")
        if b.get("description") and len(b["description"]) > 140:
            validation("description", "custom", "Status")
        st = {"id": next_id(), "sha": sha, "state": state, "target_url": b.get("target_url"),
              "description": b.get("description"), "context": b.get("context") or "default",
              "created_at": now_iso(), "updated_at": now_iso(),
              "url": "http://127.0.0.1:%d/repos/%s/statuses/%s" % (API_PORT[0], repo, sha)}
        r["statuses"].append(st)
        return 201, st, []

    def list_statuses(self, r, ref):
        items = [s for s in reversed(r["statuses"]) if s["sha"] == ref]
        items, hdrs = paginate(items, self.q, self.path)
        return 200, items, hdrs

    def combined(self, r, ref):
        latest = {}
        for s in r["statuses"]:
            if s["sha"] == ref:
                latest[s["context"].lower()] = s
        sts = list(latest.values())
        if any(s["state"] in ("error", "failure") for s in sts):
            state = "failure"
        elif not sts or any(s["state"] == "pending" for s in sts):
            state = "pending"
        else:
            state = "success"
        return 200, {"state": state, "statuses": sts, "sha": ref, "total_count": len(sts)}, []

    def commit_pulls(self, r, repo, sha):
        out = []
        for pr in r["pulls"].values():
            if sha == pr.get("head_sha") or sha == pr.get("merge_commit_sha") or sha in pr.get("commits", []):
                out.append({"number": pr["number"], "state": pr.get("state", "closed"),
                            "merged_at": now_iso() if pr.get("merged", True) else None,
                            "merge_commit_sha": pr.get("merge_commit_sha"),
                            "head": {"sha": pr.get("head_sha"), "ref": "feature"},
                            "base": {"ref": "main"},
                            "url": "http://127.0.0.1:%d/repos/%s/pulls/%s" % (API_PORT[0], repo, pr["number"])})
        return 200, out, []

    def get_commit(self, r, ref):
        c = r["commits"].get(ref)
        if c is None:
            raise Reply(422, error_body(422, "No commit found for SHA: %s" % ref))
        ver = {"verified": bool(c.get("verified")), "reason": c.get("reason", "unsigned"),
               "signature": c.get("signature"), "payload": c.get("payload"),
               "verified_at": now_iso() if c.get("verified") else None}
        return 200, {"sha": ref, "commit": {"message": c.get("message", "a commit"),
                                            "verification": ver}, "files": []}, []

    # --- deployments
    def deployments(self, r, repo, rest):
        m = self.method
        if m == "POST" and len(rest) == 1:
            b = self.body
            ref = b.get("ref")
            if not isinstance(ref, str) or not ref:
                validation("ref", resource="Deployment")
            env = b.get("environment", "production")
            if not isinstance(env, str):
                validation("environment", "invalid", "Deployment")
            rc = b.get("required_contexts")
            if rc is None:
                sts = [s for s in r["statuses"] if s["sha"] == ref]
                latest = {}
                for s in sts:
                    latest[s["context"].lower()] = s["state"]
                if any(v != "success" for v in latest.values()):
                    raise Reply(409, error_body(409, "Conflict: Commit status checks failed for %s." % ref))
            elif not isinstance(rc, list):
                validation("required_contexts", "invalid", "Deployment")
            d = {"id": next_id(), "sha": ref, "ref": ref, "task": b.get("task", "deploy"),
                 "environment": env, "original_environment": env,
                 "payload": b.get("payload", {}), "description": b.get("description"),
                 "transient_environment": bool(b.get("transient_environment", False)),
                 "production_environment": bool(b.get("production_environment", env == "production")),
                 "auto_merge": b.get("auto_merge", True), "required_contexts": rc,
                 "created_at": now_iso(), "updated_at": now_iso()}
            d["url"] = "http://127.0.0.1:%d/repos/%s/deployments/%d" % (API_PORT[0], repo, d["id"])
            d["statuses_url"] = d["url"] + "/statuses"
            r["deployments"].append(d)
            r["deployment_statuses"][d["id"]] = []
            return 201, d, []
        if m == "GET" and len(rest) == 1:
            items = list(reversed(r["deployments"]))
            for k in ("environment", "sha", "ref", "task"):
                if k in self.q:
                    items = [d for d in items if d[k] == self.q[k][0]]
            items, hdrs = paginate(items, self.q, self.path)
            return 200, items, hdrs
        d = None
        for x in r["deployments"]:
            if len(rest) > 1 and str(x["id"]) == rest[1]:
                d = x
        if d is None:
            raise Reply(404, error_body(404, "Not Found"))
        if m == "GET" and len(rest) == 2:
            return 200, d, []
        if len(rest) == 3 and rest[2] == "statuses":
            if m == "GET":
                items, hdrs = paginate(list(reversed(r["deployment_statuses"][d["id"]])), self.q, self.path)
                return 200, items, hdrs
            if m == "POST":
                return self.create_deployment_status(r, repo, d)
        raise Reply(404, error_body(404, "Not Found"))

    def create_deployment_status(self, r, repo, d):
        b = self.body
        state = b.get("state")
        if state is None:
            validation("state", resource="DeploymentStatus")
        if state not in ("error", "failure", "inactive", "in_progress", "queued", "pending", "success"):
            validation("state", "invalid", "DeploymentStatus")
        desc = b.get("description")
        if desc is not None and (not isinstance(desc, str) or len(desc) > 140):
            validation("description", "invalid", "DeploymentStatus")
        for k in ("log_url", "target_url", "environment_url", "environment"):
            if k in b and b[k] is not None and not isinstance(b[k], str):
                validation(k, "invalid", "DeploymentStatus")
        prev = r["deployment_statuses"][d["id"]]
        env = b.get("environment") or (prev[-1]["environment"] if prev else d["environment"])
        st = {"id": next_id(), "state": state, "description": desc or "",
              "environment": env, "environment_url": b.get("environment_url") or "",
              "log_url": b.get("log_url") or b.get("target_url") or "",
              "target_url": b.get("log_url") or b.get("target_url") or "",
              "deployment_id": d["id"], "created_at": now_iso(), "updated_at": now_iso(),
              "deployment_url": d["url"]}
        prev.append(st)
        auto = b.get("auto_inactive", True)
        if state == "success" and auto:
            for other in r["deployments"]:
                if other is d or other["environment"] != env:
                    continue
                if other["transient_environment"] or other["production_environment"]:
                    continue
                if d["transient_environment"] or d["production_environment"]:
                    continue
                ost = r["deployment_statuses"][other["id"]]
                if ost and ost[-1]["state"] == "success":
                    ost.append(dict(ost[-1], id=next_id(), state="inactive", created_at=now_iso(),
                                    description="auto_inactive"))
        return 201, st, []

    # --- actions
    def actions(self, r, repo, rest):
        m = self.method
        if not rest:
            raise Reply(404, error_body(404, "Not Found"))
        if m == "GET" and rest == ["runs"]:
            return self.list_runs(r, repo, None)
        if m == "GET" and len(rest) == 3 and rest[0] == "workflows" and rest[2] == "runs":
            return self.list_runs(r, repo, find_workflow(r, rest[1]))
        if m == "POST" and len(rest) == 3 and rest[0] == "workflows" and rest[2] == "dispatches":
            return self.dispatch(r, repo, find_workflow(r, rest[1]))
        if rest[0] == "runs" and len(rest) >= 2:
            run = find_run(r, rest[1])
            if m == "GET" and len(rest) == 2:
                return 200, run_json(repo, run), []
            if m == "GET" and rest[2:] == ["jobs"]:
                jobs = [job_json(repo, run, j) for j in run["jobs"]]
                items, hdrs = paginate(jobs, self.q, self.path)
                return 200, {"total_count": len(jobs), "jobs": items}, hdrs
            if m == "GET" and rest[2:] == ["artifacts"]:
                arts = [artifact_json(repo, run, a) for a in run["artifacts"]]
                if "name" in self.q:
                    arts = [a for a in arts if a["name"] == self.q["name"][0]]
                items, hdrs = paginate(arts, self.q, self.path)
                return 200, {"total_count": len(arts), "artifacts": items}, hdrs
            if m == "POST" and rest[2:] in (["rerun-failed-jobs"], ["rerun"]):
                if run["status"] != "completed":
                    raise Reply(403, error_body(403, "This workflow is already running"))
                failed = [j for j in run["jobs"] if j.get("conclusion") in
                          ("failure", "cancelled", "timed_out")]
                if rest[2] == "rerun-failed-jobs" and not failed:
                    raise Reply(403, error_body(403, "This workflow run has no failed jobs"))
                run["reruns"].append(rest[2])
                run["run_attempt"] += 1
                run["status"] = "queued"
                run["conclusion"] = None
                run["updated_at"] = now_iso()
                return 201, {}, []
        if rest[0] == "jobs" and len(rest) >= 2:
            run, job = find_job(r, rest[1])
            if m == "GET" and len(rest) == 2:
                return 200, job_json(repo, run, job), []
            if m == "GET" and rest[2:] == ["logs"]:
                if job.get("log") is None:
                    raise Reply(410, error_body(410, "Gone"))
                loc = add_blob(job["log"].encode(), "text/plain")
                raise Reply(302, None, [("Location", loc)])
        if rest[0] == "artifacts" and len(rest) == 3 and rest[2] == "zip" and m == "GET":
            for run in r["runs"].values():
                for a in run["artifacts"]:
                    if str(a["id"]) == rest[1]:
                        if a["expired"]:
                            raise Reply(410, error_body(410, "Artifact has expired"))
                        raise Reply(302, None, [("Location", add_blob(a["zip"], "application/zip"))])
            raise Reply(404, error_body(404, "Not Found"))
        raise Reply(404, error_body(404, "Not Found"))

    def list_runs(self, r, repo, wf):
        runs = sorted(r["runs"].values(), key=lambda x: -x["id"])
        if wf is not None:
            runs = [x for x in runs if x["workflow_id"] == wf["id"]]
        for k, field in (("branch", "head_branch"), ("head_sha", "head_sha"), ("event", "event")):
            if k in self.q:
                runs = [x for x in runs if str(x[field]) == self.q[k][0]]
        if "status" in self.q:
            v = self.q["status"][0]
            runs = [x for x in runs if x["status"] == v or x["conclusion"] == v]
        items = [run_json(repo, x) for x in runs]
        chunk, hdrs = paginate(items, self.q, self.path)
        return 200, {"total_count": len(items), "workflow_runs": chunk}, hdrs

    def dispatch(self, r, repo, wf):
        b = self.body
        ref = b.get("ref")
        if not isinstance(ref, str) or not ref:
            validation("ref", resource="WorkflowDispatch")
        if not wf.get("dispatch"):
            raise Reply(422, error_body(422, "Workflow does not have 'workflow_dispatch' trigger"))
        if wf.get("refs") is not None and ref not in wf["refs"]:
            raise Reply(422, error_body(422, "No ref found for: %s" % ref))
        inputs = b.get("inputs", {})
        if not isinstance(inputs, dict) or len(inputs) > 25 or \
                any(not isinstance(v, str) for v in inputs.values()):
            validation("inputs", "invalid", "WorkflowDispatch")
        rid = next_id()
        r["runs"][rid] = new_run({"id": rid, "name": wf["name"], "workflow_id": wf["id"],
                                  "path": wf["path"], "head_branch": ref, "event": "workflow_dispatch",
                                  "status": "queued", "conclusion": None})
        r["dispatches"].append({"workflow": wf["id"], "ref": ref, "inputs": inputs, "run_id": rid})
        if b.get("return_run_details"):
            api = "http://127.0.0.1:%d/repos/%s/actions/runs/%d" % (API_PORT[0], repo, rid)
            return 200, {"workflow_run_id": rid, "run_url": api,
                         "html_url": "https://github.com/%s/actions/runs/%d" % (repo, rid)}, []
        return 204, None, []


def new_run(d):
    run = {"id": int(d.get("id") or next_id()), "name": d.get("name", "CI"),
           "display_title": d.get("display_title", d.get("name", "CI")),
           "workflow_id": int(d.get("workflow_id", 7)),
           "path": d.get("path", ".github/workflows/ci.yml"),
           "head_branch": d.get("head_branch", "main"),
           "head_sha": d.get("head_sha", "0" * 40), "event": d.get("event", "push"),
           "status": d.get("status", "completed"),
           "conclusion": d.get("conclusion", "success"),
           "run_number": int(d.get("run_number", 1)), "run_attempt": int(d.get("run_attempt", 1)),
           "created_at": now_iso(), "updated_at": now_iso(), "run_started_at": now_iso(),
           "jobs": [], "artifacts": [], "reruns": []}
    for j in d.get("jobs", []):
        run["jobs"].append({"id": int(j.get("id") or next_id()), "name": j.get("name", "build"),
                            "status": j.get("status", "completed"),
                            "conclusion": j.get("conclusion", "success"),
                            "started_at": now_iso(), "completed_at": now_iso(),
                            "steps": [{"name": s.get("name", "step"), "number": int(s.get("number", i + 1)),
                                       "status": s.get("status", "completed"),
                                       "conclusion": s.get("conclusion", "success"),
                                       "started_at": now_iso(), "completed_at": now_iso()}
                                      for i, s in enumerate(j.get("steps", []))],
                            "labels": ["ubuntu-latest"], "runner_name": "GitHub Actions 1",
                            "log": j.get("log", "")})
    for a in d.get("artifacts", []):
        z = make_zip(a.get("files", {"index.html": "hello"}))
        digest = a.get("digest")
        if digest is None:
            digest = "sha256:" + hashlib.sha256(z).hexdigest()
        elif digest == "none":
            digest = None
        run["artifacts"].append({"id": int(a.get("id") or next_id()), "name": a.get("name", "site"),
                                 "zip": z, "expired": bool(a.get("expired", False)),
                                 "digest": digest, "created_at": now_iso()})
    return run


def control(path, body):
    """Handles POST /__control/...; lock held. Returns the reply dict."""
    what = path[len("/__control/"):]
    if what == "reset":
        S.clear()
        S.update(fresh_state())
        return {"ok": True}
    if what == "tokens":
        S["tokens"] = {t: None for t in body["tokens"]}
        return {"ok": True}
    if what == "app":
        pem = body["public_key_pem"]
        fd, name = tempfile.mkstemp(suffix=".pem")
        with os.fdopen(fd, "w") as f:
            f.write(pem)
        S["app"] = {"app_id": str(body["app_id"]), "installation_id": str(body["installation_id"]),
                    "pubfile": name, "token_ttl_s": int(body.get("token_ttl_s", 3600))}
        return {"ok": True}
    if what == "rate":
        rt = S["rate"]
        if "limit" in body:
            rt["limit"] = int(body["limit"])
        if "remaining" in body:
            rt["remaining"] = int(body["remaining"])
        if "reset_in" in body:
            rt["reset"] = int(time.time()) + int(body["reset_in"])
        return {"ok": True}
    if what == "blob_ttl":
        S["blob_ttl_s"] = float(body["seconds"])
        return {"ok": True}
    r = repo_state(body.get("repo", "o/r")) if what != "fail" else None
    if what == "run":
        run = new_run(body)
        r["runs"][run["id"]] = run
        return {"ok": True, "id": run["id"]}
    if what == "workflow":
        r["workflows"][int(body["id"])] = {"id": int(body["id"]), "path": body.get("path", ".github/workflows/ci.yml"),
                                           "name": body.get("name", "CI"),
                                           "dispatch": bool(body.get("dispatch", True)),
                                           "refs": body.get("refs")}
        return {"ok": True}
    if what == "protection":
        if body.get("protection") is None:
            r["protection"].pop(body["branch"], None)
        else:
            r["protection"][body["branch"]] = body["protection"]
        return {"ok": True}
    if what == "pull":
        n = str(body["number"])
        reviews = []
        for rv in body.get("reviews", []):
            reviews.append({"id": next_id(), "user": {"login": rv.get("user", "alice"), "type": "User"},
                            "state": rv.get("state", "APPROVED"), "body": rv.get("body", ""),
                            "commit_id": rv.get("commit_id", body.get("head_sha")),
                            "submitted_at": now_iso(), "author_association": "MEMBER"})
        r["pulls"][n] = {"number": int(n), "head_sha": body.get("head_sha"),
                         "merge_commit_sha": body.get("merge_commit_sha"),
                         "commits": body.get("commits", []), "state": body.get("state", "closed"),
                         "merged": body.get("merged", True), "reviews": reviews}
        return {"ok": True}
    if what == "commit":
        r["commits"][body["sha"]] = body
        return {"ok": True}
    if what == "fail":
        rule = {"path": body.get("path", ""), "method": body.get("method"),
                "mode": body["mode"], "count": int(body.get("count", 1)),
                "retry_after": body.get("retry_after"), "reset_in": int(body.get("reset_in", 1)),
                "hang_ms": int(body.get("hang_ms", 30000)), "status": int(body.get("status", 500))}
        if rule["mode"] not in ("primary", "primary429", "secondary", "secondary429", "bare403",
                                "bare429", "server", "hang", "html", "garbage", "permission",
                                "unauthorized", "gone"):
            raise ValueError("unknown mode")
        S["fails"].append(rule)
        return {"ok": True}
    raise ValueError("unknown control " + what)


def rate_headers():
    rt = S["rate"]
    return [("x-ratelimit-limit", str(rt["limit"])), ("x-ratelimit-remaining", str(rt["remaining"])),
            ("x-ratelimit-reset", str(rt["reset"])), ("x-ratelimit-used", str(rt["limit"] - rt["remaining"])),
            ("x-ratelimit-resource", "core")]


def scripted_failure(method, path):
    """Returns (rule) of the first matching failure rule with count left, consuming one."""
    for rule in S["fails"]:
        if rule["count"] <= 0:
            continue
        if rule["method"] and rule["method"] != method:
            continue
        if rule["path"] not in path:
            continue
        rule["count"] -= 1
        S["stats"]["failures_served"] += 1
        return rule
    return None


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def _write(self, status, raw, headers, ctype):
        try:
            self.send_response(status)
            for n, v in headers:
                self.send_header(n, v)
            if status != 304 and status != 204:
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            if status not in (204, 304) and self.command != "HEAD":
                self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _handle(self):
        url = urlsplit(self.path)
        q = parse_qs(url.query, keep_blank_values=True)
        raw_body = self._read_body()
        if url.path.startswith("/__"):
            return self._control(url, q, raw_body)
        with lock:
            S["stats"]["requests"] += 1
            S["stats"]["api_requests"] += 1
            S["seq"] += 1
            entry = {"seq": S["seq"], "method": self.command, "path": url.path, "query": url.query,
                     "status": 0, "auth": "none", "if_none_match": self.headers.get("If-None-Match"),
                     "body": None, "host": "api", "ts": time.time()}
            S["log"].append(entry)
        hang = 0
        try:
            with lock:
                try:
                    status, body, headers, raw, ctype, hang = self._api(url, q, raw_body, entry)
                except Reply as rep:
                    status, body, headers, raw, ctype = rep.status, rep.body, rep.headers, rep.raw, rep.ctype
                    if status not in (304,) and not any(h[0] == "x-ratelimit-limit" for h in headers) \
                            and not getattr(rep, "bare", False):
                        headers = headers + rate_headers()
                entry["status"] = status if hang == 0 else -1
        except Exception as e:  # a bug in the fake: make it loud
            status, body, headers, raw, ctype = 500, error_body(500, "fake bug: %r" % e), [], None, "application/json"
            entry["status"] = 500
        if hang > 0:
            time.sleep(hang / 1000.0)
            self.close_connection = True
            return
        if raw is None:
            raw = b"" if body is None else json.dumps(body).encode()
        headers = list(headers)
        headers.append(("X-GitHub-Request-Id", "FAKE:%d" % entry["seq"]))
        self._write(status, raw, headers, ctype)

    def _api(self, url, q, raw_body, entry):
        """Lock held. Returns (status, body, headers, raw, ctype, hang_ms) or raises Reply."""
        h = self.headers
        auth = h.get("Authorization") or ""
        is_app = url.path.startswith("/app/")
        # header contract
        ua = h.get("User-Agent")
        if not ua or not ua.strip():
            raise Reply(400, error_body(400, "Request forbidden by administrative rules. "
                                             "Please make sure your request has a User-Agent header"))
        if h.get("Accept") not in ACCEPTS:
            raise Reply(415, error_body(415, "Unsupported 'Accept' header: %r. Must accept "
                                             "'application/vnd.github+json'" % h.get("Accept")))
        if h.get("X-GitHub-Api-Version") not in API_VERSIONS:
            raise Reply(400, error_body(400, "Invalid API version: %r" % h.get("X-GitHub-Api-Version")))
        kind, _, cred = auth.partition(" ")
        if not auth:
            raise Reply(401, error_body(401, "Requires authentication"))
        if is_app:
            if kind != "Bearer":
                raise Reply(401, error_body(401, "A JSON web token could not be decoded"))
            verify_jwt(cred)
            entry["auth"] = "jwt"
        else:
            if kind not in ("Bearer", "token") or cred not in S["tokens"]:
                raise Reply(401, error_body(401, "Bad credentials"))
            exp = S["tokens"][cred]
            if exp is not None and time.time() >= exp:
                raise Reply(401, error_body(401, "Bad credentials"))
            entry["auth"] = "bearer:" + cred
        body = {}
        if self.command in ("POST", "PATCH", "PUT"):
            if raw_body:
                try:
                    body = json.loads(raw_body)
                except ValueError:
                    raise Reply(400, error_body(400, "Problems parsing JSON"))
                if not isinstance(body, dict):
                    raise Reply(400, error_body(400, "Problems parsing JSON"))
                if "json" not in (h.get("Content-Type") or ""):
                    raise Reply(400, error_body(400, "Problems parsing JSON"))
            entry["body"] = body
        # primary budget (GET /rate_limit is free)
        rt = S["rate"]
        now = int(time.time())
        if now >= rt["reset"]:
            rt["remaining"] = rt["limit"]
            rt["reset"] = now + 3600
        free = url.path == "/rate_limit"
        if rt["remaining"] <= 0 and not free:
            raise Reply(403, error_body(403, "API rate limit exceeded for installation. "
                                             "If you reach out to GitHub Support for help, please "
                                             "include the request ID."))
        if not free:  # every request costs a unit, errors too; a 304 is refunded below
            rt["remaining"] -= 1
            S["stats"]["rate_used"] += 1
        rule = scripted_failure(self.command, url.path)
        if rule is not None:
            return self._failure(rule)
        status, out, headers = Api(self.command, url.path, q, body).route()
        raw = None
        ctype = "application/json; charset=utf-8"
        if status == 200 and self.command == "GET":
            raw = json.dumps(out).encode()
            etag = 'W/"%s"' % hashlib.sha256(raw).hexdigest()
            headers = headers + [("ETag", etag), ("Cache-Control", "private, max-age=60, s-maxage=60"),
                                 ("Vary", "Accept, Authorization, Cookie, X-GitHub-OTP")]
            if h.get("If-None-Match") == etag:
                S["stats"]["not_modified"] += 1
                rt["remaining"] += 1
                S["stats"]["rate_used"] -= 1
                return 304, None, headers + rate_headers(), b"", ctype, 0
        return status, out, headers + rate_headers(), raw, ctype, 0

    def _failure(self, rule):
        mode = rule["mode"]
        ra = [("retry-after", str(rule["retry_after"]))] if rule["retry_after"] is not None else []
        rt = S["rate"]
        if mode in ("primary", "primary429"):
            rt["remaining"] = 0
            rt["reset"] = int(time.time()) + rule["reset_in"]
            return (403 if mode == "primary" else 429), error_body(403, "API rate limit exceeded for installation."), \
                rate_headers(), None, "application/json", 0
        if mode in ("secondary", "secondary429"):
            st = 403 if mode == "secondary" else 429
            return st, error_body(st, "You have exceeded a secondary rate limit. Please wait a few "
                                      "minutes before you try again."), rate_headers() + ra, None, \
                "application/json", 0
        if mode in ("bare403", "bare429"):
            st = 403 if mode == "bare403" else 429
            rep = Reply(st, error_body(st, "You have exceeded a secondary rate limit. Please wait a "
                                           "few minutes before you try again."), ra)
            rep.bare = True
            raise rep
        if mode == "server":
            return rule["status"], {"message": "Server Error"}, rate_headers(), None, "application/json", 0
        if mode == "hang":
            return 0, None, [], None, "", rule["hang_ms"]
        if mode == "html":
            return 200, None, rate_headers(), b"<html><body><h1>Unicorn!</h1> This page is taking too long to load.</body></html>", "text/html; charset=utf-8", 0
        if mode == "garbage":
            return 200, None, rate_headers(), b"{not json", "application/json; charset=utf-8", 0
        if mode == "permission":
            return 403, error_body(403, "Resource not accessible by integration"), rate_headers(), None, "application/json", 0
        if mode == "unauthorized":
            return 401, error_body(401, "Bad credentials"), rate_headers(), None, "application/json", 0
        return 410, error_body(410, "Gone"), rate_headers(), None, "application/json", 0

    def _control(self, url, q, raw_body):
        try:
            with lock:
                if url.path == "/__stats":
                    out = dict(S["stats"])
                    out["rate_remaining"] = S["rate"]["remaining"]
                    out["blob_port"] = BLOB_PORT[0]
                elif url.path == "/__requests":
                    since = int(q.get("since", ["0"])[0])
                    sub = q.get("path", [""])[0]
                    out = [e for e in S["log"] if e["seq"] > since and sub in e["path"]]
                elif url.path == "/__state":
                    out = {"repos": {}}
                    for name, r in S["repos"].items():
                        rr = dict(r)
                        rr["runs"] = {str(k): dict(v, artifacts=[{"id": a["id"], "name": a["name"]} for a in v["artifacts"]])
                                      for k, v in r["runs"].items()}
                        rr["deployment_statuses"] = {str(k): v for k, v in r["deployment_statuses"].items()}
                        rr["workflows"] = {str(k): v for k, v in r["workflows"].items()}
                        out["repos"][name] = rr
                elif url.path.startswith("/__control/") and self.command == "POST":
                    body = json.loads(raw_body or b"{}")
                    out = control(url.path, body)
                else:
                    raise ValueError("unknown control path")
            self._write(200, json.dumps(out).encode(), [], "application/json")
        except Exception as e:
            self._write(400, json.dumps({"ok": False, "error": repr(e)}).encode(), [], "application/json")

    do_GET = _handle
    do_POST = _handle
    do_PATCH = _handle
    do_PUT = _handle
    do_DELETE = _handle
    do_HEAD = _handle


class BlobHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _send(self, status, raw, ctype):
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):
        url = urlsplit(self.path)
        has_auth = self.headers.get("Authorization") is not None
        with lock:
            S["stats"]["requests"] += 1
            S["stats"]["blob_requests"] += 1
            S["seq"] += 1
            entry = {"seq": S["seq"], "method": "GET", "path": url.path, "query": "",
                     "status": 0, "auth": "none", "if_none_match": None, "body": None,
                     "host": "blob", "blob_auth": has_auth, "ts": time.time()}
            S["log"].append(entry)
            if has_auth:
                S["stats"]["blob_auth_rejected"] += 1
                entry["status"] = 400
                blob, status = None, 400
            else:
                key = url.path[len("/_blob/"):] if url.path.startswith("/_blob/") else ""
                blob = S["blobs"].get(key)
                if blob is None:
                    status = 404
                elif time.time() > blob["expires"]:
                    status, blob = 403, None
                else:
                    status = 200
                entry["status"] = status
        if status == 400:
            self._send(400, b"<?xml version=\"1.0\"?><Error><Code>InvalidAuthenticationInfo</Code>"
                            b"<Message>Authentication information is not given in the correct "
                            b"format.</Message></Error>", "application/xml")
        elif status == 404:
            self._send(404, b"<Error><Code>BlobNotFound</Code></Error>", "application/xml")
        elif status == 403:
            self._send(403, b"<Error><Code>AuthenticationFailed</Code><Message>Signed expiry "
                            b"time has passed</Message></Error>", "application/xml")
        else:
            self._send(200, blob["data"], blob["ctype"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--blob-port", type=int, default=0)
    ap.add_argument("--ready", required=True)
    args = ap.parse_args()
    S.update(fresh_state())
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    api = ThreadingHTTPServer(("127.0.0.1", args.port), ApiHandler)
    blob = ThreadingHTTPServer(("127.0.0.1", args.blob_port), BlobHandler)
    API_PORT[0] = api.server_address[1]
    BLOB_PORT[0] = blob.server_address[1]
    threading.Thread(target=blob.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    tmp = args.ready + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n%d\n" % (API_PORT[0], BLOB_PORT[0]))
    os.rename(tmp, args.ready)
    try:
        api.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    import signal
    import sys
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
