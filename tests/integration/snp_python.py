"""SNP/1 in Python, written from docs/protocol.md (and proto/sentinel/v1/*.proto) alone.

A cross-language proof of the wire protocol: nothing here was taken from the C sources.
Dependencies: the Python 3 standard library and pyzmq (Debian: python3-zmq). The few
Envelope fields needed are encoded and decoded by a small hand-written protobuf codec, so
python3-protobuf and protoc are not needed.

Parts:
  * protobuf wire helpers and `Envelope` (encode / strict decode, spec section 1)
  * frame codec: builders `msg_*` and `parse_from_broker` (sections 2.1-2.4, 9)
  * `Worker`: a DEALER in its own thread: READY with credit, REQUEST -> REPLY/NAK, CANCEL,
    HEARTBEAT both ways, DISCONNECT/liveness -> close, backoff, new socket, READY (section 3, 7)
  * `Client`: a DEALER used from the calling thread: REQUEST with deadline and attempt,
    REPLY/NAK, CANCEL, HEARTBEAT, liveness (section 4, 7)
"""

import collections
import os
import random
import struct
import threading
import time

import zmq

# --- constants (section 2) ----------------------------------------------------------------

SIGNATURE = b"SNP"
VERSION = 0x01

READY = 0x01
REQUEST = 0x02
REPLY = 0x03
NAK = 0x04
CANCEL = 0x05
HEARTBEAT = 0x06
DISCONNECT = 0x07

COMMAND_NAMES = {
    READY: "READY",
    REQUEST: "REQUEST",
    REPLY: "REPLY",
    NAK: "NAK",
    CANCEL: "CANCEL",
    HEARTBEAT: "HEARTBEAT",
    DISCONNECT: "DISCONNECT",
}

NAK_NO_SUCH_SERVICE = 1
NAK_FORBIDDEN = 2
NAK_EXPIRED = 3
NAK_WORKER_LOST = 4
NAK_OVERLOADED = 5
NAK_INVALID = 6

REASON_NAMES = {
    NAK_NO_SUCH_SERVICE: "no-such-service",
    NAK_FORBIDDEN: "forbidden",
    NAK_EXPIRED: "expired",
    NAK_WORKER_LOST: "worker-lost",
    NAK_OVERLOADED: "overloaded",
    NAK_INVALID: "invalid",
}

FLAG_WORKER = 0x01

MAX_FRAME_BYTES = 1 << 20
MAX_FRAMES = 70
MAX_SERVICES = 64
MAX_CREDIT = 1000
MAX_DEADLINE_MS = 86_400_000
DEFAULT_DEADLINE_MS = 30_000
DEFAULT_HEARTBEAT_MS = 1000
DEFAULT_LIVENESS = 3
BACKOFF_MIN_MS = 250
BACKOFF_MAX_MS = 10_000


class Malformed(Exception):
    """A message or Envelope that breaks the spec; it is dropped (section 9)."""


def reason_name(reason):
    return REASON_NAMES.get(reason, "unknown(%d)" % reason)


# --- protobuf wire format (just what Envelope needs) ---------------------------------------

WT_VARINT, WT_I64, WT_LEN, WT_I32 = 0, 1, 2, 5
U64_MASK = (1 << 64) - 1


