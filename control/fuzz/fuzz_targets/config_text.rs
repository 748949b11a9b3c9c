//! Fuzzes the configuration path with arbitrary text: `parse_config` must never panic; an error
//! must name the file; and a config it accepts must build into a snapshot (validation, not the
//! table builder, is where a config is refused), twice in a row with the same tables, as a reload
//! of an unchanged file does. Seeds: the example configs in `tools/examples/`.
#![no_main]
#![forbid(unsafe_code)]

use fwd_control::config::parse_config;
use fwd_control::tables::{cluster_fingerprint, InterfaceFacts, LiveState, SnapshotBuilder};
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, Ipv6Addr};

const ORIGIN: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let loaded = match parse_config(text, ORIGIN) {
        Ok(loaded) => loaded,
        Err(e) => {
            assert!(e.to_string().starts_with(ORIGIN), "error without the file name: {e}");
            return;
        }
    };
    let config = &loaded.config;
    assert!(config.summary().starts_with("ok: "));
    let iface = InterfaceFacts {
        mac: [0x02, 0, 0, 0, 0, 1],
        ipv4: Some(Ipv4Addr::new(198, 18, 0, 1)),
        ipv6: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
    };
    let live = LiveState::default();
    let mut builder = SnapshotBuilder::new();
    let (first, _) = builder.build(config, &iface, &live).expect("a valid config builds");
    let (second, changes) = builder.build(config, &iface, &live).expect("a valid config rebuilds");
    assert!(changes.is_empty(), "an unchanged config rebuilt tables: {changes:?}");
    assert_eq!(cluster_fingerprint(&first), cluster_fingerprint(&second));
});
