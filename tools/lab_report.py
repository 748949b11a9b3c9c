#!/usr/bin/env python3
"""The fwd lab's report: the spread of flows over the backends, and every check of the lab run.

Called by tools/lab with the run's work directory and measurements; prints the report, writes
WORK/summary.json, and exits 1 if any check failed.
"""
import json
import os
import re
import subprocess
import sys

(work, fwd, flows, to_vip, from_vip, status, xdp_left, box_ping, totals, tunnel_vip, client4, client6,
 vip4, vip6, fwd_box, tunnel_backend, queues) = sys.argv[1:]
flows, to_vip, from_vip = int(flows), int(to_vip), int(from_vip)
backends = {"backend-%d" % i: ("198.18.2.1%d" % i, "fd00:18:2::1%d" % i) for i in (1, 2, 3)}
summary = {"checks": [], "spread": {}}


def check(ok, text):
    summary["checks"].append({"ok": bool(ok), "check": text})
    print("lab: %s %s" % ("ok   " if ok else "FAIL ", text))


print("lab: spread of %d flows per family and protocol over 3 backends of equal weight:" % flows)
for key in ("v4-tcp", "v4-udp", "v6-tcp", "v6-udp"):
    with open("%s/flows-%s.json" % (work, key)) as f:
        data = json.load(f)
    counts = {}
    for _, name in data["flows"]:
        counts[name] = counts.get(name, 0) + 1
    summary["spread"][key] = counts
    print("lab:   %s  %s" % (key, "  ".join("%s %5.1f%%" % (n, 100.0 * c / flows) for n, c in sorted(counts.items()))))
    check(data["failed"] == 0 and data["ok"] == flows, "%s: %d/%d exchanges answered" % (key, data["ok"], flows))
    check(all(abs(counts.get(n, 0) / flows - 1 / 3) <= 0.1 / 3 for n in backends),
          "%s: every backend within 10%% of its weight share" % key)
    # `fwd which` names the backend of every 25th flow.
    family, proto = key.split("-")
    agree = total = 0
    for sport, name in data["flows"][::25]:
        src = "%s:%d" % (client4, sport) if family == "v4" else "[%s]:%d" % (client6, sport)
        dst = "%s:80" % vip4 if family == "v4" else "[%s]:80" % vip6
        out = subprocess.run([fwd, "which", "--config", work + "/fwd.toml", "--proto", proto, "--src", src,
                              "--dst", dst], capture_output=True, text=True).stdout.strip()
        total += 1
        agree += name in backends and out == backends[name][0 if family == "v4" else 1]
    check(total > 0 and agree == total,
          "%s: `fwd which` names the backend of %d/%d sampled flows" % (key, agree, total))

with open(work + "/capture.json") as f:
    captured = json.load(f)
ipip = [r for r in captured if r["outer_proto"] == 4]
gue = [r for r in captured if r["outer_proto"] == 17 and r.get("udp_dport") == 6080]
for kind, records in (("ipip", ipip), ("gue", gue)):
    right = all(r["outer_src"] == fwd_box and r["outer_dst"] == tunnel_backend and r["inner_dst"] == tunnel_vip
                and r["inner_src"] == client4 and r["outer_checksum_ok"] and r["inner_checksum_ok"]
                and r["outer_len_ok"] and r.get("udp_len_ok", True) for r in records)
    check(len(records) >= 5 and right,
          "%s: %d encapsulated frames captured at the backend, outer and inner headers right" % (kind, len(records)))

m = re.search(r"rx (\d+) tx (\d+) pass (\d+) icmp_generated (\d+) drops (\d+) \((.*)\)", totals)
rx, tx, drops = (int(m.group(1)), int(m.group(2)), int(m.group(5))) if m else (-1, -1, -1)
reasons = dict(kv.split("=") for kv in m.group(6).split()) if m and drops else {}
summary.update({"fwd_rx": rx, "fwd_tx": tx, "fwd_drops": reasons, "router_to_vip": to_vip, "router_from_vip": from_vip})
check(rx == to_vip, "fwd received exactly the %d packets the router sent to the VIPs (rx %d)" % (to_vip, rx))
# Until fwd has read the backends' MACs from the kernel (its first refresh), it drops as
# next_hop_unresolved; nothing else may be dropped.
check(tx + drops == rx and set(reasons) <= {"next_hop_unresolved"},
      "fwd forwarded every packet (tx %d) but those sent before the next hops were resolved (%s)" % (tx, reasons or "none"))
check(from_vip > 0, "the %d reply packets went from the backends straight to the router, not through fwd" % from_vip)
# Every worker forwarded: each printed its port's counters when it stopped.
workers = [int(n) for n in re.findall(r"stopped; port: PortStats \{ rx_frames: (\d+)", open(work + "/fwd.log").read())]
summary["worker_rx_frames"] = workers
check(len(workers) == int(queues) and all(n > 0 for n in workers),
      "every one of the %s worker(s) forwarded traffic (frames received per worker: %s)" % (queues, workers))
# How idle workers gave their core away (LAB_IDLE): sleeping in ppoll until frames came, or yielding.
waits = [(int(w), int(k)) for w, k in re.findall(r"stopped; port: PortStats \{[^}]*waits: (\d+), wakeups: (\d+)",
                                                 open(work + "/fwd.log").read())]
summary["worker_waits_wakeups"] = waits
if os.environ.get("LAB_IDLE", "wait") == "wait":
    check(len(waits) == int(queues) and all(w > 0 and k > 0 for w, k in waits),
          "every worker slept when idle and frames woke it (sleeps, wakeups per worker: %s)" % waits)
else:
    check(len(waits) == int(queues) and all(w == 0 for w, _ in waits),
          "no worker slept: they yielded when idle (sleeps per worker: %s)" % [w for w, _ in waits])
check(box_ping == "11", "the fwd box's own addresses still answer ping and TCP (IPv4 and IPv6) while fwd runs")
check(status == "0", "fwd exited 0 on SIGTERM (exit status %s)" % status)
check(xdp_left == "0", "no XDP program left on the interface after fwd exited")
print("lab: %s" % totals)
summary["ok"] = all(c["ok"] for c in summary["checks"])
with open(work + "/summary.json", "w") as f:
    json.dump(summary, f)
sys.exit(0 if summary["ok"] else 1)
