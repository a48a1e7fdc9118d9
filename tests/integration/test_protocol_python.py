#!/usr/bin/env python3
"""SNP/1 cross-language check: Python peers (snp_python.py, written from docs/protocol.md
alone) against the real C broker and the C client (`sentinelctl call`).

usage: test_protocol_python.py SENTINEL_BROKER SENTINELCTL

Starts the broker on free loopback ports with --heartbeat-ms 500 (liveness 3 by default),
runs the checks below in order, stops everything it started, exits 0 on success and 1 with
a message on the first failure (2 on a usage error).
"""

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

try:
    import zmq  # noqa: F401  (Debian: python3-zmq)
except ImportError:
    # A pyenv/venv python without pyzmq ahead of the system one on PATH: use Debian's.
    if os.path.exists("/usr/bin/python3") and os.path.realpath(sys.executable) != \
            os.path.realpath("/usr/bin/python3") and not os.environ.get("SNP_PY_REEXEC"):
        os.environ["SNP_PY_REEXEC"] = "1"
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    sys.stderr.write("test_protocol_python: pyzmq is missing (apt-get install python3-zmq)\n")
    sys.exit(1)

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import snp_python as snp  # noqa: E402

HB_MS = 500
LIVENESS = 3
GRACE_S = HB_MS * LIVENESS / 1000.0
SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


class Failure(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Failure(message)


def log(message):
    sys.stdout.write("test_protocol_python: %s\n" % message)
    sys.stdout.flush()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s, step_s=0.02):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return value
        time.sleep(step_s)


def tcp_listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def note_env(type_, text, n=0, **kw):
    return snp.stamped(type_, note=snp.Note(text, n), **kw).encode()


def decode_reply(answer, what):
    check(answer is not None, "%s: no answer" % what)
    check(answer.kind == "reply", "%s: want REPLY, got %r" % (what, answer))
    try:
        return snp.Envelope.decode(answer.envelope)
    except snp.Malformed as exc:
        raise Failure("%s: the reply envelope does not decode: %s" % (what, exc))


def expect_nak(answer, reason, what):
    check(answer is not None, "%s: no answer, want NAK %s" % (what, snp.reason_name(reason)))
    check(answer.kind == "nak" and answer.reason == reason and not answer.local,
          "%s: want NAK %s from the broker, got %r" % (what, snp.reason_name(reason), answer))


# --- the Python workers' handlers -----------------------------------------------------------


def echo_handler(worker, req):
    """py.echo: answers Note(text) with Note("py:" + text, n + 1), causation = request id."""
    try:
        env = snp.Envelope.decode(req.envelope)
    except snp.Malformed:
        return ("nak", snp.NAK_INVALID)
    req.decoded = env
    text = env.note.text if env.note else ""
    n = env.note.n if env.note else 0
    reply = snp.stamped("py.echo.reply", note=snp.Note("py:" + text, n + 1),
                        causation_id=env.id, correlation_id=env.correlation_id,
                        subject=req.principal)
    return ("reply", reply.encode())


def hold_handler(worker, req):
    """py.hold: text "hold*" is held (answered later by the test), "nak:N" is answered
    NAK N, anything else is echoed."""
    env = snp.Envelope.decode(req.envelope)
    text = env.note.text if env.note else ""
    if text.startswith("hold"):
        return None
    if text.startswith("nak:"):
        return ("nak", int(text[4:]))
    return ("reply", note_env("py.hold.reply", "py:" + text))


# --- checks -----------------------------------------------------------------------------------


