//! The announcer against real FRR 8.4 daemons in network namespaces (needs root, zebra and bgpd
//! under /usr/lib/frr, and vtysh).

use super::frr_lab::{routes, Daemon, Frr};
use super::tests::{bgp_config, wait_for};
use super::{Announcer, AnnouncerStatus};
use crate::config::{BgpConfig, IpPrefix};
use fwd_afxdp::testnet::{veth, Netns, VethEnd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BASE: &str = "router bgp 65001\n no bgp ebgp-requires-policy\n no bgp network import-check\n";

fn prefix(text: &str) -> IpPrefix {
    text.parse().unwrap()
}

fn config_for(frr: &Frr) -> BgpConfig {
    BgpConfig {
        vty_socket: Some(frr.dir().to_path_buf()),
        reconcile_interval: Duration::from_secs(1),
        hold_down: Duration::from_secs(1),
        vtysh_timeout: Duration::from_secs(5),
        ..bgp_config(PathBuf::from("/usr/bin/vtysh"))
    }
}

/// Polls `done` every 10 ms; returns how long it took.
fn time_until(what: &str, timeout: Duration, done: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

fn has(frr: &Frr, wanted: &[&str], unwanted: &[&str]) -> bool {
    let lines = frr.network_lines();
    wanted.iter().all(|p| lines.contains(*p)) && unwanted.iter().all(|p| !lines.contains(*p))
}

fn in_frr(status: &AnnouncerStatus) -> Vec<(String, Option<bool>)> {
    status.prefixes.iter().map(|p| (p.prefix.to_string(), p.in_frr)).collect()
}

#[test]
fn announcer_keeps_a_real_frr_in_line() {
    let ns = Netns::new("bgp");
    let frr = Frr::start(&ns, BASE);
    // The premise of reconciling: a restarted bgpd has its startup configuration only.
    frr.bgpd(&["configure terminal", "router bgp", "network 198.18.100.9/32"]);
    assert!(frr.network_lines().contains("198.18.100.9/32"));
    frr.signal_daemon(Daemon::Bgpd, rustix::process::Signal::KILL);
    frr.start_daemon(Daemon::Bgpd);
    assert_eq!(frr.network_lines(), Default::default(), "{}", frr.running_config());

    let config = config_for(&frr);
    let interval = config.reconcile_interval;
    let announcer = Announcer::spawn(config).unwrap();
    let (v4, v6) = ("198.18.100.1/32", "fd00:18:100::1/128");
    let both = |a: bool, b: bool| vec![(prefix(v4), a), (prefix(v6), b)];

    announcer.set_desired(both(true, true), true);
    let took = time_until("announce", Duration::from_secs(5), || has(&frr, &[v4, v6], &[]));
    println!("announce v4+v6 -> both in bgpd's running-config: {took:?}");
    assert_eq!(frr.bgp_table("ipv4"), [v4.to_string()].into());
    assert_eq!(frr.bgp_table("ipv6"), [v6.to_string()].into());
    let status = wait_for(&announcer, Duration::from_secs(5), "confirmed", |s| {
        s.prefixes.iter().all(|p| p.in_frr == Some(true))
    });
    assert_eq!(status.frr.reachable, Some(true));

    // One family withdrawn, then back after the hold-down.
    announcer.set_desired(both(true, false), true);
    time_until("withdraw v6", Duration::from_secs(5), || has(&frr, &[v4], &[v6]));
    let back = Instant::now();
    announcer.set_desired(both(true, true), true);
    let took = time_until("v6 back", Duration::from_secs(5), || has(&frr, &[v4, v6], &[]));
    println!("v6 re-announced {took:?} after it could serve again (hold-down 1s)");
    assert!(back.elapsed() >= Duration::from_secs(1), "hold-down ignored");

    // bgpd restarts and forgets the runtime `network` statements: repaired by the next reconcile.
    frr.signal_daemon(Daemon::Bgpd, rustix::process::Signal::KILL);
    frr.start_daemon(Daemon::Bgpd);
    let repair =
        time_until("repair after a bgpd restart", Duration::from_secs(10), || has(&frr, &[v4, v6], &[]));
    println!("bgpd restarted -> networks back in {repair:?} (reconcile interval {interval:?})");
    assert!(repair <= interval + Duration::from_millis(1500), "repair took {repair:?}");

    // FRR stopped altogether: reported, callers never wait, and it recovers when FRR is back.
    frr.stop_daemon(Daemon::Bgpd);
    frr.stop_daemon(Daemon::Zebra);
    // Wait for this failure, not an earlier transient one (right after the bgpd restart above, a
    // pass can find bgpd still reading its startup config and retry).
    let status = wait_for(&announcer, Duration::from_secs(10), "unreachable", |s| {
        s.frr.reachable == Some(false)
            && s.frr.last_error.as_deref().is_some_and(|e| e.contains("not reachable"))
    });
    assert!(status.frr.last_error.as_deref().is_some_and(|e| e.contains("not reachable")), "{status:?}");
    let call = Instant::now();
    announcer.set_desired(both(true, true), true);
    let _ = announcer.status();
    assert!(call.elapsed() < Duration::from_millis(100), "callers waited {:?}", call.elapsed());
    wait_for(&announcer, Duration::from_secs(5), "unknown FRR state", |s| {
        s.prefixes.iter().all(|p| p.in_frr.is_none() && p.effective)
    });
    frr.start_daemon(Daemon::Zebra);
    frr.start_daemon(Daemon::Bgpd);
    let recovered = time_until("recovery", Duration::from_secs(10), || has(&frr, &[v4, v6], &[]));
    println!("FRR back -> networks back in {recovered:?}");
    let status = wait_for(&announcer, Duration::from_secs(5), "reachable", |s| {
        s.frr.reachable == Some(true) && s.prefixes.iter().all(|p| p.in_frr == Some(true))
    });
    assert_eq!(status.frr.last_error, None);

    // Shutdown: everything withdrawn and confirmed before the call returns.
    let start = Instant::now();
    announcer.withdraw_all_and_wait(Duration::from_secs(5)).unwrap();
    println!("withdraw_all_and_wait confirmed in {:?}", start.elapsed());
    assert!(has(&frr, &[], &[v4, v6]), "{}", frr.running_config());
    let status = announcer.status();
    assert!(status.shutting_down);
    assert_eq!(in_frr(&status), [(v4.to_string(), Some(false)), (v6.to_string(), Some(false))]);
    // And it stays withdrawn whatever the inputs say.
    announcer.set_desired(both(true, true), true);
    std::thread::sleep(interval + Duration::from_millis(300));
    assert!(has(&frr, &[], &[v4, v6]));
}

#[test]
fn a_peer_router_learns_and_forgets_the_vip() {
    let box_ns = Netns::new("bgpbox");
    let router_ns = Netns::new("bgprtr");
    veth(
        VethEnd { netns: &box_ns, ifname: "eth0", mac: None, addresses: &["198.18.0.1/24", "fd00:18::1/64"] },
        VethEnd {
            netns: &router_ns,
            ifname: "eth0",
            mac: None,
            addresses: &["198.18.0.2/24", "fd00:18::2/64"],
        },
    );
    let session = |me: &str, asn: u32, peer_v4: &str, peer_v6: &str, peer_as: u32| {
        format!(
            "router bgp {asn}\n bgp router-id {me}\n no bgp ebgp-requires-policy\n no bgp network import-check\n \
             no bgp default ipv4-unicast\n\
             neighbor {peer_v4} remote-as {peer_as}\n neighbor {peer_v4} timers 1 3\n neighbor {peer_v4} timers connect 1\n\
             neighbor {peer_v6} remote-as {peer_as}\n neighbor {peer_v6} timers 1 3\n neighbor {peer_v6} timers connect 1\n\
             address-family ipv4 unicast\n  neighbor {peer_v4} activate\n exit-address-family\n\
             address-family ipv6 unicast\n  neighbor {peer_v6} activate\n exit-address-family\n"
        )
    };
    let box_frr = Frr::start(&box_ns, &session("198.18.0.1", 65001, "198.18.0.2", "fd00:18::2", 65000));
    let router_frr = Frr::start(&router_ns, &session("198.18.0.2", 65000, "198.18.0.1", "fd00:18::1", 65001));
    let start = Instant::now();
    router_frr.wait_established(&["198.18.0.1", "fd00:18::1"], Duration::from_secs(20));
    println!("BGP sessions established in {:?}", start.elapsed());
    // Measured here: within about 3 s of the session coming up, the first IPv6 update reaches the
    // router 0.6-0.8 s later than the IPv4 one; afterwards both take the same time. Measure the
    // steady state, which is what a VIP flap meets.
    std::thread::sleep(Duration::from_secs(3));

    let announcer = Announcer::spawn(config_for(&box_frr)).unwrap();
    // A running announcer has read FRR long before a VIP changes.
    wait_for(&announcer, Duration::from_secs(5), "first read", |s| s.frr.reachable == Some(true));
    let (v4, v6) = ("198.18.100.1/32", "fd00:18:100::1/128");
    let routes = |p: &str| routes(&router_ns, p);
    assert!(routes(v4).is_empty() && routes(v6).is_empty());

    // Time from the call to the router's kernel route, per family.
    let measure = |present: bool| {
        let start = Instant::now();
        let (mut t4, mut t6) = (None, None);
        while t4.is_none() || t6.is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "router routes: {:?} {:?}",
                routes(v4),
                routes(v6)
            );
            if t4.is_none() && routes(v4).is_empty() != present {
                t4 = Some(start.elapsed());
            }
            if t6.is_none() && routes(v6).is_empty() != present {
                t6 = Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (t4.unwrap_or_default(), t6.unwrap_or_default())
    };
    announcer.set_desired(vec![(prefix(v4), true), (prefix(v6), true)], true);
    let (t4, t6) = measure(true);
    println!("announce -> router's kernel route: IPv4 {t4:?}, IPv6 {t6:?}");
    let route = routes(v4).join(" ");
    assert!(route.contains("via 198.18.0.1") && route.contains("proto bgp"), "{route}");
    assert!(routes(v6).join(" ").contains("proto bgp"), "{:?}", routes(v6));

    announcer.set_desired(vec![(prefix(v4), false), (prefix(v6), false)], true);
    let (t4, t6) = measure(false);
    println!("withdraw -> router's kernel route gone: IPv4 {t4:?}, IPv6 {t6:?}");

    announcer.withdraw_all_and_wait(Duration::from_secs(5)).unwrap();
}
