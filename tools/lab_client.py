#!/usr/bin/env python3
"""Traffic and capture helpers for the fwd lab (run inside the lab's namespaces).

  lab_client.py flows --vip ADDR --port P --proto tcp|udp --count N --sport-base S [--timeout T]
      Opens N connections (TCP) or sends N datagrams (UDP) to VIP:P, from source ports S, S+1, ...
      (fixed ports make the result reproducible and checkable with `fwd which`), and reads the
      backend's answer (its name). Prints JSON: {"ok": n, "failed": n, "flows": [[sport, name], ...]}.

  lab_client.py capture --iface IF --seconds T --count N
      Captures frames with an AF_PACKET socket and decodes IPv4/IPv6 outer headers, IP-in-IP
      (protocols 4 and 41) and GUE (UDP, payload starting with an IP header). Prints JSON with one
      record per tunnelled frame: outer src/dst/proto, udp ports, inner src/dst/proto, checksum ok.

Bounded: every socket has a timeout, and the capture stops after T seconds or N frames.
"""
import argparse
import ipaddress
import json
import socket
import struct
import sys
import time


def flows(args):
    family = socket.AF_INET6 if ":" in args.vip else socket.AF_INET
    bind_any = "::" if family == socket.AF_INET6 else "0.0.0.0"
    ok = failed = 0
    out = []
    for i in range(args.count):
        sport = args.sport_base + i
        kind = socket.SOCK_STREAM if args.proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(family, kind)
        s.settimeout(args.timeout)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind_any, sport))
            if args.proto == "tcp":
                s.connect((args.vip, args.port))
                name = s.recv(64).decode().strip()
            else:
                s.sendto(b"hello", (args.vip, args.port))
                name = s.recv(64).decode().strip()
            ok += 1
            out.append([sport, name])
        except OSError as e:
            failed += 1
            out.append([sport, "error: %s" % e])
        finally:
            s.close()
    json.dump({"ok": ok, "failed": failed, "flows": out}, sys.stdout)
    print()


def ones_complement(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def parse_ip(packet):
    """Returns (version, src, dst, proto, header_len, total_len, checksum_ok) or None."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        ihl = (packet[0] & 0x0F) * 4
        total = struct.unpack("!H", packet[2:4])[0]
        ok = ones_complement(packet[:ihl]) == 0xFFFF
        return (4, str(ipaddress.IPv4Address(packet[12:16])), str(ipaddress.IPv4Address(packet[16:20])),
                packet[9], ihl, total, ok)
    if version == 6 and len(packet) >= 40:
        total = 40 + struct.unpack("!H", packet[4:6])[0]
        return (6, str(ipaddress.IPv6Address(packet[8:24])), str(ipaddress.IPv6Address(packet[24:40])),
                packet[6], 40, total, True)
    return None


def capture(args):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    s.bind((args.iface, 0))
    s.settimeout(0.2)
    deadline = time.time() + args.seconds
    records = []
    while time.time() < deadline and len(records) < args.count:
        try:
            frame = s.recv(4096)
        except socket.timeout:
            continue
        ethertype = struct.unpack("!H", frame[12:14])[0]
        if ethertype not in (0x0800, 0x86DD):
            continue
        outer = parse_ip(frame[14:])
        if outer is None:
            continue
        _, osrc, odst, oproto, ohl, ototal, osum = outer
        payload = frame[14 + ohl:14 + ototal]
        rec = {"outer_src": osrc, "outer_dst": odst, "outer_proto": oproto, "outer_checksum_ok": osum,
               "outer_len_ok": 14 + ototal <= len(frame)}
        if oproto in (4, 41):
            inner = parse_ip(payload)
        elif oproto == 17 and len(payload) >= 8:
            sport, dport, ulen, _ = struct.unpack("!HHHH", payload[:8])
            rec.update({"udp_sport": sport, "udp_dport": dport, "udp_len_ok": ulen == len(payload)})
            inner = parse_ip(payload[8:])
        else:
            continue
        if inner is None:
            continue
        rec.update({"inner_src": inner[1], "inner_dst": inner[2], "inner_proto": inner[3],
                    "inner_checksum_ok": inner[6]})
        records.append(rec)
    json.dump(records, sys.stdout)
    print()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flows")
    f.add_argument("--vip", required=True)
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--proto", choices=["tcp", "udp"], required=True)
    f.add_argument("--count", type=int, required=True)
    f.add_argument("--sport-base", type=int, required=True)
    f.add_argument("--timeout", type=float, default=2.0)
    c = sub.add_parser("capture")
    c.add_argument("--iface", required=True)
    c.add_argument("--seconds", type=float, required=True)
    c.add_argument("--count", type=int, required=True)
    args = p.parse_args()
    {"flows": flows, "capture": capture}[args.cmd](args)


if __name__ == "__main__":
    main()
