#!/usr/bin/env python3
"""A tiny UDP DNS responder for tests of sn_dns.

Usage: fake_dns.py --port PORT --ready FILE [--record NAME=IP ...] [--silent]

Answers A (and AAAA, for IPv6 records) queries for the configured names, NOERROR with no
answer (NODATA) for a known name without a record of the asked type, NXDOMAIN for any
other name. --silent reads queries and never answers (for timeout tests).
The ready FILE is written once the socket is bound."""
import argparse
import ipaddress
import signal
import socket
import struct
import sys


def parse_question(data):
    pos = 12
    labels = []
    while True:
        n = data[pos]
        if n == 0:
            pos += 1
            break
        labels.append(data[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    qtype, qclass = struct.unpack("!HH", data[pos:pos + 4])
    return ".".join(labels).lower().rstrip("."), qtype, qclass, data[12:pos + 4]


def answer(data, records):
    qid, flags = struct.unpack("!HH", data[:4])
    name, qtype, qclass, question = parse_question(data)
    answers = []
    if name in records:
        rcode = 0
        for ip in records[name]:
            addr = ipaddress.ip_address(ip)
            if qtype == 1 and addr.version == 4:
                answers.append(struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + addr.packed)
            elif qtype == 28 and addr.version == 6:
                answers.append(struct.pack("!HHHIH", 0xC00C, 28, 1, 60, 16) + addr.packed)
    else:
        rcode = 3
    rflags = 0x8000 | (flags & 0x0100) | 0x0080 | rcode
    header = struct.pack("!HHHHHH", qid, rflags, 1, len(answers), 0, 0)
    return header + question + b"".join(answers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--record", action="append", default=[])
    ap.add_argument("--silent", action="store_true")
    args = ap.parse_args()
    records = {}
    for r in args.record:
        name, _, ip = r.partition("=")
        addrs = records.setdefault(name.lower().rstrip("."), [])
        if ip:
            addrs.append(ip)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", args.port))
    with open(args.ready, "w") as f:
        f.write("%d\n" % args.port)
    while True:
        data, peer = sock.recvfrom(4096)
        if args.silent or len(data) < 17:
            continue
        try:
            sock.sendto(answer(data, records), peer)
        except (IndexError, struct.error, ValueError):
            continue


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
