#!/usr/bin/env python3
"""A lab backend: the service fwd balances, and a health endpoint the lab can break on purpose.

  lab_backend.py NAME PORT ADDRESS... [--work DIR] [--health-port 8080]

- TCP on PORT (every address, IPv4 and IPv6): on accept it sends "NAME\\n"; then it answers every
  line the client sends with "NAME\\n" again, until the client closes (long-lived connections, so
  the lab can check that established flows keep their backend).
- UDP on PORT, one socket per ADDRESS, so that a reply to the VIP leaves from the VIP: every
  datagram gets "NAME\\n".
- With --work: an HTTP endpoint on --health-port (GET /health) whose answer is read from
  DIR/health-NAME at each request: "ok" (or no file) -> 200 with body "ok", "503" -> 503,
  "hang" -> the request is read and never answered (the connection stays open until the client
  gives up). And DIR/state-NAME, polled every 100 ms: "stopped" closes the listening sockets
  (TCP and UDP on PORT, and the health port: a stopped server answers nothing, connects are
  refused, datagrams get port unreachable), "running" (or no file) opens them again.
  Established connections are left alone either way.

Single-threaded (one selector), so a hung health request costs nothing but a socket.
"""
import argparse
import os
import selectors
import socket
import sys

IP_FREEBIND = 15  # from linux/in.h; Python's socket module does not name it
HUNG = b"hung"  # the pending-request marker of a health request that is never answered


def listen_tcp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(128)
    s.setblocking(False)
    return s


def bind_udp(address, port):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    u = socket.socket(family, socket.SOCK_DGRAM)
    # The VIP on lo may not be up yet when the server starts.
    u.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
    u.bind((address, port))
    u.setblocking(False)
    return u


def read_word(path, default):
    try:
        with open(path) as f:
            return f.read().strip() or default
    except OSError:
        return default


class Server:
    def __init__(self, args):
        self.args = args
        self.reply = (args.name + "\n").encode()
        self.sel = selectors.DefaultSelector()
        self.listeners = []  # sockets closed while "stopped"
        self.running = False
        self.state_file = os.path.join(args.work, "state-" + args.name) if args.work else None
        self.health_file = os.path.join(args.work, "health-" + args.name) if args.work else None

    def start(self):
        tcp = listen_tcp(self.args.port)
        self.sel.register(tcp, selectors.EVENT_READ, ("accept", None))
        self.listeners.append(tcp)
        for a in self.args.addresses:
            u = bind_udp(a, self.args.port)
            self.sel.register(u, selectors.EVENT_READ, ("udp", None))
            self.listeners.append(u)
        if self.args.work:
            h = listen_tcp(self.args.health_port)
            self.sel.register(h, selectors.EVENT_READ, ("health_accept", None))
            self.listeners.append(h)
        self.running = True

    def stop(self):
        for s in self.listeners:
            self.sel.unregister(s)
            s.close()
        self.listeners = []
        self.running = False

    def follow_state_file(self):
        if not self.state_file:
            return
        wanted = read_word(self.state_file, "running")
        if wanted == "stopped" and self.running:
            self.stop()
            print("%s: stopped" % self.args.name, file=sys.stderr, flush=True)
        elif wanted != "stopped" and not self.running:
            self.start()
            print("%s: running" % self.args.name, file=sys.stderr, flush=True)

    def close(self, s):
        self.sel.unregister(s)
        s.close()

    def on_event(self, s, kind, pending):
        if kind in ("accept", "health_accept"):
            try:
                c, _ = s.accept()
            except OSError:
                return
            c.setblocking(False)
            if kind == "accept":
                try:
                    c.send(self.reply)
                except OSError:
                    c.close()
                    return
                self.sel.register(c, selectors.EVENT_READ, ("conn", None))
            else:
                self.sel.register(c, selectors.EVENT_READ, ("health", bytearray()))
            return
        if kind == "udp":
            try:
                _, peer = s.recvfrom(2048)
                s.sendto(self.reply, peer)
            except OSError:
                pass
            return
        try:
            chunk = s.recv(4096)
        except OSError:
            chunk = b""
        if not chunk:
            self.close(s)
            return
        if kind == "conn":
            try:
                for _ in range(chunk.count(b"\n")):
                    s.send(self.reply)
            except OSError:
                self.close(s)
            return
        # kind == "health": answer once the request head is complete.
        if pending is HUNG:
            return
        pending.extend(chunk)
        if b"\r\n\r\n" not in pending:
            return
        mode = read_word(self.health_file, "ok")
        if mode == "hang":
            # Stay registered: the next event is the checker giving up (EOF).
            self.sel.modify(s, selectors.EVENT_READ, ("health", HUNG))
            return
        if mode == "ok":
            status, body = "200 OK", b"ok"
        elif mode.isdigit() and len(mode) == 3:
            status, body = mode + " Forced by the lab", mode.encode()
        else:
            status, body = "500 Unknown health mode", mode.encode()
        head = "HTTP/1.0 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (
            status, len(body))
        try:
            s.send(head.encode() + body)
        except OSError:
            pass
        self.close(s)

    def serve(self):
        self.follow_state_file()
        if not self.state_file:
            self.start()
        print("ready", flush=True)
        while True:
            for key, _ in self.sel.select(timeout=0.1):
                kind, pending = key.data
                self.on_event(key.fileobj, kind, pending)
            self.follow_state_file()


def main():
    p = argparse.ArgumentParser(description="fwd lab backend")
    p.add_argument("name")
    p.add_argument("port", type=int)
    p.add_argument("addresses", nargs="*")
    p.add_argument("--work", help="directory of the health-NAME and state-NAME control files")
    p.add_argument("--health-port", type=int, default=8080)
    # Intermixed: the options may come between NAME PORT and the addresses.
    args = p.parse_intermixed_args()
    Server(args).serve()


if __name__ == "__main__":
    main()
