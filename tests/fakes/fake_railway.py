#!/usr/bin/env python3
"""A fake of Railway's public GraphQL API (../shared/contracts/railway.md) for the
railway-bridge tests. It enforces the contract and refuses anything off it.

Usage: fake_railway.py --port PORT --ready FILE [--token T] [--project-token P]
                       [--project ID] [--environment ID] [--service ID]

API: POST /graphql/v2 only (other methods 405, other paths 404), Content-Type
application/json, body {"query": str, "variables"?: obj, "operationName"?: str}.
Auth: `Authorization: Bearer <token>` (account/workspace token) or
`Project-Access-Token: <project-token>` with NO Authorization header (scoped to one project
and environment). A bad or missing token, a document or variables off the contract, an
unknown operation: HTTP 200 with a GraphQL errors envelope ({"data": null, "errors": [...]}).
Operations (recognised by the root field of the document; the operation type must match):
  query   serviceInstance(serviceId, environmentId) { latestDeployment activeDeployments }
  query   deployment(id) { id status url staticUrl ... }
  query   deployments(input: {projectId, environmentId, serviceId}, first)
  mutation variableCollectionUpsert(input: {projectId, environmentId, serviceId, variables,
           replace?, skipDeploys?}) -> Boolean
  mutation serviceInstanceDeployV2(environmentId, serviceId, commitSha?) -> String (id)
  mutation deploymentRollback(id) -> Boolean (a new deployment with the old one's
           variables, which also become the service's variables again)
  mutation deploymentRedeploy(id, usePreviousImageTag?) -> Deployment
A deployment goes QUEUED -> BUILDING -> DEPLOYING -> SUCCESS over deploy_ms (then it is the
active one and the previous active one becomes REMOVED), or ends FAILED when it was created
while fail_next > 0. Its url/staticUrl point back at this server, which SERVES
GET /.well-known/sentinel-release.json with the SENTINEL_RELEASE_JSON variable of the
active deployment (404 when there is none) and GET / with "railway app <deploy id>".

GET /__control?key=value&... (reset=1 first restores everything): deploy_ms (default 300),
fail_next N (the next N deployments fail), hold 1 (deployments stay BUILDING until hold=0),
rate_limit N (the next N API requests get 429 with Retry-After: retry_after, default 1),
fail_5xx N (the next N API requests get 503), hang_ms M + hang_count N (the next N API
requests are answered after M ms), html N (the next N API requests get an HTML page with
200), crash_next N (the next N deployments created crash right after going live: they reach
SUCCESS and serve, and the next `deployment(id)` query after the one that reported SUCCESS
finds them CRASHED, no longer serving: an app that dies once it is live).
GET /__stats: {"requests", "rejected", "deployments", "by_deploy_id": {id: n},
"rollbacks", "ops": {op: n}, "last_error", "auth": {"bearer": n, "project": n}}.
The ready FILE is written once the socket listens."""
import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

API_PATH = "/graphql/v2"
CONTROL_DEFAULTS = {
    "deploy_ms": 300,
    "fail_next": 0,
    "hold": 0,
    "rate_limit": 0,
    "retry_after": 1,
    "fail_5xx": 0,
    "hang_ms": 0,
    "hang_count": 0,
    "html": 0,
    "crash_next": 0,
}

lock = threading.Lock()
args = None
ctl = dict(CONTROL_DEFAULTS)
stats = {}
deployments = []  # dicts, oldest first
service_vars = {}  # (service, env) -> dict
counter = [0]


def reset():
    ctl.clear()
    ctl.update(CONTROL_DEFAULTS)
    stats.clear()
    stats.update({"requests": 0, "rejected": 0, "deployments": 0, "by_deploy_id": {},
                  "rollbacks": 0, "ops": {}, "last_error": "", "auth": {"bearer": 0, "project": 0}})
    deployments.clear()
    service_vars.clear()


def now_ms():
    return int(time.monotonic() * 1000)


def base_url(handler):
    return "http://127.0.0.1:%d" % handler.server.server_address[1]


def advance():
    """Moves every deployment along its timeline (called under lock)."""
    t = now_ms()
    for d in deployments:
        if d["status"] in ("SUCCESS", "FAILED", "REMOVED", "CRASHED"):
            continue
        if ctl["hold"]:
            if d["status"] == "QUEUED":
                d["status"] = "BUILDING"
            d["created"] = t  # the clock starts when the hold ends
            continue
        age = t - d["created"]
        if age >= d["deploy_ms"]:
            if d["fail"]:
                d["status"] = "FAILED"
            else:
                for o in deployments:
                    if o is not d and o["service"] == d["service"] and o["env"] == d["env"] \
                            and o["status"] == "SUCCESS":
                        o["status"] = "REMOVED"
                d["status"] = "SUCCESS"
        elif age >= d["deploy_ms"] * 2 // 3:
            d["status"] = "DEPLOYING"
        elif age >= d["deploy_ms"] // 3:
            d["status"] = "BUILDING"


