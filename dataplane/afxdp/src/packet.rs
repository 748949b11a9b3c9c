//! AF_PACKET sockets: raw frames in and out of one interface through the kernel's packet layer.
//!
//! The fallback of the traffic generator and sink where AF_XDP is not available (an old kernel, a
//! driver without XDP, no BPF permission). Slower than a [`Port`](crate::Port) (every frame is
//! an skb and a copy) but works on any interface. The interface mirrors the port's:
//! [`PacketSocket::transmit`] lets the caller write a batch of frames into the socket's own
//! buffers and sends them with one `sendmmsg()`; [`PacketSocket::receive_each`] reads a batch
//! with one `recvmmsg()` and shows each frame. Both are non-blocking and allocate nothing.
//!
//! A transmit-only socket is bound with protocol 0, so the kernel hands it no copies of received
//! traffic; a receiving one is bound to every protocol (`ETH_P_ALL`) and, with
//! `ignore_outgoing`, does not see the frames this host sends on the interface.

use crate::sys;
use fwd_dataplane::io::MAX_BATCH;
use std::ffi::c_int;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `PACKET_QDISC_BYPASS` and `PACKET_IGNORE_OUTGOING` from linux/if_packet.h.
const PACKET_QDISC_BYPASS: c_int = 20;
const PACKET_IGNORE_OUTGOING: c_int = 23;
/// `PACKET_STATISTICS` from linux/if_packet.h.
const PACKET_STATISTICS: c_int = 6;

/// How to open a [`PacketSocket`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketConfig {
    /// Largest frame, in bytes, sent or received (longer received frames are cut to this).
    pub frame_size: usize,
    /// Receive frames (bound to every protocol); `false` for a transmit-only socket, which the
    /// kernel then never hands a copy of incoming traffic.
    pub receive: bool,
    /// Send straight to the driver, skipping the interface's queueing discipline.
    pub qdisc_bypass: bool,
    /// Do not receive the frames this host sends out of the interface (kernel 4.20 or later).
    pub ignore_outgoing: bool,
    /// Socket buffer sizes in bytes (0: the system default).
    pub send_buffer: usize,
    pub receive_buffer: usize,
}

impl Default for PacketConfig {
    fn default() -> Self {
        PacketConfig {
            frame_size: 2048,
            receive: false,
            qdisc_bypass: true,
            ignore_outgoing: true,
            send_buffer: 4 << 20,
            receive_buffer: 16 << 20,
        }
    }
}

/// What a socket did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketStats {
    /// Frames the kernel accepted from `sendmmsg()`.
    pub tx_frames: u64,
    /// Frames written but not accepted because the kernel was busy (EAGAIN, ENOBUFS): the caller
    /// learns it from `transmit`'s result and writes them again.
    pub tx_busy: u64,
    /// `sendmmsg()` calls that failed for another reason.
    pub tx_errors: u64,
    pub rx_frames: u64,
    /// Received frames longer than `frame_size`, cut.
    pub rx_truncated: u64,
    /// `recvmmsg()` calls that failed for a reason other than "nothing waiting".
    pub rx_errors: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("interface `{ifname}` does not exist (in this network namespace)")]
    NoSuchInterface { ifname: String },
    #[error("frame_size {frame_size} is not allowed: use 64 to 65536 bytes")]
    FrameSize { frame_size: usize },
    #[error("cannot open an AF_PACKET socket: {0} (raw sockets need root or CAP_NET_RAW)")]
    Socket(#[source] io::Error),
    #[error("cannot bind the AF_PACKET socket to `{ifname}`: {source}")]
    Bind { ifname: String, source: io::Error },
    #[error("cannot set socket option {option} on the AF_PACKET socket: {source}")]
    Option { option: &'static str, source: io::Error },
}

/// One AF_PACKET socket bound to one interface, with buffers for one batch.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifname: String,
    frame_size: usize,
    /// `MAX_BATCH` buffers of `frame_size` bytes, back to back.
    buffers: Box<[u8]>,
    stats: PacketStats,
}

