//! A network namespace per test, so that checks and test servers talk only to addresses inside it.
//!
//! [`netns`] creates one (a [`fwd_afxdp::testnet::Netns`], deleted when dropped, also when the
//! test panics) with [`V4`]/[`V6`] on `lo`. `Netns::run` runs the test body on a thread that
//! entered the namespace; threads it spawns (the checker's runtime, test servers) inherit it.
//!
//! It panics instead of skipping when a prerequisite is missing: a test that cannot run must not
//! pass.

use fwd_afxdp::testnet::Netns;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The namespace's addresses, both on `lo`.
pub(super) const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
pub(super) const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 1));

/// A new namespace with [`V4`]/24 and [`V6`]/64 on `lo`.
pub(super) fn netns() -> Netns {
    let netns = Netns::new("health");
    netns.add_address("lo", &format!("{V4}/24"));
    netns.add_address("lo", &format!("{V6}/64"));
    netns
}
