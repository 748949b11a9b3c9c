//! The flow key: what identifies a flow for hashing and connection tracking.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol numbers fwd balances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    /// The IANA protocol number, as carried in the IPv4 protocol / IPv6 next-header field.
    pub const fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => 6,
            L4Proto::Udp => 17,
        }
    }

    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(L4Proto::Tcp),
            17 => Some(L4Proto::Udp),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
        }
    }
}

/// A flow as the balancer sees it. Addresses are stored as 16 bytes (IPv4 as IPv4-mapped IPv6,
/// `::ffff:a.b.c.d`) so that one fixed-size key and one hash serve both families.
///
/// For 3-tuple hashing (services that ignore the source port, and fragments) the ignored ports are
/// zero: see [`FlowKey::without_src_port`] and [`FlowKey::without_ports`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
}

/// Length of [`FlowKey::to_bytes`]: the canonical encoding that is hashed.
pub const FLOW_KEY_BYTES: usize = 37;

impl FlowKey {
    pub fn new(src: IpAddr, dst: IpAddr, proto: u8, src_port: u16, dst_port: u16) -> Self {
        FlowKey { src: ip_to_16(src), dst: ip_to_16(dst), src_port, dst_port, proto }
    }

    pub fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, src_port: u16, dst_port: u16) -> Self {
        FlowKey { src: v4_mapped(src), dst: v4_mapped(dst), src_port, dst_port, proto }
    }

    pub fn v6(src: [u8; 16], dst: [u8; 16], proto: u8, src_port: u16, dst_port: u16) -> Self {
        FlowKey { src, dst, src_port, dst_port, proto }
    }

    /// The key services flagged `hash_src_port = false` use: the source port no longer spreads.
    pub fn without_src_port(self) -> Self {
        FlowKey { src_port: 0, ..self }
    }

    /// The 3-tuple (source, destination, protocol) that all fragments of a datagram share.
    pub fn without_ports(self) -> Self {
        FlowKey { src_port: 0, dst_port: 0, ..self }
    }

    pub fn is_v4(&self) -> bool {
        is_v4_mapped(&self.src)
    }

    pub fn src_ip(&self) -> IpAddr {
        ip_from_16(self.src)
    }

    pub fn dst_ip(&self) -> IpAddr {
        ip_from_16(self.dst)
    }

    /// Canonical byte encoding: src(16) dst(16) src_port(2, big endian) dst_port(2, BE) proto(1).
    /// This is what [`crate::hash::flow_hash`] hashes; it is part of fwd's cross-box contract.
    #[inline]
    pub fn to_bytes(&self) -> [u8; FLOW_KEY_BYTES] {
        let mut out = [0u8; FLOW_KEY_BYTES];
        out[..16].copy_from_slice(&self.src);
        out[16..32].copy_from_slice(&self.dst);
        out[32..34].copy_from_slice(&self.src_port.to_be_bytes());
        out[34..36].copy_from_slice(&self.dst_port.to_be_bytes());
        out[36] = self.proto;
        out
    }
}

/// `::ffff:a.b.c.d`. Built as one 128-bit word, not byte by byte: the pipeline stores it in the
/// flow key and reads it back at once as two 64-bit words (service lookup, flow hash), and a load
/// that spans several smaller stores cannot be forwarded from them. With the byte-wise array the
/// compiler wrote the address as 8 + 4 + 4 bytes, and the lookup's 8-byte load of the last two
/// waited for them to reach the cache, a tenth of the pipeline's time (perf, stop 19).
#[inline]
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    (0xffff_u128 << 80 | (u32::from_le_bytes(a) as u128) << 96).to_le_bytes()
}

#[inline]
pub fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|&b| b == 0) && a[10] == 0xff && a[11] == 0xff
}

pub fn ip_to_16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn ip_from_16(a: [u8; 16]) -> IpAddr {
    if is_v4_mapped(&a) {
        IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_round_trips_through_mapped_form() {
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        assert_eq!(ip_from_16(ip_to_16(ip)), ip);
        let ip6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(ip_from_16(ip_to_16(ip6)), ip6);
        assert!(FlowKey::new(ip, ip, 6, 1, 2).is_v4());
        assert!(!FlowKey::new(ip6, ip6, 6, 1, 2).is_v4());
    }

    #[test]
    fn canonical_bytes_layout() {
        let k = FlowKey::v4([198, 18, 0, 1], [198, 18, 1, 1], 6, 0x1234, 80);
        let b = k.to_bytes();
        assert_eq!(&b[12..16], &[198, 18, 0, 1]);
        assert_eq!(&b[28..32], &[198, 18, 1, 1]);
        assert_eq!(&b[32..34], &[0x12, 0x34]);
        assert_eq!(&b[34..36], &[0, 80]);
        assert_eq!(b[36], 6);
    }
}