impl PacketSocket {
    pub fn open(ifname: &str, config: &PacketConfig) -> Result<PacketSocket, PacketError> {
        if !(64..=65536).contains(&config.frame_size) {
            return Err(PacketError::FrameSize { frame_size: config.frame_size });
        }
        let no_interface = || PacketError::NoSuchInterface { ifname: ifname.to_string() };
        let ifindex = sys::interface_index(ifname).ok_or_else(no_interface)?;
        let protocol = if config.receive { (libc::ETH_P_ALL as u16).to_be() } else { 0 };
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                protocol.into(),
            )
        };
        if raw < 0 {
            return Err(PacketError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let socket = PacketSocket {
            fd,
            ifname: ifname.to_string(),
            frame_size: config.frame_size,
            buffers: vec![0u8; MAX_BATCH * config.frame_size].into_boxed_slice(),
            stats: PacketStats::default(),
        };
        if config.qdisc_bypass {
            socket.set_option(libc::SOL_PACKET, PACKET_QDISC_BYPASS, 1, "PACKET_QDISC_BYPASS")?;
        }
        if config.receive && config.ignore_outgoing {
            socket.set_option(libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1, "PACKET_IGNORE_OUTGOING")?;
        }
        if config.send_buffer > 0 {
            let bytes = c_int::try_from(config.send_buffer).unwrap_or(c_int::MAX);
            socket.set_option(libc::SOL_SOCKET, libc::SO_SNDBUF, bytes, "SO_SNDBUF")?;
        }
        if config.receive && config.receive_buffer > 0 {
            let bytes = c_int::try_from(config.receive_buffer).unwrap_or(c_int::MAX);
            socket.set_option(libc::SOL_SOCKET, libc::SO_RCVBUF, bytes, "SO_RCVBUF")?;
        }
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = ifindex as c_int;
        // SAFETY: bind reads `size_of::<sockaddr_ll>()` bytes from `address`, which lives across
        // the call.
        let rc = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(PacketError::Bind { ifname: ifname.to_string(), source: io::Error::last_os_error() });
        }
        Ok(socket)
    }

    fn set_option(
        &self,
        level: c_int,
        name: c_int,
        value: c_int,
        option: &'static str,
    ) -> Result<(), PacketError> {
        // SAFETY: setsockopt reads a c_int from `value`, which lives across the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&value as *const c_int).cast(),
                std::mem::size_of::<c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(PacketError::Option { option, source: io::Error::last_os_error() });
        }
        Ok(())
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn stats(&self) -> PacketStats {
        self.stats
    }

    /// Frames the kernel dropped because this socket's receive buffer was full, since the last
    /// call (the kernel resets its counter when read).
    pub fn kernel_drops(&self) -> io::Result<u64> {
        let mut stats = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `stats`, which lives across the call.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(u64::from(stats.tp_drops))
    }

    /// Sends up to `max` (at most [`MAX_BATCH`]) frames: `write(i, buffer)` writes frame `i` of
    /// the batch at the start of `buffer` (`frame_size` bytes, holding whatever was written there
    /// last, zeroed at first) and returns its length; 0 ends the batch there. One `sendmmsg()`
    /// sends them. Returns how many the kernel accepted: the caller's frames `0..n`; any others
    /// were not sent.
    pub fn transmit<F>(&mut self, max: usize, mut write: F) -> usize
    where
        F: FnMut(usize, &mut [u8]) -> usize,
    {
        let frame_size = self.frame_size;
        let mut lens = [0usize; MAX_BATCH];
        let mut count = 0;
        for (i, buffer) in self.buffers.chunks_exact_mut(frame_size).take(max.min(MAX_BATCH)).enumerate() {
            let len = write(i, buffer).min(frame_size);
            if len == 0 {
                break;
            }
            lens[i] = len;
            count += 1;
        }
        if count == 0 {
            return 0;
        }
        // SAFETY: iovec and mmsghdr are plain old data (lengths and raw pointers); all-zero is a
        // valid value.
        let mut iov: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut messages: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let base = self.buffers.as_mut_ptr();
        for i in 0..count {
            // SAFETY: i < MAX_BATCH, so buffer i lies inside `buffers` (MAX_BATCH * frame_size).
            iov[i].iov_base = unsafe { base.add(i * frame_size) }.cast();
            iov[i].iov_len = lens[i];
            messages[i].msg_hdr.msg_iov = &mut iov[i];
            messages[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `messages[..count]` point at `iov[..count]`, which point into `buffers`; all
        // live across the call and the kernel only reads them.
        let rc = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                messages.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            let errno = io::Error::last_os_error().raw_os_error();
            if matches!(errno, Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EBUSY)) {
                self.stats.tx_busy += count as u64;
            } else {
                self.stats.tx_errors += 1;
            }
            return 0;
        }
        let sent = (rc as usize).min(count);
        self.stats.tx_frames += sent as u64;
        self.stats.tx_busy += (count - sent) as u64;
        sent
    }

    /// Receives up to `max` (at most [`MAX_BATCH`]) frames with one `recvmmsg()` and shows each
    /// to `inspect`. Returns how many were received (0: nothing was waiting).
    pub fn receive_each<F>(&mut self, max: usize, mut inspect: F) -> usize
    where
        F: FnMut(&[u8]),
    {
        let frame_size = self.frame_size;
        let count = max.clamp(1, MAX_BATCH);
        // SAFETY: iovec and mmsghdr are plain old data; all-zero is a valid value.
        let mut iov: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut messages: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let base = self.buffers.as_mut_ptr();
        for i in 0..count {
            // SAFETY: i < MAX_BATCH, so buffer i lies inside `buffers`.
            iov[i].iov_base = unsafe { base.add(i * frame_size) }.cast();
            iov[i].iov_len = frame_size;
            messages[i].msg_hdr.msg_iov = &mut iov[i];
            messages[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `messages[..count]` point at `iov[..count]`, which point at disjoint
        // `frame_size`-byte buffers inside `buffers`; all live across the call. No timeout.
        let rc = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                messages.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let errno = io::Error::last_os_error().raw_os_error();
            if !matches!(errno, Some(libc::EAGAIN) | Some(libc::EINTR)) {
                self.stats.rx_errors += 1;
            }
            return 0;
        }
        let received = (rc as usize).min(count);
        for (buffer, message) in self.buffers.chunks_exact(frame_size).zip(&messages[..received]) {
            if message.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.stats.rx_truncated += 1;
            }
            let len = (message.msg_len as usize).min(frame_size);
            inspect(&buffer[..len]);
        }
        self.stats.rx_frames += received as u64;
        received
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testnet::{NetnsPair, IFACE};
    use std::time::{Duration, Instant};

    #[test]
    fn frames_sent_on_one_end_arrive_whole_on_the_other() {
        const FRAMES: usize = 200;
        let net = NetnsPair::new();
        let mut receiver = net.b.run(|| {
            PacketSocket::open(IFACE, &PacketConfig { receive: true, ..PacketConfig::default() }).unwrap()
        });
        let sent = net.a.run(|| {
            let mut sender = PacketSocket::open(IFACE, &PacketConfig::default()).unwrap();
            let mut sent = 0;
            let deadline = Instant::now() + Duration::from_secs(5);
            while sent < FRAMES && Instant::now() < deadline {
                sent += sender.transmit(FRAMES - sent, |i, buffer| {
                    let number = (sent + i) as u16;
                    // A frame of an unassigned local EtherType: the stack ignores it.
                    buffer[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x0b]);
                    buffer[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x0a]);
                    buffer[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
                    buffer[14..16].copy_from_slice(&number.to_be_bytes());
                    100
                });
            }
            assert_eq!(sender.stats().tx_frames, sent as u64);
            sent
        });
        assert_eq!(sent, FRAMES);
        let mut numbers = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while numbers.len() < FRAMES && Instant::now() < deadline {
            receiver.receive_each(MAX_BATCH, |frame| {
                if frame.len() == 100 && frame[12..14] == [0x88, 0xb5] {
                    numbers.push(u16::from_be_bytes([frame[14], frame[15]]));
                }
            });
        }
        assert_eq!(numbers, (0..FRAMES as u16).collect::<Vec<_>>());
    }

    #[test]
    fn open_names_what_is_wrong() {
        crate::testnet::require_root();
        let missing = PacketSocket::open("fwdt-nosuch0", &PacketConfig::default()).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "interface `fwdt-nosuch0` does not exist (in this network namespace)"
        );
        let tiny = PacketSocket::open("lo", &PacketConfig { frame_size: 10, ..PacketConfig::default() });
        assert!(matches!(tiny, Err(PacketError::FrameSize { frame_size: 10 })));
    }
}