def active(service, env):
    for d in reversed(deployments):
        if d["service"] == service and d["env"] == env and d["status"] == "SUCCESS":
            return d
    return None


def new_deployment(handler, service, env, variables):
    counter[0] += 1
    d = {"id": "dep-%04d" % counter[0], "status": "QUEUED", "created": now_ms(),
         "deploy_ms": int(ctl["deploy_ms"]), "service": service, "env": env,
         "vars": dict(variables), "fail": False, "createdAt": time.time()}
    if int(ctl["fail_next"]) > 0:
        ctl["fail_next"] = int(ctl["fail_next"]) - 1
        d["fail"] = True
    if int(ctl["crash_next"]) > 0:
        ctl["crash_next"] = int(ctl["crash_next"]) - 1
        d["crash"] = True
        d["success_reads"] = 0
    d["url"] = base_url(handler)
    deployments.append(d)
    return d


def find(dep_id):
    for d in deployments:
        if d["id"] == dep_id:
            return d
    return None


def render(d):
    return {"id": d["id"], "status": d["status"], "url": d["url"], "staticUrl": d["url"],
            "projectId": args.project, "environmentId": d["env"], "serviceId": d["service"],
            "canRollback": d["status"] in ("SUCCESS", "REMOVED"),
            "statusUpdatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(d["createdAt"]))}


class GqlError(Exception):
    pass


# root field -> (operation type, required variables of the document with their types)
OPS = {
    "serviceInstance": ("query", {"serviceId": "String!", "environmentId": "String!"}),
    "deployment": ("query", {"id": "String!"}),
    "deployments": ("query", {"input": "DeploymentListInput!"}),
    "variableCollectionUpsert": ("mutation", {"input": "VariableCollectionUpsertInput!"}),
    "serviceInstanceDeployV2": ("mutation", {"environmentId": "String!", "serviceId": "String!"}),
    "deploymentRollback": ("mutation", {"id": "String!"}),
    "deploymentRedeploy": ("mutation", {"id": "String!"}),
}


def parse_document(query):
    """(operation type, root field, declared variables {name: type}) or GqlError."""
    m = re.match(r"\s*(query|mutation)\s*([A-Za-z_][A-Za-z0-9_]*)?\s*(\(([^)]*)\))?\s*\{\s*"
                 r"([A-Za-z_][A-Za-z0-9_]*)", query)
    if not m:
        raise GqlError("Syntax Error: expected an operation")
    if query.count("{") != query.count("}"):
        raise GqlError("Syntax Error: unbalanced braces")
    declared = {}
    if m.group(4):
        for part in m.group(4).split(","):
            part = part.strip()
            if not part:
                continue
            dm = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)\s*:\s*([A-Za-z_\[\]!]+)$", part)
            if not dm:
                raise GqlError("Syntax Error: bad variable definition")
            declared[dm.group(1)] = dm.group(2)
    return m.group(1), m.group(5), declared