class Mesh:
    def __init__(self, broker_bin, ctl_bin):
        self.broker_bin, self.ctl_bin = os.path.abspath(broker_bin), os.path.abspath(ctl_bin)
        self.tmp = tempfile.mkdtemp(prefix="snp-py-")
        self.ports = {name: free_port() for name in ("rpc", "pub", "sub")}
        self.ep = {name: "tcp://127.0.0.1:%d" % port for name, port in self.ports.items()}
        self.ctx = zmq.Context()
        self.broker = None
        self.broker_log = os.path.join(self.tmp, "broker.log")
        self.workers = []
        self.clients = []
        self.socks = []
        self.spawned_at = None

    def start_broker(self):
        env = dict(os.environ, **SAN_ENV)
        with open(self.broker_log, "wb") as out:
            self.broker = subprocess.Popen(
                [self.broker_bin, "--rpc", self.ep["rpc"], "--pub", self.ep["pub"],
                 "--sub", self.ep["sub"], "--heartbeat-ms", str(HB_MS)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.spawned_at = time.monotonic()
        ok = wait_until(lambda: tcp_listening(self.ports["rpc"]) or self.broker.poll() is not None,
                        10.0)
        check(ok and self.broker.poll() is None,
              "the broker did not start (exit %r)" % self.broker.poll())

    def worker(self, credits, handler, name):
        w = snp.Worker(self.ctx, self.ep["rpc"], credits, handler, heartbeat_ms=HB_MS,
                       liveness=LIVENESS, name=name, backoff_min_ms=100)
        self.workers.append(w)
        w.start()
        return w

    def client(self):
        c = snp.Client(self.ctx, self.ep["rpc"], heartbeat_ms=HB_MS, liveness=LIVENESS)
        self.clients.append(c)
        return c

    def raw_dealer(self):
        s = snp.new_dealer(self.ctx, self.ep["rpc"])
        self.socks.append(s)
        return s

    def services(self, client, timeout_s=2.0):
        """broker.services as (Envelope, {name: ServiceInfo})."""
        env = decode_reply(client.call("broker.services", b"", deadline_ms=2000,
                                       timeout_s=timeout_s), "broker.services")
        return env, {s.name: s for s in (env.services or [])}

    def wait_registered(self, client, service, workers, timeout_s=5.0):
        seen = [None]

        def ready():
            _, services = self.services(client)
            seen[0] = services.get(service)
            return seen[0] is not None and seen[0].workers == workers

        check(wait_until(ready, timeout_s), "broker.services never showed %s with %d worker(s);"
              " last: %r" % (service, workers, seen[0]))

    def write_config(self):
        path = os.path.join(self.tmp, "sentinel.yml")
        with open(path, "w") as f:
            f.write("namespace: \"snp-py:\"\n"
                    "state_dir: %s\n"
                    "broker:\n"
                    "  rpc: %s\n  pub: %s\n  sub: %s\n"
                    "  curve: false\n  heartbeat_ms: %d\n  heartbeat_liveness: %d\n"
                    "redis:\n  unix_path: %s\n"
                    % (os.path.join(self.tmp, "state"), self.ep["rpc"], self.ep["pub"],
                       self.ep["sub"], HB_MS, LIVENESS, os.path.join(self.tmp, "redis.sock")))
        return path

    def run_ctl(self, args, timeout_s=15.0):
        env = dict(os.environ, **SAN_ENV)
        env.pop("SENTINEL_CONFIG", None)
        proc = subprocess.run([self.ctl_bin] + args, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout_s, env=env, cwd=self.tmp)
        return proc.returncode, proc.stdout.decode(errors="replace"), \
            proc.stderr.decode(errors="replace")

    def stop(self):
        for w in self.workers:
            w.stop()
        for c in self.clients:
            c.close()
        for s in self.socks:
            s.close(0)
        rc = None
        if self.broker is not None and self.broker.poll() is None:
            self.broker.send_signal(signal.SIGTERM)
            try:
                rc = self.broker.wait(10)
            except subprocess.TimeoutExpired:
                self.broker.kill()
                self.broker.wait()
                rc = "killed after 10 s"
        elif self.broker is not None:
            rc = "exited early with %r" % self.broker.returncode
        self.ctx.destroy(linger=0)
        return rc

    def broker_log_text(self):
        try:
            with open(self.broker_log, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""


def check_startup_grace(m):
    """§5.4: during the first heartbeat_ms x liveness, a request for a service nobody has
    registered yet is queued, and served once a worker registers."""
    c = m.client()
    late = c.request("py.late", note_env("py.late", "early"), deadline_ms=4000)
    never = c.request("py.never", b"", deadline_ms=10000)
    c.pump(0.2)
    check(late not in c.answers, "py.late was answered before any worker: %r"
          % c.answers.get(late))
    # queueing does not make a service known: broker.services does not list them
    _, services = m.services(c)
    check("py.late" not in services and "py.never" not in services,
          "§5.4: services only queued in the grace are listed: %r" % sorted(services))
    w = m.worker({"py.late": 1}, hold_handler, "w-late")
    answer = c.wait(*late, timeout_s=4.0)
    check(answer is not None and answer.kind == "reply",
          "§5.4 startup grace: py.late requested %.2f s after the broker was spawned, before its"
          " worker registered, want REPLY, got %r" % (time.monotonic() - m.spawned_at, answer))
    # py.never is never served: when the grace ends it is answered no-such-service at once,
    # not expired at its deadline (10 s)
    answer = c.wait(*never, timeout_s=GRACE_S + 4.0)
    expect_nak(answer, snp.NAK_NO_SUCH_SERVICE, "§5.4 py.never queued during the grace")
    check(answer.at - m.spawned_at < GRACE_S + 2.0,
          "§5.4 py.never answered %.2f s after spawn, want at the grace's end (%.1f s)"
          % (answer.at - m.spawned_at, GRACE_S))
    log("  py.never (queued during the grace, never served) got NAK %s %.2f s after spawn"
        % (snp.reason_name(answer.reason), answer.at - m.spawned_at))
    w.stop()
    check(w.snapshot()["error"] is None, "w-late failed: %s" % w.snapshot()["error"])


def check_python_echo(m, c, w):
    """(1) a Python worker answers a Python client; fields copied as §2.3 says."""
    rid, att = c.request("py.echo", note_env("py.echo", "hello", 41, correlation_id="run-1"),
                         deadline_ms=3000, attempt=1)
    env = decode_reply(c.wait(rid, att, 4.0), "py.echo")
    check(env.note is not None and env.note.text == "py:hello" and env.note.n == 42,
          "py.echo: wrong reply body %r" % env)
    check(env.correlation_id == "run-1", "py.echo: correlation id lost: %r" % env)
    req = w.snapshot()["requests"][-1]
    check(req.service == "py.echo" and req.request_id == rid and req.attempt == 1,
          "py.echo: worker saw %r" % req)
    check(req.principal == "anonymous", "§6: principal without CURVE is %r, want anonymous"
          % req.principal)
    check(0 < req.deadline_ms <= 3000, "§2.3: B→W deadline_ms %d not in (0, 3000]"
          % req.deadline_ms)
    check(1 <= len(req.route) <= 255, "route of %d bytes" % len(req.route))
    # attempt is copied, whatever it is
    rid, att = c.request("py.echo", note_env("py.echo", "seven"), deadline_ms=3000, attempt=7)
    answer = c.wait(rid, att, 4.0)
    check(answer is not None and answer.kind == "reply" and answer.attempt == 7,
          "attempt 7: got %r" % answer)
    # deadline 0 means the broker default (30 s): the worker sees 0 < remaining <= 30000
    rid, att = c.request("py.echo", note_env("py.echo", "dflt"), deadline_ms=0)
    decode_reply(c.wait(rid, att, 4.0), "deadline 0")
    seen = w.snapshot()["requests"][-1].deadline_ms
    check(0 < seen <= 30000 and seen > 25000,
          "§2.2: deadline_ms 0 should become the 30000 ms default, worker saw %d" % seen)
    # the broker never decodes a body: garbage is relayed unchanged, the worker refuses it
    n = len(w.snapshot()["requests"])
    rid, att = c.request("py.echo", b"\xff\xff\xff", deadline_ms=3000)
    expect_nak(c.wait(rid, att, 3.0), snp.NAK_INVALID, "a body that is not an Envelope")
    reqs = w.snapshot()["requests"][n:]
    check(len(reqs) == 1 and reqs[0].envelope == b"\xff\xff\xff",
          "§1: the garbage body did not reach the worker unchanged: %r" % reqs)
    # pipelined: 40 requests in flight with credit 2, every answer matches its id
    ids = [c.request("py.echo", note_env("py.echo", "p%d" % i, i), deadline_ms=5000)
           for i in range(40)]
    for i, key in enumerate(ids):
        env = decode_reply(c.wait(*key, timeout_s=6.0), "pipelined %d" % i)
        check(env.note.text == "py:p%d" % i and env.note.n == i + 1,
              "pipelined %d: got the answer %r" % (i, env))
    check(not c.unexpected, "unexpected messages: %r" % c.unexpected)


def check_c_client(m, w):
    """(2) sentinelctl call (the C client, sn_rpc) gets the Python worker's reply."""
    cfg = m.write_config()
    before = len(w.snapshot()["requests"])
    rc, out, err = m.run_ctl(["-c", cfg, "-o", "json", "call", "py.echo", "--data",
                              '{"note":{"text":"from-c","n":"5"}}', "--timeout", "5000"])
    check(rc == 0, "sentinelctl call py.echo: exit %d\nstdout: %s\nstderr: %s" % (rc, out, err))
    try:
        doc = json.loads(out)
    except ValueError:
        raise Failure("sentinelctl call: stdout is not JSON: %r" % out)
    text = json.dumps(doc)
    check("py:from-c" in text, "sentinelctl call: the reply %s lacks the note text py:from-c"
          % text)
    check("py.echo.reply" in text, "sentinelctl call: the reply %s lacks its type" % text)
    reqs = w.snapshot()["requests"][before:]
    check(len(reqs) == 1, "the worker saw %d requests from sentinelctl" % len(reqs))
    env = getattr(reqs[0], "decoded", None)
    check(env is not None, "the worker could not decode sentinelctl's envelope")
    check(env.type == "py.echo" and env.source.startswith("sentinel/ctl/") and len(env.id) == 26
          and env.note is not None and env.note.text == "from-c",
          "sentinelctl's request envelope: %r" % env)
    log("  sentinelctl call py.echo -> %s" % text)
    # and the C client reports a NAK
    rc, out, err = m.run_ctl(["-c", cfg, "call", "py.nobody", "--data", "{}"])
    check(rc == 1 and "no-such-service" in err,
          "sentinelctl call py.nobody: want exit 1 and no-such-service on stderr, got %d / %r"
          % (rc, err))


def check_no_such_service(m, c):
    """(3) after the grace, a service nobody serves: NAK no-such-service, at once."""
    left = GRACE_S + 0.3 - (time.monotonic() - m.spawned_at)
    if left > 0:
        c.pump(left)
    t0 = time.monotonic()
    answer = c.call("py.nobody", note_env("py.nobody", "x"), deadline_ms=5000, timeout_s=3.0)
    expect_nak(answer, snp.NAK_NO_SUCH_SERVICE, "py.nobody")
    check(answer.at - t0 < 1.0, "no-such-service took %.2f s" % (answer.at - t0))


def check_worker_lost(m, c):
    """(4) a worker that stops heartbeating while holding a request: the client gets NAK
    worker-lost; its late REPLY is not relayed; its next heartbeat gets DISCONNECT; it
    reconnects with a new socket, READY, and serves again."""
    w = m.worker({"py.hold": 1}, hold_handler, "w-hold")
    m.wait_registered(c, "py.hold", 1)
    key = c.request("py.hold", note_env("py.hold", "hold-1"), deadline_ms=20000)
    snap = w.wait_for(lambda s: len(s["requests"]) == 1, 3.0)
    check(snap is not None, "w-hold never got its request")
    held = snap["requests"][0]
    w.pause()
    t0 = time.monotonic()
    answer = c.wait(*key, timeout_s=GRACE_S + 3.0)
    expect_nak(answer, snp.NAK_WORKER_LOST, "held by a silent worker")
    took = answer.at - t0
    check(GRACE_S - HB_MS / 1000.0 - 0.1 <= took <= GRACE_S + 1.5,
          "worker-lost came %.2f s after the worker went silent (heartbeat %d ms x %d)"
          % (took, HB_MS, LIVENESS))
    log("  worker-lost %.2f s after the worker went silent" % took)
    _, services = m.services(c)
    info = services.get("py.hold")
    check(info is not None and info.workers == 0,
          "§7: the dead worker is still listed: %r" % info)
    # the hung worker wakes up, answers the old request, heartbeats: DISCONNECT, reconnect
    w.resume()
    w.reply(held, note_env("py.hold.reply", "too late"))
    snap = w.wait_for(lambda s: s["disconnects"] >= 1 and s["connects"] >= 2, 5.0)
    check(snap is not None, "§3.4: no DISCONNECT/reconnect after the dead worker spoke again: %r"
          % w.snapshot())
    m.wait_registered(c, "py.hold", 1)
    check(not c.unexpected, "the late REPLY reached the client: %r" % c.unexpected)
    answer = c.call("py.hold", note_env("py.hold", "again"), deadline_ms=3000)
    env = decode_reply(answer, "py.hold after the reconnect")
    check(env.note.text == "py:again", "py.hold after the reconnect: %r" % env)
    return w


def check_cancel_expired_dup(m, c, w):
    """§4 CANCEL, §5.3 expired, §5.5 duplicate, worker NAK relayed (py.hold, credit 1)."""
    # CANCEL of a dispatched request is forwarded with its ids and route, credit returns
    n = len(w.snapshot()["requests"])
    key = c.request("py.hold", note_env("py.hold", "hold-2"), deadline_ms=10000, attempt=3)
    snap = w.wait_for(lambda s: len(s["requests"]) == n + 1, 3.0)
    check(snap is not None, "hold-2 not dispatched")
    req = snap["requests"][-1]
    c.cancel(*key)
    snap = w.wait_for(lambda s: len(s["cancels"]) == 1, 3.0)
    check(snap is not None, "§4: the worker never got the CANCEL")
    cancel = snap["cancels"][0]
    check((cancel.request_id, cancel.attempt, cancel.route) ==
          (req.request_id, req.attempt, req.route),
          "CANCEL %r does not carry the request's ids and route %r" % (cancel, req))
    before = counters(m, c)["stale_replies"]
    w.reply(req, note_env("py.hold.reply", "after its cancel"))  # §3.3: dropped
    c.pump(2 * HB_MS / 1000.0)
    check(counters(m, c)["stale_replies"] == before + 1,
          "§4: a REPLY after CANCEL was not counted as a stale reply")
    check(w.snapshot()["disconnects"] == 1, "a REPLY after CANCEL got the worker DISCONNECTed")
    check(key not in c.answers and not c.unexpected,
          "§4: something came for a cancelled request: %r %r" % (c.answers.get(key), c.unexpected))
    answer = c.call("py.hold", note_env("py.hold", "after-cancel"), deadline_ms=2000)
    decode_reply(answer, "§3.1: credit returned by CANCEL")

    # expired: credit 1 is taken by a held request, the next one waits in the queue
    n = len(w.snapshot()["requests"])
    held_key = c.request("py.hold", note_env("py.hold", "hold-3"), deadline_ms=10000)
    snap = w.wait_for(lambda s: len(s["requests"]) == n + 1, 3.0)
    check(snap is not None, "hold-3 not dispatched")
    held = snap["requests"][-1]
    t0 = time.monotonic()
    answer = c.call("py.hold", note_env("py.hold", "queued"), deadline_ms=600, timeout_s=3.0)
    expect_nak(answer, snp.NAK_EXPIRED, "queued past its deadline")
    check(0.55 <= answer.at - t0 <= 1.5, "expired after %.2f s, deadline 0.6 s"
          % (answer.at - t0))
    check(len(w.snapshot()["requests"]) == n + 1, "the expired request reached the worker")

    # duplicate (client, request_id) while outstanding: NAK invalid (for the new attempt)
    dup = c.request("py.hold", note_env("py.hold", "dup"), deadline_ms=3000,
                    request_id=held_key[0], attempt=held_key[1] + 1)
    answer = c.wait(*dup, timeout_s=2.0)
    expect_nak(answer, snp.NAK_INVALID, "§5.5 duplicate request id")
    w.reply(held, note_env("py.hold.reply", "hold-3 done"))
    env = decode_reply(c.wait(*held_key, timeout_s=3.0), "hold-3 after the duplicate")
    check(env.note.text == "hold-3 done", "hold-3: %r" % env)

    # a worker's NAK is relayed unchanged
    answer = c.call("py.hold", note_env("py.hold", "nak:5"), deadline_ms=2000)
    expect_nak(answer, snp.NAK_OVERLOADED, "worker NAK overloaded")
    check(not c.unexpected, "unexpected messages: %r" % c.unexpected)


def check_malformed(m, c):
    """§9: a malformed REQUEST whose meta could be read is answered NAK invalid; other
    malformed messages are dropped without an answer."""
    s = m.raw_dealer()

    def answer_to(frames, timeout_s=1.5):
        """The first non-HEARTBEAT answer on s; keeps the client c heartbeating."""
        s.send_multipart(frames)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            c.pump(0.01)
            while s.poll(0, zmq.POLLIN):
                got = s.recv_multipart()
                if got[0] != snp.header(snp.HEARTBEAT):
                    return got
        return None

    want = [snp.header(snp.NAK), snp.encode_ids(11, 1), bytes([snp.NAK_INVALID])]
    got = answer_to(snp.msg_request(b"bad service", 11, 1000, 1, b""))
    check(got == want, "service with a space: want %r, got %r" % (want, got))
    want = [snp.header(snp.NAK), snp.encode_ids(12, 2), bytes([snp.NAK_INVALID])]
    got = answer_to(snp.msg_request(b"py.echo", 12, snp.MAX_DEADLINE_MS + 1, 2, b""))
    check(got == want, "deadline over 86 400 000: want %r, got %r" % (want, got))
    # §9: any malformed REQUEST whose meta frame reads with request_id != 0 is answered
    want = [snp.header(snp.NAK), snp.encode_ids(13, 1), bytes([snp.NAK_INVALID])]
    got = answer_to(snp.msg_request(b"py.echo", 13, 1000, 1, b"") + [b"extra"])
    check(got == want, "REQUEST with an extra frame: want %r, got %r" % (want, got))
    want = [snp.header(snp.NAK), snp.encode_ids(17, 1), bytes([snp.NAK_INVALID])]
    got = answer_to(snp.msg_request(b"py.echo", 17, 1000, 1, b"")[:3])
    check(got == want, "REQUEST without its envelope frame: want %r, got %r" % (want, got))
    want = [snp.header(snp.NAK), snp.encode_ids(18, 0), bytes([snp.NAK_INVALID])]
    got = answer_to(snp.msg_request(b"py.echo", 18, 1000, 0, b""))
    check(got == want, "§2.2 REQUEST with attempt 0: want %r, got %r" % (want, got))
    # request_id 0 cannot be answered (`ids` with request_id 0 is malformed): dropped, counted
    before = counters(m, c)["malformed"]
    got = answer_to(snp.msg_request(b"py.echo", 0, 1000, 1, b""), 0.5)
    check(got is None, "request_id 0: want no answer, got %r" % got)
    check(counters(m, c)["malformed"] == before + 1, "request_id 0 was not counted as malformed")
    # bad signature / version / command: dropped, no answer, no DISCONNECT
    for frames, what in (([b"SNQ\x01\x02", b"py.echo", snp.encode_meta(14, 1000, 1), b""],
                          "bad signature"),
                         ([b"SNP\x02\x02", b"py.echo", snp.encode_meta(15, 1000, 1), b""],
                          "version 2"),
                         ([b"SNP\x01\x09"], "command 9"),
                         ([b"SNP\x01\x02\x00", b"py.echo", snp.encode_meta(16, 1000, 1), b""],
                          "6-byte header")):
        got = answer_to(frames, timeout_s=0.3)
        check(got is None, "%s: want no answer, got %r" % (what, got))


class RawPeer:
    """A bare DEALER for probes: sends what it is told; while waiting it heartbeats (as a
    worker or a client, unless silent) and keeps the Python client c heartbeating."""

    def __init__(self, m, c, worker, silent=False):
        self.s, self.c, self.worker, self.silent = m.raw_dealer(), c, worker, silent
        self.next_hb = time.monotonic() + HB_MS / 1000.0

    def send(self, frames):
        self.s.send_multipart(frames)

    def recv(self, timeout_s):
        """The next non-HEARTBEAT message, or None after timeout_s."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.c.pump(0.01)
            if not self.silent and time.monotonic() >= self.next_hb:
                self.s.send_multipart(snp.msg_heartbeat(self.worker))
                self.next_hb = time.monotonic() + HB_MS / 1000.0
            while self.s.poll(0, zmq.POLLIN):
                got = self.s.recv_multipart()
                if got[0] != snp.header(snp.HEARTBEAT):
                    return got
        return None


def counters(m, c):
    env, _ = m.services(c)
    return {k: int(v) for k, v in env.labels.items()}


def check_edge_cases(m, c, wh):
    """Probes of the less obvious rules: a dead client's dispatched request is cancelled to
    its worker (§7), stale replies (§4), unknown NAK reasons (§2.4), a worker leaving with
    DISCONNECT (§2.1), a malformed READY (§2.3), credit 0 queueing and the queue bound
    (§3.1, §3.2, §5.2)."""
    # §7: a client that goes silent: its dispatched request is cancelled to the worker
    dead = RawPeer(m, c, worker=False, silent=True)
    n_req, n_cancel = len(wh.snapshot()["requests"]), len(wh.snapshot()["cancels"])
    dead.send(snp.msg_request(b"py.hold", 500, 20000, 1, note_env("py.hold", "hold-dead")))
    t0 = time.monotonic()
    snap = wh.wait_for(lambda s: len(s["requests"]) == n_req + 1, 3.0)
    check(snap is not None, "hold-dead not dispatched")
    end = time.monotonic() + GRACE_S + 2.0
    while len(wh.snapshot()["cancels"]) == n_cancel and time.monotonic() < end:
        c.pump(0.02)
    cancels = wh.snapshot()["cancels"][n_cancel:]
    check(len(cancels) == 1 and (cancels[0].request_id, cancels[0].attempt) == (500, 1),
          "§7: a dead client's dispatched request was not cancelled to its worker: %r" % cancels)
    log("  dead client: CANCEL reached the worker %.2f s after the request"
        % (time.monotonic() - t0))
    # §7.2: the dead client speaks again: DISCONNECT (once); its new REQUEST worker-lost
    dead.send(snp.msg_heartbeat(worker=False))
    got = dead.recv(1.0)
    check(got == [snp.header(snp.DISCONNECT)],
          "§7.2: a client declared dead that speaks again: want DISCONNECT, got %r" % got)
    dead.send(snp.msg_request(b"py.hold", 501, 5000, 1, b""))
    got = dead.recv(1.0)
    check(got == [snp.header(snp.NAK), snp.encode_ids(501, 1), bytes([snp.NAK_WORKER_LOST])],
          "§7.2: a REQUEST from a client told DISCONNECT: want NAK worker-lost, got %r" % got)
    got = dead.recv(0.3)
    check(got is None, "§7.2: a second message after DISCONNECT: %r" % got)

    # a raw worker for py.raw and a raw client
    rw = RawPeer(m, c, worker=True)
    rw.send(snp.msg_ready({"py.raw": 2}))
    m.wait_registered(c, "py.raw", 1)
    rc = RawPeer(m, c, worker=False)

    def dispatch(request_id):
        rc.send(snp.msg_request(b"py.raw", request_id, 5000, 1, b""))
        got = rw.recv(2.0)
        check(got is not None and got[0] == snp.header(snp.REQUEST),
              "py.raw %d: the raw worker got %r" % (request_id, got))
        msg = snp.parse_from_broker(got)
        check(msg.request_id == request_id, "py.raw: dispatched %r" % msg)
        return msg

    # §2.4/§9: a worker NAK with an unknown reason (9) is malformed: the client gets NAK
    # worker-lost for it (not silence, not the bad reason) and the worker's credit returns
    before = counters(m, c)
    req = dispatch(600)
    rw.send([snp.header(snp.NAK), snp.encode_ids(600, 1), req.route, b"\x09"])
    got = rc.recv(1.0)
    want = [snp.header(snp.NAK), snp.encode_ids(600, 1), bytes([snp.NAK_WORKER_LOST])]
    check(got == want, "NAK reason 9: want %r for the client, got %r" % (want, got))
    after = counters(m, c)
    check(after["malformed"] == before["malformed"] + 1 and
          after["nak.worker-lost"] == before["nak.worker-lost"] + 1,
          "NAK reason 9: want malformed +1 and nak.worker-lost +1: %r -> %r" % (before, after))
    _, services = m.services(c)
    check(services["py.raw"].idle_credit == 2, "NAK reason 9: the credit did not return: %r"
          % services["py.raw"])

    # §4: a REPLY for a request the worker does not hold: dropped, counted, no DISCONNECT
    before = counters(m, c)["stale_replies"]
    rw.send(snp.msg_reply(999, 1, req.route, b""))
    got = rw.recv(0.3)
    check(got is None, "§4: a stale REPLY from a registered worker got %r" % got)
    check(counters(m, c)["stale_replies"] == before + 1, "§4: stale_replies did not count it")

    # a worker leaving with DISCONNECT while it holds a request (§2.1 says it MAY)
    req = dispatch(601)
    rw.send(snp.msg_disconnect())
    t0 = time.monotonic()
    got = rc.recv(GRACE_S + 1.0)
    check(got == [snp.header(snp.NAK), snp.encode_ids(601, 1), bytes([snp.NAK_WORKER_LOST])],
          "a worker that left with DISCONNECT held a request: the client got %r" % got)
    log("  worker left with DISCONNECT -> client got NAK worker-lost after %.2f s"
        % (time.monotonic() - t0))
    _, services = m.services(c)
    check(services.get("py.raw") is None or services["py.raw"].workers == 0,
          "the worker that left is still listed: %r" % services.get("py.raw"))

    # §2.3: READY with credit 1001 is malformed: dropped; the peer is not a worker, so its
    # worker HEARTBEAT is answered DISCONNECT (§3.4)
    bad = RawPeer(m, c, worker=True, silent=True)
    bad.send([snp.header(snp.READY), struct.pack(">H", 1001) + b"py.bad"])
    got = bad.recv(0.3)
    check(got is None, "READY with credit 1001 got %r" % got)
    _, services = m.services(c)
    check("py.bad" not in services, "READY with credit 1001 registered py.bad: %r"
          % services.get("py.bad"))
    bad.send(snp.msg_heartbeat(worker=True))
    got = bad.recv(1.0)
    check(got == [snp.header(snp.DISCONNECT)],
          "§3.4: a worker HEARTBEAT from an unregistered peer: want DISCONNECT, got %r" % got)

    # §3.2/§5.2: credit 0 = registered, nothing sent; the queue holds max_queue (1000)
    # requests, the next is NAK overloaded at once; READY credit 1 drains it
    wq = m.worker({"py.full": 0}, hold_handler, "w-full")
    m.wait_registered(c, "py.full", 1)
    keys = [c.request("py.full", note_env("py.full", "q%d" % i), deadline_ms=20000)
            for i in range(1001)]
    answer = c.wait(*keys[-1], timeout_s=3.0)
    expect_nak(answer, snp.NAK_OVERLOADED, "the 1001st queued request")
    check(len(c.answers) == 0 or all(k not in c.answers for k in keys[:-1]),
          "queued requests were answered")
    _, services = m.services(c)
    info = services.get("py.full")
    check(info is not None and info.queued == 1000 and info.idle_credit == 0 and
          info.workers == 1, "py.full: want 1000 queued, 0 idle credit, got %r" % info)
    check(not wq.snapshot()["requests"], "a worker with credit 0 got a request")
    for key in keys[1:-1]:
        c.cancel(*key)
    # The CANCELs travel on the client's socket and READY on the worker's: the broker may
    # see them in any order, so wait until it has applied every CANCEL before READY.
    deadline = time.monotonic() + 10.0
    while True:
        _, services = m.services(c)
        info = services.get("py.full")
        if info is not None and info.queued == 1:
            break
        check(time.monotonic() < deadline,
              "§4: the broker still queues %r after 999 CANCELs" % (info and info.queued))
        c.pump(0.05)
    wq.set_credit("py.full", 1)
    answer = c.wait(*keys[0], timeout_s=3.0)
    env = decode_reply(answer, "the queued request after READY credit 1")
    check(env.note.text == "py:q0", "py.full: %r" % env)
    c.pump(0.3)
    reqs = wq.snapshot()["requests"]
    check(len(reqs) == 1, "§4: cancelled queued requests reached the worker: %d" % len(reqs))
    check(not c.unexpected, "unexpected messages: %r" % c.unexpected)
    wq.stop()


def check_broker_services(m, c, served_min):
    """(5) broker.services (§7.1): py.echo listed; type, source, counters."""
    env, services = m.services(c)
    check(env.type == "broker.services", "type %r" % env.type)
    check(env.source == "sentinel/broker/%d" % m.broker.pid,
          "source %r, want sentinel/broker/%d" % (env.source, m.broker.pid))
    info = services.get("py.echo")
    check(info is not None, "py.echo not listed: %r" % services)
    check(info.workers == 1 and info.idle_credit == 2 and info.queued == 0,
          "py.echo: want 1 worker, idle credit 2, 0 queued, got %r" % info)
    check(info.served >= served_min, "py.echo served %d < %d" % (info.served, served_min))
    names = ["relayed", "publish_refused", "subscribe_refused", "subscribed", "malformed",
             "stale_replies", "revoked_dropped", "requests", "replies"]
    missing = [k for k in names if k not in env.labels]
    check(not missing, "counters missing from labels: %s (have %s)" % (missing,
                                                                       sorted(env.labels)))
    bad = {k: v for k, v in env.labels.items() if not v.isdigit()}
    check(not bad, "counters that are not decimal strings: %r" % bad)
    naks = sorted(k for k in env.labels if k.startswith("nak."))
    check(naks == sorted("nak." + name for name in snp.REASON_NAMES.values()),
          "§7.1: want one nak.<reason> counter per reason, even at 0: %s" % naks)
    for reason in ("no-such-service", "expired", "worker-lost", "overloaded", "invalid"):
        key = "nak." + reason
        check(int(env.labels[key]) >= 1, "counter %s is 0 (nak counters: %s)" % (key, naks))
    check(int(env.labels["relayed"]) >= 2 and int(env.labels["subscribed"]) >= 1,
          "§8: relayed %s, subscribed %s after the events check"
          % (env.labels["relayed"], env.labels["subscribed"]))
    check(int(env.labels["malformed"]) >= 8, "malformed = %s after the malformed probes"
          % env.labels["malformed"])
    log("  broker.services: %s; labels %s" % (sorted(services),
                                              ", ".join("%s=%s" % kv
                                                        for kv in sorted(env.labels.items()))))
    check(len(env.id) == 26 and env.time_unix_ms > 0, "broker.services not stamped: %r" % env)
    return env


def check_events(m):
    """(6) a PUB on `pub` -> the broker -> a SUB on `sub`, frames unchanged; bad frame
    counts dropped; prefix filtering."""
    pub = m.ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(m.ep["pub"])
    sub = m.ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"py.")
    sub.connect(m.ep["sub"])
    m.socks += [pub, sub]
    # the subscription has to travel SUB -> broker XPUB -> broker XSUB -> PUB: publish until
    # one arrives (best effort bus, section 8)
    seq = 0
    got = None
    deadline = time.monotonic() + 5.0
    while got is None and time.monotonic() < deadline:
        seq += 1
        frames = [b"py.event", snp.stamped("py.event", note=snp.Note("ev", seq)).encode()]
        pub.send_multipart(frames)
        if sub.poll(50, zmq.POLLIN):
            got = sub.recv_multipart()
    check(got is not None, "no event reached the subscriber in 5 s")
    check(len(got) == 2 and got[0] == b"py.event", "event frames %r" % got)
    env = snp.Envelope.decode(got[1])
    check(env.type == "py.event" and env.note is not None and env.note.text == "ev",
          "event envelope %r" % env)
    while sub.poll(300, zmq.POLLIN):  # drain the probes still in flight
        sub.recv_multipart()
    last = snp.stamped("py.event", note=snp.Note("last", 999))
    pub.send_multipart([b"py.event"])                               # 1 frame: dropped
    pub.send_multipart([b"py.event", b"\x1a\x01t", b"extra"])        # 3 frames: dropped
    pub.send_multipart([b"other.topic", snp.stamped("other.topic").encode()])  # not py.*
    pub.send_multipart([b"py.event", last.encode()])
    check(sub.poll(3000, zmq.POLLIN), "the last event never arrived")
    got = sub.recv_multipart()
    check(got == [b"py.event", last.encode()],
          "§8: want exactly the last valid event (1- and 3-frame messages dropped, other.topic"
          " filtered), got %r" % got)
    if sub.poll(300, zmq.POLLIN):
        raise Failure("an extra event arrived: %r" % sub.recv_multipart())


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: test_protocol_python.py SENTINEL_BROKER SENTINELCTL\n")
        return 2
    for path in argv[1:]:
        if not os.access(path, os.X_OK):
            sys.stderr.write("test_protocol_python: %s is not executable\n" % path)
            return 2

    def on_alarm(signum, frame):
        raise Failure("the test ran out of time (60 s)")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(60)
    started = time.monotonic()
    m = Mesh(argv[1], argv[2])
    failure = None
    broker_rc = None
    try:
        m.start_broker()
        log("broker pid %d on %s" % (m.broker.pid, ", ".join(sorted(m.ep.values()))))
        steps = []

        def step(name, fn, *args):
            t0 = time.monotonic()
            result = fn(*args)
            log("ok - %s (%.2f s)" % (name, time.monotonic() - t0))
            steps.append(name)
            return result

        step("§5.4 startup grace queues unknown services", check_startup_grace, m)
        c = m.client()
        w = m.worker({"py.echo": 2}, echo_handler, "w-echo")
        m.wait_registered(c, "py.echo", 1)
        step("(1) Python worker answers Python client", check_python_echo, m, c, w)
        step("(2) sentinelctl call gets the Python worker's reply", check_c_client, m, w)
        step("(3) unknown service: NAK no-such-service", check_no_such_service, m, c)
        wh = step("(4) silent worker: NAK worker-lost, DISCONNECT, reconnect",
                  check_worker_lost, m, c)
        step("CANCEL, expired, duplicate, worker NAK", check_cancel_expired_dup, m, c, wh)
        step("§9 malformed requests", check_malformed, m, c)
        step("edge cases: dead client, stale reply, reasons, leaving, queue bound",
             check_edge_cases, m, c, wh)
        step("(6) events PUB -> broker -> SUB", check_events, m)
        step("(5) broker.services lists py.echo, counters", check_broker_services, m, c, 44)
        # heartbeats flowed both ways, nothing malformed came from the broker, the echo
        # worker never lost the broker
        snap = w.snapshot()
        check(snap["error"] is None and wh.snapshot()["error"] is None,
              "a worker thread failed: %s / %s" % (snap["error"], wh.snapshot()["error"]))
        check(snap["heartbeats_in"] >= 3, "§7: the worker got %d heartbeats from the broker"
              % snap["heartbeats_in"])
        check(c.heartbeats_in >= 3, "§7: the client got %d heartbeats" % c.heartbeats_in)
        check(snap["disconnects"] == 0 and snap["liveness_losses"] == 0 and snap["connects"] == 1,
              "the healthy echo worker reconnected: %r" % snap)
        mal = snap["malformed"] + wh.snapshot()["malformed"] + c.malformed
        check(not mal, "malformed messages from the broker: %r" % mal)
        check(c.disconnects == 0, "the client got DISCONNECT")
        check(snap["heartbeat_flags"] == {0} and c.heartbeat_flags == {0},
              "§2.2: the broker's HEARTBEAT flags should be 0 (not a worker): %r %r"
              % (snap["heartbeat_flags"], c.heartbeat_flags))
        log("ok - heartbeats both ways (worker got %d, client got %d), no malformed traffic"
            % (snap["heartbeats_in"], c.heartbeats_in))
    except Failure as exc:
        failure = str(exc)
    except Exception as exc:  # a bug here or an unexpected broker behaviour
        import traceback
        failure = "unexpected %s\n%s" % (exc, traceback.format_exc())
    finally:
        signal.alarm(0)
        try:
            broker_rc = m.stop()
        except Exception as exc:
            failure = failure or "cleanup failed: %r" % exc
    text = m.broker_log_text()
    if failure is None and broker_rc != 0:
        failure = "the broker did not exit 0 on SIGTERM: %r" % (broker_rc,)
    if failure is None and ("AddressSanitizer" in text or "runtime error:" in text or
                            "LeakSanitizer" in text):
        failure = "the broker's log has a sanitizer report"
    if failure is not None:
        sys.stdout.write("FAIL test_protocol_python: %s\n--- broker log (tail) ---\n%s\n"
                         % (failure, "\n".join(text.splitlines()[-60:])))
        shutil.rmtree(m.tmp, ignore_errors=True)
        return 1
    shutil.rmtree(m.tmp, ignore_errors=True)
    log("PASS in %.1f s" % (time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