def _varint(value):
    value &= U64_MASK  # negative int64 -> ten-byte two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data, pos):
    value = 0
    for i in range(10):
        if pos >= len(data):
            raise Malformed("protobuf: truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if value > U64_MASK:
                raise Malformed("protobuf: varint overflows 64 bits")
            return value, pos
    raise Malformed("protobuf: varint longer than 10 bytes")


def _tag(field, wire_type):
    return _varint((field << 3) | wire_type)


def _put_string(out, field, text):
    if text:
        raw = text.encode("utf-8")
        out += _tag(field, WT_LEN) + _varint(len(raw)) + raw


def _put_bytes(out, field, raw):
    if raw:
        out += _tag(field, WT_LEN) + _varint(len(raw)) + raw


def _put_uint(out, field, value):
    if value:
        out += _tag(field, WT_VARINT) + _varint(value)


def _put_message(out, field, raw):
    # A set message field is written even when empty (presence matters for a oneof).
    out += _tag(field, WT_LEN) + _varint(len(raw)) + raw


def _put_string_map(out, field, mapping):
    for key in sorted(mapping):
        entry = bytearray()
        _put_string(entry, 1, key)
        _put_string(entry, 2, mapping[key])
        _put_message(out, field, bytes(entry))


def _fields(data):
    """Yields (field, wire_type, value) of one message; value is an int or bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire_type = key >> 3, key & 7
        if field == 0 or field > (1 << 29) - 1:
            raise Malformed("protobuf: bad field number %d" % field)
        if wire_type == WT_VARINT:
            value, pos = _read_varint(data, pos)
        elif wire_type == WT_I64:
            if pos + 8 > len(data):
                raise Malformed("protobuf: truncated fixed64")
            value, pos = struct.unpack_from("<Q", data, pos)[0], pos + 8
        elif wire_type == WT_I32:
            if pos + 4 > len(data):
                raise Malformed("protobuf: truncated fixed32")
            value, pos = struct.unpack_from("<I", data, pos)[0], pos + 4
        elif wire_type == WT_LEN:
            length, pos = _read_varint(data, pos)
            if length > len(data) - pos:
                raise Malformed("protobuf: length %d past the end" % length)
            value, pos = bytes(data[pos : pos + length]), pos + length
        else:
            raise Malformed("protobuf: unsupported wire type %d" % wire_type)
        yield field, wire_type, value


def _expect(field, wire_type, want, what):
    if wire_type != want:
        raise Malformed("protobuf: %s (field %d) has wire type %d, want %d"
                        % (what, field, wire_type, want))


def _text(raw, what):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed("protobuf: %s is not UTF-8" % what) from exc


def _int64(value):
    return value - (1 << 64) if value >> 63 else value


def _uint32(value, what):
    if value > 0xFFFFFFFF:
        raise Malformed("protobuf: %s overflows uint32" % what)
    return value


def _decode_string_map_entry(raw, what):
    key, val = "", ""
    for field, wire_type, value in _fields(raw):
        if field in (1, 2):
            _expect(field, wire_type, WT_LEN, what)
            if field == 1:
                key = _text(value, what + " key")
            else:
                val = _text(value, what + " value")
    return key, val


# Envelope field numbers (proto/sentinel/v1/envelope.proto)
_ENV_STRINGS = {1: "id", 2: "source", 3: "type", 4: "subject", 6: "correlation_id",
                7: "causation_id"}
_ENV_UINTS = {8: "fence", 9: "incarnation", 10: "seq"}
ENV_BODY_SERVICES = 107
ENV_BODY_NOTE = 110


class Note:
    def __init__(self, text="", n=0, attrs=None):
        self.text = text
        self.n = n
        self.attrs = dict(attrs or {})

    def encode(self):
        out = bytearray()
        _put_string(out, 1, self.text)
        _put_uint(out, 2, self.n)
        _put_string_map(out, 3, self.attrs)
        return bytes(out)

    @classmethod
    def decode(cls, raw):
        note = cls()
        for field, wire_type, value in _fields(raw):
            if field == 1:
                _expect(field, wire_type, WT_LEN, "Note.text")
                note.text = _text(value, "Note.text")
            elif field == 2:
                _expect(field, wire_type, WT_VARINT, "Note.n")
                note.n = _int64(value)
            elif field == 3:
                _expect(field, wire_type, WT_LEN, "Note.attrs")
                key, val = _decode_string_map_entry(value, "Note.attrs")
                note.attrs[key] = val
        return note


class ServiceInfo:
    def __init__(self, name="", workers=0, idle_credit=0, queued=0, served=0):
        self.name, self.workers, self.idle_credit = name, workers, idle_credit
        self.queued, self.served = queued, served

    def __repr__(self):
        return ("ServiceInfo(name=%r, workers=%d, idle_credit=%d, queued=%d, served=%d)"
                % (self.name, self.workers, self.idle_credit, self.queued, self.served))

    @classmethod
    def decode(cls, raw):
        info = cls()
        for field, wire_type, value in _fields(raw):
            if field == 1:
                _expect(field, wire_type, WT_LEN, "ServiceInfo.name")
                info.name = _text(value, "ServiceInfo.name")
            elif field in (2, 3, 4):
                _expect(field, wire_type, WT_VARINT, "ServiceInfo")
                attr = {2: "workers", 3: "idle_credit", 4: "queued"}[field]
                setattr(info, attr, _uint32(value, "ServiceInfo." + attr))
            elif field == 5:
                _expect(field, wire_type, WT_VARINT, "ServiceInfo.served")
                info.served = value
        return info


class Envelope:
    """sentinel.v1.Envelope with the bodies this test needs (note, services); any other
    body is kept as (field, raw bytes) in `other_body`."""

    def __init__(self, **kw):
        self.id = kw.get("id", "")
        self.source = kw.get("source", "")
        self.type = kw.get("type", "")
        self.subject = kw.get("subject", "")
        self.time_unix_ms = kw.get("time_unix_ms", 0)
        self.correlation_id = kw.get("correlation_id", "")
        self.causation_id = kw.get("causation_id", "")
        self.fence = kw.get("fence", 0)
        self.incarnation = kw.get("incarnation", 0)
        self.seq = kw.get("seq", 0)
        self.labels = dict(kw.get("labels", {}))
        self.note = kw.get("note")          # Note or None
        self.services = kw.get("services")  # list of ServiceInfo or None
        self.other_body = kw.get("other_body")  # (field, bytes) or None

    def __repr__(self):
        return "Envelope(%r)" % {k: v for k, v in vars(self).items() if v}

    def encode(self):
        out = bytearray()
        _put_string(out, 1, self.id)
        _put_string(out, 2, self.source)
        _put_string(out, 3, self.type)
        _put_string(out, 4, self.subject)
        _put_uint(out, 5, self.time_unix_ms)
        _put_string(out, 6, self.correlation_id)
        _put_string(out, 7, self.causation_id)
        _put_uint(out, 8, self.fence)
        _put_uint(out, 9, self.incarnation)
        _put_uint(out, 10, self.seq)
        _put_string_map(out, 11, self.labels)
        if self.note is not None:
            _put_message(out, ENV_BODY_NOTE, self.note.encode())
        elif self.services is not None:
            raise ValueError("encoding a ServiceList is not needed by a peer")
        elif self.other_body is not None:
            _put_message(out, self.other_body[0], self.other_body[1])
        return bytes(out)

    @classmethod
    def decode(cls, data, max_bytes=MAX_FRAME_BYTES):
        """Strict decode, in the order section 1 asks: size, parse, field checks."""
        if len(data) > max_bytes:
            raise Malformed("envelope: %d bytes > max %d" % (len(data), max_bytes))
        env = cls()
        for field, wire_type, value in _fields(data):
            if field in _ENV_STRINGS:
                _expect(field, wire_type, WT_LEN, _ENV_STRINGS[field])
                setattr(env, _ENV_STRINGS[field], _text(value, _ENV_STRINGS[field]))
            elif field == 5:
                _expect(field, wire_type, WT_VARINT, "time_unix_ms")
                env.time_unix_ms = _int64(value)
            elif field in _ENV_UINTS:
                _expect(field, wire_type, WT_VARINT, _ENV_UINTS[field])
                setattr(env, _ENV_UINTS[field], value)
            elif field == 11:
                _expect(field, wire_type, WT_LEN, "labels")
                key, val = _decode_string_map_entry(value, "labels")
                env.labels[key] = val
            elif 100 <= field <= 999:
                _expect(field, wire_type, WT_LEN, "body")
                env.note, env.services, env.other_body = None, None, None  # oneof: last wins
                if field == ENV_BODY_NOTE:
                    env.note = Note.decode(value)
                elif field == ENV_BODY_SERVICES:
                    env.services = []
                    for f2, wt2, v2 in _fields(value):
                        if f2 == 1:
                            _expect(f2, wt2, WT_LEN, "ServiceList.services")
                            env.services.append(ServiceInfo.decode(v2))
                else:
                    for _ in _fields(value):  # another body: it must at least parse
                        pass
                    env.other_body = (field, value)
            # other unknown fields are ignored (envelope.proto's rule)
        return env


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid():
    """A ULID: 48-bit ms time + 80 random bits, 26 Crockford base32 characters."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


_stamp_lock = threading.Lock()
_stamp_seq = 0
INCARNATION = int.from_bytes(os.urandom(8), "big") or 1


def stamped(type_, note=None, source=None, **kw):
    """An Envelope with id, source, type, time, incarnation and seq set."""
    global _stamp_seq
    with _stamp_lock:
        _stamp_seq += 1
        seq = _stamp_seq
    return Envelope(id=new_ulid(), source=source or "sentinel/py/%d" % os.getpid(),
                    type=type_, time_unix_ms=int(time.time() * 1000), incarnation=INCARNATION,
                    seq=seq, note=note, **kw)


# --- frame codec (sections 2.1-2.3) --------------------------------------------------------


def header(command):
    return SIGNATURE + bytes([VERSION, command])


def _check_name(raw, what):
    if not 1 <= len(raw) <= 255:
        raise Malformed("%s: length %d not in 1..255" % (what, len(raw)))
    if any(b < 0x21 or b > 0x7E for b in raw):
        raise Malformed("%s: byte outside 0x21..0x7E" % what)


def encode_meta(request_id, deadline_ms, attempt):
    return struct.pack(">QII", request_id, deadline_ms, attempt)


def encode_ids(request_id, attempt):
    return struct.pack(">QI", request_id, attempt)


def _decode_meta(frame):
    if len(frame) != 16:
        raise Malformed("meta: %d bytes, want 16" % len(frame))
    request_id, deadline_ms, attempt = struct.unpack(">QII", frame)
    return request_id, deadline_ms, attempt


def _check_meta(request_id, deadline_ms, attempt):
    if request_id == 0:
        raise Malformed("meta: request_id 0")
    if deadline_ms > MAX_DEADLINE_MS:
        raise Malformed("meta: deadline_ms %d > %d" % (deadline_ms, MAX_DEADLINE_MS))
    if attempt == 0:  # section 2.2: 1..2^32-1 in a REQUEST (in `ids` it is only matched)
        raise Malformed("meta: attempt 0")


def _decode_ids(frame):
    if len(frame) != 12:
        raise Malformed("ids: %d bytes, want 12" % len(frame))
    request_id, attempt = struct.unpack(">QI", frame)
    if request_id == 0:
        raise Malformed("ids: request_id 0")
    return request_id, attempt


def msg_ready(credits):
    if not 1 <= len(credits) <= MAX_SERVICES:
        raise ValueError("READY needs 1..64 services")
    frames = [header(READY)]
    for service, credit in credits.items():
        raw = service.encode("ascii")
        _check_name(raw, "service")
        if not 0 <= credit <= MAX_CREDIT:
            raise ValueError("credit %d not in 0..1000" % credit)
        frames.append(struct.pack(">H", credit) + raw)
    return frames


def msg_request(service, request_id, deadline_ms, attempt, envelope=b""):
    raw = service.encode("ascii") if isinstance(service, str) else service
    return [header(REQUEST), raw, encode_meta(request_id, deadline_ms, attempt), envelope]


def msg_reply(request_id, attempt, route, envelope):
    return [header(REPLY), encode_ids(request_id, attempt), route, envelope]


def msg_nak(request_id, attempt, route, reason):
    return [header(NAK), encode_ids(request_id, attempt), route, bytes([reason])]


def msg_cancel(request_id, attempt):
    return [header(CANCEL), encode_ids(request_id, attempt)]


def msg_heartbeat(worker):
    return [header(HEARTBEAT), bytes([FLAG_WORKER if worker else 0])]


def msg_disconnect():
    return [header(DISCONNECT)]


class Message:
    """A message received from the broker. Attributes by command:
    REQUEST: service, request_id, deadline_ms, attempt, envelope, principal, route
    REPLY:   request_id, attempt, envelope          NAK: request_id, attempt, reason
    CANCEL:  request_id, attempt, route             HEARTBEAT: flags"""

    def __init__(self, command, **kw):
        self.command = command
        self.__dict__.update(kw)

    def __repr__(self):
        rest = {k: v for k, v in vars(self).items() if k != "command"}
        return "%s%r" % (COMMAND_NAMES.get(self.command, "?"), rest)


def parse_from_broker(frames):
    """Parses a message as a DEALER receives it from the broker; raises Malformed."""
    if not frames:
        raise Malformed("empty message")
    if len(frames) > MAX_FRAMES:
        raise Malformed("%d frames > %d" % (len(frames), MAX_FRAMES))
    head = frames[0]
    if len(head) != 5:
        raise Malformed("header: %d bytes, want 5" % len(head))
    if head[:3] != SIGNATURE:
        raise Malformed("header: bad signature %r" % head[:3])
    if head[3] != VERSION:
        raise Malformed("header: version %d" % head[3])
    command, rest = head[4], frames[1:]

    def need(count):
        if len(rest) != count:
            raise Malformed("%s: %d frames after the header, want %d"
                            % (COMMAND_NAMES[command], len(rest), count))

    if command == REQUEST:
        need(5)
        _check_name(rest[0], "service")
        request_id, deadline_ms, attempt = _decode_meta(rest[1])
        _check_meta(request_id, deadline_ms, attempt)
        if len(rest[2]) > MAX_FRAME_BYTES:
            raise Malformed("envelope too large")
        _check_name(rest[3], "principal")
        if not 1 <= len(rest[4]) <= 255:
            raise Malformed("route: %d bytes" % len(rest[4]))
        return Message(REQUEST, service=rest[0].decode("ascii"), request_id=request_id,
                       deadline_ms=deadline_ms, attempt=attempt, envelope=rest[2],
                       principal=rest[3].decode("ascii"), route=rest[4])
    if command == REPLY:
        need(2)
        request_id, attempt = _decode_ids(rest[0])
        return Message(REPLY, request_id=request_id, attempt=attempt, envelope=rest[1])
    if command == NAK:
        need(2)
        request_id, attempt = _decode_ids(rest[0])
        if len(rest[1]) != 1:
            raise Malformed("reason: %d bytes" % len(rest[1]))
        if rest[1][0] not in REASON_NAMES:
            raise Malformed("reason: unknown value %d" % rest[1][0])
        return Message(NAK, request_id=request_id, attempt=attempt, reason=rest[1][0])
    if command == CANCEL:
        need(2)
        request_id, attempt = _decode_ids(rest[0])
        if not 1 <= len(rest[1]) <= 255:
            raise Malformed("route: %d bytes" % len(rest[1]))
        return Message(CANCEL, request_id=request_id, attempt=attempt, route=rest[1])
    if command == HEARTBEAT:
        need(1)
        if len(rest[0]) != 1 or rest[0][0] & ~FLAG_WORKER:
            raise Malformed("flags: bad %r" % rest[0])
        return Message(HEARTBEAT, flags=rest[0][0])
    if command == DISCONNECT:
        need(0)
        return Message(DISCONNECT)
    if command == READY:
        raise Malformed("READY in the wrong direction (broker -> peer)")
    raise Malformed("unknown command 0x%02x" % command)


# --- sockets (section 2.5) ---------------------------------------------------------------


def new_dealer(ctx, endpoint, max_frame_bytes=MAX_FRAME_BYTES):
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
    sock.setsockopt(zmq.HANDSHAKE_IVL, 5000)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)
    sock.setsockopt(zmq.HEARTBEAT_TTL, 15000)
    sock.setsockopt(zmq.RECONNECT_IVL, 250)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 10000)
    sock.connect(endpoint)
    return sock


