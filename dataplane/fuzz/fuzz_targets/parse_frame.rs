//! Fuzzes `fwd_dataplane::parse::parse` with arbitrary frames: it must never panic, and a frame it
//! accepts must only point inside itself. Seeds: `corpus/parse_frame/`, written by the parse
//! module's tests.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    if let Ok(Some(parsed)) = fwd_dataplane::parse::parse(frame) {
        assert!(parsed.ip.l4_offset <= frame.len());
        assert!(parsed.l3_offset + parsed.ip.packet_len <= frame.len());
        assert_eq!(parsed.ip.l4_offset, parsed.l3_offset + parsed.ip.header_len);
        assert!(parsed.ip.header_len <= parsed.ip.packet_len);
    }
});
