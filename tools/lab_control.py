#!/usr/bin/env python3
"""The fwd lab's control scenarios: what fwd's control side does while backends fail and operators
act, measured with real traffic (`tools/lab control` runs this in the client's namespace, with fwd
running on the fwd box and the LAB_* variables of tools/lab exported).

  a. a stopped backend (its port 80 and health port closed) leaves the tables of the services
     whose checks see it (http, udp, tcp) within fall x interval + one interval; new connections
     avoid it, established ones to the other backends keep answering; started again, it returns
     after about rise x interval.
  b. the same for an HTTP check answering 503 (only the http service sees it), and for a hung
     health endpoint (down for "timeout"); while one hangs, another going 503 is still caught on
     time (a hung target costs a timeout, never a stuck checker).
  c. the exec check: a file the command tests takes one backend of one service down, and back.
  d. drain: no new flows to the drained backend, its established connections keep answering;
     undrain gives it new flows again.
  e. reload: a broken file is refused with a message naming the field and changes nothing
     (same fingerprint, failure counted in the metrics); a valid file adds and removes services
     while a client keeps connecting to an unchanged one, with no failed connection; SIGHUP
     reloads too.
  f. metrics: the Prometheus endpoint (inside the fwd box) has the families the issue names, with
     sane values; `fwd status` and `fwd stats` answer.

Every step logs what it measured on stderr; the summary (every check, every measured time) goes to
stdout as JSON; the exit status is 1 if any check failed. LAB_SCENARIOS=a,d (default: all) picks
scenarios. Times are measured from the moment the lab changed a backend to the first `status`
answer (polled every 50 ms over the admin socket) that shows the change.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

ENV = os.environ
WORK = ENV["LAB_WORK"]
FWD = ENV["FWD_BIN"]
ADMIN_SOCKET = ENV["LAB_ADMIN_SOCKET"]
FWD_PID = int(ENV["LAB_FWD_PID"])
NS_FWD = ENV["LAB_NS_FWD"]
METRICS_URL = "http://%s/metrics" % ENV["LAB_METRICS"]
VIP_V4, VIP_V6 = ENV["LAB_VIP_V4"], ENV["LAB_VIP_V6"]
RELOAD_VIP_V4 = ENV["LAB_RELOAD_VIP_V4"]
PORT = int(ENV["LAB_SERVICE_PORT"])
CONFIG = os.path.join(WORK, "fwd.toml")

INTERVAL = int(ENV["LAB_CHECK_INTERVAL_MS"]) / 1000.0
TIMEOUT = int(ENV["LAB_CHECK_TIMEOUT_MS"]) / 1000.0
RISE, FALL = int(ENV["LAB_CHECK_RISE"]), int(ENV["LAB_CHECK_FALL"])
# fwd's control loop publishes health changes at its next 200 ms tick; the lab's backends read
# their control files every 100 ms; our status polls add up to 50 ms more.
SLACK = 0.5
DOWN_WITHIN = FALL * INTERVAL + INTERVAL + SLACK
UP_WITHIN = RISE * INTERVAL + INTERVAL + SLACK
# How long a wait goes on before it gives up (a late change is still measured and reported).
GIVE_UP = 3 * max(DOWN_WITHIN, UP_WITHIN)

NAMES = ["backend-%d" % (i + 1) for i in range(len(ENV["LAB_BACKENDS_V4"].split()))]
V4 = dict(zip(NAMES, ENV["LAB_BACKENDS_V4"].split()))
V6 = dict(zip(NAMES, ENV["LAB_BACKENDS_V6"].split()))


def log(text):
    print("control: %s" % text, file=sys.stderr, flush=True)


class Summary:
    """Checks and measurements, per scenario."""

    def __init__(self):
        self.checks = []
        self.measured = {}
        self.scenario = "setup"

    def begin(self, key, title):
        self.scenario = key
        self.measured.setdefault(key, {})
        log("")
        log("== %s. %s" % (key, title))

    def check(self, ok, text):
        self.checks.append({"scenario": self.scenario, "ok": bool(ok), "check": text})
        log("%s %s" % ("ok   " if ok else "FAIL ", text))
        return bool(ok)

    def measure(self, name, value):
        self.measured.setdefault(self.scenario, {})[name] = value
        log("     measured %s: %s" % (name, json.dumps(value)))

    def result(self):
        return {
            "ok": bool(self.checks) and all(c["ok"] for c in self.checks),
            "bounds_s": {"down_within": DOWN_WITHIN, "up_within": UP_WITHIN},
            "check_timing": {"interval_s": INTERVAL, "timeout_s": TIMEOUT, "rise": RISE, "fall": FALL},
            "measured": self.measured,
            "checks": self.checks,
        }


S = Summary()

# ---------------------------------------------------------------------------------------------
# fwd: the admin socket (for fast polling) and the CLI (for the operator's commands)


def admin(command):
    """One request on the admin socket; returns the result, raises with fwd's error."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(ADMIN_SOCKET)
        s.sendall(json.dumps({"command": command}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data)
    if not answer.get("ok"):
        raise RuntimeError("fwd %s: %s" % (command, answer.get("error")))
    return answer["result"]


def status():
    return admin("status")


def fwd(*args):
    """The fwd CLI against the lab's socket: (exit status, stdout, stderr)."""
    r = subprocess.run([FWD, *args, "--socket", ADMIN_SOCKET], capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout, r.stderr


def host_of(address):
    """198.18.2.11, 198.18.2.11:80, [fd00::11]:80 -> the address alone."""
    if address.startswith("["):
        return address[1:address.index("]")]
    if address.count(":") == 1:
        return address.split(":")[0]
    return address


def backend_view(report, service, address):
    for s in report["services"]:
        if s["name"] == service:
            for b in s["backends"]:
                if host_of(b["address"]) == address:
                    return b
    return None


def service_view(report, service):
    return next((s for s in report["services"] if s["name"] == service), None)


def is_out(b):
    return b is not None and b["table_state"] == "down"


def is_in(b):
    return b is not None and b["table_state"] == "up" and b["health"] in ("up", "unchecked")


def watch(targets, predicate, since, limit=GIVE_UP):
    """Polls status until predicate(backend view) holds for every (service, address) target.
    Returns ({target: seconds after `since`, or None if it never held}, last views)."""
    when = {t: None for t in targets}
    views = {}
    while True:
        report = status()
        now = time.monotonic()
        for t in targets:
            views[t] = backend_view(report, *t)
            if when[t] is None and predicate(views[t]):
                when[t] = round(now - since, 3)
        if all(v is not None for v in when.values()) or now - since > limit:
            return when, views
        time.sleep(0.05)


def all_in(limit=GIVE_UP):
    """Waits until every backend of every service is in its table; returns the stragglers."""
    deadline = time.monotonic() + limit
    while True:
        report = status()
        out = ["%s %s (%s, %s)" % (s["name"], b["address"], b["health"], b["table_state"])
               for s in report["services"] for b in s["backends"] if not is_in(b)]
        if not out or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


def expect_transitions(targets, predicate, since, bound, what, left=None):
    """Waits for `targets` to change, measures each, checks the bound; returns the views and
    the targets that changed. A return (`left`: the targets that did leave) is measured only for
    a backend that left: one that never left has no return time to show."""
    when, views = watch(targets, predicate, since)
    times = {}
    for target, t in when.items():
        service, address = target
        times["%s %s" % target] = t
        if left is not None and target not in left:
            S.check(False, "%s: %s %s: not measurable, it never left the table" % (service, address, what))
            continue
        S.check(t is not None and t <= bound,
                "%s: %s %s within %.1f s (measured %s)" % (service, address, what, bound,
                                                           "never" if t is None else "%.2f s" % t))
    S.measure("%s_s" % what.replace(" ", "_"), times)
    return views, {target for target, t in when.items() if t is not None}


# ---------------------------------------------------------------------------------------------
# The lab's backends: control files read by tools/lab_backend.py


def write_file(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def set_state(name, state):
    write_file(os.path.join(WORK, "state-" + name), state + "\n")


def set_health(name, mode):
    write_file(os.path.join(WORK, "health-" + name), mode + "\n")


def exec_down_file(address):
    return os.path.join(WORK, "down-" + address)


def reset_backends():
    for name in NAMES:
        set_state(name, "running")
        set_health(name, "ok")
        for address in (V4[name], V6[name]):
            if os.path.exists(exec_down_file(address)):
                os.remove(exec_down_file(address))
    for name in NAMES:
        for address in (V4[name], V6[name]):
            fwd("undrain", address)


# ---------------------------------------------------------------------------------------------
# Traffic from the client


def family_of(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


# Every TCP connection's client port, with the scenario and the backend that answered it: a
# connection that lands where a check says it must not can then be told apart from one whose
# client reused the ports of an earlier connection (whose tuple fwd may still track).
PORT_HISTORY = {}


def note_port(s, vip, name):
    """Records the connection's client port in PORT_HISTORY; returns it (None if unknown)."""
    try:
        port = s.getsockname()[1]
    except OSError:
        return None
    PORT_HISTORY.setdefault((vip, port), []).append((S.scenario, name))
    return port


def connect_with_port(vip, port=PORT, timeout=2.0):
    """One TCP connection: (client port or None, the backend's name or "error: ...")."""
    try:
        with socket.create_connection((vip, port), timeout=timeout) as s:
            name = read_line(s)
            return note_port(s, vip, name), name
    except OSError as e:
        return None, "error: %s" % e


def connect_once(vip, port=PORT, timeout=2.0):
    """One TCP connection: the backend's name, or "error: ..."."""
    return connect_with_port(vip, port, timeout)[1]


def udp_once(vip, port=PORT, timeout=1.0):
    """One UDP exchange from a fresh source port (a new flow): the name, or "error: ..."."""
    try:
        with socket.socket(family_of(vip), socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect((vip, port))  # connected: a port unreachable fails it at once
            s.send(b"hello")
            return s.recv(64).decode().strip()
    except OSError as e:
        return "error: %s" % e


def read_line(s):
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(64)
        if not chunk:
            raise ConnectionError("closed by the peer")
        data += chunk
    return data.decode().strip()


def spread(names):
    counts = {}
    for n in names:
        key = n if n in NAMES else "failed"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


class LongLived:
    """Connections kept open: each remembers the backend that answered when it opened."""

    def __init__(self, vip, count):
        self.conns = []
        for _ in range(count):
            try:
                s = socket.create_connection((vip, PORT), timeout=2.0)
                name = read_line(s)
                note_port(s, vip, name)
                self.conns.append((s, name))
            except OSError as e:
                self.conns.append((None, "error: %s" % e))

    def opened(self):
        return [name for s, name in self.conns if s is not None]

    def ask(self, to=None):
        """Sends a line on every connection (to backend `to` only, if given): [(first, now)]."""
        out = []
        for s, first in self.conns:
            if s is None or (to is not None and first not in to):
                continue
            try:
                s.sendall(b"still there?\n")
                out.append((first, read_line(s)))
            except OSError as e:
                out.append((first, "error: %s" % e))
        return out

    def close(self):
        for s, _ in self.conns:
            if s is not None:
                s.close()


class BackgroundClient(threading.Thread):
    """Keeps opening connections to a VIP (one at a time) until stopped; counts the outcomes."""

    def __init__(self, vip):
        super().__init__(daemon=True)
        self.vip = vip
        self.stopping = threading.Event()
        self.names = []
        self.failures = []

    def run(self):
        while not self.stopping.is_set():
            name = connect_once(self.vip)
            self.names.append(name)
            if name not in NAMES:
                self.failures.append((round(time.monotonic(), 3), name))
            # A few hundred a second: enough to see any gap, few enough that the client's
            # ephemeral ports (held in TIME_WAIT) never run out however long the scenario waits.
            self.stopping.wait(0.005)

    def stop(self):
        self.stopping.set()
        self.join()


# ---------------------------------------------------------------------------------------------
# Metrics: scraped inside the fwd box (the endpoint listens on its loopback)

SCRAPE = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    sys.stdout.write("%d %s\\n" % (r.status, r.headers.get("Content-Type")))
    sys.stdout.write(r.read().decode())
"""

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    def __init__(self):
        r = subprocess.run(["ip", "netns", "exec", NS_FWD, "python3", "-c", SCRAPE, METRICS_URL],
                           capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            raise RuntimeError("scraping %s in %s failed: %s" % (METRICS_URL, NS_FWD, r.stderr.strip()))
        head, _, self.text = r.stdout.partition("\n")
        self.http_status, _, self.content_type = head.partition(" ")
        self.types, self.helps, self.samples = {}, set(), []
        for line in self.text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                self.types[name] = kind
            elif line.startswith("# HELP "):
                self.helps.add(line.split(" ", 3)[2])
            elif line and not line.startswith("#"):
                m = SAMPLE.match(line)
                if m:
                    labels = dict(LABEL.findall(m.group(3) or ""))
                    self.samples.append((m.group(1), labels, float(m.group(4))))
                else:
                    self.samples.append(("unparsable", {"line": line}, float("nan")))

    def of(self, name, **labels):
        return [(l, v) for n, l, v in self.samples
                if n == name and all(l.get(k) == v2 for k, v2 in labels.items())]

    def value(self, name, **labels):
        found = self.of(name, **labels)
        return found[0][1] if len(found) == 1 else None


# ---------------------------------------------------------------------------------------------
# The scenarios

SERVICES_OF_PORT_80 = [("web-v4", V4), ("echo-v4", V4), ("web-v6", V6)]


def scenario_stopped_backend():
    S.begin("a", "a stopped backend leaves the tables its checks watch, and comes back")
    victim = "backend-2"
    others = [n for n in NAMES if n != victim]
    keep_v4, keep_v6 = LongLived(VIP_V4, 30), LongLived(VIP_V6, 30)
    S.check(len(keep_v4.opened()) == 30 and len(keep_v6.opened()) == 30,
            "30 long-lived connections opened per family before the stop (v4 %s, v6 %s)"
            % (spread(keep_v4.opened()), spread(keep_v6.opened())))

    set_state(victim, "stopped")
    since = time.monotonic()
    targets = [(service, addresses[victim]) for service, addresses in SERVICES_OF_PORT_80]
    views, left = expect_transitions(targets, is_out, since, DOWN_WITHIN, "left the table")
    reasons = {"%s %s" % t: (v or {}).get("health_reason", "") for t, v in views.items()}
    S.measure("reasons", reasons)
    for (service, address), v in views.items():
        S.check(v is not None and v["health"] == "down" and v["health_reason"] != "",
                "%s: %s health down with a reason (%r)" % (service, address, (v or {}).get("health_reason")))
    tcp_view = views[("web-v6", V6[victim])]
    S.check(tcp_view is not None and "refused" in tcp_view["health_reason"],
            "web-v6 (tcp check): the reason says the connection was refused (%r)"
            % (tcp_view or {}).get("health_reason"))
    exec_view = backend_view(status(), "echo-v6", V6[victim])
    S.check(is_in(exec_view), "echo-v6 keeps %s: its exec check does not look at port 80 (%s)"
            % (V6[victim], exec_view and exec_view["table_state"]))
    m = Metrics()
    healthy = {n: m.value("fwd_backend_healthy", service="web-v4", backend=V4[n]) for n in NAMES}
    S.check(healthy[victim] == 0 and all(healthy[n] == 1 for n in others),
            "metrics: fwd_backend_healthy of web-v4 is 0 for %s only (%s)" % (victim, healthy))

    for vip, label, ask in ((VIP_V4, "web-v4", connect_once), (VIP_V6, "web-v6", connect_once),
                            (VIP_V4, "echo-v4", udp_once)):
        names = [ask(vip) for _ in range(100)]
        S.measure("spread_while_stopped %s" % label, spread(names))
        S.check(all(n in others for n in names),
                "%s: 100 new %s all answered, none by %s (%s)"
                % (label, "exchanges" if ask is udp_once else "connections", victim, spread(names)))

    for keep, label in ((keep_v4, "v4"), (keep_v6, "v6")):
        answers = keep.ask(to=others)
        S.check(answers and all(first == now for first, now in answers),
                "%s: the %d long-lived connections to %s still answer, each from its backend"
                % (label, len(answers), " and ".join(others)))
        # The stopped server keeps its established sockets: an answer from it would mean fwd
        # still sends the flow there. Out of the table, the flow re-hashes to a backend that
        # knows nothing of the connection and resets it.
        moved = [now for first, now in keep.ask(to=[victim])]
        S.measure("long_lived_to_%s_%s" % (victim, label),
                  {"count": len(moved), "answers_after_the_stop": spread(moved)})
        S.check(moved and victim not in moved,
                "%s: the %d tracked flows to %s re-hashed (none still reaches it: %s)"
                % (label, len(moved), victim, spread(moved)))
    keep_v4.close()
    keep_v6.close()

    set_state(victim, "running")
    since = time.monotonic()
    expect_transitions(targets, is_in, since, UP_WITHIN, "back in the table", left)
    names = [connect_once(VIP_V4) for _ in range(100)]
    S.check(names.count(victim) > 0 and all(n in NAMES for n in names),
            "web-v4: %s takes new connections again (%s)" % (victim, spread(names)))


def scenario_http_503_and_hang():
    S.begin("b", "HTTP 503, and a hung health endpoint that does not stall the checker")
    b1, b3 = "backend-1", "backend-3"

    set_health(b3, "503")
    since = time.monotonic()
    views, left = expect_transitions([("web-v4", V4[b3])], is_out, since, DOWN_WITHIN, "left the table on 503")
    reason = (views[("web-v4", V4[b3])] or {}).get("health_reason", "")
    S.check("503" in reason, "web-v4: the reason names the status (%r)" % reason)
    report = status()
    kept = {s: (backend_view(report, s, a[b3]) or {}).get("table_state")
            for s, a in (("echo-v4", V4), ("web-v6", V6), ("echo-v6", V6))}
    S.check(all(v == "up" for v in kept.values()),
            "the services that do not use the HTTP check keep %s (%s)" % (b3, kept))
    names = [connect_once(VIP_V4) for _ in range(100)]
    S.check(all(n in NAMES and n != b3 for n in names),
            "web-v4: 100 new connections all answered, none by %s (%s)" % (b3, spread(names)))
    set_health(b3, "ok")
    since = time.monotonic()
    expect_transitions([("web-v4", V4[b3])], is_in, since, UP_WITHIN, "back after 503", left)

    set_health(b1, "hang")
    since = time.monotonic()
    views, left = expect_transitions([("web-v4", V4[b1])], is_out, since, DOWN_WITHIN, "left the table when hung")
    reason = (views[("web-v4", V4[b1])] or {}).get("health_reason", "")
    S.check("timeout" in reason or "timed out" in reason, "web-v4: the reason is a timeout (%r)" % reason)
    # Backend 1 still hangs (each of its checks waits out the timeout): backend 3 must still be
    # caught on time.
    set_health(b3, "503")
    since = time.monotonic()
    _, left_too = expect_transitions([("web-v4", V4[b3])], is_out, since, DOWN_WITHIN,
                                     "left the table on 503 while another hangs")
    b2 = backend_view(status(), "web-v4", V4["backend-2"])
    S.check(is_in(b2), "web-v4: backend-2 stayed up throughout (%s)" % (b2 and b2["table_state"]))
    names = [connect_once(VIP_V4) for _ in range(60)]
    S.check(all(n == "backend-2" for n in names),
            "web-v4: with backends 1 and 3 down, 60 new connections all go to backend-2 (%s)" % spread(names))
    set_health(b1, "ok")
    set_health(b3, "ok")
    since = time.monotonic()
    expect_transitions([("web-v4", V4[b1]), ("web-v4", V4[b3])], is_in, since, UP_WITHIN,
                       "back after hang and 503", left | left_too)


def scenario_exec_check():
    S.begin("c", "exec check: a command's exit status takes a backend of one service down and back")
    victim = "backend-2"
    address = V6[victim]
    write_file(exec_down_file(address), "")
    since = time.monotonic()
    views, left = expect_transitions([("echo-v6", address)], is_out, since, DOWN_WITHIN, "left the table")
    reason = (views[("echo-v6", address)] or {}).get("health_reason", "")
    S.check("exit" in reason, "echo-v6: the reason gives the command's exit (%r)" % reason)
    other = backend_view(status(), "web-v6", address)
    S.check(is_in(other), "web-v6 keeps %s (its tcp check still succeeds)" % address)
    names = [udp_once(VIP_V6) for _ in range(100)]
    S.check(all(n in NAMES and n != victim for n in names),
            "echo-v6: 100 new exchanges all answered, none by %s (%s)" % (victim, spread(names)))
    os.remove(exec_down_file(address))
    since = time.monotonic()
    expect_transitions([("echo-v6", address)], is_in, since, UP_WITHIN, "back in the table", left)
    names = [udp_once(VIP_V6) for _ in range(100)]
    S.check(names.count(victim) > 0 and all(n in NAMES for n in names),
            "echo-v6: %s answers new exchanges again (%s)" % (victim, spread(names)))


def scenario_drain():
    S.begin("d", "drain: no new flows to the drained backend, its established ones continue")
    keep = LongLived(VIP_V4, 30)
    opened = keep.opened()
    S.check(len(opened) == 30, "30 long-lived connections to web-v4 opened (%s)" % spread(opened))
    target = max(NAMES, key=opened.count)
    address = V4[target]
    S.measure("drained_backend", {"name": target, "address": address, "long_lived": opened.count(target)})

    rc, out, err = fwd("drain", address, "--service", "web-v4")
    S.check(rc == 0 and "drained" in out, "`fwd drain %s --service web-v4` succeeds (%r)" % (address, (out + err).strip()))
    report = status()
    view = backend_view(report, "web-v4", address)
    S.check(view is not None and view["drained"] and view["table_state"] == "drained",
            "status: web-v4 %s is drained (%s)" % (address, view and view["table_state"]))
    other = backend_view(report, "echo-v4", address)
    S.check(is_in(other) and not other["drained"], "status: echo-v4 %s is not (the drain named web-v4)" % address)
    made = [connect_with_port(VIP_V4) for _ in range(200)]
    names = [n for _, n in made]
    S.measure("spread_while_drained", spread(names))
    strays = [{"nth_after_the_drain": i, "client_port": p, "earlier_uses": PORT_HISTORY.get((VIP_V4, p), [])[:-1]}
              for i, (p, n) in enumerate(made) if n == target]
    S.measure("client_ports_used_twice_so_far", sum(len(u) > 1 for (v, _), u in PORT_HISTORY.items() if v == VIP_V4))
    if strays:
        S.measure("connections_to_the_drained_backend", strays)
    S.check(all(n in NAMES and n != target for n in names),
            "200 new connections all answered, none by %s (%s)" % (target, spread(names)))
    answers = keep.ask()
    to_target = [(f, n) for f, n in answers if f == target]
    S.check(to_target and all(f == n for f, n in to_target),
            "the %d established connections to %s keep answering from it" % (len(to_target), target))
    S.check(all(f == n for f, n in answers), "all %d established connections keep their backend" % len(answers))

    rc, out, err = fwd("undrain", address, "--service", "web-v4")
    S.check(rc == 0 and "undrained" in out, "`fwd undrain` succeeds (%r)" % (out + err).strip())
    view = backend_view(status(), "web-v4", address)
    S.check(is_in(view) and not view["drained"], "status: web-v4 %s is up again" % address)
    names = [connect_once(VIP_V4) for _ in range(200)]
    S.measure("spread_after_undrain", spread(names))
    S.check(names.count(target) >= 20 and all(n in NAMES for n in names),
            "200 new connections after undrain: %s takes its share again (%s)" % (target, spread(names)))
    answers = keep.ask()
    S.check(all(f == n for f, n in answers), "the established connections still keep their backend")
    keep.close()

    having = sorted(s["name"] for s in status()["services"]
                    if any(host_of(b["address"]) == address for b in s["backends"]))
    rc, out, err = fwd("drain", address)
    drained_in = sorted(s["name"] for s in status()["services"] for b in s["backends"]
                        if host_of(b["address"]) == address and b["drained"])
    S.check(rc == 0 and drained_in == having,
            "`fwd drain %s` without --service drains it in every service that has it (%s)" % (address, drained_in))
    rc2, _, _ = fwd("undrain", address)
    S.check(rc2 == 0 and all(is_in(backend_view(status(), s, address)) for s in having),
            "`fwd undrain %s` restores it everywhere" % address)
    rc, out, err = fwd("drain", "198.18.2.99", "--service", "web-v4")
    S.check(rc != 0 and "198.18.2.99" in err, "draining an unknown backend fails and names it (%r)" % err.strip())


def split_services(text):
    """The config as (head, [service blocks]) split at each [[services]]."""
    parts = text.split("\n[[services]]\n")
    return parts[0], ["[[services]]\n" + p for p in parts[1:]]


def block_name(block):
    m = re.search(r'^name = "([^"]*)"', block, re.M)
    return m and m.group(1)


def scenario_reload():
    S.begin("e", "reload: a broken file changes nothing; a valid one adds and removes services under traffic")
    with open(CONFIG) as f:
        original = f.read()
    before = status()
    failures_before = Metrics().value("fwd_config_reloads_total", result="failure")

    # services[0] is web-v4; its second backend gets a weight out of range.
    head, blocks = split_services(original)
    S.check(block_name(blocks[0]) == "web-v4", "the lab config starts with web-v4")
    second = '  address = "%s"\n' % V4["backend-2"]
    broken = original.replace(second, second + "  weight = 70000\n", 1)
    write_file(CONFIG, broken)
    rc, out, err = fwd("reload")
    S.measure("broken_reload_message", err.strip())
    S.check(rc == 1, "`fwd reload` of a file with weight = 70000 exits 1 (exit %d)" % rc)
    S.check("services[0].backends[1].weight" in err and "70000" in err,
            "the message names the field and the value")
    after = status()
    S.check(after["cluster_fingerprint"] == before["cluster_fingerprint"],
            "status: same cluster fingerprint (%s)" % after["cluster_fingerprint"])
    S.check([s["name"] for s in after["services"]] == [s["name"] for s in before["services"]],
            "status: same services")
    last = after.get("last_reload") or {}
    S.check(last.get("ok") is False and "weight" in (last.get("error") or ""),
            "status: last_reload says it was rejected and why")
    failures_after = Metrics().value("fwd_config_reloads_total", result="failure")
    S.check(failures_before is not None and failures_after == failures_before + 1,
            "metrics: fwd_config_reloads_total{result=\"failure\"} went %s -> %s" % (failures_before, failures_after))
    names = [connect_once(VIP_V4) for _ in range(20)]
    S.check(all(n in NAMES for n in names), "web-v4 still answers (%s)" % spread(names))

    # A valid file: echo-v6 removed, web-new (a new VIP) added with a tcp check.
    new_block = (
        '[[services]]\nname = "web-new"\nvip = "%s"\nprotocol = "tcp"\nport = %d\nmode = "l2"\n'
        'check = { type = "tcp", port = %d, interval = "%dms", timeout = "%dms", rise = %d, fall = %d }\n'
        % (RELOAD_VIP_V4, PORT, PORT, INTERVAL * 1000, TIMEOUT * 1000, RISE, FALL)
        + "".join('  [[services.backends]]\n  address = "%s"\n' % V4[n] for n in NAMES))
    kept = [b for b in blocks if block_name(b) != "echo-v6"]
    valid = head + "\n" + "\n".join(kept + [new_block])
    S.check(len(kept) == len(blocks) - 1, "the new file drops echo-v6")
    before = status()
    successes_before = Metrics().value("fwd_config_reloads_total", result="success") or 0
    client = BackgroundClient(VIP_V4)
    client.start()
    time.sleep(1.0)
    write_file(CONFIG, valid)
    started = time.monotonic()
    rc, out, err = fwd("reload")
    reload_s = round(time.monotonic() - started, 3)
    S.measure("reload_command_s", reload_s)
    S.check(rc == 0 and "1 services added, 1 removed, 0 changed" in out,
            "`fwd reload` of the valid file: %r" % (out + err).strip())
    # The new service answers once its backends passed their checks.
    since = time.monotonic()
    answer = ""
    while time.monotonic() - since < GIVE_UP:
        answer = connect_once(RELOAD_VIP_V4, timeout=0.5)
        if answer in NAMES:
            break
        time.sleep(0.1)
    S.measure("new_service_answers_after_s", round(time.monotonic() - since, 3))
    S.check(answer in NAMES, "web-new (%s:%d) answers (%s)" % (RELOAD_VIP_V4, PORT, answer))
    names = [connect_once(RELOAD_VIP_V4) for _ in range(30)]
    S.check(all(n in NAMES for n in names), "web-new: 30 connections answered (%s)" % spread(names))
    gone = [udp_once(VIP_V6, timeout=0.3) for _ in range(10)]
    S.check(all(n not in NAMES for n in gone), "echo-v6 (udp %s) no longer answers (%d tries)" % (VIP_V6, len(gone)))
    time.sleep(1.0)
    client.stop()
    S.measure("background_client", {"connections": len(client.names), "failed": len(client.failures),
                                    "spread": spread(client.names)})
    S.check(len(client.names) >= 20 and not client.failures,
            "web-v4: %d connections opened during the reload, %d failed %s"
            % (len(client.names), len(client.failures), client.failures[:3]))
    after = status()
    S.check(sorted(s["name"] for s in after["services"])
            == sorted([s["name"] for s in before["services"] if s["name"] != "echo-v6"] + ["web-new"]),
            "status lists web-new and no echo-v6")
    unchanged = {s["name"]: s["fingerprint"] for s in before["services"] if s["name"] != "echo-v6"}
    now = {s["name"]: s["fingerprint"] for s in after["services"] if s["name"] in unchanged}
    S.check(now == unchanged, "the unchanged services kept their tables (same fingerprints)")
    last = after.get("last_reload") or {}
    S.check(last.get("ok") is True and last.get("services_added") == ["web-new"]
            and last.get("services_removed") == ["echo-v6"], "status: last_reload lists what changed")
    successes_after = Metrics().value("fwd_config_reloads_total", result="success")
    S.check(successes_after == successes_before + 1,
            "metrics: fwd_config_reloads_total{result=\"success\"} went %s -> %s" % (successes_before, successes_after))

    # Back to the lab's own config for what follows, by SIGHUP this time.
    write_file(CONFIG, original)
    previous = last.get("at_unix")
    os.kill(FWD_PID, signal.SIGHUP)
    since = time.monotonic()
    while True:
        last = status().get("last_reload") or {}
        if last.get("at_unix") != previous or time.monotonic() - since > GIVE_UP:
            break
        time.sleep(0.05)
    S.measure("sighup_reload_seen_after_s", round(time.monotonic() - since, 3))
    S.check(last.get("ok") is True and last.get("services_added") == ["echo-v6"]
            and last.get("services_removed") == ["web-new"],
            "SIGHUP reloads the original file (added %s, removed %s)"
            % (last.get("services_added"), last.get("services_removed")))
    stragglers = all_in()
    S.check(not stragglers, "every backend is back in its table (%s)" % (stragglers or "all in"))
    S.check(udp_once(VIP_V6) in NAMES, "echo-v6 answers again")


def scenario_metrics():
    S.begin("f", "metrics and the operator commands")
    # Traffic just before the scrape, so that the last second's batch-time window has samples.
    end = time.monotonic() + 1.2
    while time.monotonic() < end:
        connect_once(VIP_V4)
    report = status()  # before the scrape: the metrics' counters can only be ahead of it
    m = Metrics()
    S.check(m.http_status == "200" and "text/plain" in m.content_type and "version=0.0.4" in m.content_type,
            "GET %s in the fwd box: %s %s" % (METRICS_URL, m.http_status, m.content_type))
    S.measure("families", len(m.types))
    S.check(all(n.startswith("fwd_") for n in m.types) and m.types and set(m.types) == m.helps,
            "%d families, all fwd_*, each with HELP and TYPE" % len(m.types))
    bad_counters = [n for n, k in m.types.items() if k == "counter" and not n.endswith("_total")]
    S.check(not bad_counters, "every counter ends in _total (%s)" % (bad_counters or "yes"))
    unparsable = [l["line"] for n, l, _ in m.samples if n == "unparsable"]
    S.check(not unparsable, "every sample line parses (%s)" % unparsable[:2])
    # A summary's NAME_sum and NAME_count belong to its family NAME.
    def family(n):
        for suffix in ("_sum", "_count"):
            if n.endswith(suffix) and m.types.get(n[: -len(suffix)]) == "summary":
                return n[: -len(suffix)]
        return n
    undeclared = sorted({n for n, _, _ in m.samples if family(n) not in m.types})
    S.check(not undeclared, "every sample belongs to a declared family (%s)" % undeclared[:3])

    info = m.of("fwd_build_info")
    S.check(len(info) == 1 and info[0][1] == 1 and info[0][0].get("version"),
            "fwd_build_info = 1 with a version (%s)" % (info and info[0][0]))
    pairs = {(s["name"], b["address"]) for s in report["services"] for b in s["backends"]}
    healthy = {(l.get("service"), l.get("backend")): v for l, v in m.of("fwd_backend_healthy")}
    S.check(set(healthy) == pairs and all(v == 1 for v in healthy.values()),
            "fwd_backend_healthy: one sample per backend of every service (%d), all 1" % len(healthy))
    packets = {(l.get("service"), l.get("backend")): v for l, v in m.of("fwd_backend_packets_total")}
    web = [v for (s, _), v in packets.items() if s == "web-v4"]
    S.check(m.types.get("fwd_backend_packets_total") == "counter" and set(packets) == pairs
            and len(web) == len(NAMES) and all(v > 0 for v in web),
            "fwd_backend_packets_total: every backend, web-v4's all > 0 (%s)" % sorted(web))
    status_packets = {(s["name"], b["address"]): b["packets"] for s in report["services"] for b in s["backends"]}
    S.check(all(packets.get(k, -1) >= v for k, v in status_packets.items()),
            "fwd_backend_packets_total agrees with `fwd status` (never below it)")
    drops = m.of("fwd_worker_drops_total")
    reasons = {l.get("reason") for l, _ in drops}
    S.check(drops and all(l.get("core") is not None and v >= 0 for l, v in drops) and len(reasons) >= 5,
            "fwd_worker_drops_total: per core and reason (%d reasons)" % len(reasons))
    S.measure("drops_nonzero", {"%s/%s" % (l["core"], l["reason"]): v for l, v in drops if v > 0})
    quantiles = {}
    for l, v in m.of("fwd_worker_batch_duration_seconds"):
        quantiles.setdefault(l.get("core"), {})[l.get("quantile")] = v
    S.measure("batch_duration_seconds", quantiles)
    order = ["0.5", "0.9", "0.99", "0.999", "1"]
    S.check(quantiles and all(list(q) == order and all(0 <= q[a] <= q[b] < 1 for a, b in zip(order, order[1:]))
                              for q in quantiles.values()),
            "fwd_worker_batch_duration_seconds: quantiles 0.5..1 per core, ordered, below 1 s")
    timed = [v for _, v in m.of("fwd_worker_batch_duration_seconds_count")]
    rx = [v for _, v in m.of("fwd_worker_rx_packets_total")]
    S.check(timed and all(v > 0 for v in timed) and rx and all(v > 0 for v in rx),
            "every worker received packets and timed its batches (rx %s, batches timed %s)" % (rx, timed))
    socket = {}
    for l, v in m.of("fwd_worker_socket_events_total"):
        socket.setdefault(l.get("core"), {})[l.get("event")] = v
    S.measure("socket_events", socket)
    S.check(socket and set(socket) == set(quantiles) and all(set(e) == SOCKET_EVENTS for e in socket.values()),
            "fwd_worker_socket_events_total: the socket's six kernel counters per core (%s)" % sorted(socket))
    samples = {l.get("core"): v for l, v in m.of("fwd_worker_umem_samples_total")}
    umem = {}
    for l, v in m.of("fwd_worker_umem_frames_sampled_total"):
        umem.setdefault(l.get("core"), {})[l.get("place")] = v
    means = {c: {p: round(v / samples[c]) for p, v in places.items()} for c, places in umem.items()
             if samples.get(c)}
    S.measure("umem_mean_frames", means)
    # Light load: the frames wait on the fill ring; the three places never hold more than the
    # UMEM (fwd's default 4096 frames).
    S.check(set(samples) == set(quantiles) and all(v > 0 for v in samples.values())
            and set(means) == set(samples)
            and all(set(p) == {"fill_ring", "rx_ring", "transmit"} and sum(p.values()) <= 4096
                    and p["fill_ring"] >= 2048 for p in means.values()),
            "fwd_worker_umem_*: sampled per core, mean frames per place within the UMEM, mostly free (%s)" % means)
    reloads = {l.get("result"): v for l, v in m.of("fwd_config_reloads_total")}
    S.measure("config_reloads_total", reloads)
    S.check(set(reloads) == {"success", "failure"}, "fwd_config_reloads_total by result (%s)" % reloads)
    # Health checks: each distinct target (address and spec) runs once, whatever the services
    # sharing it; a probe never takes longer than its timeout.
    targets = {(host_of(b["address"]), s["name"]) for s in report["services"] for b in s["backends"]
               if b["health"] != "unchecked"}
    latency = m.of("fwd_health_check_duration_seconds")
    S.measure("health_check_duration_seconds", {l.get("target"): v for l, v in latency})
    S.check(len(latency) == len(targets) and all(0 <= v <= TIMEOUT + 0.1 for _, v in latency),
            "fwd_health_check_duration_seconds: one per check target (%d of %d), each within the %.1f s timeout"
            % (len(latency), len(targets), TIMEOUT))
    probes = [v for _, v in m.of("fwd_health_checks_total")]
    up = [v for _, v in m.of("fwd_health_check_up")]
    S.check(len(probes) == len(targets) and all(v > 0 for v in probes) and up and all(v == 1 for v in up),
            "fwd_health_checks_total > 0 and fwd_health_check_up = 1 for every target (%d)" % len(probes))

    rc, out, err = fwd("status")
    S.check(rc == 0 and all(s in out for s in ("web-v4", "echo-v6", V4["backend-1"])),
            "`fwd status` prints the services and backends")
    rc, out, err = fwd("status", "--json")
    S.check(rc == 0 and json.loads(out)["cluster_fingerprint"] == report["cluster_fingerprint"],
            "`fwd status --json` gives the same report as the socket")
    rc, out, err = fwd("stats", "--json")
    workers = json.loads(out)["workers"] if rc == 0 else []
    S.check(workers and all(w["rx_packets"] > 0 and w["heartbeat_age_ms"] < 2000 for w in workers),
            "`fwd stats --json`: %d worker(s), all received packets, heartbeats fresh (%s ms)"
            % (len(workers), [w["heartbeat_age_ms"] for w in workers]))
    # The kernel's socket counters reach the report: in copy mode every transmit kick ends on an
    # empty TX ring, so a worker that forwarded has a nonzero tx_ring_empty.
    S.check(workers and all(set(w["socket"]) == SOCKET_EVENTS and w["socket"]["tx_ring_empty"] > 0
                            for w in workers if w["tx_packets"] > 0),
            "`fwd stats --json`: each worker's socket counters, read from the kernel (%s)"
            % [w.get("socket") for w in workers])
    S.check(workers and all(w["umem"]["samples"] > 0 and w["umem"]["fill_ring"] > 0
                            for w in workers if w["tx_packets"] > 0),
            "`fwd stats --json`: each worker's samples of where its UMEM frames were (%s)"
            % [w.get("umem") for w in workers])


SOCKET_EVENTS = {"rx_dropped", "rx_ring_full", "rx_fill_ring_empty", "rx_invalid_descs", "tx_invalid_descs",
                 "tx_ring_empty"}

SCENARIOS = {
    "a": scenario_stopped_backend,
    "b": scenario_http_503_and_hang,
    "c": scenario_exec_check,
    "d": scenario_drain,
    "e": scenario_reload,
    "f": scenario_metrics,
}


def main():
    chosen = [k.strip() for k in ENV.get("LAB_SCENARIOS", ",".join(SCENARIOS)).split(",") if k.strip()]
    log("check timing: interval %.1f s, timeout %.1f s, rise %d, fall %d -> down within %.1f s, up within %.1f s"
        % (INTERVAL, TIMEOUT, RISE, FALL, DOWN_WITHIN, UP_WITHIN))
    for key in chosen:
        if key not in SCENARIOS:
            S.check(False, "unknown scenario %r (known: %s)" % (key, ", ".join(SCENARIOS)))
            continue
        reset_backends()
        stragglers = all_in()
        S.scenario = key
        S.check(not stragglers, "before %s: every backend in its table (%s)" % (key, stragglers or "yes"))
        try:
            SCENARIOS[key]()
        except Exception as e:  # a scenario that crashes is a failed check; the others still run
            S.check(False, "scenario %s stopped on %s: %s" % (key, type(e).__name__, e))
    reset_backends()
    result = S.result()
    failed = [c for c in result["checks"] if not c["ok"]]
    log("")
    log("%d checks, %d failed" % (len(result["checks"]), len(failed)))
    json.dump(result, sys.stdout)
    print()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