class Backoff:
    """Exponential from 250 ms to 10 s, each delay uniform in the upper half (section 3.4)."""

    def __init__(self, min_ms=BACKOFF_MIN_MS, max_ms=BACKOFF_MAX_MS):
        self.min_ms, self.max_ms, self.tries = min_ms, max_ms, 0

    def next_s(self):
        top = min(self.max_ms, self.min_ms << min(self.tries, 20))
        self.tries += 1
        return random.uniform(top / 2.0, top) / 1000.0

    def reset(self):
        self.tries = 0


# --- worker (section 3) -------------------------------------------------------------------


class Request:
    """A REQUEST held by a worker; answer it with Worker.reply / Worker.nak."""

    def __init__(self, msg, generation, received_at):
        self.service = msg.service
        self.request_id = msg.request_id
        self.deadline_ms = msg.deadline_ms
        self.attempt = msg.attempt
        self.envelope = msg.envelope
        self.principal = msg.principal
        self.route = msg.route
        self.generation = generation
        self.received_at = received_at

    @property
    def key(self):
        return (self.generation, self.route, self.request_id, self.attempt)

    def __repr__(self):
        return ("Request(%s id=%d attempt=%d deadline=%d principal=%s)"
                % (self.service, self.request_id, self.attempt, self.deadline_ms,
                   self.principal))


