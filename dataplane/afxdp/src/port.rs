//! AF_XDP ports: one socket and one UMEM per (interface, queue), driven as a [`PacketIo`].
//!
//! Built directly on libxdp's `xsk_*` API (libxdp-sys, the library xsk-rs 0.11 wraps) because
//! xsk-rs cannot express what the pipeline needs: its `FrameDesc` has no way to set the address
//! a frame is transmitted from, so a frame whose start moved into the headroom (encapsulation)
//! could not be sent without copying it back; and it hands out the headroom and the packet as two
//! separate slices, never the whole chunk that [`Frame`] works on.
//!
//! # Frames
//! The UMEM is one anonymous mapping of `frame_count` chunks of `frame_size` bytes (aligned mode:
//! a chunk starts at a multiple of `frame_size`). The kernel writes a received packet at
//! `XDP_PACKET_HEADROOM` (256) bytes into its chunk; that headroom is ours once the frame is, so the
//! UMEM's own user headroom is 0 and every received [`Frame`] starts with exactly
//! [`HEADROOM`] bytes in front of it. A frame is transmitted from wherever its start ended up
//! (descriptor address = chunk + start).
//!
//! # Where the frames are
//! Every frame is always in exactly one place: the fill ring, the kernel (being received), the RX
//! ring, this port (between `poll`'s receive and its transmit/recycle), the TX ring or the
//! completion ring. The fill and completion rings are as large as the whole UMEM, so recycling a
//! frame to the fill ring always finds room: no free list is needed. Completed transmissions go
//! straight back to the fill ring.
//!
//! # Verdicts
//! `Tx` frames go out of this queue; `Drop` frames are recycled. `Pass` frames are recycled too,
//! and counted in [`PortStats::pass_recycled`]: AF_XDP has no way to hand a frame to the kernel's
//! stack. Our XDP program only redirects frames addressed to a VIP, so the pipeline only says
//! `Pass` for traffic that reached it during a VIP-map update (an address just removed).

use crate::sys;
use arrayvec::ArrayVec;
use fwd_dataplane::counters::DropReason;
use fwd_dataplane::frame::{Frame, HEADROOM};
use fwd_dataplane::io::{Ahead, Batch, PacketIo, Verdict, MAX_BATCH};
use libxdp_sys as xdp;
use std::ffi::{c_int, CString};
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::time::Duration;

/// Smallest and largest UMEM, in frames.
pub const MIN_FRAMES: u32 = 2 * MAX_BATCH as u32;
pub const MAX_FRAMES: u32 = 1 << 20;

/// `SOL_XDP` socket option level and the option raising how many frames one `sendto()` sends in
/// copy mode (32 by default); not in libc's or libxdp's headers for this kernel yet.
const SOL_XDP: c_int = 283;
const XDP_MAX_TX_SKB_BUDGET: c_int = 9;

/// The user headroom we ask the UMEM for: the kernel's own XDP headroom already puts
/// [`HEADROOM`] bytes in front of every received packet.
const UMEM_FRAME_HEADROOM: u32 = 0;
const _: () = assert!(xdp::XDP_PACKET_HEADROOM as usize + UMEM_FRAME_HEADROOM as usize >= HEADROOM);

/// How to bind the socket to its queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy if the driver supports it, otherwise copy.
    Auto,
    /// The kernel copies frames between its buffers and the UMEM (any driver, veth included).
    Copy,
    /// The NIC DMAs straight into the UMEM (driver support needed).
    ZeroCopy,
}

/// How the socket ended up bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoundMode {
    Copy,
    ZeroCopy,
}

impl BoundMode {
    fn bind_flag(self) -> u16 {
        match self {
            BoundMode::Copy => xdp::XDP_COPY as u16,
            BoundMode::ZeroCopy => xdp::XDP_ZEROCOPY as u16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BoundMode::Copy => "copy",
            BoundMode::ZeroCopy => "zero-copy",
        }
    }
}

impl fmt::Display for BoundMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The shape of a port's UMEM and how its socket is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// Frames in the UMEM: a power of two; also the size of every ring.
    pub frame_count: u32,
    /// Bytes per frame: 2048 or 4096 (the largest frame received is [`PortConfig::largest_frame`]).
    pub frame_size: u32,
    pub bind_mode: BindMode,
    /// Let the kernel say when it needs a `sendto()`/`recvfrom()` kick instead of kicking always.
    pub need_wakeup: bool,
    /// Frames set aside for [`Port::transmit`] (traffic this process generates) instead of the
    /// fill ring: the last `tx_frames` chunks of the UMEM. 0, the default, for a port that only
    /// sends back what it received; `frame_count` for a transmit-only port.
    pub tx_frames: u32,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            frame_count: 4096,
            frame_size: 2048,
            bind_mode: BindMode::Auto,
            need_wakeup: true,
            tx_frames: 0,
        }
    }
}

impl PortConfig {
    /// The longest frame (Ethernet header included) the kernel can receive into one UMEM frame:
    /// it writes each packet `XDP_PACKET_HEADROOM` (256) bytes into its frame. A longer one is
    /// dropped by the kernel and counted in [`KernelStats::rx_dropped`].
    pub fn largest_frame(&self) -> u32 {
        self.frame_size.saturating_sub(xdp::XDP_PACKET_HEADROOM + UMEM_FRAME_HEADROOM)
    }

    /// Bytes of UMEM the port maps and locks.
    pub fn umem_bytes(&self) -> u64 {
        u64::from(self.frame_count) * u64::from(self.frame_size)
    }

    fn validate(&self) -> Result<(), PortError> {
        if self.frame_size != 2048 && self.frame_size != 4096 {
            return Err(PortError::FrameSize { frame_size: self.frame_size });
        }
        if !self.frame_count.is_power_of_two() || !(MIN_FRAMES..=MAX_FRAMES).contains(&self.frame_count) {
            return Err(PortError::FrameCount { frame_count: self.frame_count });
        }
        if self.tx_frames > self.frame_count {
            return Err(PortError::TxFrames { tx_frames: self.tx_frames, frame_count: self.frame_count });
        }
        Ok(())
    }
}

/// What a port did, counted by the port itself (the pipeline counts per drop reason).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received from the RX ring (including any rejected as bad descriptors).
    pub rx_frames: u64,
    /// Frames put on the TX ring.
    pub tx_frames: u64,
    /// `Pass` verdicts: recycled, since AF_XDP cannot hand a frame to the kernel's stack.
    pub pass_recycled: u64,
    /// `Drop` verdicts, recycled (and the frames [`Port::receive_each`] showed).
    pub drop_recycled: u64,
    /// `Tx` verdicts on an empty frame, recycled (the kernel would reject the descriptor).
    pub tx_empty: u64,
    /// `Tx` verdicts the TX ring had no room for, recycled (cannot happen while every ring is as
    /// large as the UMEM; kept as evidence).
    pub tx_ring_full: u64,
    /// RX descriptors outside the UMEM or for a frame this port already held: skipped.
    pub bad_rx_descs: u64,
    /// Frames the pipeline removed from the batch or moved to another position: recycled, since
    /// verdicts belong to positions (never happens with fwd's pipeline).
    pub batch_altered: u64,
    /// Frames that could not be put back on the fill ring (cannot happen, see `tx_ring_full`).
    pub lost_frames: u64,
    /// `sendto()` kicks of the TX ring, and how many failed with something other than EAGAIN.
    pub tx_kicks: u64,
    pub tx_kick_errors: u64,
    /// `recvfrom()` kicks of the fill ring when the kernel asked for one.
    pub fill_kicks: u64,
    /// [`Port::wait_for_frames`] sleeps, and how many of them ended with frames waiting (the
    /// rest timed out or were interrupted).
    pub waits: u64,
    pub wakeups: u64,
    /// Where the UMEM's frames were, sampled once per [`OCCUPANCY_EVERY`] batches: the number of
    /// samples and, summed over them, the frames on the fill ring (waiting for the kernel to
    /// receive into), on the RX ring (received by the kernel, not yet by the poller), and given
    /// to the kernel to transmit and not completed yet. Their means say where frames pile up
    /// under overload: every ring is as large as the UMEM, so the fill ring runs empty before
    /// the RX ring fills, and the kernel counts every overload drop as `rx_fill_ring_empty`
    /// wherever the frames are.
    pub occupancy_samples: u64,
    pub fill_level_sum: u64,
    pub rx_backlog_sum: u64,
    pub tx_in_flight_sum: u64,
}

/// Batches between two samples of where the UMEM's frames are ([`PortStats::occupancy_samples`]):
/// a sample reads two indices the kernel writes (cache lines another core owns), so not per batch.
pub const OCCUPANCY_EVERY: u32 = 16;

/// The kernel's own counters for the socket (`getsockopt(XDP_STATISTICS)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

