//! Small system calls the loader and the ports share: interface index, queue count, memlock limit.
//!
//! Everything here runs at startup only. Interface names are resolved in the network namespace of
//! the calling thread (if_nametoindex and the ethtool ioctl both go through a socket created on
//! that thread).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The index of interface `name`, `None` if there is none by that name (or the name cannot be one).
pub(crate) fn interface_index(name: &str) -> Option<u32> {
    let c_name = interface_name(name)?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    (index != 0).then_some(index)
}

/// `name` as a C string, `None` if it cannot name an interface (empty, too long, inner NUL).
pub(crate) fn interface_name(name: &str) -> Option<CString> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return None;
    }
    CString::new(name).ok()
}

/// How many queues an AF_XDP socket can bind to on an interface, from the ethtool channel counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueueCount {
    /// Queues with both a receive and a transmit side: the valid `queue_id`s are `0..usable`.
    pub usable: u32,
    /// Whether the driver counts its queues as "combined" channels (most NICs) rather than
    /// separate rx/tx ones (veth): decides which `ethtool -L` argument raises the count.
    pub combined: bool,
}

/// `ETHTOOL_GCHANNELS` from linux/ethtool.h.
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// `struct ethtool_channels` from linux/ethtool.h.
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// The interface's queue count, `None` if the driver does not report channels (the bind itself
/// then decides).
pub(crate) fn queue_count(name: &CStr) -> Option<QueueCount> {
    let socket = datagram_socket().ok()?;
    let mut channels = EthtoolChannels { cmd: ETHTOOL_GCHANNELS, ..Default::default() };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name.to_bytes()) {
        *dst = *src as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&mut channels as *mut EthtoolChannels).cast();
    // SAFETY: SIOCETHTOOL reads `request` (a NUL-terminated name, at most IFNAMSIZ - 1 bytes as
    // checked by `interface_name`) and writes `channels` through ifru_data; both live on this
    // stack frame for the duration of the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) };
    if rc != 0 {
        return None;
    }
    let rx = channels.rx_count + channels.combined_count;
    let tx = channels.tx_count + channels.combined_count;
    Some(QueueCount { usable: rx.min(tx), combined: channels.max_combined > 0 })
}

fn datagram_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The RLIMIT_MEMLOCK soft and hard limits, in bytes (`u64::MAX`: unlimited).
fn memlock_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into `limit`, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

fn set_memlock_limit(soft: u64, hard: u64) -> bool {
    let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: setrlimit only reads `limit`.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) == 0 }
}

const CAP_IPC_LOCK: u32 = 14;

/// Whether the `CapEff:` line of a `/proc/<pid>/status` text has capability bit `cap` set.
pub(crate) fn has_effective_capability(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| cap < 64 && (mask >> cap) & 1 == 1)
}

/// What [`ensure_memlock`] does, decided from the limits alone (so it can be tested as any user).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MemlockStep {
    /// The soft limit already covers the need.
    Enough,
    /// Raise the soft limit to the hard limit, which covers the need.
    RaiseSoftToHard,
    /// The hard limit is too low: only a privileged process (or the operator) can raise it.
    TooLow,
}

pub(crate) fn memlock_step(soft: u64, hard: u64, needed: u64) -> MemlockStep {
    if soft == libc::RLIM_INFINITY || soft >= needed {
        MemlockStep::Enough
    } else if hard == libc::RLIM_INFINITY || hard >= needed {
        MemlockStep::RaiseSoftToHard
    } else {
        MemlockStep::TooLow
    }
}

/// Makes sure `needed` bytes can be locked: first tries to lift RLIMIT_MEMLOCK altogether (works
/// as root), then to raise the soft limit to the hard one. `Err((soft, hard))` with the limits
/// that stay in the way.
pub(crate) fn ensure_memlock(needed: u64) -> Result<(), (u64, u64)> {
    if set_memlock_limit(libc::RLIM_INFINITY, libc::RLIM_INFINITY) {
        return Ok(());
    }
    // Root in a container often lacks CAP_SYS_RESOURCE (so cannot lift the limit) but has
    // CAP_IPC_LOCK, and the kernel does not charge a UMEM to the limit of a process that has it.
    if std::fs::read_to_string("/proc/self/status").is_ok_and(|s| has_effective_capability(&s, CAP_IPC_LOCK))
    {
        return Ok(());
    }
    let Ok((soft, hard)) = memlock_limit() else {
        // Cannot even read the limit: let the UMEM registration report what it finds.
        return Ok(());
    };
    match memlock_step(soft, hard, needed) {
        MemlockStep::Enough => Ok(()),
        MemlockStep::RaiseSoftToHard if set_memlock_limit(hard, hard) => Ok(()),
        MemlockStep::RaiseSoftToHard | MemlockStep::TooLow => Err((soft, hard)),
    }
}

/// The errno of a libbpf/libxdp return value (they return `-errno`).
pub(crate) fn neg_errno(rc: libc::c_int) -> io::Error {
    io::Error::from_raw_os_error(rc.saturating_neg())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_capabilities_are_read_from_the_status_text() {
        let root_in_a_container = "Name:\tfwd\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\n\
                                   CapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n";
        assert!(has_effective_capability(root_in_a_container, CAP_IPC_LOCK));
        assert!(!has_effective_capability(root_in_a_container, 24), "CAP_SYS_RESOURCE is not in fffeffffff");
        let nobody = "CapEff:\t0000000000000000\n";
        assert!(!has_effective_capability(nobody, CAP_IPC_LOCK));
        assert!(!has_effective_capability("no such line", CAP_IPC_LOCK));
        assert!(!has_effective_capability("CapEff:\tnot hex\n", CAP_IPC_LOCK));
        assert!(!has_effective_capability("CapEff:\tffffffffffffffff\n", 64));
    }

    #[test]
    fn memlock_step_raises_only_what_the_hard_limit_allows() {
        let inf = libc::RLIM_INFINITY;
        let cases = [
            ("unlimited soft limit", inf, inf, 1 << 30, MemlockStep::Enough),
            ("soft limit covers it", 64 << 20, 64 << 20, 8 << 20, MemlockStep::Enough),
            ("hard limit unlimited", 8 << 20, inf, 16 << 20, MemlockStep::RaiseSoftToHard),
            ("hard limit covers it", 8 << 20, 32 << 20, 16 << 20, MemlockStep::RaiseSoftToHard),
            ("hard limit too low", 8 << 20, 8 << 20, 16 << 20, MemlockStep::TooLow),
        ];
        for (description, soft, hard, needed, expected) in cases {
            assert_eq!(memlock_step(soft, hard, needed), expected, "{description}");
        }
    }

    #[test]
    fn interface_names_are_checked_before_reaching_the_kernel() {
        assert!(interface_name("").is_none());
        assert!(interface_name("a-name-of-16-chr").is_none());
        assert!(interface_name("nul\0inside").is_none());
        assert_eq!(interface_name("lo").unwrap().as_bytes(), b"lo");
        assert_eq!(interface_index("lo"), Some(1));
        assert_eq!(interface_index("fwdt-no-such0"), None);
    }
}