class Worker:
    """A worker on its own thread. `handler(worker, request)` runs on that thread and
    returns ("reply", envelope_bytes), ("nak", reason), or None to hold the request and
    answer later with reply()/nak() from any thread.

    pause() makes the thread stop doing anything at all (a hung process: no heartbeats, no
    reads, no liveness check); resume() lets it go on with the same socket. Commands given
    while paused wait, in order, until resume."""

    def __init__(self, ctx, endpoint, credits, handler, heartbeat_ms=DEFAULT_HEARTBEAT_MS,
                 liveness=DEFAULT_LIVENESS, name="worker", backoff_min_ms=BACKOFF_MIN_MS):
        self.ctx, self.endpoint, self.handler, self.name = ctx, endpoint, handler, name
        self.credits = dict(credits)
        self.hb_s = heartbeat_ms / 1000.0
        self.liveness = liveness
        self.backoff = Backoff(min_ms=backoff_min_ms)
        self._cmds = collections.deque()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._thread = None
        self._stop = False
        self._paused = False
        self.sock = None
        self.generation = 0
        self.held = {}
        # observations, for tests (read under self._lock via snapshot())
        self.requests = []      # every Request received
        self.cancels = []       # every CANCEL Message received
        self.disconnects = 0    # DISCONNECTs received
        self.liveness_losses = 0
        self.connects = 0       # sockets opened (READY sent on each)
        self.malformed = []     # (frames, reason) received and dropped
        self.refused = []       # (Request, reason) NAKed by the worker itself (section 3.3)
        self.heartbeats_in = 0
        self.heartbeat_flags = set()  # flags of the broker's heartbeats
        self.error = None

    # public API (any thread)

    def start(self):
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout=5.0):
        with self._lock:
            self._stop = True
            self._cond.notify_all()
        if self._thread:
            self._thread.join(timeout)

    def reply(self, request, envelope):
        self._command(("reply", request, envelope))

    def nak(self, request, reason):
        self._command(("nak", request, reason))

    def set_credit(self, service, credit):
        self._command(("credit", service, credit))

    def send_raw(self, frames):
        self._command(("raw", frames))

    def pause(self):
        self._command(("pause",))

    def resume(self):
        self._command(("resume",))

    def snapshot(self):
        with self._lock:
            return {"requests": list(self.requests), "cancels": list(self.cancels),
                    "disconnects": self.disconnects, "connects": self.connects,
                    "liveness_losses": self.liveness_losses, "malformed": list(self.malformed),
                    "heartbeats_in": self.heartbeats_in, "error": self.error,
                    "refused": list(self.refused),
                    "heartbeat_flags": set(self.heartbeat_flags),
                    "paused": self._paused, "held": len(self.held)}

    def wait_for(self, predicate, timeout_s):
        """Waits until predicate(snapshot) is true; returns the last snapshot or None."""
        deadline = time.monotonic() + timeout_s
        while True:
            snap = self.snapshot()
            if predicate(snap):
                return snap
            if time.monotonic() >= deadline:
                return None
            with self._lock:
                self._cond.wait(0.02)

    # the thread

    def _command(self, cmd):
        with self._lock:
            self._cmds.append(cmd)
            self._cond.notify_all()

    def _note(self, fn):
        with self._lock:
            fn()
            self._cond.notify_all()

    def _send(self, frames):
        self.sock.send_multipart(frames, copy=True)

    def _connect(self):
        self.sock = new_dealer(self.ctx, self.endpoint)
        self.generation += 1
        self.held = {}
        self._send(msg_ready(self.credits))
        now = time.monotonic()
        self.last_heard = now
        self.next_hb = now + self.hb_s
        self._note(lambda: setattr(self, "connects", self.connects + 1))

    def _reconnect(self):
        # section 3.4: close, jittered backoff, a NEW socket (new routing id), READY again
        self.sock.close(0)
        self.sock = None
        delay = self.backoff.next_s()
        with self._lock:
            self._cond.wait_for(lambda: self._stop, delay)
            if self._stop:
                return
        self._connect()

    def _run(self):
        try:
            self._connect()
            while True:
                if not self._drain_commands():
                    break
                if self._paused:
                    with self._lock:
                        self._cond.wait(0.02)
                    continue
                now = time.monotonic()
                wait_ms = max(0, min(20, int((self.next_hb - now) * 1000)))
                if self.sock.poll(wait_ms, zmq.POLLIN):
                    while self.sock.poll(0, zmq.POLLIN):
                        frames = self.sock.recv_multipart()
                        if self._on_message(frames) == "reconnect":
                            self._reconnect()
                            break
                    if self.sock is None:
                        break  # stopped during the backoff
                now = time.monotonic()
                if now >= self.next_hb:
                    self._send(msg_heartbeat(worker=True))
                    self.next_hb = now + self.hb_s
                if now - self.last_heard > self.hb_s * self.liveness:
                    self._note(lambda: setattr(self, "liveness_losses", self.liveness_losses + 1))
                    self._reconnect()
                    if self.sock is None:
                        break
        except Exception as exc:  # surfaced to the test through snapshot()
            why = repr(exc)
            self._note(lambda: setattr(self, "error", why))
        finally:
            if self.sock is not None:
                self.sock.close(0)

    def _drain_commands(self):
        while True:
            with self._lock:
                if self._stop:
                    return False
                if not self._cmds:
                    return True
                cmd = self._cmds[0]
                if self._paused and cmd[0] != "resume":
                    return True
                self._cmds.popleft()
                if cmd[0] == "pause":
                    self._paused = True
                    continue
                if cmd[0] == "resume":
                    self._paused = False
                    continue
            self._do(cmd)

    def _do(self, cmd):
        if cmd[0] in ("reply", "nak"):
            req = cmd[1]
            if req.generation != self.generation:
                return  # held on a socket that is gone: the broker already answered it
            self.held.pop(req.key, None)  # answered (or cancelled: then it is stale anyway)
            if cmd[0] == "reply":
                self._send(msg_reply(req.request_id, req.attempt, req.route, cmd[2]))
            else:
                self._send(msg_nak(req.request_id, req.attempt, req.route, cmd[2]))
        elif cmd[0] == "credit":
            self.credits[cmd[1]] = cmd[2]
            self._send(msg_ready({cmd[1]: cmd[2]}))
        elif cmd[0] == "raw":
            self._send(cmd[1])

    def _on_message(self, frames):
        try:
            msg = parse_from_broker(frames)
        except Malformed as exc:
            why = str(exc)
            self._note(lambda: self.malformed.append((frames, why)))
            return None  # dropped; not traffic (section 9)
        self.last_heard = time.monotonic()
        self.backoff.reset()
        if msg.command == HEARTBEAT:
            def seen():
                self.heartbeats_in += 1
                self.heartbeat_flags.add(msg.flags)

            self._note(seen)
        elif msg.command == DISCONNECT:
            self._note(lambda: setattr(self, "disconnects", self.disconnects + 1))
            return "reconnect"
        elif msg.command == REQUEST:
            req = Request(msg, self.generation, time.monotonic())
            # section 3.3: a service not served -> invalid; beyond the credit -> overloaded
            credit = self.credits.get(req.service)
            reason = None
            if credit is None:
                reason = NAK_INVALID
            elif sum(1 for r in self.held.values() if r.service == req.service) >= credit:
                reason = NAK_OVERLOADED
            if reason is not None:
                self._send(msg_nak(req.request_id, req.attempt, req.route, reason))
                self._note(lambda: self.refused.append((req, reason)))
                return None
            self.held[req.key] = req
            self._note(lambda: self.requests.append(req))
            answer = self.handler(self, req)
            if answer is not None:
                self.held.pop(req.key, None)
                if answer[0] == "reply":
                    self._send(msg_reply(req.request_id, req.attempt, req.route, answer[1]))
                else:
                    self._send(msg_nak(req.request_id, req.attempt, req.route, answer[1]))
        elif msg.command == CANCEL:
            self.held.pop((self.generation, msg.route, msg.request_id, msg.attempt), None)
            self._note(lambda: self.cancels.append(msg))
        else:  # REPLY / NAK are for clients; this socket never sends requests
            self._note(lambda: self.malformed.append((frames, "client command to a worker")))
        return None