def need_str(v, name):
    x = v.get(name)
    if not isinstance(x, str) or not x:
        raise GqlError('Variable "$%s" of required type "String!" was not provided.' % name)
    return x


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):  # quiet
        pass

    def _send(self, status, body, ctype="application/json", headers=()):
        if isinstance(body, str):
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

    def _errors(self, message, code="BAD_REQUEST"):
        with lock:
            stats["rejected"] += 1
            stats["last_error"] = message
        self._send(200, json.dumps({"data": None, "errors": [
            {"message": message, "locations": [], "path": [], "extensions": {"code": code}}]}))

    # ---- GET: control, stats, the deployed app ----
    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/__control":
            with lock:
                q = parse_qs(url.query, keep_blank_values=True)
                if q.get("reset", ["0"])[0] == "1":
                    reset()
                for k, v in q.items():
                    if k in ctl:
                        ctl[k] = int(v[0])
            self._send(200, "ok", "text/plain")
            return
        if url.path == "/__stats":
            with lock:
                body = json.dumps(stats)
            self._send(200, body)
            return
        if url.path in ("/.well-known/sentinel-release.json", "/"):
            with lock:
                advance()
                d = active(args.service, args.environment)
                ident = d["vars"].get("SENTINEL_RELEASE_JSON") if d else None
                dep_id = d["vars"].get("SENTINEL_DEPLOY_ID", "") if d else ""
            if url.path == "/":
                if d:
                    self._send(200, "railway app %s\n" % dep_id, "text/plain")
                else:
                    self._send(404, "no active deployment\n", "text/plain")
                return
            if ident is None:
                self._send(404, "no release\n", "text/plain")
            else:
                self._send(200, ident, "application/json", [("Cache-Control", "no-store")])
            return
        if url.path == API_PATH:
            self._send(405, "method not allowed\n", "text/plain", [("Allow", "POST")])
            return
        self._send(404, "not found\n", "text/plain")

    def do_PUT(self):
        self._send(405 if urlsplit(self.path).path == API_PATH else 404, "no\n", "text/plain")

    do_DELETE = do_PUT
    do_PATCH = do_PUT

    # ---- POST: the API ----
    def do_POST(self):
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length", "0") or "0")
        raw = self.rfile.read(length) if length > 0 else b""
        if url.path != API_PATH:
            self._send(404, "not found\n", "text/plain")
            return
        with lock:
            stats["requests"] += 1
            hang = 0
            if ctl["hang_count"] > 0:
                ctl["hang_count"] -= 1
                hang = ctl["hang_ms"]
            scripted = None
            if ctl["rate_limit"] > 0:
                ctl["rate_limit"] -= 1
                scripted = "429"
            elif ctl["fail_5xx"] > 0:
                ctl["fail_5xx"] -= 1
                scripted = "503"
            elif ctl["html"] > 0:
                ctl["html"] -= 1
                scripted = "html"
            retry_after = ctl["retry_after"]
        if hang > 0:
            time.sleep(hang / 1000.0)
            # The client gave up long ago; its request has no effect.
            return self._send(504, "hung\n", "text/plain")
        if scripted == "429":
            self._send(429, json.dumps({"message": "rate limited"}), "application/json",
                       [("Retry-After", str(retry_after)), ("X-RateLimit-Remaining", "0")])
            return
        if scripted == "503":
            self._send(503, "<html><body>upstream unavailable</body></html>", "text/html")
            return
        if scripted == "html":
            self._send(200, "<html><body>Welcome to the captive portal</body></html>",
                       "text/html")
            return
        ctype = self.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            with lock:
                stats["rejected"] += 1
                stats["last_error"] = "content type %s" % ctype
            self._send(415, json.dumps({"errors": [{"message": "Unsupported Media Type"}]}))
            return
        # Auth: exactly one of the two forms.
        authz = self.headers.get("Authorization")
        ptoken = self.headers.get("Project-Access-Token")
        scope = None
        if authz is not None and ptoken is not None:
            self._errors("Not Authorized", "UNAUTHENTICATED")
            return
        if authz is not None:
            if authz != "Bearer " + args.token:
                self._errors("Not Authorized", "UNAUTHENTICATED")
                return
            kind = "bearer"
        elif ptoken is not None:
            if ptoken != args.project_token:
                self._errors("Project Token not found", "UNAUTHENTICATED")
                return
            kind = "project"
            scope = (args.project, args.environment)
        else:
            self._errors("Not Authorized", "UNAUTHENTICATED")
            return
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            self._errors("Syntax Error: body is not JSON")
            return
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            self._errors("Must provide query string.")
            return
        variables = body.get("variables") or {}
        if not isinstance(variables, dict):
            self._errors("Variables must be an object")
            return
        try:
            optype, field, declared = parse_document(body["query"])
            if field not in OPS:
                raise GqlError('Cannot query field "%s" on type "%s".' %
                               (field, "Query" if optype == "query" else "Mutation"))
            want_type, want_vars = OPS[field]
            if optype != want_type:
                raise GqlError('Cannot query field "%s" on type "%s".' %
                               (field, "Query" if optype == "query" else "Mutation"))
            for name, typ in want_vars.items():
                if declared.get(name) != typ:
                    raise GqlError('Variable "$%s" of type "%s" is required' % (name, typ))
                if name not in variables:
                    raise GqlError('Variable "$%s" of required type "%s" was not provided.'
                                   % (name, typ))
            for name in variables:
                if name not in declared:
                    raise GqlError('Variable "$%s" is not defined by operation.' % name)
            with lock:
                stats["auth"][kind] += 1
                stats["ops"][field] = stats["ops"].get(field, 0) + 1
                advance()
                data = self._run(field, variables, scope)
        except GqlError as e:
            self._errors(str(e))
            return
        self._send(200, json.dumps({"data": data}))

    def _check_scope(self, scope, project, env):
        if scope is not None and (scope[0] != project or scope[1] != env):
            raise GqlError("Not Authorized")

    def _check_service(self, service, env):
        if service != args.service or env != args.environment:
            raise GqlError("Not Authorized")

    def _run(self, field, v, scope):
        if field == "serviceInstance":
            service, env = need_str(v, "serviceId"), need_str(v, "environmentId")
            self._check_scope(scope, args.project, env)
            self._check_service(service, env)
            mine = [d for d in deployments if d["service"] == service and d["env"] == env]
            latest = render(mine[-1]) if mine else None
            act = [render(d) for d in mine if d["status"] == "SUCCESS"]
            return {"serviceInstance": {"latestDeployment": latest, "activeDeployments": act}}
        if field == "deployment":
            d = find(need_str(v, "id"))
            if not d:
                raise GqlError("Deployment not found")
            self._check_scope(scope, args.project, d["env"])
            if d.get("crash") and d["status"] == "SUCCESS":
                if d["success_reads"] >= 1:
                    d["status"] = "CRASHED"
                else:
                    d["success_reads"] += 1
            return {"deployment": render(d)}
        if field == "deployments":
            inp = v.get("input")
            if not isinstance(inp, dict):
                raise GqlError("input must be an object")
            project, env, service = inp.get("projectId"), inp.get("environmentId"), \
                inp.get("serviceId")
            self._check_scope(scope, project, env)
            edges = [{"cursor": d["id"], "node": render(d)} for d in reversed(deployments)
                     if d["service"] == service and d["env"] == env]
            first = v.get("first")
            if isinstance(first, int):
                edges = edges[:first]
            return {"deployments": {"edges": edges,
                                    "pageInfo": {"hasNextPage": False, "endCursor": None}}}
        if field == "variableCollectionUpsert":
            inp = v.get("input")
            if not isinstance(inp, dict):
                raise GqlError("input must be an object")
            project, env, service = inp.get("projectId"), inp.get("environmentId"), \
                inp.get("serviceId")
            variables = inp.get("variables")
            if not isinstance(project, str) or not isinstance(env, str) or \
                    not isinstance(variables, dict):
                raise GqlError("input.projectId, input.environmentId and input.variables "
                               "are required")
            if project != args.project:
                raise GqlError("Not Authorized")
            self._check_scope(scope, project, env)
            self._check_service(service, env)
            for k, val in variables.items():
                if not isinstance(val, str):
                    raise GqlError("variable %s must be a string" % k)
            cur = service_vars.setdefault((service, env), {})
            if inp.get("replace") is True:
                cur.clear()
            cur.update(variables)
            if inp.get("skipDeploys") is not True:
                # Railway redeploys on a variable change unless told not to.
                self._deploy(service, env)
            return {"variableCollectionUpsert": True}
        if field == "serviceInstanceDeployV2":
            service, env = need_str(v, "serviceId"), need_str(v, "environmentId")
            self._check_scope(scope, args.project, env)
            self._check_service(service, env)
            d = self._deploy(service, env)
            return {"serviceInstanceDeployV2": d["id"]}
        if field == "deploymentRollback":
            old = find(need_str(v, "id"))
            if not old:
                raise GqlError("Deployment not found")
            self._check_scope(scope, args.project, old["env"])
            if old["status"] not in ("SUCCESS", "REMOVED"):
                raise GqlError("Deployment cannot be rolled back")
            service_vars[(old["service"], old["env"])] = dict(old["vars"])
            new_deployment(self, old["service"], old["env"], old["vars"])
            stats["rollbacks"] += 1
            return {"deploymentRollback": True}
        if field == "deploymentRedeploy":
            old = find(need_str(v, "id"))
            if not old:
                raise GqlError("Deployment not found")
            self._check_scope(scope, args.project, old["env"])
            d = new_deployment(self, old["service"], old["env"],
                               service_vars.get((old["service"], old["env"]), {}))
            return {"deploymentRedeploy": render(d)}
        raise GqlError("unknown operation")

    def _deploy(self, service, env):
        variables = service_vars.get((service, env), {})
        d = new_deployment(self, service, env, variables)
        stats["deployments"] += 1
        key = variables.get("SENTINEL_DEPLOY_ID", "")
        stats["by_deploy_id"][key] = stats["by_deploy_id"].get(key, 0) + 1
        return d


def main():
    global args
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--token", default="rw-account-token")
    ap.add_argument("--project-token", default="rw-project-token")
    ap.add_argument("--project", default="proj-1")
    ap.add_argument("--environment", default="env-1")
    ap.add_argument("--service", default="svc-1")
    args = ap.parse_args()
    reset()
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
