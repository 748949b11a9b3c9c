#!/usr/bin/env python3
"""The anycast lab: two fwd boxes announce the same VIPs over BGP, through their own FRR, to a
router that spreads flows over both by ECMP; three backends answer clients directly (DSR).

    client --- router --- [LAN bridge] --- box a   198.18.2.10  fd00:18:2::10  FRR AS 65001 + fwd
    (.1.2)  (FRR AS 65000)      |--------- box b   198.18.2.20  fd00:18:2::20  FRR AS 65001 + fwd
                                |--------- backend 1..3  198.18.2.11-13  fd00:18:2::11-13

Every role is a network namespace ("fwdany-<pid>-<role>"). The router peers with both boxes over
IPv4 (IPv4 routes) and over IPv6 (IPv6 routes) with 1 s keepalives and a 3 s hold time, accepts
several equal paths (multipath-relax, maximum-paths 8) and hashes flows on the 5-tuple. It has no
static route to the VIPs: only what the boxes announce. Each box runs zebra and bgpd (inbound
route-map DENY-ALL: a box never learns the VIPs back) and fwd with a [bgp] section pointing at its
own FRR's vty socket directory; fwd decides what that FRR announces.

The VIPs, each with its own services and health checks so that scenarios do not disturb each other:
    198.18.100.1  fd00:18:100::1   TCP and UDP port 80, checked on TCP 80 (steady)
    198.18.100.2  fd00:18:100::2   TCP port 81, checked on TCP 81 (scenario 1 stops it)
    198.18.100.3                   TCP port 82, checked on TCP 82 (scenario 5 flaps it)
Each backend runs tools/lab_backend.py on each port: TCP sends "backend-N\\n" on accept and
answers every line with it until EOF (long-lived connections); UDP port 80 answers every datagram
with it. The lab stops and restarts the port 81 and 82 servers through their state files (a stopped
server closes its listener: connections are refused).

Usage (as root):
  tools/anycast_lab.py [demo]   build, start FRR and fwd on both boxes, show the router's routes and
                                the spread of client flows over the boxes and backends, tear down
  tools/anycast_lab.py test     the scenarios below with assertions; JSON summary on stdout, exit 1
                                if any check fails
  tools/anycast_lab.py up       build and start everything, print how to look at it, wait for Ctrl-C
Options: --only 1,4 (run these scenarios), --hand-announce (the lab announces the VIPs with vtysh
itself, for checking the lab with a fwd that has no announcer; scenarios that test fwd's announcer
are then not run). Environment: FWD_BIN (default: build target/release/fwd).

Scenarios (test):
  1 all backends of a VIP go down: its route disappears within fall x interval + 2 s, and returns
    after rise x interval and the hold-down when they come back (IPv4 and IPv6)
  2 bgpd restarted on box a: the route through box a is back within one reconcile interval + 2 s of
    the moment it could be (bgpd configured and its session up)
  3 SIGTERM to fwd on box a while the client opens connections: box a's next hop leaves the router
    before fwd exits, and no connection fails
  4 two next hops; flows spread over both boxes and reach the backend `fwd which` names; box a
    frozen (SIGSTOP of its FRR daemons and fwd): the router drops to one next hop and new and
    long-lived connections keep working through box b, to the same backends; after the thaw both
    boxes are next hops again (fwd on box a is restarted if its watchdog saw the frozen worker and
    failed closed, which keeps a box withdrawn until it restarts)
  5 a VIP whose backends flap every second: its route changes no faster than hold-down and damping
    allow

Everything it creates is removed on exit, failure or Ctrl-C: fwd and the servers by PID, FRR
daemons by their pid files, then the namespaces and the work directory.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FRR_DIR = "/usr/lib/frr"
VTYSH = "/usr/bin/vtysh"

CLIENT = ("198.18.1.2", "fd00:18:1::2")
ROUTER_CLIENT = ("198.18.1.1", "fd00:18:1::1")
ROUTER_LAN = ("198.18.2.1", "fd00:18:2::1")
BOXES = {"a": ("198.18.2.10", "fd00:18:2::10"), "b": ("198.18.2.20", "fd00:18:2::20")}
BACKENDS = {n: ("198.18.2.1%d" % n, "fd00:18:2::1%d" % n) for n in (1, 2, 3)}
ROUTER_AS, BOX_AS = 65000, 65001

VIP_MAIN = ("198.18.100.1", "fd00:18:100::1")
VIP_DOWN = ("198.18.100.2", "fd00:18:100::2")
VIP_FLAP = ("198.18.100.3",)
PORT_MAIN, PORT_DOWN, PORT_FLAP = 80, 81, 82
ALL_VIPS = VIP_MAIN + VIP_DOWN + VIP_FLAP

# Timers, short so that the whole test runs in about two minutes.
MAIN_CHECK = {"interval": 1.0, "timeout": 0.5, "rise": 2, "fall": 2}
FAST_CHECK = {"interval": 0.2, "timeout": 0.15, "rise": 2, "fall": 2}
# A hold-down shorter than the flapping backends' up time (1 s), so that damping has flaps to count.
BGP = {"reconcile_interval": 2.0, "hold_down": 0.5, "vtysh_timeout": 3.0, "drain_time": 2.0, "min_healthy": 1}
DAMPING = {"half_life": 10.0, "suppress": 2500, "reuse": 1000, "penalty": 1000}
MAGLEV_TABLE_SIZE = 4093  # small: `fwd which` builds every table at each call

T0 = time.monotonic()


def log(msg):
    print("[%6.1fs] anycast: %s" % (time.monotonic() - T0, msg), file=sys.stderr, flush=True)


class LabError(Exception):
    """A step of building or running the lab failed (not a scenario's assertion)."""


def run(args, check=True, timeout=30, input=None):
    """Runs a command, returns its stdout; raises LabError with its output when it fails."""
    try:
        p = subprocess.run(args, input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LabError("timed out after %ss: %s" % (timeout, " ".join(args)))
    if check and p.returncode != 0:
        raise LabError("%s exited %d: %s%s" % (" ".join(args), p.returncode, p.stdout, p.stderr))
    return p.stdout


def nsx(ns, *args):
    return ["ip", "netns", "exec", ns] + [str(a) for a in args]


def family_of(addr):
    return 6 if ":" in addr else 4


def host_port(addr, port):
    return "[%s]:%d" % (addr, port) if ":" in addr else "%s:%d" % (addr, port)


def alive(pid):
    """True if pid runs and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------
# FRR


class Frr:
    """One FRR instance (zebra, bgpd) in one namespace, in its own directory."""

    DAEMONS = ("zebra", "bgpd")

    def __init__(self, ns, directory, config):
        self.ns, self.dir, self.config = ns, directory, config
        self.pids = {}

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "frr.conf"), "w") as f:
            f.write(self.config)
        shutil.chown(self.dir, "frr", "frr")
        for daemon in self.DAEMONS:
            self.start_daemon(daemon)
        self.push_config()

    def start_daemon(self, daemon):
        d = self.dir
        pid_file = os.path.join(d, daemon + ".pid")
        if os.path.exists(pid_file):
            os.unlink(pid_file)
        run(nsx(self.ns, os.path.join(FRR_DIR, daemon), "-d", "-F", "traditional", "-P", "0", "-f", "/dev/null",
                "-i", pid_file, "-z", os.path.join(d, "zserv.api"), "--vty_socket", d,
                "--log", "file:" + os.path.join(d, daemon + ".log")))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(pid_file) as f:
                    pid = int(f.read().strip())
                if os.path.exists(os.path.join(d, daemon + ".vty")) and alive(pid):
                    self.pids[daemon] = pid
                    return pid
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise LabError("%s in %s did not start in 10 s (see %s/%s.log)" % (daemon, self.ns, d, daemon))

    def push_config(self):
        out = run([VTYSH, "--vty_socket", self.dir, "--config_dir", self.dir, "-f", os.path.join(self.dir, "frr.conf")])
        if "%" in out:
            raise LabError("pushing %s/frr.conf: %s" % (self.dir, out))

    def vtysh(self, *commands, check=True):
        args = [VTYSH, "--vty_socket", self.dir]
        for c in commands:
            args += ["-c", c]
        return run(args, check=check, timeout=10)

    def bgp_json(self, command):
        return json.loads(self.vtysh(command) or "{}")

    def signal_daemon(self, daemon, sig):
        """Sends sig to one daemon, after checking that the PID is still that daemon of ours."""
        pid = self.pids.get(daemon)
        if pid and alive(pid) and daemon in cmdline(pid) and self.dir in cmdline(pid):
            os.kill(pid, sig)
            return pid
        return None

    def signal_all(self, sig):
        for daemon in self.DAEMONS:
            self.signal_daemon(daemon, sig)

    def stop(self):
        for daemon in reversed(self.DAEMONS):
            pid = self.signal_daemon(daemon, signal.SIGCONT)
            if pid:
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 3
                while alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            self.pids.pop(daemon, None)


def router_frr_config():
    lines = ["hostname router", "router bgp %d" % ROUTER_AS, " bgp router-id %s" % ROUTER_LAN[0],
             " no bgp ebgp-requires-policy", " no bgp default ipv4-unicast",
             " bgp bestpath as-path multipath-relax"]
    for v4, v6 in BOXES.values():
        for peer in (v4, v6):
            lines += [" neighbor %s remote-as %d" % (peer, BOX_AS), " neighbor %s timers 1 3" % peer,
                      " neighbor %s timers connect 1" % peer]
    for af, index in (("ipv4", 0), ("ipv6", 1)):
        lines.append(" address-family %s unicast" % af)
        lines += ["  neighbor %s activate" % box[index] for box in BOXES.values()]
        lines += ["  maximum-paths 8", " exit-address-family"]
    return "\n".join(lines) + "\n"


def box_frr_config(name):
    v4, _ = BOXES[name]
    lines = ["hostname box-%s" % name, "route-map DENY-ALL deny 10", "router bgp %d" % BOX_AS,
             " bgp router-id %s" % v4, " no bgp ebgp-requires-policy", " no bgp default ipv4-unicast",
             " no bgp network import-check"]
    for peer in ROUTER_LAN:
        # No minimum interval between updates (eBGP's default is longer): announcements and
        # withdrawals leave as soon as fwd changes them.
        lines += [" neighbor %s remote-as %d" % (peer, ROUTER_AS), " neighbor %s timers 1 3" % peer,
                  " neighbor %s timers connect 1" % peer, " neighbor %s advertisement-interval 0" % peer]
    for af, peer in (("ipv4", ROUTER_LAN[0]), ("ipv6", ROUTER_LAN[1])):
        lines += [" address-family %s unicast" % af, "  neighbor %s activate" % peer,
                  "  neighbor %s route-map DENY-ALL in" % peer, " exit-address-family"]
    return "\n".join(lines) + "\n"


def hand_announce(frr, prefixes, withdraw=False):
    """What fwd's announcer does, by hand: one vtysh call for every prefix."""
    commands = ["configure terminal", "router bgp"]
    for af in ("ipv4", "ipv6"):
        mine = [p for p in prefixes if (af == "ipv6") == (":" in p)]
        if mine:
            commands.append("address-family %s unicast" % af)
            commands += [("no network %s" if withdraw else "network %s") % p for p in mine]
            commands.append("exit-address-family")
    frr.vtysh(*commands, check=not withdraw)


def prefix_of(vip):
    return vip + ("/128" if ":" in vip else "/32")


# ------------------------------------------------------------------------------------------------
# fwd


def fwd_config(lab, box):
    def seconds(s):
        return "%dms" % round(s * 1000)

    def check(spec, port):
        return '{ type = "tcp", port = %d, interval = "%s", timeout = "%s", rise = %d, fall = %d }' % (
            port, seconds(spec["interval"]), seconds(spec["timeout"]), spec["rise"], spec["fall"])

    out = ["# fwd on anycast lab box %s (written by tools/anycast_lab.py)" % box,
           "maglev_table_size = %d" % MAGLEV_TABLE_SIZE, "",
           "[conntrack]", "capacity_per_core = 65536", "",
           "[admin]", 'socket = "%s"' % lab.admin_socket(box), "",
           "[bgp]", 'vtysh = "%s"' % VTYSH, 'vty_socket = "%s"' % lab.frr[box].dir]
    for key in ("reconcile_interval", "hold_down", "vtysh_timeout", "drain_time"):
        out.append('%s = "%s"' % (key, seconds(BGP[key])))
    out.append("min_healthy = %d" % BGP["min_healthy"])
    out.append('damping = { half_life = "%s", suppress = %d, reuse = %d, penalty = %d }' % (
        seconds(DAMPING["half_life"]), DAMPING["suppress"], DAMPING["reuse"], DAMPING["penalty"]))
    services = []
    for fam in (0, 1):
        tag = ("v4", "v6")[fam]
        services.append(("web-" + tag, VIP_MAIN[fam], "tcp", PORT_MAIN, check(MAIN_CHECK, PORT_MAIN), fam))
        services.append(("echo-" + tag, VIP_MAIN[fam], "udp", PORT_MAIN, check(MAIN_CHECK, PORT_MAIN), fam))
        services.append(("down-" + tag, VIP_DOWN[fam], "tcp", PORT_DOWN, check(FAST_CHECK, PORT_DOWN), fam))
    services.append(("flap-v4", VIP_FLAP[0], "tcp", PORT_FLAP, check(FAST_CHECK, PORT_FLAP), 0))
    for name, vip, proto, port, chk, fam in services:
        out += ["", "[[services]]", 'name = "%s"' % name, 'vip = "%s"' % vip, 'protocol = "%s"' % proto,
                "port = %d" % port, 'mode = "l2"', "check = %s" % chk]
        for addrs in BACKENDS.values():
            out += ["  [[services.backends]]", '  address = "%s"' % addrs[fam]]
    return "\n".join(out) + "\n"


def find_fwd():
    path = os.environ.get("FWD_BIN")
    if path:
        if not os.access(path, os.X_OK):
            raise LabError("FWD_BIN=%s is not an executable" % path)
        return path
    log("installing packages and building fwd (release)")
    subprocess.run([os.path.join(HERE, "install-deps")], check=True, stdout=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "fwd"], cwd=REPO, check=True,
                   stdout=sys.stderr)
    return os.path.join(REPO, "target", "release", "fwd")


# ------------------------------------------------------------------------------------------------
# The router's routes to the VIPs, as a timeline


class RouteWatcher:
    """Records the router's next hops (as box names) for every VIP, each time they change.

    `ip monitor route nexthop` wakes it on every change (zebra installs routes with next-hop
    groups, which change without a route event); it then reads the BGP routes (and once a second
    anyway, should an event be missed). Times are time.monotonic(), the clock of the whole lab.
    """

    def __init__(self, ns, gateways):
        self.ns, self.gateways = ns, gateways
        self.history = []  # (time, {vip: frozenset of box names})
        self.cond = threading.Condition()
        self.wake = threading.Event()
        self.stopping = False
        self.monitor = subprocess.Popen(["ip", "-n", ns, "monitor", "route", "nexthop"], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read_monitor, daemon=True).start()
        self._poll_once()
        threading.Thread(target=self._poll, daemon=True).start()

    def _read_monitor(self):
        for _ in self.monitor.stdout:
            self.wake.set()

    def read_routes(self):
        state = {}
        for fam in ("-4", "-6"):
            out = run(["ip", "-n", self.ns, "-j", fam, "route", "show", "proto", "bgp"], check=False, timeout=5)
            for route in json.loads(out or "[]"):
                hops = route.get("nexthops") or [route]
                state[route["dst"]] = frozenset(self.gateways.get(h.get("gateway"), h.get("gateway")) for h in hops)
        return state

    def _poll_once(self):
        state = self.read_routes()
        with self.cond:
            if not self.history or self.history[-1][1] != state:
                self.history.append((time.monotonic(), state))
                self.cond.notify_all()

    def _poll(self):
        while not self.stopping:
            if self.wake.wait(1.0):
                time.sleep(0.01)  # let a burst of changes settle
                self.wake.clear()
            try:
                self._poll_once()
            except (LabError, ValueError):
                pass

    def now(self, vip):
        with self.cond:
            return self.history[-1][1].get(vip, frozenset()) if self.history else frozenset()

    def wait_for(self, vip, predicate, since, timeout):
        """The first time at or after `since` at which predicate(next hops of vip) held (the state
        in force at `since` counts, stamped `since`), waiting up to `timeout` seconds from now."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                before = [h for h in self.history if h[0] <= since]
                candidates = ([(since, before[-1][1])] if before else []) + [h for h in self.history if h[0] > since]
                for t, state in candidates:
                    if predicate(state.get(vip, frozenset())):
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.5))

    def changes(self, vip, start, end):
        """[(time, next hops)] of vip between start and end, starting with the state at start."""
        with self.cond:
            out = []
            for t, state in self.history:
                hops = state.get(vip, frozenset())
                if t <= start:
                    out = [(start, hops)]
                elif t <= end and (not out or out[-1][1] != hops):
                    out.append((t, hops))
            return out

    def stop(self):
        self.stopping = True
        if self.monitor.poll() is None:
            self.monitor.terminate()
            try:
                self.monitor.wait(3)
            except subprocess.TimeoutExpired:
                self.monitor.kill()


# ------------------------------------------------------------------------------------------------
# The lab


class Lab:
    def __init__(self, fwd_bin, hand_announce=False):
        self.prefix = "fwdany-%d" % os.getpid()
        self.fwd_bin = fwd_bin
        self.hand = hand_announce
        self.work = tempfile.mkdtemp(prefix="fwdany.")
        os.chmod(self.work, 0o755)  # FRR's daemons (user frr) live in subdirectories
        self.namespaces = []
        self.frr = {}
        self.fwd = {}  # box -> Popen
        self.fwd_exit = {}  # box -> (monotonic time, status)
        self.backends = []  # Popen of every backend server
        self.helpers = []  # client helpers (Popen)
        self.watcher = None

    def ns(self, role):
        return "%s-%s" % (self.prefix, role)

    def admin_socket(self, box):
        return os.path.join(self.work, "fwd-%s" % box, "admin.sock")

    def config_path(self, box):
        return os.path.join(self.work, "fwd-%s" % box, "fwd.toml")

    # -- building

    def add_ns(self, role):
        name = self.ns(role)
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        # No duplicate address detection: addresses (link-local ones too, the IPv6 BGP next hops)
        # are usable at once.
        run(nsx(name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"))
        return name

    def link(self, ns_a, if_a, ns_b, if_b):
        """A veth pair, up, transmit checksum offload off (fwd forwards frames through AF_XDP: veth
        would otherwise leave half-done checksums that reach the backends as bad ones)."""
        run(["ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])
        for ns, ifname in ((ns_a, if_a), (ns_b, if_b)):
            run(nsx(ns, "ethtool", "-K", ifname, "tx", "off"))
            run(["ip", "-n", ns, "link", "set", ifname, "up"])

    def addr(self, ns, ifname, v4, v6, v4len=24):
        run(["ip", "-n", ns, "addr", "add", "%s/%d" % (v4, v4len), "dev", ifname])
        run(["ip", "-n", ns, "addr", "add", "%s/64" % v6, "dev", ifname, "nodad"])

    def lan_port(self, ns, port):
        self.link(ns, "eth0", self.ns("lan"), port)
        run(["ip", "-n", self.ns("lan"), "link", "set", port, "master", "br0"])

    def build(self):
        if os.geteuid() != 0:
            raise LabError("the lab builds network namespaces and runs FRR: run it as root")
        for tool in ("ip", "ethtool", "nft", "ping", VTYSH, FRR_DIR + "/zebra", FRR_DIR + "/bgpd"):
            if not shutil.which(tool):
                raise LabError("%s not found (tools/install-deps installs iproute2, ethtool, nftables and frr)" % tool)
        client, router, lan = self.add_ns("client"), self.add_ns("router"), self.add_ns("lan")
        for box in BOXES:
            self.add_ns(box)
        for n in BACKENDS:
            self.add_ns("b%d" % n)

        run(["ip", "-n", lan, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", lan, "link", "set", "br0", "up"])

        self.link(client, "eth0", router, "to-client")
        self.addr(client, "eth0", *CLIENT)
        self.addr(router, "to-client", *ROUTER_CLIENT)
        run(["ip", "-n", client, "route", "add", "default", "via", ROUTER_CLIENT[0]])
        run(["ip", "-n", client, "-6", "route", "add", "default", "via", ROUTER_CLIENT[1]])

        self.link(router, "to-lan", lan, "p-router")
        run(["ip", "-n", lan, "link", "set", "p-router", "master", "br0"])
        self.addr(router, "to-lan", *ROUTER_LAN)
        run(nsx(router, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.fib_multipath_hash_policy=1", "net.ipv6.fib_multipath_hash_policy=1"))

        for box, (v4, v6) in BOXES.items():
            ns = self.ns(box)
            self.lan_port(ns, "p-" + box)
            self.addr(ns, "eth0", v4, v6)
            run(["ip", "-n", ns, "route", "add", "default", "via", ROUTER_LAN[0]])
            run(["ip", "-n", ns, "-6", "route", "add", "default", "via", ROUTER_LAN[1]])

        for n, (v4, v6) in BACKENDS.items():
            ns = self.ns("b%d" % n)
            self.lan_port(ns, "p-b%d" % n)
            self.addr(ns, "eth0", v4, v6)
            run(["ip", "-n", ns, "route", "add", "default", "via", ROUTER_LAN[0]])
            run(["ip", "-n", ns, "-6", "route", "add", "default", "via", ROUTER_LAN[1]])
            for vip in ALL_VIPS:
                run(["ip", "-n", ns, "addr", "add", prefix_of(vip), "dev", "lo"])
            run(nsx(ns, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2",
                    "net.ipv4.conf.eth0.arp_ignore=1", "net.ipv4.conf.eth0.arp_announce=2"))

        # On the bridge, per box: the source port of every client flow whose SYN the router sent
        # there (sets), and packet counters.
        decls, chain = [], []
        for box in BOXES:
            port = "p-" + box
            for fam, match in ((4, "ip daddr 198.18.100.0/24"), (6, "ip6 daddr fd00:18:100::/64")):
                decls += ["set flows%d_%s { type inet_service; flags dynamic; size 65535; }" % (fam, box),
                          "counter syn%d_%s {}" % (fam, box)]
                chain += ['oifname "%s" %s tcp flags & (syn | ack) == syn add @flows%d_%s { tcp sport } '
                          'counter name syn%d_%s' % (port, match, fam, box, fam, box),
                          'oifname "%s" %s counter name vip_%s' % (port, match, box)]
            decls.append("counter vip_%s {}" % box)
        run(nsx(lan, "nft", "-f", "-"), input="table bridge lab {\n %s\n chain forward {\n"
            "  type filter hook forward priority 0;\n  %s\n }\n}\n" % ("\n ".join(decls), "\n  ".join(chain)))
        log("built %d namespaces: %s" % (len(self.namespaces), " ".join(self.namespaces)))

    def backend_control(self, n, port):
        return os.path.join(self.work, "ctl-b%d-%d" % (n, port))

    def start_backends(self):
        """Per backend, tools/lab_backend.py on each port: port 80 (TCP, and UDP on the VIP and the
        backend's own addresses), and ports 81 and 82 (TCP), which the lab stops and starts through
        their state files."""
        for n, (v4, v6) in BACKENDS.items():
            ns, name = self.ns("b%d" % n), "backend-%d" % n
            servers = [[str(PORT_MAIN), VIP_MAIN[0], VIP_MAIN[1], v4, v6]]
            for port in (PORT_DOWN, PORT_FLAP):
                os.makedirs(self.backend_control(n, port))
                servers.append([str(port), "--work", self.backend_control(n, port), "--health-port", str(port + 8000)])
            for args in servers:
                log_file = open(os.path.join(self.work, "backend-%d-%s.log" % (n, args[0])), "w")
                p = subprocess.Popen(nsx(ns, sys.executable, os.path.join(HERE, "lab_backend.py"), name, *args),
                                     stdout=subprocess.PIPE, stderr=log_file, text=True)
                self.backends.append(p)
        for p in self.backends:
            if p.stdout.readline().strip() != "ready":
                raise LabError("a backend server did not start (see %s/backend-*.log)" % self.work)

    def toggle_backends(self, port, up):
        """Stops (closes the listener: connections are refused) or starts every backend's server on
        port; lab_backend.py reads its state file every 100 ms."""
        for n in BACKENDS:
            path = os.path.join(self.backend_control(n, port), "state-backend-%d" % n)
            with open(path + ".tmp", "w") as f:
                f.write("running\n" if up else "stopped\n")
            os.replace(path + ".tmp", path)

    def start_frr(self):
        self.frr["router"] = Frr(self.ns("router"), os.path.join(self.work, "frr-router"), router_frr_config())
        for box in BOXES:
            self.frr[box] = Frr(self.ns(box), os.path.join(self.work, "frr-" + box), box_frr_config(box))
        for frr in self.frr.values():
            frr.start()
        gateways = {}
        for box, addrs in BOXES.items():
            for a in addrs:
                gateways[a] = box
            for a in json.loads(run(["ip", "-n", self.ns(box), "-j", "-6", "addr", "show", "dev", "eth0", "scope", "link"])):
                for info in a.get("addr_info", []):
                    if info.get("family") == "inet6" and info.get("local"):
                        gateways[info["local"]] = box
        self.watcher = RouteWatcher(self.ns("router"), gateways)
        log("FRR running: router (zebra, bgpd pids %s), boxes %s" % (
            sorted(self.frr["router"].pids.values()),
            ", ".join("%s %s" % (b, sorted(self.frr[b].pids.values())) for b in BOXES)))

    def sessions(self):
        """{peer address: BGP state} as the router sees them."""
        peers = self.frr["router"].bgp_json("show bgp neighbors json")
        return {peer: info.get("bgpState") for peer, info in peers.items() if isinstance(info, dict)}

    def wait_sessions(self, timeout=20, peers=None):
        want = peers or [a for addrs in BOXES.values() for a in addrs]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.sessions()
            if all(states.get(p) == "Established" for p in want):
                return True
            time.sleep(0.25)
        raise LabError("BGP sessions not established after %ds: %s" % (timeout, self.sessions()))

    def start_fwd(self, box, core):
        os.makedirs(os.path.dirname(self.config_path(box)), exist_ok=True)
        with open(self.config_path(box), "w") as f:
            f.write(fwd_config(self, box))
        out = subprocess.run([self.fwd_bin, "check-config", self.config_path(box)], capture_output=True, text=True)
        if out.returncode != 0:
            raise LabError("the lab's fwd config is invalid: %s%s" % (out.stdout, out.stderr))
        d = os.path.dirname(self.config_path(box))
        p = subprocess.Popen(nsx(self.ns(box), self.fwd_bin, "--nic", "eth0", "--cores", core, "--config",
                                 self.config_path(box), "--idle-sleep-us", "50"),
                             stdout=open(os.path.join(d, "fwd.out"), "w"), stderr=open(os.path.join(d, "fwd.log"), "w"))
        self.fwd[box] = p
        self.fwd_exit.pop(box, None)

        def reap():
            status = p.wait()
            self.fwd_exit[box] = (time.monotonic(), status)
        threading.Thread(target=reap, daemon=True).start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise LabError("fwd on box %s exited at start: %s" % (box, self.fwd_log(box)))
            try:
                with open(os.path.join(d, "fwd.log")) as f:
                    if "worker on core" in f.read():
                        return p
            except OSError:
                pass
            time.sleep(0.1)
        raise LabError("fwd on box %s did not start its workers in 20 s: %s" % (box, self.fwd_log(box)))

    def stop_fwd(self, box, timeout=30):
        """SIGTERM and wait; returns fwd's exit status."""
        p = self.fwd[box]
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def fwd_log(self, box, tail=2000):
        try:
            with open(os.path.join(self.work, "fwd-%s" % box, "fwd.log")) as f:
                return f.read()[-tail:]
        except OSError:
            return ""

    def fwd_running(self, box):
        p = self.fwd.get(box)
        return p is not None and p.poll() is None

    def status(self, box):
        out = subprocess.run([self.fwd_bin, "status", "--json", "--socket", self.admin_socket(box)],
                             capture_output=True, text=True, timeout=20)
        if out.returncode != 0:
            raise LabError("fwd status on box %s: %s" % (box, out.stderr.strip()))
        return json.loads(out.stdout)

    def stats(self, box):
        out = subprocess.run([self.fwd_bin, "stats", "--json", "--socket", self.admin_socket(box)],
                             capture_output=True, text=True, timeout=20)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def warm_neighbours(self):
        """Every box learns every backend's MAC before fwd needs it (fwd reads the kernel's table)."""
        procs = []
        for box in BOXES:
            for addrs in BACKENDS.values():
                for a in addrs:
                    procs.append(subprocess.Popen(nsx(self.ns(box), "ping", "-c", "1", "-W", "2", a),
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for p in procs:
            p.wait()

    def counters(self):
        out = json.loads(run(nsx(self.ns("lan"), "nft", "-j", "list", "counters", "table", "bridge", "lab")))
        return {c["counter"]["name"]: c["counter"]["packets"] for c in out["nftables"] if "counter" in c}

    # -- clients

    def client(self, *args, timeout=120):
        out = run(nsx(self.ns("client"), sys.executable, os.path.abspath(__file__), "_client", *args), timeout=timeout)
        return json.loads(out)

    def client_bg(self, *args):
        p = subprocess.Popen(nsx(self.ns("client"), sys.executable, os.path.abspath(__file__), "_client", *args),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        self.helpers.append(p)
        return p

    def ask_udp(self, vip):
        try:
            return self.client("udp", vip, PORT_MAIN, timeout=10).get("name", "")
        except LabError:
            return ""

    def flows_seen(self, fam):
        """{source port: box} of every client flow (of IPv4 or IPv6) whose SYN went to a box,
        read from the bridge's sets."""
        seen = {}
        for box in BOXES:
            out = json.loads(run(nsx(self.ns("lan"), "nft", "-j", "list", "set", "bridge", "lab",
                                     "flows%d_%s" % (fam, box))))
            for item in out["nftables"]:
                for elem in item.get("set", {}).get("elem", []):
                    port = elem["elem"]["val"] if isinstance(elem, dict) else elem
                    if seen.get(port, box) != box:
                        seen[port] = "a+b"
                    else:
                        seen[port] = box
        return seen

    def which(self, vip, port, sport):
        src = CLIENT[family_of(vip) == 6]
        out = run([self.fwd_bin, "which", "--config", self.config_path("a"), "--proto", "tcp",
                   "--src", host_port(src, sport), "--dst", host_port(vip, port)])
        return out.strip()

    def backend_name(self, address):
        for n, addrs in BACKENDS.items():
            if address.split("]")[0].lstrip("[").rsplit(":", 1)[0] in addrs or address in addrs:
                return "backend-%d" % n
        return address

    # -- announcing

    def announce_by_hand(self, boxes=None):
        for box in boxes or BOXES:
            hand_announce(self.frr[box], [prefix_of(v) for v in ALL_VIPS])

    def fwd_announces(self, box):
        try:
            return bool(self.status(box).get("bgp"))
        except LabError:
            return False

    def wait_all_routes(self, boxes=frozenset(BOXES), vips=ALL_VIPS, timeout=30):
        """Waits until every VIP has exactly `boxes` as next hops; returns the VIPs that do not."""
        deadline = time.monotonic() + timeout
        missing = []
        for vip in vips:
            left = max(deadline - time.monotonic(), 0)
            if self.watcher.wait_for(vip, lambda hops: hops == boxes, time.monotonic(), left) is None:
                missing.append("%s: %s" % (vip, "+".join(sorted(self.watcher.now(vip))) or "no route"))
        return missing

    # -- teardown

    def teardown(self):
        if self.watcher:
            self.watcher.stop()
        for p in self.helpers:
            if p.poll() is None:
                p.kill()
                p.wait()
        for box, p in self.fwd.items():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for frr in self.frr.values():
            try:
                frr.stop()
            except OSError:
                pass
        for p in self.backends:
            if p.poll() is None:
                p.kill()
                p.wait()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        if self.namespaces:
            log("removed %d namespaces" % len(self.namespaces))
        self.namespaces = []
        if os.environ.get("ANYCAST_KEEP_WORK"):
            log("work directory kept: %s" % self.work)
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- the whole start

    def bring_up(self):
        self.build()
        self.start_backends()
        self.start_frr()
        self.wait_sessions()
        log("BGP sessions established (router <-> both boxes, IPv4 and IPv6)")
        if any(self.watcher.now(v) for v in ALL_VIPS):
            raise LabError("the router has routes to the VIPs before any box announces: %s" % self.watcher.history[-1][1])
        self.warm_neighbours()
        for box, core in (("a", "0"), ("b", "1")):
            self.start_fwd(box, core)
        log("fwd running on both boxes (pids %s)" % ", ".join("%s %d" % (b, p.pid) for b, p in self.fwd.items()))
        if self.hand:
            self.announce_by_hand()
            log("announced every VIP from both boxes by hand (vtysh), as fwd's announcer would")
        missing = self.wait_all_routes(timeout=30)
        if missing:
            hint = "" if self.hand or self.fwd_announces("a") else (
                " (fwd's status has no bgp object: this fwd has no announcer; --hand-announce checks the lab alone)")
            raise LabError("the router lacks two next hops for: %s%s" % ("; ".join(missing), hint))
        log("the router has both boxes as next hops for every VIP: %s" % self.route_summary())
        # Through fwd, end to end: the VIP answers over UDP on both families.
        for vip in VIP_MAIN:
            deadline = time.monotonic() + 15
            while not self.ask_udp(vip).startswith("backend-"):
                if time.monotonic() > deadline:
                    raise LabError("%s does not answer through fwd after 15 s" % vip)
                time.sleep(0.3)

    def route_summary(self):
        return ", ".join("%s via %s" % (v, "+".join(sorted(self.watcher.now(v))) or "-") for v in ALL_VIPS)


# ------------------------------------------------------------------------------------------------
# Scenarios


class Scenario:
    def __init__(self, number, title):
        self.number, self.title = number, title
        self.checks, self.measured = [], {}
        self.error = None
        self.started = time.monotonic()

    def check(self, what, ok, detail=""):
        self.checks.append({"check": what, "ok": bool(ok), "detail": detail})
        log("%s  %s%s" % ("ok  " if ok else "FAIL", what, " (%s)" % detail if detail else ""))
        return ok

    def measure(self, key, value):
        self.measured[key] = round(value, 3) if isinstance(value, float) else value
        return value

    def ok(self):
        return self.error is None and all(c["ok"] for c in self.checks) and bool(self.checks)

    def summary(self):
        return {"scenario": self.number, "title": self.title, "ok": self.ok(), "error": self.error,
                "seconds": round(time.monotonic() - self.started, 1), "measured": self.measured, "checks": self.checks}


def elapsed(a, b):
    return None if a is None or b is None else b - a


def scenario_backends_down(lab, s):
    """1: every backend of VIP_DOWN stops serving; the route goes; they return; the route returns."""
    w = lab.watcher
    fall_limit = FAST_CHECK["fall"] * FAST_CHECK["interval"] + 2.0
    rise_limit = FAST_CHECK["rise"] * FAST_CHECK["interval"] + BGP["hold_down"] + 2.0
    t_stop = time.monotonic()
    lab.toggle_backends(PORT_DOWN, up=False)
    log("stopped the port %d servers of every backend (%s)" % (PORT_DOWN, ", ".join(VIP_DOWN)))
    for vip in VIP_DOWN:
        t = w.wait_for(vip, lambda h: not h, t_stop, fall_limit + 5)
        d = elapsed(t_stop, t)
        s.measure("withdrawn_after_s_%s" % vip, d)
        s.check("IPv%d %s gone from the router within fall x interval + 2 s = %.1f s" % (family_of(vip), vip, fall_limit),
                d is not None and d <= fall_limit, "%s" % ("%.2f s" % d if d is not None else "still there"))
    s.check("the steady VIP keeps both next hops", w.now(VIP_MAIN[0]) == frozenset(BOXES), str(sorted(w.now(VIP_MAIN[0]))))
    t_start = time.monotonic()
    lab.toggle_backends(PORT_DOWN, up=True)
    log("started them again")
    for vip in VIP_DOWN:
        t = w.wait_for(vip, lambda h: h == frozenset(BOXES), t_start, rise_limit + 10)
        d = elapsed(t_start, t)
        s.measure("announced_after_s_%s" % vip, d)
        s.check("IPv%d %s back through both boxes within rise x interval + hold-down + 2 s = %.1f s"
                % (family_of(vip), vip, rise_limit), d is not None and d <= rise_limit,
                "%.2f s" % d if d is not None else "not back")
        first_back = w.wait_for(vip, lambda h: bool(h), t_start, 0)
        if first_back is not None:
            s.check("IPv%d %s not announced before the hold-down (%.1f s) after the backends returned"
                    % (family_of(vip), vip, BGP["hold_down"]), first_back - t_start >= BGP["hold_down"] - 0.05,
                    "%.2f s" % (first_back - t_start))


def scenario_bgpd_restart(lab, s):
    """2: bgpd on box a killed and started again: fwd re-asserts its announcements."""
    w, frr = lab.watcher, lab.frr["a"]
    limit = BGP["reconcile_interval"] + 2.0
    t_kill = time.monotonic()
    pid = frr.signal_daemon("bgpd", signal.SIGKILL)
    if not pid:
        raise LabError("bgpd of box a is not running")
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    t = w.wait_for(VIP_MAIN[0], lambda h: h == frozenset("b"), t_kill, 10)
    s.measure("route_via_a_lost_after_s", elapsed(t_kill, t))
    s.check("killing bgpd on box a removes box a's next hop", t is not None,
            "%.2f s" % (t - t_kill) if t else "still there")
    frr.start_daemon("bgpd")
    frr.push_config()
    t_ready = time.monotonic()
    log("bgpd of box a started again (pid %d) with its base config (no network statements)" % frr.pids["bgpd"])
    t_net, t_up = None, None
    deadline = time.monotonic() + limit + 20
    while time.monotonic() < deadline and (t_net is None or t_up is None):
        if t_net is None and "network %s" % prefix_of(VIP_MAIN[0]) in frr.vtysh("show running-config", check=False):
            t_net = time.monotonic()
        if t_up is None and lab.sessions().get(BOXES["a"][0]) == "Established":
            t_up = time.monotonic()
        time.sleep(0.1)
    s.measure("reasserted_after_s", elapsed(t_ready, t_net))
    s.measure("session_up_after_s", elapsed(t_ready, t_up))
    s.check("fwd re-asserted its network statements within one reconcile interval + 2 s = %.1f s" % limit,
            t_net is not None and t_net - t_ready <= limit,
            "%.2f s" % (t_net - t_ready) if t_net else "not re-asserted")
    possible = max(t_ready, t_up or t_ready)
    for vip in VIP_MAIN:
        t = w.wait_for(vip, lambda h: h == frozenset(BOXES), t_ready, limit + 20)
        s.measure("route_complete_after_s_%s" % vip, elapsed(t_ready, t))
        s.check("IPv%d %s through both boxes again within %.1f s of bgpd being configured and its session up"
                % (family_of(vip), vip, limit), t is not None and t - possible <= limit,
                "%.2f s after start, %.2f s after the session" % (t - t_ready, t - possible) if t else "not back")


def scenario_spread_and_freeze(lab, s):
    """4: two next hops, spread over both boxes, `fwd which` agreement, then box a frozen."""
    w = lab.watcher
    for vip in VIP_MAIN:
        s.check("the router has two next hops for %s" % vip, w.now(vip) == frozenset(BOXES), str(sorted(w.now(vip))))
    flows = {VIP_MAIN[0]: (20000, 500), VIP_MAIN[1]: (21000, 200)}
    for vip, (base, count) in flows.items():
        fam = family_of(vip)
        before = lab.counters()
        result = lab.client("flows", vip, PORT_MAIN, count, base)
        after = lab.counters()
        names = {sport: name for sport, name, _ in result["flows"]}
        failed = [n for n in names.values() if not n.startswith("backend-")]
        s.check("IPv%d: all %d flows answered by a backend" % (fam, count), not failed,
                "%d failed, first: %s" % (len(failed), failed[:1]))
        seen = lab.flows_seen(fam)
        box_of = {sport: seen.get(sport, "none") for sport in names}
        per_box = {b: sum(1 for x in box_of.values() if x == b) for b in BOXES}
        syns = {b: after["syn%d_%s" % (fam, b)] - before["syn%d_%s" % (fam, b)] for b in BOXES}
        s.measure("ipv%d_flows_per_box" % fam, per_box)
        s.measure("ipv%d_syns_per_box" % fam, syns)
        per_backend = {}
        for n in names.values():
            per_backend[n] = per_backend.get(n, 0) + 1
        s.measure("ipv%d_flows_per_backend" % fam, per_backend)
        s.check("IPv%d: every flow's SYN went to exactly one box" % fam, sum(per_box.values()) == count,
                "%s, other: %s" % (per_box, sorted(set(box_of.values()) - set(BOXES))))
        s.check("IPv%d: both boxes carry 30-70%% of the flows" % fam,
                all(0.3 * count <= per_box[b] <= 0.7 * count for b in BOXES), str(per_box))
        sample = [sp for b in BOXES for sp in sorted(sp for sp, x in box_of.items() if x == b)[:8 if fam == 4 else 4]]
        wrong = []
        for sport in sample:
            want = lab.backend_name(lab.which(vip, PORT_MAIN, sport))
            if names[sport] != want:
                wrong.append("%d: got %s, fwd which says %s" % (sport, names[sport], want))
        s.check("IPv%d: %d sampled flows (half through each box) reached the backend fwd which names"
                % (fam, len(sample)), not wrong, "; ".join(wrong[:3]))
    for box in BOXES:
        st = lab.status(box)
        s.measure("fwd_%s_service_packets" % box, {x["name"]: x["packets"] for x in st.get("services", [])})

    # Long-lived connections through both boxes, then box a frozen.
    held = {}
    for vip, base, count in ((VIP_MAIN[0], 22000, 40), (VIP_MAIN[1], 22100, 20)):
        p = lab.client_bg("hold", vip, PORT_MAIN, count, base)
        opened = json.loads(p.stdout.readline())
        held[vip] = (p, dict((sp, name) for sp, name in opened["opened"]))
        seen = lab.flows_seen(family_of(vip))
        through_a = sum(1 for sport in held[vip][1] if seen.get(sport) == "a")
        s.measure("ipv%d_long_lived_through_a" % family_of(vip), through_a)
        s.check("IPv%d: %d long-lived connections open, %d of them through box a" % (family_of(vip), count, through_a),
                all(n.startswith("backend-") for n in held[vip][1].values()) and 0 < through_a < count)
    frozen = [lab.fwd["a"].pid] + [lab.frr["a"].pids[d] for d in Frr.DAEMONS]
    t_freeze = time.monotonic()
    lab.frr["a"].signal_all(signal.SIGSTOP)
    os.kill(lab.fwd["a"].pid, signal.SIGSTOP)
    log("froze box a: SIGSTOP to zebra, bgpd and fwd (pids %s)" % frozen)
    try:
        for vip in VIP_MAIN:
            t = w.wait_for(vip, lambda h: h == frozenset("b"), t_freeze, 15)
            d = elapsed(t_freeze, t)
            s.measure("one_next_hop_after_s_%s" % vip, d)
            s.check("IPv%d: the router drops to one next hop (box b) within hold time + 1 s = 4 s" % family_of(vip),
                    d is not None and d <= 4.0, "%.2f s" % d if d is not None else "still two")
        before = lab.counters()
        for vip, (p, opened) in held.items():
            p.stdin.write("ping\n")
            p.stdin.flush()
            answers = dict((sp, name) for sp, name in json.loads(p.stdout.readline())["answers"])
            changed = ["%d: %s -> %s" % (sp, opened[sp], answers.get(sp)) for sp in opened if answers.get(sp) != opened[sp]]
            s.check("IPv%d: every long-lived connection still answers, from the same backend" % family_of(vip),
                    not changed, "; ".join(changed[:3]))
        for vip, base, count in ((VIP_MAIN[0], 23000, 200), (VIP_MAIN[1], 23300, 100)):
            result = lab.client("flows", vip, PORT_MAIN, count, base)
            names = {sport: name for sport, name, _ in result["flows"]}
            failed = [n for n in names.values() if not n.startswith("backend-")]
            s.check("IPv%d: %d new connections with box a frozen all answered" % (family_of(vip), count), not failed,
                    "%d failed, first: %s" % (len(failed), failed[:1]))
            wrong = []
            for sport in sorted(names)[:8 if family_of(vip) == 4 else 4]:
                want = lab.backend_name(lab.which(vip, PORT_MAIN, sport))
                if names[sport] != want:
                    wrong.append("%d: got %s, fwd which says %s" % (sport, names[sport], want))
            s.check("IPv%d: sampled new connections reached the backend fwd which names" % family_of(vip), not wrong,
                    "; ".join(wrong[:3]))
        after = lab.counters()
        to_a = after["vip_a"] - before["vip_a"]
        s.measure("packets_to_frozen_box", to_a)
        s.check("nothing was sent to the frozen box", to_a == 0, "%d packets" % to_a)
    finally:
        os.kill(lab.fwd["a"].pid, signal.SIGCONT)
        lab.frr["a"].signal_all(signal.SIGCONT)
        for p, _ in held.values():
            if p.poll() is None:
                p.stdin.write("quit\n")
                p.stdin.flush()
                p.wait(10)
    t_thaw = time.monotonic()
    log("thawed box a")
    # fwd's watchdog may have seen box a's worker stalled (it was frozen) and failed closed: then
    # box a stays withdrawn until fwd restarts, as an operator would restart a box that hung.
    back = w.wait_for(VIP_MAIN[0], lambda h: h == frozenset(BOXES), t_thaw, 8)
    fail_closed = (lab.status("a").get("bgp") or {}).get("fail_closed")
    s.measure("watchdog_failed_closed_after_thaw", bool(fail_closed))
    if back is None and fail_closed:
        log("box a's fwd failed closed after the freeze (%s): restarting it" % fail_closed)
        lab.stop_fwd("a")
        lab.start_fwd("a", "0")
    elif back is None:
        s.check("box a comes back after thawing (announcing again, or failed closed by its watchdog)", False,
                "neither: %s" % json.dumps(lab.status("a").get("bgp"))[:300])
    missing = lab.wait_all_routes(timeout=30)
    back = w.wait_for(VIP_MAIN[0], lambda h: h == frozenset(BOXES), t_thaw, 0)
    s.measure("both_next_hops_after_thaw_s", elapsed(t_thaw, back))
    s.check("after thawing%s, both boxes are next hops for every VIP again"
            % (" and restarting box a's failed-closed fwd" if fail_closed else ""), not missing, "; ".join(missing))


def scenario_sigterm(lab, s):
    """3: SIGTERM to fwd on box a while the client opens connections."""
    w = lab.watcher
    duration = BGP["drain_time"] + 5.0
    streams = [lab.client_bg("stream", VIP_MAIN[0], PORT_MAIN, 24000, 0.02, duration),
               lab.client_bg("stream", VIP_MAIN[1], PORT_MAIN, 26000, 0.04, duration)]
    time.sleep(1.0)
    before = lab.counters()
    t_term = time.monotonic()
    os.kill(lab.fwd["a"].pid, signal.SIGTERM)
    log("SIGTERM to fwd on box a (pid %d)" % lab.fwd["a"].pid)
    deadline = time.monotonic() + BGP["drain_time"] + 15
    while "a" not in lab.fwd_exit and time.monotonic() < deadline:
        time.sleep(0.05)
    t_exit, status = lab.fwd_exit.get("a", (None, None))
    s.measure("fwd_exit_after_s", elapsed(t_term, t_exit))
    s.check("fwd on box a exited 0 after the drain time (%.1f s)" % BGP["drain_time"],
            status == 0 and t_exit - t_term >= BGP["drain_time"] - 0.2,
            "status %s after %s" % (status, "%.2f s" % (t_exit - t_term) if t_exit else "-"))
    for vip in ALL_VIPS:
        t = w.wait_for(vip, lambda h: "a" not in h, t_term, 0 if t_exit else 5)
        s.measure("a_withdrawn_after_s_%s" % vip, elapsed(t_term, t))
        s.check("%s: box a's next hop left the router before fwd exited" % vip,
                t is not None and t_exit is not None and t < t_exit,
                "withdrawn %s, exited %s" % ("%.2f s" % (t - t_term) if t else "never", "%.2f s" % (t_exit - t_term) if t_exit else "never"))
    results = []
    for p in streams:
        out, _ = p.communicate(timeout=duration + 30)
        results += json.loads(out)["connections"]
    after = lab.counters()
    during = [r for r in results if t_term <= r[0] <= (t_exit or t_term + duration)]
    failed = [r for r in results if not r[3].startswith("backend-")]
    slow = [r for r in results if r[2] > 0.5]
    s.measure("connections", len(results))
    s.measure("connections_during_drain", len(during))
    s.measure("slowest_connection_s", max((r[2] for r in results), default=0.0))
    s.measure("connections_over_0.5s", len(slow))
    s.measure("slow_connections", [["%+.2f s" % (r[0] - t_term), r[1], r[2]] for r in slow[:10]])
    s.measure("syns_to_a_after_sigterm", after["syn4_a"] + after["syn6_a"] - before["syn4_a"] - before["syn6_a"])
    s.check("no client connection failed (%d opened, %d during the drain)" % (len(results), len(during)), not failed,
            "%d failed, first: %s" % (len(failed), failed[:1]))


def announcements_allowed(toggles, end, hold_down, damping, step=0.01):
    """How many times the rules let a prefix be announced again, if its backends' health followed
    `toggles` ([(time, up)], starting announced) with no detection delay: a withdraw is immediate
    and adds `penalty` to a figure that halves every `half_life`; above `suppress` the prefix stays
    withdrawn until the figure falls below `reuse`; it is announced again only after wanting it
    for `hold_down`, and `hold_down` after its last change. The lab's own model of the contract,
    independent of fwd's code."""
    t, announced, penalty, suppressed = toggles[0][0], True, 0.0, False
    last_change, wanted_since, count, i, up = t, None, 0, 0, True
    decay = 0.5 ** (step / damping["half_life"])
    while t < end:
        while i < len(toggles) and toggles[i][0] <= t:
            up = toggles[i][1]
            wanted_since = t if up else None
            i += 1
        penalty *= decay
        if suppressed and penalty < damping["reuse"]:
            suppressed = False
        if announced and not up:
            announced, last_change = False, t
            penalty += damping["penalty"]
            suppressed = suppressed or penalty > damping["suppress"]
        elif (not announced and up and not suppressed and t - wanted_since >= hold_down
              and t - last_change >= hold_down):
            announced, last_change, count = True, t, count + 1
        t += step
    return count


def scenario_flapping(lab, s):
    """5: VIP_FLAP's backends go down and up every second; count the router's route changes."""
    w = lab.watcher
    vip, seconds = VIP_FLAP[0], 20
    t_start = time.monotonic()
    toggles, up = [], True
    suppressed_seen, penalty_max = set(), 0.0
    while time.monotonic() - t_start < seconds:
        up = not up
        toggles.append((time.monotonic(), up))
        lab.toggle_backends(PORT_FLAP, up)
        next_flip = toggles[-1][0] + 1.0
        for box in BOXES:
            entry = bgp_entry(lab, box, prefix_of(vip)) or {}
            if entry.get("suppressed"):
                suppressed_seen.add(box)
            penalty_max = max(penalty_max, float(entry.get("penalty") or 0))
        time.sleep(max(0.0, next_flip - time.monotonic()))
    t_end = time.monotonic()
    lab.toggle_backends(PORT_FLAP, True)
    changes = w.changes(vip, t_start, t_end)
    model = [(t_start, True)] + toggles
    allowed = announcements_allowed(model, t_end, BGP["hold_down"], DAMPING)
    undamped = announcements_allowed(model, t_end, BGP["hold_down"], dict(DAMPING, suppress=1e12))
    s.measure("backend_flips", len(toggles))
    s.measure("route_states", [["%.1f" % (t - t_start), "+".join(sorted(h)) or "-"] for t, h in changes])
    s.measure("announcements_allowed", allowed)
    s.measure("announcements_allowed_without_damping", undamped)
    s.measure("max_penalty_seen", round(penalty_max))
    s.measure("suppressed_seen_on", sorted(suppressed_seen))
    for box in BOXES:
        appear = [t for (t, h), (_, prev) in zip(changes[1:], changes) if box in h and box not in prev]
        leave = [t for (t, h), (_, prev) in zip(changes[1:], changes) if box not in h and box in prev]
        gaps = [b - a for a, b in zip(appear, appear[1:])]
        s.measure("box_%s_announcements" % box, len(appear))
        s.measure("box_%s_withdrawals" % box, len(leave))
        s.check("box %s: %d announcements in %.0f s of flapping; hold-down and damping allow %d (%d without damping)"
                % (box, len(appear), t_end - t_start, allowed, undamped), len(appear) <= allowed + 1)
        s.check("box %s: withdrawn when the backends first went down" % box, len(leave) >= 1)
        s.check("box %s: announcements at least a hold-down apart" % box,
                all(g >= BGP["hold_down"] - 0.05 for g in gaps), "gaps %s" % ["%.1f" % g for g in gaps])
    s.check("damping suppressed the flapping prefix on both boxes (fwd status)", suppressed_seen == set(BOXES),
            "suppressed on %s, max penalty %.0f" % (sorted(suppressed_seen), penalty_max))


def bgp_entry(lab, box, prefix):
    """The prefix's entry in fwd status's bgp object, whatever its exact shape."""
    try:
        bgp = lab.status(box).get("bgp")
    except LabError:
        return None
    items = bgp.get("prefixes", bgp) if isinstance(bgp, dict) else bgp
    if isinstance(items, dict):
        items = [dict(v, prefix=k) if isinstance(v, dict) else {} for k, v in items.items()]
    for item in items or []:
        if isinstance(item, dict) and item.get("prefix") == prefix:
            return item
    return None


SCENARIOS = [
    (1, "all backends of a VIP down, then back (IPv4 and IPv6)", scenario_backends_down, True),
    (2, "bgpd restarted on a box", scenario_bgpd_restart, True),
    (4, "two boxes: ECMP spread, fwd which agreement, one box frozen", scenario_spread_and_freeze, False),
    (5, "flapping backends", scenario_flapping, True),
    (3, "SIGTERM to fwd while clients connect", scenario_sigterm, True),
]


def run_tests(lab, only):
    results, not_run = [], []
    for number, title, fn, needs_announcer in SCENARIOS:
        if only and number not in only:
            continue
        if needs_announcer and lab.hand:
            not_run.append({"scenario": number, "title": title, "why": "needs fwd's announcer (--hand-announce)"})
            log("scenario %d (%s): not run with --hand-announce" % (number, title))
            continue
        s = Scenario(number, title)
        log("scenario %d: %s" % (number, title))
        # The flapping VIP may still be suppressed after scenario 5: only the steady ones count.
        missing = lab.wait_all_routes(vips=ALL_VIPS if number != 3 else VIP_MAIN + VIP_DOWN, timeout=40)
        if missing:
            s.error = "not at the starting point (every VIP through both boxes): " + "; ".join(missing)
            log("FAIL  " + s.error)
        else:
            try:
                fn(lab, s)
            except (LabError, OSError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
                s.error = "%s: %s" % (type(e).__name__, e)
                log("FAIL  scenario %d: %s" % (number, s.error))
        for box in BOXES:
            if box in lab.fwd and not lab.fwd_running(box) and number != 3:
                s.error = (s.error or "") + " fwd on box %s exited: %s" % (box, lab.fwd_log(box, 600))
        log("scenario %d %s in %.1f s" % (number, "passed" if s.ok() else "FAILED", time.monotonic() - s.started))
        results.append(s.summary())
        if number != 3 and not all(lab.fwd_running(b) for b in BOXES):
            break
    return results, not_run


def demo(lab):
    print(lab.frr["router"].vtysh("show ip route bgp"), file=sys.stderr)
    print(lab.frr["router"].vtysh("show ipv6 route bgp"), file=sys.stderr)
    print(run(["ip", "-n", lab.ns("router"), "route", "show", "proto", "bgp"]), file=sys.stderr)
    for vip, base in ((VIP_MAIN[0], 20000), (VIP_MAIN[1], 21000)):
        result = lab.client("flows", vip, PORT_MAIN, 200, base)
        seen = lab.flows_seen(family_of(vip))
        table = {}
        for sport, name, _ in result["flows"]:
            key = (seen.get(sport, "none"), name)
            table[key] = table.get(key, 0) + 1
        log("200 TCP flows to %s:%d, by box and backend:" % (vip, PORT_MAIN))
        for box in BOXES:
            log("  box %s: %s" % (box, ", ".join("%s %d" % (n, c) for (b, n), c in sorted(table.items()) if b == box)))


# ------------------------------------------------------------------------------------------------
# The client, run inside the client's namespace: `_client`


def connect(vip, port, sport, timeout):
    family = socket.AF_INET6 if ":" in vip else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", sport))
    s.connect((vip, port))
    return s


def read_line(s):
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(64)
        if not chunk:
            raise ConnectionResetError("closed by the server")
        data += chunk
    return data.decode().strip()


def one_exchange(vip, port, sport, timeout=3.0):
    start = time.monotonic()
    try:
        s = connect(vip, port, sport, timeout)
        try:
            name = read_line(s)
        finally:
            s.close()
    except OSError as e:
        name = "error: %s" % (e or type(e).__name__)
    return [sport, name, round(time.monotonic() - start, 4)]


def client_main(argv):
    mode = argv[0]
    if mode == "udp":  # udp VIP PORT: one datagram, the answer
        vip, port = argv[1], int(argv[2])
        s = socket.socket(socket.AF_INET6 if ":" in vip else socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1.0)
        try:
            s.sendto(b"hello", (vip, port))
            print(json.dumps({"name": s.recv(64).decode().strip()}))
        except OSError:
            print(json.dumps({"name": ""}))
    elif mode == "flows":  # flows VIP PORT COUNT SPORT_BASE: one connection at a time
        vip, port, count, base = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        print(json.dumps({"flows": [one_exchange(vip, port, base + i) for i in range(count)]}))
    elif mode == "hold":  # hold VIP PORT COUNT SPORT_BASE: long-lived connections, "ping"/"quit" on stdin
        vip, port, count, base = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        conns, opened = {}, []
        for i in range(count):
            try:
                s = connect(vip, port, base + i, 3.0)
                conns[base + i] = s
                opened.append([base + i, read_line(s)])
            except OSError as e:
                opened.append([base + i, "error: %s" % e])
        print(json.dumps({"opened": opened}), flush=True)
        for line in sys.stdin:
            if line.strip() != "ping":
                break
            answers = []
            for sport, s in conns.items():
                try:
                    s.sendall(b"ping\n")
                    answers.append([sport, read_line(s)])
                except OSError as e:
                    answers.append([sport, "error: %s" % (e or type(e).__name__)])
            print(json.dumps({"answers": answers}), flush=True)
    elif mode == "stream":  # stream VIP PORT SPORT_BASE INTERVAL DURATION: new connections continuously
        vip, port, base, interval, duration = argv[1], int(argv[2]), int(argv[3]), float(argv[4]), float(argv[5])
        out, i = [], 0
        end = time.monotonic() + duration
        while time.monotonic() < end:
            t = time.monotonic()
            out.append([round(t, 4)] + one_exchange(vip, port, base + i))
            i += 1
            time.sleep(max(0.0, interval - (time.monotonic() - t)))
        # [start time, source port, seconds, answer]
        print(json.dumps({"connections": [[r[0], r[1], r[3], r[2]] for r in out]}))
    else:
        raise SystemExit("unknown client mode %s" % mode)


# ------------------------------------------------------------------------------------------------


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        return client_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="see the top of this file")
    parser.add_argument("mode", nargs="?", default="demo", choices=["demo", "test", "up"])
    parser.add_argument("--only", default="", help="comma-separated scenario numbers (test)")
    parser.add_argument("--hand-announce", action="store_true",
                        help="announce the VIPs with vtysh from the lab (to check the lab without fwd's announcer)")
    args = parser.parse_args()
    only = {int(x) for x in args.only.split(",") if x.strip()}

    def interrupted(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    lab = None
    status = 1
    summary = {"ok": False, "scenarios": [], "not_run": []}
    try:
        fwd_bin = find_fwd()
        summary["fwd_bin"] = fwd_bin
        lab = Lab(fwd_bin, hand_announce=args.hand_announce)
        lab.bring_up()
        summary["announcer"] = "by hand (vtysh from the lab)" if lab.hand else "fwd"
        if args.mode == "demo":
            demo(lab)
            status = 0
        elif args.mode == "up":
            log("the lab is up. Namespaces: %s" % " ".join(lab.namespaces))
            log("router: vtysh --vty_socket %s -c 'show ip route bgp'" % lab.frr["router"].dir)
            for box in BOXES:
                log("box %s: %s status --socket %s; vtysh --vty_socket %s" % (
                    box, lab.fwd_bin, lab.admin_socket(box), lab.frr[box].dir))
            log("Ctrl-C tears it down")
            while True:
                time.sleep(3600)
        else:
            results, not_run = run_tests(lab, only)
            summary["scenarios"], summary["not_run"] = results, not_run
            summary["ok"] = bool(results) and all(r["ok"] for r in results)
            status = 0 if summary["ok"] else 1
    except KeyboardInterrupt:
        log("interrupted")
        status = 130
    except (LabError, subprocess.CalledProcessError, OSError) as e:
        log("error: %s" % e)
        summary["error"] = str(e)
        status = 1
    except Exception as e:  # a bug in the lab: still tear down, and say where
        import traceback
        traceback.print_exc()
        summary["error"] = str(e)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if lab:
            lab.teardown()
    if args.mode == "test":
        summary["seconds"] = round(time.monotonic() - T0, 1)
        print(json.dumps(summary, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