fn show_limit(bytes: u64) -> String {
    if bytes == libc::RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        format!("{bytes} bytes")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("frame_size {frame_size} is not allowed: use 2048 or 4096")]
    FrameSize { frame_size: u32 },
    #[error(
        "frame_count {frame_count} is not allowed: use a power of two from {MIN_FRAMES} to {MAX_FRAMES}"
    )]
    FrameCount { frame_count: u32 },
    #[error("interface `{ifname}` does not exist (in this network namespace)")]
    NoSuchInterface { ifname: String },
    #[error(
        "queue {queue} does not exist on `{ifname}`, which has {queues} queue(s) (0..{queues}); \
         raise the count with `{hint}`"
    )]
    NoSuchQueue { ifname: String, queue: u32, queues: u32, hint: String },
    #[error(
        "cannot lock {needed} bytes of UMEM for `{ifname}` queue {queue}: RLIMIT_MEMLOCK is {} (hard limit {}) \
         and this process may not raise it; run as root, or raise it with `ulimit -l unlimited` \
         (LimitMEMLOCK=infinity under systemd), or use fewer/smaller frames",
        show_limit(*soft), show_limit(*hard)
    )]
    Memlock { ifname: String, queue: u32, needed: u64, soft: u64, hard: u64 },
    #[error("cannot map {bytes} bytes of UMEM: {source}")]
    Mmap { bytes: u64, source: io::Error },
    #[error("cannot register the UMEM ({bytes} bytes) with the kernel: {source}{hint}")]
    Umem { bytes: u64, source: io::Error, hint: &'static str },
    #[error("cannot bind an AF_XDP socket to `{ifname}` queue {queue} in {mode} mode: {source}{hint}")]
    Bind { ifname: String, queue: u32, mode: BoundMode, source: io::Error, hint: &'static str },
    #[error("tx_frames {tx_frames} is not allowed: at most frame_count ({frame_count}) frames can be set aside for transmit")]
    TxFrames { tx_frames: u32, frame_count: u32 },
    #[error("the fill ring took {placed} of {frame_count} frames at startup")]
    FillRing { placed: u32, frame_count: u32 },
}

/// A libxdp ring struct on the heap, at an address that never changes: libxdp keeps pointers to
/// it (and dereferences them when deleting the socket or UMEM). Reached only through raw
/// pointers, so no Rust reference to it is ever live while libxdp or the kernel uses it.
struct RingBox<T>(NonNull<T>);

impl<T> RingBox<T> {
    /// A zeroed ring struct, which is what libxdp expects to fill in.
    fn zeroed() -> Self {
        // SAFETY: the ring structs are plain old data (integers and raw pointers): all-zero is a
        // valid value.
        let value: T = unsafe { std::mem::zeroed() };
        RingBox(NonNull::from(Box::leak(Box::new(value))))
    }

    #[inline]
    fn ptr(&self) -> *mut T {
        self.0.as_ptr()
    }
}

impl<T> Drop for RingBox<T> {
    fn drop(&mut self) {
        // SAFETY: the pointer came from Box::leak in `zeroed` and is freed once, here; the owners
        // (Socket, Umem) are declared so that libxdp's last use happens before this drop.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// The anonymous mapping backing a UMEM.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// In transparent huge pages where the kernel allows: a batch's frames lie all over the
    /// UMEM (8 MiB by default, 2048 pages of 4 KiB, more than the CPU's second-level TLB holds),
    /// so in 4 KiB pages nearly every frame a worker reads costs a page walk; in 2 MiB pages the
    /// whole UMEM takes four TLB entries.
    fn new(len: usize) -> io::Result<Self> {
        // Not MAP_POPULATE: the huge-page advice must come before the pages are first touched.
        // SAFETY: anonymous private mapping with no address hint; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(addr.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // Advice only: without it (THP `never`) the UMEM works the same in 4 KiB pages.
        let _ = crate::memory::advise_huge_pages(addr as usize, len);
        // SAFETY: `base..base + len` is the mapping just made, writable and referenced by nothing
        // else yet; zeroing it faults every page in now rather than in the first packets' path.
        unsafe { std::ptr::write_bytes(base.as_ptr(), 0, len) };
        Ok(Mapping { base, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe our own mapping, unmapped once; the UMEM that registered
        // it is deleted first (field order in `Umem`), and no slice into it outlives `poll`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// A registered UMEM with its fill and completion rings. Fields drop in order: the UMEM is
/// deleted (Drop) before the ring structs and the mapping it points into are freed.
struct Umem {
    umem: NonNull<xdp::xsk_umem>,
    fill: RingBox<xdp::xsk_ring_prod>,
    comp: RingBox<xdp::xsk_ring_cons>,
    area: Mapping,
}

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: the UMEM is ours and deleted once; its socket (if any) was deleted before (the
        // socket is declared before the UMEM in `Port`), so it is no longer in use.
        let rc = unsafe { xdp::xsk_umem__delete(self.umem.as_ptr()) };
        if rc != 0 {
            eprintln!("fwd-afxdp: deleting a UMEM failed: {}", sys::neg_errno(rc));
        }
    }
}

/// An AF_XDP socket with its RX and TX rings.
struct Socket {
    xsk: NonNull<xdp::xsk_socket>,
    rx: RingBox<xdp::xsk_ring_cons>,
    tx: RingBox<xdp::xsk_ring_prod>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the socket is ours and deleted once, before its ring structs (fields) and before
        // the UMEM whose fill/completion ring structs libxdp dereferences here.
        unsafe { xdp::xsk_socket__delete(self.xsk.as_ptr()) };
    }
}

/// Which frames this port holds between receive and transmit/recycle: the guard that makes the
/// mutable slices handed to the pipeline disjoint (see `Port::poll`).
struct HeldFrames(Vec<u64>);

impl HeldFrames {
    fn new(frame_count: u32) -> Self {
        HeldFrames(vec![0; (frame_count as usize).div_ceil(64)])
    }

    /// Marks `frame` held; `false` if it already was (or is out of range).
    #[inline]
    fn claim(&mut self, frame: usize) -> bool {
        match self.0.get_mut(frame / 64) {
            Some(word) => {
                let bit = 1u64 << (frame % 64);
                let was_free = *word & bit == 0;
                *word |= bit;
                was_free
            }
            None => false,
        }
    }

    #[inline]
    fn is_held(&self, frame: usize) -> bool {
        self.0.get(frame / 64).is_some_and(|word| word & (1u64 << (frame % 64)) != 0)
    }

    #[inline]
    fn release(&mut self, frame: usize) {
        if let Some(word) = self.0.get_mut(frame / 64) {
            *word &= !(1u64 << (frame % 64));
        }
    }
}

/// A received frame this port holds: its chunk (offset into the UMEM) and its span in the chunk.
#[derive(Clone, Copy)]
struct Span {
    chunk: u64,
    start: u32,
    len: u32,
}

/// How [`Port::wait_for_frames`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Frames are waiting on the RX ring.
    Frames,
    /// The timeout passed (or a signal came) with the RX ring still empty.
    TimedOut,
    /// It did not sleep: transmitted frames wait on the TX ring for a kick (the empty poll
    /// before it kicked them; the next one kicks what is left).
    TxPending,
}

/// One AF_XDP socket bound to one queue of one interface, with its own UMEM.
pub struct Port {
    // Declared (so dropped) before `umem`: libxdp reads the UMEM's ring structs while deleting
    // the socket.
    socket: Socket,
    umem: Umem,
    fd: c_int,
    ifname: String,
    queue: u32,
    bound: BoundMode,
    need_wakeup: bool,
    frame_size: u64,
    frame_count: u32,
    held: HeldFrames,
    /// Frames on the TX ring or the completion ring, not yet back on the fill ring or `tx_free`.
    tx_in_flight: u32,
    /// Chunks from here on belong to [`Port::transmit`]; the ones below receive.
    tx_base: u64,
    /// Transmit chunks not in flight, used last-in first-out so that the next frame written is
    /// the one most likely still in the cache. Allocated once, at its full size.
    tx_free: Vec<u64>,
    tx_budget: Option<u32>,
    /// Batches left before the next occupancy sample.
    batches_to_sample: u32,
    stats: PortStats,
}

impl fmt::Debug for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Port")
            .field("ifname", &self.ifname)
            .field("queue", &self.queue)
            .field("bound", &self.bound)
            .field("frame_size", &self.frame_size)
            .field("frame_count", &self.frame_count)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

// SAFETY: a Port exclusively owns its UMEM, rings and socket (one UMEM per port, never shared);
// libxdp's structures are not tied to the thread that created them, and every access goes through
// `&mut self` (poll) or reads of immutable fields and the socket fd.
unsafe impl Send for Port {}

impl Port {
    /// Creates the UMEM and the socket and binds it to `queue` of `ifname`, with every frame on
    /// the fill ring. The socket receives nothing until it is in the XDP program's `xsks` map
    /// ([`XdpProgram::register_port`](crate::XdpProgram::register_port)).
    pub fn open(ifname: &str, queue: u32, config: &PortConfig) -> Result<Port, PortError> {
        config.validate()?;
        let no_interface = || PortError::NoSuchInterface { ifname: ifname.to_string() };
        let c_name = sys::interface_name(ifname).ok_or_else(no_interface)?;
        sys::interface_index(ifname).ok_or_else(no_interface)?;
        if let Some(count) = sys::queue_count(&c_name) {
            if queue >= count.usable {
                let wanted = queue + 1;
                let hint = if count.combined {
                    format!("ethtool -L {ifname} combined {wanted}")
                } else {
                    format!("ethtool -L {ifname} rx {wanted} tx {wanted}")
                };
                return Err(PortError::NoSuchQueue {
                    ifname: ifname.to_string(),
                    queue,
                    queues: count.usable,
                    hint,
                });
            }
        }
        let needed = config.umem_bytes();
        if let Err((soft, hard)) = sys::ensure_memlock(needed) {
            return Err(PortError::Memlock { ifname: ifname.to_string(), queue, needed, soft, hard });
        }
        match config.bind_mode {
            BindMode::Copy => Port::open_bound(ifname, &c_name, queue, config, BoundMode::Copy),
            BindMode::ZeroCopy => Port::open_bound(ifname, &c_name, queue, config, BoundMode::ZeroCopy),
            BindMode::Auto => {
                Port::open_bound(ifname, &c_name, queue, config, BoundMode::ZeroCopy).or_else(|zero_copy| {
                    eprintln!("fwd-afxdp: {zero_copy}; using copy mode");
                    Port::open_bound(ifname, &c_name, queue, config, BoundMode::Copy)
                })
            }
        }
    }

    fn open_bound(
        ifname: &str,
        c_name: &CString,
        queue: u32,
        config: &PortConfig,
        mode: BoundMode,
    ) -> Result<Port, PortError> {
        let bytes = config.umem_bytes();
        let len = usize::try_from(bytes)
            .map_err(|_| PortError::Mmap { bytes, source: io::Error::from(io::ErrorKind::OutOfMemory) })?;
        let area = Mapping::new(len).map_err(|source| PortError::Mmap { bytes, source })?;
        let fill = RingBox::<xdp::xsk_ring_prod>::zeroed();
        let comp = RingBox::<xdp::xsk_ring_cons>::zeroed();
        let umem_config = xdp::xsk_umem_config {
            fill_size: config.frame_count,
            comp_size: config.frame_count,
            frame_size: config.frame_size,
            frame_headroom: UMEM_FRAME_HEADROOM,
            flags: 0,
        };
        let mut umem_ptr: *mut xdp::xsk_umem = std::ptr::null_mut();
        // SAFETY: `area` is a live mapping of `bytes` bytes; the ring structs are heap-allocated
        // at fixed addresses that outlive the UMEM (see `Umem`'s field order); libxdp writes the
        // new UMEM's pointer into `umem_ptr`.
        let rc = unsafe {
            xdp::xsk_umem__create(
                &mut umem_ptr,
                area.base.as_ptr().cast(),
                bytes,
                fill.ptr(),
                comp.ptr(),
                &umem_config,
            )
        };
        if rc != 0 {
            let source = sys::neg_errno(rc);
            let hint = match source.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::ENOMEM) | Some(libc::EPERM) => {
                    " (RLIMIT_MEMLOCK too low? run as root or `ulimit -l unlimited`)"
                }
                _ => "",
            };
            return Err(PortError::Umem { bytes, source, hint });
        }
        let Some(umem_ptr) = NonNull::new(umem_ptr) else {
            return Err(PortError::Umem { bytes, source: io::Error::from(io::ErrorKind::Other), hint: "" });
        };
        let umem = Umem { umem: umem_ptr, fill, comp, area };

        let rx = RingBox::<xdp::xsk_ring_cons>::zeroed();
        let tx = RingBox::<xdp::xsk_ring_prod>::zeroed();
        let mut bind_flags = mode.bind_flag();
        if config.need_wakeup {
            bind_flags |= xdp::XDP_USE_NEED_WAKEUP as u16;
        }
        let socket_config = xdp::xsk_socket_config {
            rx_size: config.frame_count,
            tx_size: config.frame_count,
            // Our own program is loaded and fills `xsks` itself: libxdp must not load its own
            // (which would redirect every frame, ARP included, to the socket).
            __bindgen_anon_1: xdp::xsk_socket_config__bindgen_ty_1 {
                libxdp_flags: xdp::XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
            },
            xdp_flags: 0,
            bind_flags,
        };
        let mut xsk_ptr: *mut xdp::xsk_socket = std::ptr::null_mut();
        // SAFETY: `c_name` is NUL-terminated; the UMEM is live and has no socket yet; the rx/tx
        // ring structs are heap-allocated at fixed addresses owned by the Socket built below,
        // which is dropped before the UMEM.
        let rc = unsafe {
            xdp::xsk_socket__create(
                &mut xsk_ptr,
                c_name.as_ptr(),
                queue,
                umem.umem.as_ptr(),
                rx.ptr(),
                tx.ptr(),
                &socket_config,
            )
        };
        if rc != 0 {
            let source = sys::neg_errno(rc);
            let hint = match (source.raw_os_error(), mode) {
                (Some(libc::EBUSY), _) => {
                    " (another AF_XDP socket is bound to this queue: is another fwd running?)"
                }
                (Some(libc::EOPNOTSUPP), BoundMode::ZeroCopy) => {
                    " (the driver has no zero-copy AF_XDP support; copy mode works with any driver)"
                }
                (Some(libc::EINVAL), _) => {
                    " (queue out of range for the driver, or frame size not supported)"
                }
                _ => "",
            };
            return Err(PortError::Bind { ifname: ifname.to_string(), queue, mode, source, hint });
        }
        let Some(xsk) = NonNull::new(xsk_ptr) else {
            return Err(PortError::Bind {
                ifname: ifname.to_string(),
                queue,
                mode,
                source: io::Error::from(io::ErrorKind::Other),
                hint: "",
            });
        };
        let socket = Socket { xsk, rx, tx };
        // SAFETY: the socket is live; libxdp only reads its fd.
        let fd = unsafe { xdp::xsk_socket__fd(socket.xsk.as_ptr()) };

        let mut port = Port {
            socket,
            umem,
            fd,
            ifname: ifname.to_string(),
            queue,
            bound: mode,
            need_wakeup: config.need_wakeup,
            frame_size: u64::from(config.frame_size),
            frame_count: config.frame_count,
            held: HeldFrames::new(config.frame_count),
            tx_in_flight: 0,
            tx_base: u64::from(config.frame_count - config.tx_frames) * u64::from(config.frame_size),
            tx_free: (config.frame_count - config.tx_frames..config.frame_count)
                .rev()
                .map(|frame| u64::from(frame) * u64::from(config.frame_size))
                .collect(),
            tx_budget: None,
            batches_to_sample: 0,
            stats: PortStats::default(),
        };
        if mode == BoundMode::Copy {
            port.tx_budget = port.raise_tx_budget(config.frame_count);
        }
        port.fill_all()?;
        Ok(port)
    }

    /// Lets one `sendto()` send up to `budget` frames in copy mode instead of 32. Kernels
    /// without the option keep 32.
    fn raise_tx_budget(&self, budget: u32) -> Option<u32> {
        // SAFETY: setsockopt reads a u32 from `budget`, which lives across the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd,
                SOL_XDP,
                XDP_MAX_TX_SKB_BUDGET,
                (&budget as *const u32).cast(),
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        (rc == 0).then_some(budget)
    }

    fn fill_all(&mut self) -> Result<(), PortError> {
        let receive_frames = (self.tx_base / self.frame_size) as u32;
        if receive_frames == 0 {
            return Ok(());
        }
        let fill = self.umem.fill.ptr();
        let mut idx = 0u32;
        // SAFETY: the fill ring was set up by xsk_umem__create; `idx` lives across the call.
        let placed = unsafe { xdp::xsk_ring_prod__reserve(fill, receive_frames, &mut idx) };
        for i in 0..placed {
            // SAFETY: slots idx..idx+placed were just reserved.
            unsafe { *fill_slot(fill, idx.wrapping_add(i)) = u64::from(i) * self.frame_size };
        }
        // SAFETY: exactly the reserved slots were written.
        unsafe { xdp::xsk_ring_prod__submit(fill, placed) };
        if placed != receive_frames {
            return Err(PortError::FillRing { placed, frame_count: receive_frames });
        }
        Ok(())
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    pub fn bound_mode(&self) -> BoundMode {
        self.bound
    }

    /// Frames one copy-mode `sendto()` may send, if the kernel let us raise it from 32.
    pub fn tx_budget(&self) -> Option<u32> {
        self.tx_budget
    }

    /// The socket, for the XDP program's `xsks` map.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to the socket, which lives as long as `self`.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }

    pub fn stats(&self) -> PortStats {
        self.stats
    }

    /// The kernel's counters for this socket.
    pub fn kernel_stats(&self) -> io::Result<KernelStats> {
        // SAFETY: xdp_statistics is plain old data; all-zero is a valid value.
        let mut s: xdp::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<xdp::xdp_statistics>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `s`, which lives across the call.
        let rc = unsafe {
            libc::getsockopt(
                self.fd,
                SOL_XDP,
                xdp::XDP_STATISTICS as c_int,
                (&mut s as *mut xdp::xdp_statistics).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(KernelStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }

    /// Moves completed transmissions back where their frames belong: received frames to the fill
    /// ring, generated ones to `tx_free`.
    #[inline]
    fn reclaim_completions(&mut self) {
        if self.tx_in_flight == 0 {
            return;
        }
        let comp = self.umem.comp.ptr();
        let fill = self.umem.fill.ptr();
        let mut comp_idx = 0u32;
        // SAFETY: the completion ring is live and only this port consumes it.
        let done = unsafe { xdp::xsk_ring_cons__peek(comp, self.frame_count, &mut comp_idx) };
        if done == 0 {
            return;
        }
        let chunk_mask = !(self.frame_size - 1);
        let umem_len = self.umem.area.len as u64;
        let completed = |i: u32| {
            // SAFETY: called only with i < done, and completion slots comp_idx..+done were peeked.
            unsafe { *comp_slot(comp, comp_idx.wrapping_add(i)) & chunk_mask }
        };
        let to_fill = (0..done).filter(|&i| completed(i) < self.tx_base).count() as u32;
        let mut fill_idx = 0u32;
        if to_fill > 0 {
            // SAFETY: the fill ring is live and only this port produces on it. libxdp reserves
            // all or nothing; the fill ring holds the whole UMEM, so there is always room.
            if unsafe { xdp::xsk_ring_prod__reserve(fill, to_fill, &mut fill_idx) } != to_fill {
                // Cannot happen; leave the completions where they are for the next call.
                return;
            }
        }
        let mut filled = 0u32;
        for i in 0..done {
            let chunk = completed(i);
            if chunk < self.tx_base {
                // SAFETY: fill slots fill_idx..+to_fill were reserved and filled < to_fill.
                unsafe { *fill_slot(fill, fill_idx.wrapping_add(filled)) = chunk };
                filled += 1;
            } else if chunk < umem_len && self.tx_free.len() < self.tx_free.capacity() {
                // Within capacity: tx_free never reallocates.
                self.tx_free.push(chunk);
            } else {
                self.stats.lost_frames += 1;
            }
        }
        // SAFETY: exactly `to_fill` fill slots were written and all `done` completion entries
        // read.
        unsafe {
            if to_fill > 0 {
                xdp::xsk_ring_prod__submit(fill, to_fill);
            }
            xdp::xsk_ring_cons__release(comp, done);
        }
        self.tx_in_flight = self.tx_in_flight.saturating_sub(done);
    }

    /// Generated frames that can be written right now (not on a ring).
    pub fn tx_free_frames(&self) -> usize {
        self.tx_free.len()
    }

    /// Frames set aside for [`transmit`](Self::transmit) (`PortConfig::tx_frames`).
    pub fn tx_frames(&self) -> u32 {
        self.frame_count - (self.tx_base / self.frame_size) as u32
    }

    /// Sends up to `max` (at most [`MAX_BATCH`]) generated frames: for each free transmit frame,
    /// `write(i, chunk)` writes frame `i` of this batch at the start of `chunk` (the whole UMEM
    /// chunk, `frame_size` bytes) and returns its length; 0 ends the batch there. The frames go on
    /// the TX ring together, with one kick. Returns how many were queued: the caller's frames
    /// `0..n` will be sent, any others it wrote were not.
    ///
    /// First reclaims completed frames, so a caller that calls this in a loop never runs dry for
    /// long; with no free frame it only kicks the kernel if earlier frames still wait on the ring.
    /// A chunk keeps whatever the caller wrote last time it used that chunk (the kernel never
    /// writes transmit chunks), and starts out zeroed.
    #[inline]
    pub fn transmit<F>(&mut self, max: usize, mut write: F) -> usize
    where
        F: FnMut(usize, &mut [u8]) -> usize,
    {
        self.reclaim_completions();
        let want = max.min(MAX_BATCH).min(self.tx_free.len());
        if want == 0 {
            if self.tx_in_flight > 0 && self.tx_ring_pending() {
                self.kick_tx();
            }
            return 0;
        }
        let base = self.umem.area.base.as_ptr();
        let frame_size = self.frame_size as usize;
        let mut written: ArrayVec<(u64, u32), MAX_BATCH> = ArrayVec::new();
        for i in 0..want {
            let Some(chunk) = self.tx_free.pop() else { break };
            // SAFETY: `chunk` came from `tx_free`, which holds offsets of whole chunks inside the
            // mapping (set at open, and checked against the mapping's length when reclaimed), each
            // at most once: a chunk is either in `tx_free` or in flight, never both. A free chunk
            // is on no ring, so the kernel does not touch it, and the slice lives only for this
            // call of `write`.
            let buf = unsafe { std::slice::from_raw_parts_mut(base.add(chunk as usize), frame_size) };
            let len = write(i, buf).min(frame_size);
            if len == 0 {
                self.tx_free.push(chunk);
                break;
            }
            // At most `want` <= MAX_BATCH pushes.
            let _ = written.try_push((chunk, len as u32));
        }
        if written.is_empty() {
            return 0;
        }
        let tx = self.socket.tx.ptr();
        let mut idx = 0u32;
        let n = written.len() as u32;
        // SAFETY: the TX ring is live and only this port produces on it. All or nothing; the ring
        // holds the whole UMEM, so there is always room.
        if unsafe { xdp::xsk_ring_prod__reserve(tx, n, &mut idx) } != n {
            self.stats.tx_ring_full += u64::from(n);
            self.tx_free.extend(written.iter().map(|&(chunk, _)| chunk));
            return 0;
        }
        for (i, &(chunk, len)) in written.iter().enumerate() {
            // SAFETY: slot idx+i is among the `n` reserved ones.
            unsafe {
                let slot = tx_slot(tx, idx.wrapping_add(i as u32));
                (*slot).addr = chunk;
                (*slot).len = len;
                (*slot).options = 0;
            }
        }
        // SAFETY: exactly the reserved slots were written.
        unsafe { xdp::xsk_ring_prod__submit(tx, n) };
        self.tx_in_flight += n;
        self.stats.tx_frames += u64::from(n);
        self.kick_tx();
        written.len()
    }

    /// Receives up to `max` (at most [`MAX_BATCH`]) frames, shows each to `inspect` (read only)
    /// and puts it straight back on the fill ring: the receive path of a traffic sink. Returns
    /// how many frames were received (0: nothing was waiting; the kernel got any kick it needed).
    #[inline]
    pub fn receive_each<F>(&mut self, max: usize, mut inspect: F) -> usize
    where
        F: FnMut(&[u8]),
    {
        self.reclaim_completions();
        let mut spans: ArrayVec<Span, MAX_BATCH> = ArrayVec::new();
        let received = self.receive(max.min(MAX_BATCH) as u32, &mut spans);
        if received == 0 {
            self.idle();
            return 0;
        }
        let base = self.umem.area.base.as_ptr();
        for span in &spans {
            // SAFETY: `receive` checked chunk + frame_size <= the mapping's length and
            // start + len <= frame_size, so the slice lies inside our live mapping; the frame came
            // off the RX ring and is on no other ring until `recycle` below, so the kernel does
            // not write it while the shared slice lives (only during this call of `inspect`).
            let frame = unsafe {
                std::slice::from_raw_parts(
                    base.add((span.chunk + u64::from(span.start)) as usize),
                    span.len as usize,
                )
            };
            inspect(frame);
        }
        let verdicts = [Verdict::Drop(DropReason::Malformed); MAX_BATCH];
        self.complete(&spans, &verdicts[..spans.len()]);
        received as usize
    }

    /// Asks the kernel to transmit what is on the TX ring (copy mode always needs this; with
    /// need_wakeup the kernel says when).
    #[inline]
    fn kick_tx(&mut self) {
        let tx = self.socket.tx.ptr();
        // SAFETY: the TX ring is live; this reads its flags word.
        if self.need_wakeup && unsafe { xdp::xsk_ring_prod__needs_wakeup(tx) } == 0 {
            return;
        }
        self.stats.tx_kicks += 1;
        // SAFETY: a zero-length non-blocking sendto on our own socket, no buffers.
        let rc =
            unsafe { libc::sendto(self.fd, std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
        if rc < 0 {
            // EAGAIN/EBUSY/ENOBUFS: the kernel is still busy with earlier frames; they stay on the
            // ring and the next kick sends them. Read errno without allocating.
            let errno = io::Error::last_os_error().raw_os_error();
            if !matches!(errno, Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS)) {
                self.stats.tx_kick_errors += 1;
            }
        }
    }

    /// Sleeps in `ppoll(2)` until the RX ring has frames or `timeout` passes. For a poller that
    /// shares its core with the interface's receive side (veth's NAPI thread, copy mode): while
    /// it sleeps the core is the receive side's, and the socket's wakeup (the kernel's flush of
    /// the RX ring) hands it back with a batch waiting, where a `sched_yield` loop gives the core
    /// away only when the scheduler agrees. It does not sleep while transmitted frames still wait
    /// on the TX ring (the kernel sends them only when kicked, and a sleeping poller kicks
    /// nothing): it says so, and leaves the kick to polling (an empty poll kicks pending frames,
    /// and it has just done so when this is called after one).
    pub fn wait_for_frames(&mut self, timeout: Duration) -> Wait {
        if self.tx_in_flight > 0 && self.tx_ring_pending() {
            return Wait::TxPending;
        }
        let mut pollfd = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one pollfd on the stack for our own live socket, a timespec on the stack, and no
        // signal mask (null keeps the thread's own); ppoll writes only `pollfd.revents`.
        let rc = unsafe { libc::ppoll(&mut pollfd, 1, &timeout, std::ptr::null()) };
        self.stats.waits += 1;
        if rc > 0 && pollfd.revents & libc::POLLIN != 0 {
            self.stats.wakeups += 1;
            Wait::Frames
        } else {
            // A timeout, or an error (EINTR from a signal included): the caller polls again
            // either way.
            Wait::TimedOut
        }
    }

    /// Whether the TX ring holds descriptors the kernel has not consumed yet.
    #[inline]
    fn tx_ring_pending(&mut self) -> bool {
        let tx = self.socket.tx.ptr();
        // SAFETY: the TX ring is live and only this port produces on it; asking for the whole
        // ring makes libxdp re-read the kernel's consumer index.
        unsafe {
            let size = (*tx).size;
            xdp::xsk_prod_nb_free(tx, size) < size
        }
    }

    /// Counts where the UMEM's frames are, once per OCCUPANCY_EVERY batches (after a batch was
    /// taken off the RX ring).
    #[inline]
    fn sample_occupancy(&mut self) {
        if self.batches_to_sample > 0 {
            self.batches_to_sample -= 1;
            return;
        }
        self.batches_to_sample = OCCUPANCY_EVERY - 1;
        let (rx, fill) = (self.socket.rx.ptr(), self.umem.fill.ptr());
        // SAFETY: both rings are live; `producer` of the RX ring and `consumer` of the fill ring
        // point into their mapped ring headers, which the kernel updates as plain u32s (a stale
        // value only makes the sample a little old). This side's own indices are its cached ones.
        let (rx_backlog, fill_level) = unsafe {
            (
                std::ptr::read_volatile((*rx).producer).wrapping_sub((*rx).cached_cons),
                (*fill).cached_prod.wrapping_sub(std::ptr::read_volatile((*fill).consumer)),
            )
        };
        self.stats.occupancy_samples += 1;
        self.stats.fill_level_sum += u64::from(fill_level.min(self.frame_count));
        self.stats.rx_backlog_sum += u64::from(rx_backlog.min(self.frame_count));
        self.stats.tx_in_flight_sum += u64::from(self.tx_in_flight);
    }

    /// Nothing was received: give the kernel the kicks it may be waiting for.
    #[cold]
    fn idle(&mut self) {
        // Frames still on the TX ring (a copy-mode sendto sends at most its budget) need another
        // kick; frames the kernel took but has not completed yet do not.
        if self.tx_in_flight > 0 && self.tx_ring_pending() {
            self.kick_tx();
        }
        let fill = self.umem.fill.ptr();
        // SAFETY: the fill ring is live; this reads its flags word.
        if self.need_wakeup && unsafe { xdp::xsk_ring_prod__needs_wakeup(fill) } != 0 {
            self.stats.fill_kicks += 1;
            // SAFETY: a zero-length non-blocking recvfrom on our own socket, no buffers.
            unsafe {
                libc::recvfrom(
                    self.fd,
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
    }

    /// Takes up to `max` descriptors off the RX ring into `spans`, claiming their frames.
    #[inline]
    fn receive(&mut self, max: u32, spans: &mut ArrayVec<Span, MAX_BATCH>) -> u32 {
        let rx = self.socket.rx.ptr();
        let mut idx = 0u32;
        // SAFETY: the RX ring is live and only this port consumes it.
        let received = unsafe { xdp::xsk_ring_cons__peek(rx, max, &mut idx) };
        let umem_len = self.umem.area.len as u64;
        let offset_mask = self.frame_size - 1;
        for i in 0..received {
            // SAFETY: slots idx..idx+received were peeked; xdp_desc is plain old data.
            let desc = unsafe { *rx_slot(rx, idx.wrapping_add(i)) };
            let chunk = desc.addr & !offset_mask;
            let start = desc.addr & offset_mask;
            // Checked: a descriptor is input like any other (start < frame_size, so the second
            // sum cannot overflow).
            let fits = chunk.checked_add(self.frame_size).is_some_and(|end| end <= umem_len)
                && start + u64::from(desc.len) <= self.frame_size;
            // chunk < umem_len <= frame_count * frame_size, so the frame index fits a usize.
            let frame = (chunk / self.frame_size) as usize;
            if fits && self.held.claim(frame) {
                // received <= max <= MAX_BATCH, so there is always room.
                let _ = spans.try_push(Span { chunk, start: start as u32, len: desc.len });
            } else {
                self.stats.bad_rx_descs += 1;
            }
        }
        // SAFETY: the descriptors were copied out; the frames stay ours until recycled or sent.
        unsafe { xdp::xsk_ring_cons__release(rx, received) };
        self.stats.rx_frames += u64::from(received);
        received
    }

    /// Finds up to `max` frames that wait on the RX ring behind the batch just taken (the next
    /// batch's), puts their spans in `waiting` and starts loading their first cache line. Under
    /// load a frame waits there up to a ring's length of frames (milliseconds) after the kernel
    /// wrote it and has left the caches by the time it is read; the batch's own prefetch (in the
    /// pipeline) overlaps those misses with each other, this one hides them behind a whole batch
    /// of work, and the pipeline may classify these frames ahead ([`PacketIo::poll_ahead`]).
    /// Frames are only read, never claimed: the descriptors stay on the ring for the next
    /// [`Port::receive`]. A descriptor that does not fit the UMEM or names a held frame is left
    /// out (`receive` will skip it).
    #[inline]
    fn waiting_frames(&self, max: u32, waiting: &mut ArrayVec<Span, MAX_BATCH>) {
        let rx = self.socket.rx.ptr();
        // SAFETY: the RX ring is live and only this port consumes it; its cached indices are
        // this side's own. Without a refresh of the producer index this sees only descriptors
        // that `receive`'s peek already found published (with acquire order), so every slot read
        // below holds a descriptor the kernel finished writing.
        let (consumer, producer) = unsafe { ((*rx).cached_cons, (*rx).cached_prod) };
        let count = producer.wrapping_sub(consumer).min(max).min(MAX_BATCH as u32);
        let umem_len = self.umem.area.len as u64;
        let offset_mask = self.frame_size - 1;
        let base = self.umem.area.base.as_ptr();
        for i in 0..count {
            // SAFETY: slot consumer+i is among the published, unconsumed ones (above).
            let desc = unsafe { *rx_slot(rx, consumer.wrapping_add(i)) };
            let chunk = desc.addr & !offset_mask;
            let start = desc.addr & offset_mask;
            let fits = chunk.checked_add(self.frame_size).is_some_and(|end| end <= umem_len)
                && start + u64::from(desc.len) <= self.frame_size;
            if !fits || self.held.is_held((chunk / self.frame_size) as usize) {
                break;
            }
            // SAFETY: `desc.addr` is inside the mapping (checked), so the pointer stays in
            // bounds of that one allocation.
            crate::prefetch::prefetch_line(unsafe { base.add(desc.addr as usize) });
            let _ = waiting.try_push(Span { chunk, start: start as u32, len: desc.len });
        }
    }

    /// Puts the `Tx` frames on the TX ring and every other frame back on the fill ring.
    #[inline]
    fn complete(&mut self, spans: &[Span], verdicts: &[Verdict]) {
        let mut send: ArrayVec<Span, MAX_BATCH> = ArrayVec::new();
        let mut recycle: ArrayVec<u64, MAX_BATCH> = ArrayVec::new();
        for (h, v) in spans.iter().zip(verdicts) {
            match v {
                Verdict::Tx if h.len > 0 => {
                    let _ = send.try_push(*h);
                }
                Verdict::Tx => {
                    self.stats.tx_empty += 1;
                    let _ = recycle.try_push(h.chunk);
                }
                Verdict::Pass => {
                    self.stats.pass_recycled += 1;
                    let _ = recycle.try_push(h.chunk);
                }
                Verdict::Drop(_) => {
                    self.stats.drop_recycled += 1;
                    let _ = recycle.try_push(h.chunk);
                }
            }
        }

        if !send.is_empty() {
            let tx = self.socket.tx.ptr();
            let mut idx = 0u32;
            // SAFETY: the TX ring is live and only this port produces on it.
            let reserved = unsafe { xdp::xsk_ring_prod__reserve(tx, send.len() as u32, &mut idx) };
            for (i, h) in send.iter().enumerate() {
                if i as u32 >= reserved {
                    self.stats.tx_ring_full += 1;
                    let _ = recycle.try_push(h.chunk);
                    continue;
                }
                // SAFETY: slot idx+i is among the `reserved` ones.
                unsafe {
                    let slot = tx_slot(tx, idx.wrapping_add(i as u32));
                    (*slot).addr = h.chunk + u64::from(h.start);
                    (*slot).len = h.len;
                    (*slot).options = 0;
                }
                self.held.release((h.chunk / self.frame_size) as usize);
            }
            // SAFETY: exactly the reserved slots were written.
            unsafe { xdp::xsk_ring_prod__submit(tx, reserved) };
            self.tx_in_flight += reserved;
            self.stats.tx_frames += u64::from(reserved);
            self.kick_tx();
        }

        if !recycle.is_empty() {
            let fill = self.umem.fill.ptr();
            let mut idx = 0u32;
            // SAFETY: the fill ring is live and only this port produces on it.
            let placed = unsafe { xdp::xsk_ring_prod__reserve(fill, recycle.len() as u32, &mut idx) };
            for (i, &chunk) in recycle.iter().enumerate() {
                if i as u32 >= placed {
                    // Cannot happen (the fill ring holds the whole UMEM); the frame stays held.
                    self.stats.lost_frames += 1;
                    continue;
                }
                // SAFETY: slot idx+i is among the `placed` ones.
                unsafe { *fill_slot(fill, idx.wrapping_add(i as u32)) = chunk };
                self.held.release((chunk / self.frame_size) as usize);
            }
            // SAFETY: exactly the reserved slots were written.
            unsafe { xdp::xsk_ring_prod__submit(fill, placed) };
        }
    }
}

impl PacketIo for Port {
    fn poll_ahead(
        &mut self,
        max: usize,
        process: &mut dyn FnMut(&mut Batch<'_>, &mut [Verdict], &Ahead<'_>),
    ) -> usize {
        self.reclaim_completions();
        let max = max.min(MAX_BATCH) as u32;
        let mut spans: ArrayVec<Span, MAX_BATCH> = ArrayVec::new();
        let received = self.receive(max, &mut spans);
        if received == 0 {
            self.idle();
            return 0;
        }
        self.sample_occupancy();

        // While this batch is processed, the next one's frames come in from memory.
        let mut waiting: ArrayVec<Span, MAX_BATCH> = ArrayVec::new();
        self.waiting_frames(max, &mut waiting);
        let mut verdicts = [Verdict::Drop(DropReason::Malformed); MAX_BATCH];
        if !spans.is_empty() {
            let base = self.umem.area.base.as_ptr();
            let frame_size = self.frame_size as usize;
            let mut batch: Batch<'_> = ArrayVec::new();
            for span in &spans {
                // SAFETY: `span.chunk + frame_size <= area.len` was checked in `receive`, so the
                // slice lies inside our live mapping. The slices are pairwise disjoint: each is a
                // whole chunk, and `receive` admitted a chunk only after flipping its bit in
                // `self.held` from free to held, so no chunk appears twice; the bits are cleared
                // only in `complete`, after `batch` (and every slice in it) is gone. The kernel
                // does not touch these chunks: they came off the RX ring and are on neither the
                // fill nor the TX ring until `complete` puts them there. The slices cannot outlive
                // this call: `batch` is local and `process` is generic over its lifetime.
                let chunk =
                    unsafe { std::slice::from_raw_parts_mut(base.add(span.chunk as usize), frame_size) };
                // Cannot fail: `receive` checked start + len <= frame_size.
                if let Some(frame) = Frame::new(chunk, span.start as usize, span.len as usize) {
                    let _ = batch.try_push(frame);
                }
            }
            let mut ahead: Ahead<'_> = ArrayVec::new();
            for span in &waiting {
                // SAFETY: `waiting_frames` checked that the span lies inside our live mapping
                // (chunk + frame_size <= area.len, start + len <= frame_size) and that its chunk
                // is not held, so it overlaps none of the mutable slices in `batch` (all held).
                // The kernel finished writing the frame before publishing its descriptor, and
                // writes the chunk again only after this port has received it and put it back on
                // the fill ring, which cannot happen during this call; nothing here writes it.
                // The slices cannot outlive this call: `ahead` is local.
                let frame = unsafe {
                    std::slice::from_raw_parts(
                        base.add((span.chunk + u64::from(span.start)) as usize),
                        span.len as usize,
                    )
                };
                let _ = ahead.try_push(frame);
            }
            let n = batch.len();
            process(&mut batch, &mut verdicts[..n], &ahead);
            // Carry the (possibly moved) start and length of every frame back to its span. A
            // frame is matched to its span by position, and checked to still be that span's chunk
            // (by address) so that a batch the pipeline reordered or shortened can never send one
            // frame's bytes under another's descriptor: such frames are dropped instead.
            let offset_mask = frame_size - 1;
            for (i, (span, verdict)) in spans.iter_mut().zip(verdicts.iter_mut()).enumerate() {
                let offset = batch.get(i).map(|f| (f.data().as_ptr() as usize).wrapping_sub(base as usize));
                match offset {
                    Some(offset) if (offset & !offset_mask) as u64 == span.chunk => {
                        if let Some(frame) = batch.get(i) {
                            span.start = frame.start() as u32;
                            span.len = frame.len() as u32;
                        }
                    }
                    _ => {
                        self.stats.batch_altered += 1;
                        *verdict = Verdict::Drop(DropReason::Malformed);
                    }
                }
            }
            drop(batch);
        }
        self.complete(&spans, &verdicts[..spans.len()]);
        received as usize
    }
}

/// Slot `idx` of a fill ring (libxdp's xsk_ring_prod__fill_addr, inlined).
///
/// # Safety
/// `ring` must be a live, set-up fill ring and `idx` a slot this side reserved.
#[inline]
unsafe fn fill_slot(ring: *mut xdp::xsk_ring_prod, idx: u32) -> *mut u64 {
    // SAFETY: per the contract the ring is set up: `ring.ring` points at `mask + 1` u64 slots.
    unsafe { (*ring).ring.cast::<u64>().add((idx & (*ring).mask) as usize) }
}

/// Slot `idx` of a completion ring (xsk_ring_cons__comp_addr).
///
/// # Safety
/// `ring` must be a live, set-up completion ring and `idx` a slot this side peeked.
#[inline]
unsafe fn comp_slot(ring: *mut xdp::xsk_ring_cons, idx: u32) -> *const u64 {
    // SAFETY: as for `fill_slot`.
    unsafe { (*ring).ring.cast::<u64>().add((idx & (*ring).mask) as usize) }
}

/// Slot `idx` of an RX ring (xsk_ring_cons__rx_desc).
///
/// # Safety
/// `ring` must be a live, set-up RX ring and `idx` a slot this side peeked.
#[inline]
unsafe fn rx_slot(ring: *mut xdp::xsk_ring_cons, idx: u32) -> *const xdp::xdp_desc {
    // SAFETY: the RX ring holds `mask + 1` xdp_desc entries.
    unsafe { (*ring).ring.cast::<xdp::xdp_desc>().add((idx & (*ring).mask) as usize) }
}

/// Slot `idx` of a TX ring (xsk_ring_prod__tx_desc).
///
/// # Safety
/// `ring` must be a live, set-up TX ring and `idx` a slot this side reserved.
#[inline]
unsafe fn tx_slot(ring: *mut xdp::xsk_ring_prod, idx: u32) -> *mut xdp::xdp_desc {
    // SAFETY: the TX ring holds `mask + 1` xdp_desc entries.
    unsafe { (*ring).ring.cast::<xdp::xdp_desc>().add((idx & (*ring).mask) as usize) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testnet::{self, Netns, NetnsPair, A_V4, A_V6, IFACE, VIP_V4, VIP_V6};
    use crate::{AttachMode, XdpProgram};
    use std::net::{IpAddr, UdpSocket};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    const ECHO_PORT: u16 = 9000;
    const DATAGRAMS: u32 = 40;
    /// How far the bounce moves every other frame's start into the headroom before sending it.
    const SHIFT: usize = 64;

    /// Turns a UDP datagram around in place: swaps MACs, IP addresses and ports. Both checksums
    /// stay valid (they are sums, and swapping the terms does not change a sum).
    fn reflect_udp(frame: &mut [u8]) -> bool {
        if frame.len() < 14 {
            return false;
        }
        let (dst, rest) = frame.split_at_mut(6);
        dst.swap_with_slice(&mut rest[..6]);
        let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
        let (addresses, udp) = match ether_type {
            0x0800 if frame.len() >= 14 + 20 => {
                let ihl = usize::from(frame[14] & 0x0f) * 4;
                (14 + 12..14 + 20, 14 + ihl)
            }
            0x86dd if frame.len() >= 14 + 40 && frame[14 + 6] == 17 => (14 + 8..14 + 40, 14 + 40),
            _ => return false,
        };
        if frame.len() < udp + 8 {
            return false;
        }
        let half = (addresses.end - addresses.start) / 2;
        let (src_ip, dst_ip) = frame[addresses].split_at_mut(half);
        src_ip.swap_with_slice(dst_ip);
        let (src_port, dst_port) = frame[udp..udp + 4].split_at_mut(2);
        src_port.swap_with_slice(dst_port);
        true
    }

    /// Sends `DATAGRAMS` numbered datagrams to `vip`, one at a time, and counts the echoes that
    /// come back intact. A warm-up datagram first, retried, carries the wait for ARP/ND.
    fn echo_count(vip: &str) -> u32 {
        let mut exchange = echo_exchange(vip, Duration::from_millis(1000));
        assert!((0..5).any(|_| exchange(b"warm-up")), "no echo from {vip} at all");
        (0..DATAGRAMS).filter(|i| exchange(format!("fwd-bounce-{i}").as_bytes())).count() as u32
    }

    /// A UDP socket connected to `vip`'s echo port: sends a payload, says whether it came back.
    fn echo_exchange(vip: &str, wait: Duration) -> impl FnMut(&[u8]) -> bool {
        let vip: IpAddr = vip.parse().unwrap();
        let local = if vip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let socket = UdpSocket::bind(local).unwrap();
        socket.connect((vip, ECHO_PORT)).unwrap();
        socket.set_read_timeout(Some(wait)).unwrap();
        let mut reply = vec![0u8; 4096];
        move |payload: &[u8]| {
            socket.send(payload).unwrap();
            matches!(socket.recv(&mut reply), Ok(n) if &reply[..n] == payload)
        }
    }

    /// Sets the flag when dropped, also while unwinding: stops the bounce thread if the test fails.
    struct StopOnDrop<'a>(&'a AtomicBool);

    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    #[derive(Debug, Default)]
    struct BounceRun {
        stats: PortStats,
        kernel: KernelStats,
        bound: Option<BoundMode>,
        counters: crate::XdpCounters,
        min_headroom: usize,
        max_headroom: usize,
        shifted: u64,
        xdp_mode: Option<crate::AttachedMode>,
    }

    /// In namespace `ns`: attaches the program, opens a port on queue 0, and bounces UDP to the
    /// VIPs until `stop` (or a minute, whichever is first). Every other frame is moved `SHIFT`
    /// bytes into its headroom before it is sent, as an encapsulation would.
    fn bounce(ns: &Netns, setup: Setup, ready: mpsc::Sender<()>, stop: &AtomicBool) -> BounceRun {
        ns.enter();
        let mut program = XdpProgram::load().unwrap();
        let attached = program.attach(IFACE, setup.xdp_mode).unwrap().mode;
        let config = PortConfig {
            frame_count: 256,
            frame_size: setup.frame_size,
            need_wakeup: setup.need_wakeup,
            ..PortConfig::default()
        };
        let mut port = Port::open(IFACE, 0, &config).unwrap();
        program.register_port(&port).unwrap();
        program.sync_vips(&[VIP_V4.parse().unwrap(), VIP_V6.parse().unwrap()]).unwrap();
        ready.send(()).unwrap();

        let mut run = BounceRun { min_headroom: usize::MAX, ..BounceRun::default() };
        let mut seen = 0u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let received = port.poll(MAX_BATCH, &mut |batch, verdicts| {
                for (frame, verdict) in batch.iter_mut().zip(verdicts.iter_mut()) {
                    run.min_headroom = run.min_headroom.min(frame.headroom());
                    run.max_headroom = run.max_headroom.max(frame.headroom());
                    if !reflect_udp(frame.data_mut()) {
                        continue; // stays Drop(Malformed)
                    }
                    seen += 1;
                    if seen.is_multiple_of(2) {
                        let len = frame.len();
                        let whole = frame.push_front(SHIFT).unwrap();
                        whole.copy_within(SHIFT..SHIFT + len, 0);
                        // Wipe what is left of the old copy: only the moved one may be sent.
                        whole[len..].fill(0);
                        frame.truncate(len);
                        run.shifted += 1;
                    }
                    *verdict = Verdict::Tx;
                }
            });
            if received == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        run.stats = port.stats();
        run.kernel = port.kernel_stats().unwrap();
        run.bound = Some(port.bound_mode());
        run.xdp_mode = Some(attached);
        run.counters = program.counters().unwrap();
        drop(port);
        drop(program);
        run
    }

    #[derive(Clone, Copy, Debug)]
    struct Setup {
        xdp_mode: AttachMode,
        need_wakeup: bool,
        frame_size: u32,
    }

    #[test]
    fn bounces_vip_udp_while_the_kernel_keeps_arp_nd_and_ping() {
        let run = bounce_scenario(Setup { xdp_mode: AttachMode::Auto, need_wakeup: true, frame_size: 2048 });
        assert_eq!(run.xdp_mode, Some(crate::AttachedMode::Native), "veth has native XDP");
    }

    #[test]
    fn bounces_in_generic_mode_without_need_wakeup() {
        let run =
            bounce_scenario(Setup { xdp_mode: AttachMode::Generic, need_wakeup: false, frame_size: 2048 });
        assert_eq!(run.xdp_mode, Some(crate::AttachedMode::Generic));
        assert!(run.stats.tx_kicks >= run.stats.tx_frames.div_ceil(MAX_BATCH as u64), "{run:?}");
    }

    /// A frame longer than a UMEM frame holds never reaches the port: the kernel drops it and
    /// counts it in the socket's `rx_dropped`, which is where fwd's `fwd stats` shows it. With
    /// 4096-byte frames (`fwd --frame-size 4096`, what fwd's MTU warning suggests) it goes through.
    #[test]
    fn frames_longer_than_a_umem_frame_are_dropped_and_counted_by_the_kernel() {
        const OVERSIZED: u32 = 10;
        // UDP payload for an IPv4 frame one byte longer than a 2048-byte UMEM frame holds.
        let payload = PortConfig::default().largest_frame() as usize + 1 - 14 - 20 - 8;
        for frame_size in [2048, 4096] {
            // A pair of its own per run: the kernel releases a closed socket's queue binding (and
            // the program's socket map) asynchronously, so a second bind to the same queue right
            // after can fail with EBUSY.
            let net = NetnsPair::new();
            for ns in [&net.a, &net.b] {
                ns.ip(&["link", "set", IFACE, "mtu", "3000"]);
            }
            let stop = AtomicBool::new(false);
            let (ready_tx, ready_rx) = mpsc::channel();
            let setup = Setup { xdp_mode: AttachMode::Auto, need_wakeup: true, frame_size };
            let (fitting, oversized, run) = std::thread::scope(|scope| {
                let _stop_on_failure = StopOnDrop(&stop);
                let fwd = scope.spawn(|| bounce(&net.a, setup, ready_tx, &stop));
                ready_rx.recv_timeout(Duration::from_secs(30)).expect("the bounce side did not start");
                let (fitting, oversized) = net.b.run(|| {
                    let mut exchange = echo_exchange(VIP_V4, Duration::from_millis(300));
                    let fitting = (0..5).any(|_| exchange(&vec![b'f'; payload - 1]));
                    (fitting, (0..OVERSIZED).filter(|_| exchange(&vec![b'o'; payload])).count() as u32)
                });
                stop.store(true, Ordering::Relaxed);
                (fitting, oversized, fwd.join().expect("bounce thread"))
            });
            assert!(fitting, "{frame_size}: a frame of exactly 1792 bytes was not bounced: {run:?}");
            if frame_size == 2048 {
                assert_eq!(oversized, 0, "{run:?}");
                assert!(run.kernel.rx_dropped >= u64::from(OVERSIZED), "{run:?}");
            } else {
                assert_eq!(oversized, OVERSIZED, "{run:?}");
                assert_eq!(run.kernel.rx_dropped, 0, "{run:?}");
            }
        }
    }

    /// Our XDP program on IFACE (in the current namespace) steering VIP_V4 to a 256-frame port.
    /// The program is returned to keep it attached while the port is used.
    pub(crate) fn port_steering_vip_v4() -> (XdpProgram, Port) {
        let mut program = XdpProgram::load().unwrap();
        program.attach(IFACE, AttachMode::Auto).unwrap();
        let config = PortConfig { frame_count: 256, ..PortConfig::default() };
        let port = Port::open(IFACE, 0, &config).unwrap();
        program.register_port(&port).unwrap();
        program.sync_vips(&[VIP_V4.parse().unwrap()]).unwrap();
        (program, port)
    }

    /// What `Worker::process_batch_ahead` relies on: `poll_ahead` shows the frames waiting on
    /// the RX ring behind a batch, and the next batch starts with those frames, unchanged, at the
    /// same addresses. A burst waits on the ring before the port polls it 8 frames at a time.
    #[test]
    fn frames_shown_ahead_are_the_next_batch_unchanged() {
        const BURST: usize = 120;
        let net = NetnsPair::new();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (sent_tx, sent_rx) = mpsc::channel::<()>();
        let net = &net;
        let (received, matched, shown_total, stats) = std::thread::scope(|scope| {
            let side = scope.spawn(move || {
                net.a.enter();
                let (_program, mut port) = port_steering_vip_v4();
                ready_tx.send(()).unwrap();
                sent_rx.recv_timeout(Duration::from_secs(30)).expect("the burst was not sent");
                // Address and bytes of each frame shown ahead of the last batch.
                let mut shown: Vec<(usize, Vec<u8>)> = Vec::new();
                let (mut received, mut matched, mut shown_total) = (0usize, 0usize, 0usize);
                let deadline = Instant::now() + Duration::from_secs(10);
                while received < BURST && Instant::now() < deadline {
                    received += port.poll_ahead(8, &mut |batch, _verdicts, ahead| {
                        for (frame, (address, bytes)) in batch.iter().zip(&shown) {
                            if frame.data().as_ptr() as usize == *address {
                                assert_eq!(frame.data(), &bytes[..], "a frame changed after it was shown");
                                matched += 1;
                            }
                        }
                        shown = ahead.iter().map(|d| (d.as_ptr() as usize, d.to_vec())).collect();
                        shown_total += shown.len();
                    });
                }
                (received, matched, shown_total, port.stats())
            });
            ready_rx.recv_timeout(Duration::from_secs(30)).expect("the port did not start");
            net.b.run(|| {
                let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                socket.connect((VIP_V4.parse::<IpAddr>().unwrap(), ECHO_PORT)).unwrap();
                // The first datagram waits for ARP; the burst follows once it is resolved.
                socket.send(b"first").unwrap();
                std::thread::sleep(Duration::from_millis(300));
                for i in 1..BURST {
                    socket.send(format!("burst-{i}").as_bytes()).unwrap();
                }
            });
            std::thread::sleep(Duration::from_millis(100));
            sent_tx.send(()).unwrap();
            side.join().expect("port thread")
        });
        assert_eq!(received, BURST, "every datagram reached the port");
        // Every batch after the first starts with the frames shown ahead of it.
        assert_eq!(shown_total, BURST - 8, "frames shown ahead");
        assert_eq!(matched, BURST - 8, "frames of a batch that had been shown ahead");
        // Where the 256 frames were when the first batch came off the ring (the only sample in
        // 15 batches): 8 in the batch, the rest of the burst on the RX ring, the others on the
        // fill ring, none in transmit (nothing was sent).
        let occupancy = (stats.occupancy_samples, stats.fill_level_sum, stats.rx_backlog_sum);
        assert_eq!(occupancy, (1, 256 - BURST as u64, BURST as u64 - 8), "{stats:?}");
        assert_eq!(stats.tx_in_flight_sum, 0, "{stats:?}");
    }

    /// `wait_for_frames` sleeps out its timeout on an empty ring, and a datagram to the VIP wakes
    /// it long before a 20 s timeout, with the frame on the ring for the next poll.
    #[test]
    fn waiting_for_frames_sleeps_until_one_arrives_or_the_timeout_passes() {
        let net = NetnsPair::new();
        let (ready_tx, ready_rx) = mpsc::channel();
        let net = &net;
        let (empty_wait, woken, woken_after, received, stats) = std::thread::scope(|scope| {
            let side = scope.spawn(move || {
                net.a.enter();
                let (_program, mut port) = port_steering_vip_v4();
                let start = Instant::now();
                let empty = port.wait_for_frames(Duration::from_millis(100));
                let empty_wait = (empty, start.elapsed());
                ready_tx.send(()).unwrap();
                let start = Instant::now();
                let woken = port.wait_for_frames(Duration::from_secs(20));
                let woken_after = start.elapsed();
                let received = port.poll(MAX_BATCH, &mut |_, _| {});
                (empty_wait, woken, woken_after, received, port.stats())
            });
            ready_rx.recv_timeout(Duration::from_secs(30)).expect("the port did not start");
            net.b.run(|| {
                let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                socket.send_to(b"wake up", (VIP_V4.parse::<IpAddr>().unwrap(), ECHO_PORT)).unwrap();
            });
            side.join().expect("port thread")
        });
        assert_eq!(empty_wait.0, Wait::TimedOut, "nothing was sent yet");
        assert!(
            empty_wait.1 >= Duration::from_millis(90),
            "the empty wait returned after {:?}",
            empty_wait.1
        );
        assert_eq!(woken, Wait::Frames, "the datagram did not end the wait (after {woken_after:?})");
        assert!(woken_after < Duration::from_secs(10), "woken after {woken_after:?}");
        assert_eq!(received, 1);
        assert_eq!((stats.waits, stats.wakeups), (2, 1), "{stats:?}");
    }

    /// The bounce test proper; returns what the bounce side saw for setup-specific checks.
    fn bounce_scenario(setup: Setup) -> BounceRun {
        let net = NetnsPair::new();
        let stop = AtomicBool::new(false);
        let (ready_tx, ready_rx) = mpsc::channel();
        let (answered_v4, answered_v6, run) = std::thread::scope(|scope| {
            let _stop_on_failure = StopOnDrop(&stop);
            let fwd = scope.spawn(|| bounce(&net.a, setup, ready_tx, &stop));
            ready_rx.recv_timeout(Duration::from_secs(30)).expect("the bounce side did not start");

            let (v4, v6) = net.b.run(|| (echo_count(VIP_V4), echo_count(VIP_V6)));
            // The kernel still owns everything that is not a VIP: ARP and ND resolve (the cache
            // is flushed first) and the box's own addresses answer pings.
            net.b.ip(&["neigh", "flush", "dev", IFACE]);
            for (family, address) in [("-4", A_V4), ("-6", A_V6)] {
                net.b.exec("ping", &[family, "-c", "2", "-i", "0.2", "-W", "2", address]);
            }
            stop.store(true, Ordering::Relaxed);
            (v4, v6, fwd.join().expect("bounce thread"))
        });

        assert_eq!((answered_v4, answered_v6), (DATAGRAMS, DATAGRAMS), "{run:?}");
        assert_eq!(run.bound, Some(BoundMode::Copy), "veth has no zero-copy: auto falls back to copy");
        assert_eq!((run.min_headroom, run.max_headroom), (HEADROOM, HEADROOM), "{run:?}");
        assert!(run.shifted >= u64::from(DATAGRAMS), "{run:?}");
        let s = run.stats;
        assert!(s.rx_frames >= u64::from(2 * DATAGRAMS), "{s:?}");
        assert_eq!(s.tx_frames + s.drop_recycled, s.rx_frames, "{s:?}");
        assert_eq!((s.bad_rx_descs, s.lost_frames, s.tx_ring_full, s.tx_kick_errors), (0, 0, 0, 0), "{s:?}");
        // At this light load the frames sit on the fill ring; the three places never hold more
        // than the UMEM's 256 frames in one sample.
        assert!(s.occupancy_samples >= 1, "{s:?}");
        assert!(
            s.fill_level_sum + s.rx_backlog_sum + s.tx_in_flight_sum <= 256 * s.occupancy_samples,
            "{s:?}"
        );
        assert!(s.fill_level_sum >= 128 * s.occupancy_samples, "{s:?}");
        let c = run.counters;
        assert_eq!(c.redirected, s.rx_frames, "{c:?} {s:?}");
        assert!(c.passed > 0, "ARP, ND and ping went to the kernel: {c:?}");
        assert_eq!(c.vip_without_socket, 0, "{c:?}");

        let link = net.a.link_json(IFACE);
        assert!(
            link.get("xdp").is_none(),
            "no XDP program left after the port and program are dropped: {link}"
        );
        run
    }

    #[test]
    fn a_reordered_batch_is_dropped_not_sent_under_the_wrong_descriptors() {
        const SENT: usize = 4;
        let net = NetnsPair::new();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (sent_tx, sent_rx) = mpsc::channel::<()>();
        let (batch_len, stats) = std::thread::scope(|scope| {
            let net = &net;
            let fwd = scope.spawn(move || {
                net.a.enter();
                let (_program, mut port) = port_steering_vip_v4();
                ready_tx.send(()).unwrap();
                sent_rx.recv_timeout(Duration::from_secs(30)).expect("the sender did not finish");
                let mut batch_len = 0;
                port.poll(MAX_BATCH, &mut |batch, verdicts| {
                    batch_len = batch.len();
                    batch.reverse();
                    verdicts.fill(Verdict::Tx);
                });
                (batch_len, port.stats())
            });
            ready_rx.recv_timeout(Duration::from_secs(30)).expect("the port side did not start");
            // Resolve ARP first, so that every datagram is on the RX ring when `send` returns.
            net.b.exec("ping", &["-c", "1", "-W", "2", A_V4]);
            net.b.run(|| {
                let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                for i in 0..SENT {
                    socket.send_to(&[i as u8; 16], (VIP_V4, ECHO_PORT)).unwrap();
                }
            });
            std::thread::sleep(Duration::from_millis(100));
            sent_tx.send(()).unwrap();
            fwd.join().expect("port thread")
        });
        assert_eq!(batch_len, SENT, "all datagrams in one batch: {stats:?}");
        // Reversing an even number of frames moves every one of them.
        assert_eq!(
            (stats.batch_altered, stats.tx_frames, stats.drop_recycled),
            (SENT as u64, 0, SENT as u64)
        );
    }

    /// A port that generates and sinks on the same socket: frames it writes with `transmit`
    /// arrive on the other side; frames sent to it from there (to any address: capture all)
    /// come back through `receive_each`, and every generated frame returns to the free list.
    #[test]
    fn transmit_and_receive_each_share_one_port() {
        const FRAMES: usize = 300;
        // Sent to the port while it is not polling: fewer than its 192 receive frames.
        const INCOMING: usize = 150;
        let marker = |number: u16| {
            let mut frame = Vec::new();
            etherparse::PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x0a], [0x02, 0, 0, 0, 0, 0x0b])
                .ipv4([198, 18, 0, 2], [198, 18, 7, 7], 64)
                .udp(7000, 7001)
                .write(&mut frame, &number.to_be_bytes())
                .unwrap();
            frame
        };
        let net = NetnsPair::new();
        let mut listener = net.b.run(|| {
            crate::PacketSocket::open(IFACE, &crate::PacketConfig { receive: true, ..Default::default() })
                .unwrap()
        });
        let (sent, received, port_stats) = net.a.run(|| {
            let mut program = XdpProgram::load().unwrap();
            program.attach(IFACE, AttachMode::Auto).unwrap();
            program.set_capture(crate::Capture::AllToSockets).unwrap();
            let config = PortConfig { frame_count: 256, tx_frames: 64, ..PortConfig::default() };
            let mut port = Port::open(IFACE, 0, &config).unwrap();
            assert_eq!((port.tx_frames(), port.tx_free_frames()), (64, 64));
            program.register_port(&port).unwrap();
            let mut sent = 0usize;
            let deadline = Instant::now() + Duration::from_secs(10);
            while sent < FRAMES && Instant::now() < deadline {
                sent += port.transmit(FRAMES - sent, |i, chunk| {
                    let frame = marker((sent + i) as u16);
                    chunk[..frame.len()].copy_from_slice(&frame);
                    frame.len()
                });
            }
            let mut received = Vec::new();
            net.b.run(|| {
                let mut sender = crate::PacketSocket::open(IFACE, &crate::PacketConfig::default()).unwrap();
                for number in 0..INCOMING as u16 {
                    let frame = marker(1000 + number);
                    while sender.transmit(1, |_, buffer| {
                        buffer[..frame.len()].copy_from_slice(&frame);
                        frame.len()
                    }) == 0
                    {}
                }
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while (received.len() < INCOMING || port.tx_free_frames() < 64) && Instant::now() < deadline {
                port.receive_each(MAX_BATCH, |frame| {
                    if let Ok(p) = etherparse::SlicedPacket::from_ethernet(frame) {
                        if let Some(etherparse::TransportSlice::Udp(udp)) = p.transport {
                            if udp.destination_port() == 7001 {
                                received.push(u16::from_be_bytes([udp.payload()[0], udp.payload()[1]]));
                            }
                        }
                    }
                });
            }
            assert_eq!(port.tx_free_frames(), 64, "every generated frame completed and came back");
            (sent, received, port.stats())
        });
        assert_eq!(sent, FRAMES);
        assert_eq!(received, (1000..1000 + INCOMING as u16).collect::<Vec<_>>(), "{port_stats:?}");
        assert_eq!((port_stats.lost_frames, port_stats.tx_ring_full, port_stats.tx_kick_errors), (0, 0, 0));
        let mut heard = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while heard.len() < FRAMES && Instant::now() < deadline {
            listener.receive_each(MAX_BATCH, |frame| {
                if frame.len() >= 44 && frame[36..38] == 7001u16.to_be_bytes() {
                    heard.push(u16::from_be_bytes([frame[42], frame[43]]));
                }
            });
        }
        assert_eq!(heard, (0..FRAMES as u16).collect::<Vec<_>>());
    }

    /// The huge pages backing the mapping that contains `addr`, in bytes (its `/proc/self/smaps`
    /// entry's `AnonHugePages`).
    fn huge_page_bytes_at(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().and_then(|r| r.split_once('-')).and_then(|(a, b)| {
                Some((usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?))
            });
            if let Some((start, end)) = range {
                inside = (start..end).contains(&addr);
            } else if inside && line.starts_with("AnonHugePages:") {
                let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
                return kib * 1024;
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn umem_mapping_lies_in_huge_pages() {
        // The default UMEM: 4096 frames of 2 KiB.
        let len = PortConfig::default().umem_bytes() as usize;
        let mapping = Mapping::new(len).unwrap();
        let huge = huge_page_bytes_at(mapping.base.as_ptr() as usize);
        // Whole 2 MiB pages: all of it if the kernel aligned the mapping to 2 MiB, all but one
        // page's worth otherwise.
        assert!(huge >= (len - (2 << 20)) as u64, "{huge} of {len} bytes in huge pages");
    }

    #[test]
    fn held_frames_admit_each_frame_once() {
        let mut held = HeldFrames::new(128);
        assert!(held.claim(0) && held.claim(127) && held.claim(64));
        assert!(!held.claim(127), "a frame already held is refused");
        assert!(!held.claim(128), "out of range is refused");
        held.release(127);
        held.release(4096); // out of range: ignored
        assert!(held.claim(127));
    }

    #[test]
    fn open_explains_what_is_wrong() {
        let too_many = PortConfig { frame_count: 256, tx_frames: 257, ..PortConfig::default() };
        assert!(matches!(too_many.validate(), Err(PortError::TxFrames { tx_frames: 257, frame_count: 256 })));

        testnet::require_root();
        let missing = Port::open("fwdt-nosuch0", 0, &PortConfig::default()).unwrap_err();
        assert!(matches!(&missing, PortError::NoSuchInterface { ifname } if ifname == "fwdt-nosuch0"));

        let bad_size = PortConfig { frame_size: 3000, ..PortConfig::default() };
        assert_eq!(
            Port::open("lo", 0, &bad_size).unwrap_err().to_string(),
            "frame_size 3000 is not allowed: use 2048 or 4096"
        );
        let bad_count = PortConfig { frame_count: 1000, ..PortConfig::default() };
        assert!(matches!(Port::open("lo", 0, &bad_count), Err(PortError::FrameCount { frame_count: 1000 })));

        let net = NetnsPair::new();
        let no_queue = net.a.run(|| Port::open(IFACE, 3, &PortConfig::default()).unwrap_err());
        assert!(matches!(no_queue, PortError::NoSuchQueue { queue: 3, queues: 1, .. }), "{no_queue:?}");
        assert!(no_queue.to_string().contains("`ethtool -L veth0 rx 4 tx 4`"), "{no_queue}");

        let zero_copy = PortConfig { bind_mode: BindMode::ZeroCopy, ..PortConfig::default() };
        let refused = net.a.run(|| Port::open(IFACE, 0, &zero_copy).unwrap_err());
        assert!(matches!(refused, PortError::Bind { mode: BoundMode::ZeroCopy, .. }), "{refused:?}");
    }

    /// Runs twice: as root it starts a copy of this test binary as `nobody` with RLIMIT_MEMLOCK
    /// at 1 MiB (prlimit + setpriv), which then runs this same test as the child.
    #[test]
    fn memlock_error_names_ulimit_when_the_limit_cannot_be_raised() {
        const CHILD: &str = "FWD_AFXDP_MEMLOCK_CHILD";
        const TEST: &str = "port::tests::memlock_error_names_ulimit_when_the_limit_cannot_be_raised";
        if std::env::var_os(CHILD).is_some() {
            let config = PortConfig { frame_count: 4096, frame_size: 4096, ..PortConfig::default() };
            let err = Port::open("lo", 0, &config).unwrap_err();
            println!("child error: {err}");
            assert!(matches!(err, PortError::Memlock { needed: 16777216, soft: 1048576, hard: 1048576, .. }));
            return;
        }
        testnet::require_root();
        // A copy nobody can read and run, wherever the target directory is.
        let dir = std::env::temp_dir().join(format!("fwdt-memlock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("test-binary");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let output = std::process::Command::new("prlimit")
            .args([
                "--memlock=1048576:1048576",
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ])
            .arg(&exe)
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        let output = output.expect("cannot run prlimit/setpriv (util-linux)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("1 passed"), "the child ran the test: {stdout}");
        assert!(
            stdout.contains(
                "cannot lock 16777216 bytes of UMEM for `lo` queue 0: RLIMIT_MEMLOCK is 1048576 bytes \
                 (hard limit 1048576 bytes) and this process may not raise it; run as root, or raise it \
                 with `ulimit -l unlimited`"
            ),
            "{stdout}"
        );
    }

    /// Root without CAP_SYS_RESOURCE (as in many containers) cannot lift RLIMIT_MEMLOCK, but with
    /// CAP_IPC_LOCK the kernel does not charge the UMEM to it: a 16 MiB UMEM under a 1 MiB limit
    /// must open. Runs twice, as the test above: the child has the limit and lacks the capability.
    #[test]
    fn umem_above_the_memlock_limit_opens_with_cap_ipc_lock() {
        const CHILD: &str = "FWD_AFXDP_IPC_LOCK_CHILD";
        const TEST: &str = "port::tests::umem_above_the_memlock_limit_opens_with_cap_ipc_lock";
        let config = PortConfig {
            frame_count: 4096,
            frame_size: 4096,
            bind_mode: BindMode::Copy,
            ..PortConfig::default()
        };
        if std::env::var_os(CHILD).is_some() {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            assert!(!sys::has_effective_capability(&status, 24), "the child must lack CAP_SYS_RESOURCE");
            let net = NetnsPair::new();
            let port = net.a.run(|| Port::open(IFACE, 0, &config));
            assert!(port.is_ok(), "{:?}", port.err());
            println!("child opened a {}-byte UMEM", config.umem_bytes());
            return;
        }
        testnet::require_root();
        let output = std::process::Command::new("prlimit")
            .args([
                "--memlock=1048576:1048576",
                "setpriv",
                "--bounding-set=-sys_resource",
                "--inh-caps=-sys_resource",
            ])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .expect("cannot run prlimit/setpriv (util-linux)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("child opened a 16777216-byte UMEM"), "{stdout}");
    }

    #[test]
    fn second_socket_on_a_queue_is_refused_with_a_hint() {
        let net = NetnsPair::new();
        net.a.run(|| {
            let config = PortConfig { frame_count: 256, bind_mode: BindMode::Copy, ..PortConfig::default() };
            let _first = Port::open(IFACE, 0, &config).unwrap();
            let second = Port::open(IFACE, 0, &config).unwrap_err();
            assert!(second.to_string().contains("another AF_XDP socket is bound"), "{second}");
        });
    }
}