# --- client (section 4) -------------------------------------------------------------------


class Answer:
    def __init__(self, kind, request_id, attempt, envelope=None, reason=None, local=False,
                 at=None):
        self.kind = kind            # "reply" or "nak"
        self.request_id, self.attempt = request_id, attempt
        self.envelope = envelope    # REPLY: the raw envelope bytes
        self.reason = reason        # NAK: the reason value
        self.local = local          # NAK worker-lost made up by this client on reconnect
        self.at = at if at is not None else time.monotonic()

    def __repr__(self):
        if self.kind == "reply":
            return "REPLY(id=%d attempt=%d, %d bytes)" % (self.request_id, self.attempt,
                                                           len(self.envelope))
        return "NAK(id=%d attempt=%d, %s%s)" % (self.request_id, self.attempt,
                                                reason_name(self.reason),
                                                ", local" if self.local else "")


class Client:
    """A client, used from one thread. Heartbeats and liveness run inside pump()/wait()."""

    def __init__(self, ctx, endpoint, heartbeat_ms=DEFAULT_HEARTBEAT_MS,
                 liveness=DEFAULT_LIVENESS, backoff_min_ms=BACKOFF_MIN_MS):
        self.ctx, self.endpoint = ctx, endpoint
        self.hb_s = heartbeat_ms / 1000.0
        self.liveness = liveness
        self.backoff = Backoff(min_ms=backoff_min_ms)
        self.next_id = 1
        self.outstanding = set()  # (request_id, attempt)
        self.answers = {}       # (request_id, attempt) -> Answer
        self.unexpected = []    # parsed messages that matched nothing outstanding
        self.malformed = []     # (frames, reason)
        self.disconnects = 0
        self.heartbeats_in = 0
        self.heartbeat_flags = set()
        self.sock = new_dealer(ctx, endpoint)
        self.last_heard = None  # liveness runs from the first message sent
        self.next_hb = None

    def close(self):
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    def _sent(self):
        now = time.monotonic()
        if self.last_heard is None:
            self.last_heard = now
            self.next_hb = now + self.hb_s

    def send_raw(self, frames):
        self.sock.send_multipart(frames)
        self._sent()

    def request(self, service, envelope=b"", deadline_ms=0, attempt=1, request_id=None):
        """Sends a REQUEST; returns (request_id, attempt)."""
        if request_id is None:
            request_id = self.next_id
            self.next_id += 1
        self.sock.send_multipart(msg_request(service, request_id, deadline_ms, attempt,
                                             envelope))
        self.outstanding.add((request_id, attempt))
        self._sent()
        return request_id, attempt

    def cancel(self, request_id, attempt):
        self.sock.send_multipart(msg_cancel(request_id, attempt))
        self.outstanding.discard((request_id, attempt))
        self._sent()

    def pump(self, timeout_s):
        """Receives and heartbeats for up to timeout_s."""
        end = time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            wait_s = end - now
            if self.next_hb is not None:
                wait_s = min(wait_s, self.next_hb - now)
            if self.sock.poll(max(0, int(wait_s * 1000)), zmq.POLLIN):
                while self.sock.poll(0, zmq.POLLIN):
                    self._on_message(self.sock.recv_multipart())
            self._tick()
            if time.monotonic() >= end:
                return

    def wait(self, request_id, attempt, timeout_s):
        """The answer to (request_id, attempt), or None after timeout_s."""
        end = time.monotonic() + timeout_s
        while (request_id, attempt) not in self.answers:
            left = end - time.monotonic()
            if left <= 0:
                return None
            self.pump(min(left, 0.02))
        return self.answers[(request_id, attempt)]

    def call(self, service, envelope=b"", deadline_ms=5000, attempt=1, timeout_s=None):
        rid, att = self.request(service, envelope, deadline_ms, attempt)
        if timeout_s is None:
            timeout_s = (deadline_ms or DEFAULT_DEADLINE_MS) / 1000.0 + 1.0
        answer = self.wait(rid, att, timeout_s)
        if answer is None:  # give up: cancel so the broker forgets it (section 4)
            self.cancel(rid, att)
        return answer

    def _tick(self):
        if self.next_hb is None:
            return
        now = time.monotonic()
        if now >= self.next_hb:
            self.sock.send_multipart(msg_heartbeat(worker=False))
            self.next_hb = now + self.hb_s
        if now - self.last_heard > self.hb_s * self.liveness:
            self._reconnect()

    def _reconnect(self):
        # section 7: close, answer outstanding requests locally with worker-lost, backoff,
        # new socket
        self.sock.close(0)
        for rid, att in self.outstanding:
            self.answers[(rid, att)] = Answer("nak", rid, att, reason=NAK_WORKER_LOST,
                                              local=True)
        self.outstanding = set()
        time.sleep(self.backoff.next_s())
        self.sock = new_dealer(self.ctx, self.endpoint)
        self.last_heard, self.next_hb = None, None

    def _on_message(self, frames):
        try:
            msg = parse_from_broker(frames)
        except Malformed as exc:
            self.malformed.append((frames, str(exc)))
            return
        self.last_heard = time.monotonic()
        self.backoff.reset()
        if msg.command == HEARTBEAT:
            self.heartbeats_in += 1
            self.heartbeat_flags.add(msg.flags)
        elif msg.command == DISCONNECT:
            self.disconnects += 1
            self._reconnect()
        elif msg.command in (REPLY, NAK):
            if (msg.request_id, msg.attempt) not in self.outstanding:
                self.unexpected.append(msg)
                return
            self.outstanding.discard((msg.request_id, msg.attempt))
            if msg.command == REPLY:
                self.answers[(msg.request_id, msg.attempt)] = Answer(
                    "reply", msg.request_id, msg.attempt, envelope=msg.envelope)
            else:
                self.answers[(msg.request_id, msg.attempt)] = Answer(
                    "nak", msg.request_id, msg.attempt, reason=msg.reason)
        else:
            self.unexpected.append(msg)
