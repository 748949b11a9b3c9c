//! Our XDP program (`bpf/fwd_xdp.c`): loading it, attaching it to an interface, and its maps.
//!
//! The object is compiled by build.rs and embedded in the binary, so the program that runs is
//! always the one this crate was built with. One [`XdpProgram`] serves one interface: its `xsks`
//! map is indexed by the interface's queue number, and every queue's [`Port`](crate::Port)
//! registers its socket there ([`XdpProgram::register_port`]). The `vips` map decides what is
//! redirected at all; [`XdpProgram::sync_vips`] keeps it equal to the snapshot's VIP list.
//!
//! Attaching first removes whatever XDP program the interface already has (a leftover from a
//! crashed run would otherwise keep redirecting traffic to sockets that no longer exist), and says
//! so on stderr. Dropping the program detaches it, but only if it is still ours.
//!
//! Interface names and indices are resolved in the network namespace of the calling thread; drop
//! the program on a thread of the same namespace as the one that attached it.

use crate::sys;
use fwd_dataplane::flow::{ip_from_16, ip_to_16};
use libbpf_sys as bpf;
use std::collections::HashSet;
use std::ffi::{c_int, c_void, CStr};
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

/// Most VIP addresses the `vips` map holds (`MAX_VIPS` in bpf/fwd_xdp.c).
pub const MAX_VIPS: usize = 4096;
/// Queue numbers the `xsks` map covers: `0..MAX_QUEUES` (`MAX_QUEUES` in bpf/fwd_xdp.c).
pub const MAX_QUEUES: u32 = 1024;

/// `SETTING_CAPTURE_ALL_IP` and `SETTING_COUNT_AND_DROP` in bpf/fwd_xdp.c: bits of `settings[0]`.
const SETTING_CAPTURE_ALL_IP: u32 = 1;
const SETTING_COUNT_AND_DROP: u32 = 2;

/// Counter slots of the per-CPU `counters` map, in bpf/fwd_xdp.c's `enum counter` order.
const COUNTER_SLOTS: u32 = 4;

#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

/// The compiled program; 8-byte aligned because libelf reads ELF structures in place.
static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/fwd_xdp.o")));

/// How to attach the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native if the driver supports XDP, otherwise generic.
    Auto,
    /// In the driver, before an skb exists: fast, needs driver support.
    Native,
    /// After the skb is built (any interface): slower, but always available.
    Generic,
}

/// How the program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
}

impl AttachedMode {
    fn flag(self) -> u32 {
        match self {
            AttachedMode::Native => bpf::XDP_FLAGS_DRV_MODE,
            AttachedMode::Generic => bpf::XDP_FLAGS_SKB_MODE,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        }
    }
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An XDP program found on the interface at attach time and removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovedProgram {
    pub id: u32,
    /// The program's name as the kernel knows it (empty if it could not be read).
    pub name: String,
    /// "native", "generic" or "offloaded".
    pub mode: &'static str,
}

/// What [`XdpProgram::attach`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachReport {
    pub mode: AttachedMode,
    pub removed: Vec<RemovedProgram>,
}

/// The program's own counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpCounters {
    /// VIP frames handed to the queue's AF_XDP socket.
    pub redirected: u64,
    /// Frames not addressed to a VIP, left to the kernel.
    pub passed: u64,
    /// VIP frames that arrived on a queue without a socket and went to the kernel instead.
    pub vip_without_socket: u64,
    /// Frames captured with [`Capture::CountAndDrop`]: counted, then dropped.
    pub counted_and_dropped: u64,
}

/// What the program does with IP frames whatever their destination: the receive side of a
/// traffic sink, which must see traffic to addresses it does not know in advance (the outer
/// destinations of tunnelled frames). ARP and ND reach the kernel in every mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    /// Only frames to the addresses in the `vips` map go to the queue's socket (fwd).
    VipsOnly,
    /// Every IPv4 and IPv6 frame goes to the queue's socket; the `vips` map is ignored.
    AllToSockets,
    /// Every IPv4 and IPv6 frame is counted (`counted_and_dropped`) and dropped: a sink that
    /// needs only how many frames arrived, at the cost of an XDP run each.
    AllCountAndDrop,
}

/// What [`XdpProgram::sync_vips`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSync {
    pub added: usize,
    pub removed: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("cannot open the embedded XDP object (built from bpf/fwd_xdp.c): {0}")]
    Open(#[source] io::Error),
    #[error(
        "the kernel refused to load the XDP program: {0} (loading BPF needs root or CAP_BPF + \
         CAP_NET_ADMIN; a verifier rejection is explained in libbpf's log above)"
    )]
    Load(#[source] io::Error),
    #[error("the XDP object has no {kind} named `{name}`: bpf/fwd_xdp.c and src/program.rs disagree")]
    Missing { kind: &'static str, name: &'static str },
    #[error("interface `{ifname}` does not exist (in this network namespace)")]
    NoSuchInterface { ifname: String },
    #[error("the XDP program is already attached to `{ifname}`; one XdpProgram serves one interface")]
    AlreadyAttached { ifname: String },
    #[error("cannot query the XDP programs attached to `{ifname}`: {source}")]
    Query { ifname: String, source: io::Error },
    #[error("cannot remove XDP program {id} (`{name}`, {mode} mode) from `{ifname}`: {source}")]
    RemoveExisting { ifname: String, id: u32, name: String, mode: &'static str, source: io::Error },
    #[error("cannot attach the XDP program to `{ifname}` in {mode} mode: {source}")]
    Attach { ifname: String, mode: &'static str, source: io::Error },
    #[error("cannot detach the XDP program from `{ifname}`: {source}")]
    Detach { ifname: String, source: io::Error },
    #[error("{count} VIP addresses given; the XDP `vips` map holds at most {MAX_VIPS}")]
    TooManyVips { count: usize },
    #[error("queue {queue} is beyond the XDP socket map, which covers queues 0..{MAX_QUEUES}")]
    QueueOutOfRange { queue: u32 },
    #[error("cannot {action} the XDP map `{map}`: {source}")]
    Map { map: &'static str, action: &'static str, source: io::Error },
}

#[derive(Debug)]
struct Attachment {
    ifname: String,
    ifindex: u32,
    mode: AttachedMode,
}

/// Our XDP program, loaded into the kernel, attached to at most one interface.
#[derive(Debug)]
pub struct XdpProgram {
    object: NonNull<bpf::bpf_object>,
    prog_fd: c_int,
    vips_fd: c_int,
    xsks_fd: c_int,
    counters_fd: c_int,
    settings_fd: c_int,
    attachment: Option<Attachment>,
}

// SAFETY: after `load` the bpf_object is touched again only by `Drop` (bpf_object__close); every
// other method only issues bpf(2)/netlink calls on the file descriptors it owns, which the kernel
// serialises. Nothing in libbpf's object is thread-affine.
unsafe impl Send for XdpProgram {}
// SAFETY: `&self` methods only issue map syscalls on owned descriptors (see `Send` above); the
// kernel makes concurrent map updates safe. Attaching and detaching take `&mut self`.
unsafe impl Sync for XdpProgram {}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

impl XdpProgram {
    /// Loads the embedded program and its maps into the kernel, without attaching it.
    pub fn load() -> Result<Self, ProgramError> {
        let opts = bpf::bpf_object_open_opts {
            sz: std::mem::size_of::<bpf::bpf_object_open_opts>() as _,
            object_name: c"fwd_xdp".as_ptr(),
            ..Default::default()
        };
        // SAFETY: OBJECT is a static, so the buffer outlives the bpf_object that keeps pointing
        // into it; `opts` is valid for the call.
        let object =
            unsafe { bpf::bpf_object__open_mem(OBJECT.0.as_ptr().cast(), OBJECT.0.len() as _, &opts) };
        let object = NonNull::new(object).ok_or_else(|| ProgramError::Open(last_error()))?;
        // From here on, dropping `program` closes the object whatever fails next.
        let mut program = XdpProgram {
            object,
            prog_fd: -1,
            vips_fd: -1,
            xsks_fd: -1,
            counters_fd: -1,
            settings_fd: -1,
            attachment: None,
        };
        // SAFETY: `object` was just opened and is exclusively ours.
        let rc = unsafe { bpf::bpf_object__load(program.object.as_ptr()) };
        if rc != 0 {
            return Err(ProgramError::Load(sys::neg_errno(rc)));
        }
        program.prog_fd = program.program_fd(c"fwd_xdp", "fwd_xdp")?;
        program.vips_fd = program.map_fd(c"vips", "vips")?;
        program.xsks_fd = program.map_fd(c"xsks", "xsks")?;
        program.counters_fd = program.map_fd(c"counters", "counters")?;
        program.settings_fd = program.map_fd(c"settings", "settings")?;
        Ok(program)
    }

    fn program_fd(&self, c_name: &CStr, name: &'static str) -> Result<c_int, ProgramError> {
        // SAFETY: the object is loaded and alive; `c_name` is NUL-terminated.
        let prog = unsafe { bpf::bpf_object__find_program_by_name(self.object.as_ptr(), c_name.as_ptr()) };
        if prog.is_null() {
            return Err(ProgramError::Missing { kind: "program", name });
        }
        // SAFETY: `prog` belongs to the live object.
        let fd = unsafe { bpf::bpf_program__fd(prog) };
        (fd >= 0).then_some(fd).ok_or(ProgramError::Missing { kind: "program", name })
    }

    fn map_fd(&self, c_name: &CStr, name: &'static str) -> Result<c_int, ProgramError> {
        // SAFETY: the object is loaded and alive; `c_name` is NUL-terminated.
        let map = unsafe { bpf::bpf_object__find_map_by_name(self.object.as_ptr(), c_name.as_ptr()) };
        if map.is_null() {
            return Err(ProgramError::Missing { kind: "map", name });
        }
        // SAFETY: `map` belongs to the live object.
        let fd = unsafe { bpf::bpf_map__fd(map) };
        (fd >= 0).then_some(fd).ok_or(ProgramError::Missing { kind: "map", name })
    }

    /// Attaches the program to `ifname`, first removing any XDP program already there (and
    /// reporting it on stderr and in the result). `Auto` tries native mode, then generic.
    pub fn attach(&mut self, ifname: &str, mode: AttachMode) -> Result<AttachReport, ProgramError> {
        if let Some(a) = &self.attachment {
            return Err(ProgramError::AlreadyAttached { ifname: a.ifname.clone() });
        }
        let ifindex = sys::interface_index(ifname)
            .ok_or_else(|| ProgramError::NoSuchInterface { ifname: ifname.to_string() })?;
        let removed = remove_existing(ifname, ifindex)?;
        for r in &removed {
            eprintln!(
                "fwd-afxdp: removed XDP program {} (`{}`, {} mode) already attached to {ifname}",
                r.id, r.name, r.mode
            );
        }
        let attached = match mode {
            AttachMode::Native => self.attach_in(ifname, ifindex, AttachedMode::Native)?,
            AttachMode::Generic => self.attach_in(ifname, ifindex, AttachedMode::Generic)?,
            AttachMode::Auto => match self.attach_in(ifname, ifindex, AttachedMode::Native) {
                Ok(m) => m,
                Err(native) => {
                    eprintln!("fwd-afxdp: {native}; trying generic mode");
                    self.attach_in(ifname, ifindex, AttachedMode::Generic)?
                }
            },
        };
        eprintln!("fwd-afxdp: XDP program attached to {ifname} (ifindex {ifindex}) in {attached} mode");
        self.attachment = Some(Attachment { ifname: ifname.to_string(), ifindex, mode: attached });
        Ok(AttachReport { mode: attached, removed })
    }

    fn attach_in(
        &self,
        ifname: &str,
        ifindex: u32,
        mode: AttachedMode,
    ) -> Result<AttachedMode, ProgramError> {
        // UPDATE_IF_NOEXIST: if another loader attached a program since we cleared the interface,
        // fail rather than silently replace it.
        let flags = mode.flag() | bpf::XDP_FLAGS_UPDATE_IF_NOEXIST;
        // SAFETY: plain netlink request; no pointers passed (opts may be NULL).
        let rc = unsafe { bpf::bpf_xdp_attach(ifindex as c_int, self.prog_fd, flags, std::ptr::null()) };
        if rc != 0 {
            return Err(ProgramError::Attach {
                ifname: ifname.to_string(),
                mode: mode.name(),
                source: sys::neg_errno(rc),
            });
        }
        Ok(mode)
    }

    /// The interface and mode the program is attached to, if it is.
    pub fn attached(&self) -> Option<(&str, AttachedMode)> {
        self.attachment.as_ref().map(|a| (a.ifname.as_str(), a.mode))
    }

    /// Detaches the program, if attached and still ours (another program that replaced it is left
    /// alone). An interface that has gone away counts as detached.
    pub fn detach(&mut self) -> Result<(), ProgramError> {
        let Some(a) = self.attachment.take() else { return Ok(()) };
        let opts = bpf::bpf_xdp_attach_opts {
            sz: std::mem::size_of::<bpf::bpf_xdp_attach_opts>() as _,
            old_prog_fd: self.prog_fd,
            ..Default::default()
        };
        // SAFETY: `opts` is valid for the call. old_prog_fd makes the kernel detach only if the
        // attached program is ours (XDP_FLAGS_REPLACE semantics).
        let rc = unsafe { bpf::bpf_xdp_detach(a.ifindex as c_int, a.mode.flag(), &opts) };
        match rc {
            0 => Ok(()),
            rc if rc == -libc::ENODEV => Ok(()),
            rc => Err(ProgramError::Detach { ifname: a.ifname, source: sys::neg_errno(rc) }),
        }
    }

    /// Makes the `vips` map hold exactly `vips`: adds the missing addresses, deletes the others.
    /// Frames in flight during the update may reach the pipeline for an address it no longer
    /// serves (it drops or passes them) or reach the kernel for one it now serves.
    pub fn sync_vips(&self, vips: &[IpAddr]) -> Result<VipSync, ProgramError> {
        let wanted: HashSet<[u8; 16]> = vips.iter().map(|&ip| ip_to_16(ip)).collect();
        if wanted.len() > MAX_VIPS {
            return Err(ProgramError::TooManyVips { count: wanted.len() });
        }
        let present: HashSet<[u8; 16]> = self.vip_keys()?.into_iter().collect();
        let mut sync = VipSync::default();
        // Delete first so that the map never needs room for both the old and the new set.
        for key in present.difference(&wanted) {
            // SAFETY: `key` is a 16-byte key, the map's key size; it lives across the call.
            let rc = unsafe { bpf::bpf_map_delete_elem(self.vips_fd, key.as_ptr().cast()) };
            if rc != 0 && rc != -libc::ENOENT {
                return Err(ProgramError::Map {
                    map: "vips",
                    action: "delete from",
                    source: sys::neg_errno(rc),
                });
            }
            sync.removed += 1;
        }
        let flags: u32 = 0;
        for key in wanted.difference(&present) {
            // SAFETY: key (16 bytes) and value (u32) match the map's declared sizes and live
            // across the call.
            let rc = unsafe {
                bpf::bpf_map_update_elem(
                    self.vips_fd,
                    key.as_ptr().cast(),
                    (&flags as *const u32).cast(),
                    bpf::BPF_ANY as u64,
                )
            };
            if rc != 0 {
                return Err(ProgramError::Map { map: "vips", action: "update", source: sys::neg_errno(rc) });
            }
            sync.added += 1;
        }
        Ok(sync)
    }

    /// Sets what the program does with IP frames to other addresses than the VIPs (see
    /// [`Capture`]).
    pub fn set_capture(&self, capture: Capture) -> Result<(), ProgramError> {
        let key: u32 = 0;
        let flags: u32 = match capture {
            Capture::VipsOnly => 0,
            Capture::AllToSockets => SETTING_CAPTURE_ALL_IP,
            Capture::AllCountAndDrop => SETTING_CAPTURE_ALL_IP | SETTING_COUNT_AND_DROP,
        };
        // SAFETY: key and value are u32s, the array map's sizes, and live across the call.
        let rc = unsafe {
            bpf::bpf_map_update_elem(
                self.settings_fd,
                (&key as *const u32).cast(),
                (&flags as *const u32).cast(),
                bpf::BPF_ANY as u64,
            )
        };
        if rc != 0 {
            return Err(ProgramError::Map { map: "settings", action: "update", source: sys::neg_errno(rc) });
        }
        Ok(())
    }

    /// The addresses in the `vips` map, in map order.
    pub fn vips(&self) -> Result<Vec<IpAddr>, ProgramError> {
        Ok(self.vip_keys()?.into_iter().map(ip_from_16).collect())
    }

    fn vip_keys(&self) -> Result<Vec<[u8; 16]>, ProgramError> {
        let mut keys = Vec::new();
        let mut next = [0u8; 16];
        let mut previous: Option<[u8; 16]> = None;
        loop {
            let prev_ptr: *const c_void = match &previous {
                Some(k) => k.as_ptr().cast(),
                None => std::ptr::null(),
            };
            // SAFETY: both keys are 16 bytes (the map's key size) and live across the call; a
            // NULL previous key asks for the first key.
            let rc = unsafe { bpf::bpf_map_get_next_key(self.vips_fd, prev_ptr, next.as_mut_ptr().cast()) };
            if rc == -libc::ENOENT {
                return Ok(keys);
            }
            if rc != 0 {
                return Err(ProgramError::Map { map: "vips", action: "read", source: sys::neg_errno(rc) });
            }
            if keys.len() > MAX_VIPS {
                // Only possible if the map changed under us in a loop; read what we have.
                return Ok(keys);
            }
            keys.push(next);
            previous = Some(next);
        }
    }

    /// Puts the AF_XDP socket `fd` in the `xsks` map at `queue`: VIP frames received on that
    /// queue go to it from now on.
    pub fn insert_socket(&self, queue: u32, fd: BorrowedFd<'_>) -> Result<(), ProgramError> {
        if queue >= MAX_QUEUES {
            return Err(ProgramError::QueueOutOfRange { queue });
        }
        let raw: c_int = fd.as_raw_fd();
        // SAFETY: key (u32) and value (socket fd as u32) match the XSKMAP's sizes and live across
        // the call; the kernel takes its own reference to the socket.
        let rc = unsafe {
            bpf::bpf_map_update_elem(
                self.xsks_fd,
                (&queue as *const u32).cast(),
                (&raw as *const c_int).cast(),
                bpf::BPF_ANY as u64,
            )
        };
        if rc != 0 {
            return Err(ProgramError::Map {
                map: "xsks",
                action: "insert a socket into",
                source: sys::neg_errno(rc),
            });
        }
        Ok(())
    }

    /// Registers `port`'s socket for its queue (see [`insert_socket`](Self::insert_socket)).
    pub fn register_port(&self, port: &crate::Port) -> Result<(), ProgramError> {
        self.insert_socket(port.queue(), port.fd())
    }

    /// Removes the socket of `queue` from the `xsks` map (VIP frames on it go to the kernel).
    pub fn remove_socket(&self, queue: u32) -> Result<(), ProgramError> {
        if queue >= MAX_QUEUES {
            return Err(ProgramError::QueueOutOfRange { queue });
        }
        // SAFETY: the key is a u32, the map's key size, and lives across the call.
        let rc = unsafe { bpf::bpf_map_delete_elem(self.xsks_fd, (&queue as *const u32).cast()) };
        if rc != 0 && rc != -libc::ENOENT {
            return Err(ProgramError::Map { map: "xsks", action: "delete from", source: sys::neg_errno(rc) });
        }
        Ok(())
    }

    /// The program's counters, summed over all CPUs.
    pub fn counters(&self) -> Result<XdpCounters, ProgramError> {
        // SAFETY: no arguments; reads sysfs.
        let cpus = unsafe { bpf::libbpf_num_possible_cpus() };
        let cpus = usize::try_from(cpus).map_err(|_| ProgramError::Map {
            map: "counters",
            action: "size the per-CPU read of",
            source: sys::neg_errno(cpus),
        })?;
        let mut sums = [0u64; COUNTER_SLOTS as usize];
        let mut per_cpu = vec![0u64; cpus];
        for (slot, sum) in (0..COUNTER_SLOTS).zip(sums.iter_mut()) {
            // SAFETY: a per-CPU array lookup writes one 8-byte value per possible CPU: `per_cpu`
            // has exactly that many u64s. The key is a u32.
            let rc = unsafe {
                bpf::bpf_map_lookup_elem(
                    self.counters_fd,
                    (&slot as *const u32).cast(),
                    per_cpu.as_mut_ptr().cast(),
                )
            };
            if rc != 0 {
                return Err(ProgramError::Map {
                    map: "counters",
                    action: "read",
                    source: sys::neg_errno(rc),
                });
            }
            *sum = per_cpu.iter().sum();
        }
        Ok(XdpCounters {
            redirected: sums[0],
            passed: sums[1],
            vip_without_socket: sums[2],
            counted_and_dropped: sums[3],
        })
    }

    /// Runs the program once over `frame` in the kernel (BPF_PROG_TEST_RUN) and returns its
    /// action (XDP_DROP = 1, XDP_PASS = 2, XDP_REDIRECT = 4). The frame is not sent anywhere.
    #[cfg(test)]
    pub(crate) fn test_run(&self, frame: &[u8]) -> Result<u32, io::Error> {
        let mut opts = bpf::bpf_test_run_opts {
            sz: std::mem::size_of::<bpf::bpf_test_run_opts>() as _,
            data_in: frame.as_ptr().cast(),
            data_size_in: frame.len() as u32,
            repeat: 1,
            ..Default::default()
        };
        // SAFETY: `opts` points at `frame`, which outlives the call; no output buffers are given.
        let rc = unsafe { bpf::bpf_prog_test_run_opts(self.prog_fd, &mut opts) };
        if rc != 0 {
            return Err(sys::neg_errno(rc));
        }
        Ok(opts.retval)
    }

    /// Forgets the attachment without detaching: simulates a crashed run for the tests.
    #[cfg(test)]
    pub(crate) fn forget_attachment(&mut self) {
        self.attachment = None;
    }
}

impl Drop for XdpProgram {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            eprintln!("fwd-afxdp: {e}");
        }
        // SAFETY: the object is ours and closed exactly once; this also closes the program and
        // map descriptors, which nothing uses after this point.
        unsafe { bpf::bpf_object__close(self.object.as_ptr()) };
    }
}

/// Detaches every XDP program attached to the interface, whatever mode it is in.
fn remove_existing(ifname: &str, ifindex: u32) -> Result<Vec<RemovedProgram>, ProgramError> {
    let mut query = bpf::bpf_xdp_query_opts {
        sz: std::mem::size_of::<bpf::bpf_xdp_query_opts>() as _,
        ..Default::default()
    };
    // SAFETY: `query` is valid for the call and sized by its `sz` field.
    let rc = unsafe { bpf::bpf_xdp_query(ifindex as c_int, 0, &mut query) };
    if rc != 0 {
        return Err(ProgramError::Query { ifname: ifname.to_string(), source: sys::neg_errno(rc) });
    }
    let mut removed = Vec::new();
    for (id, flag, mode) in [
        (query.drv_prog_id, bpf::XDP_FLAGS_DRV_MODE, "native"),
        (query.skb_prog_id, bpf::XDP_FLAGS_SKB_MODE, "generic"),
        (query.hw_prog_id, bpf::XDP_FLAGS_HW_MODE, "offloaded"),
    ] {
        if id == 0 {
            continue;
        }
        let name = program_name(id);
        // SAFETY: plain netlink request; opts may be NULL.
        let rc = unsafe { bpf::bpf_xdp_detach(ifindex as c_int, flag, std::ptr::null()) };
        if rc != 0 {
            return Err(ProgramError::RemoveExisting {
                ifname: ifname.to_string(),
                id,
                name,
                mode,
                source: sys::neg_errno(rc),
            });
        }
        removed.push(RemovedProgram { id, name, mode });
    }
    Ok(removed)
}

/// The kernel's name for program `id`, empty if it cannot be read.
fn program_name(id: u32) -> String {
    // SAFETY: plain bpf(2) call; the result is checked.
    let fd = unsafe { bpf::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return String::new();
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns; OwnedFd closes it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: bpf_prog_info is plain old data; all-zero is a valid value.
    let mut info: bpf::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<bpf::bpf_prog_info>() as u32;
    // SAFETY: `info` has `len` bytes and lives across the call.
    let rc = unsafe { bpf::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = info.name.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testnet::{self, NetnsPair, IFACE};
    use etherparse::{ArpHardwareId, ArpOperation, ArpPacket, EtherType, Icmpv6Type, PacketBuilder};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const XDP_DROP: u32 = 1;
    const XDP_PASS: u32 = 2;
    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const VIP4: [u8; 4] = [198, 18, 100, 1];
    const OTHER4: [u8; 4] = [198, 18, 0, 1];
    const CLIENT4: [u8; 4] = [198, 18, 0, 2];
    const VIP6: [u8; 16] = [0xfd, 0, 0, 0x18, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const OTHER6: [u8; 16] = [0xfd, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    fn vips() -> Vec<IpAddr> {
        vec![IpAddr::V4(Ipv4Addr::from(VIP4)), IpAddr::V6(Ipv6Addr::from(VIP6))]
    }

    fn udp4(dst: [u8; 4]) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2(MAC_B, MAC_A).ipv4(CLIENT4, dst, 64).udp(40000, 53);
        let mut frame = Vec::new();
        builder.write(&mut frame, b"query").unwrap();
        frame
    }

    fn udp6(dst: [u8; 16]) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2(MAC_B, MAC_A).ipv6(CLIENT6, dst, 64).udp(40000, 53);
        let mut frame = Vec::new();
        builder.write(&mut frame, b"query").unwrap();
        frame
    }

    /// Inserts an 802.1Q tag right after the MAC addresses.
    fn tagged(frame: &[u8], vlan: u16) -> Vec<u8> {
        let mut out = frame[..12].to_vec();
        out.extend_from_slice(&0x8100u16.to_be_bytes());
        out.extend_from_slice(&vlan.to_be_bytes());
        out.extend_from_slice(&frame[12..]);
        out
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Steered {
        /// Looked up as a VIP (with no socket registered: counted as `vip_without_socket`).
        ToSocket,
        ToKernel,
    }

    fn cases() -> Vec<(&'static str, Vec<u8>, Steered)> {
        let mut tcp4 = Vec::new();
        PacketBuilder::ethernet2(MAC_B, MAC_A)
            .ipv4(CLIENT4, VIP4, 64)
            .tcp(40000, 443, 1, 65535)
            .syn()
            .write(&mut tcp4, &[])
            .unwrap();
        let mut vlan4 = Vec::new();
        PacketBuilder::ethernet2(MAC_B, MAC_A)
            .single_vlan(100.try_into().unwrap())
            .ipv4(CLIENT4, VIP4, 64)
            .udp(40000, 53)
            .write(&mut vlan4, b"query")
            .unwrap();
        let mut qinq6 = Vec::new();
        PacketBuilder::ethernet2(MAC_B, MAC_A)
            .double_vlan(100.try_into().unwrap(), 200.try_into().unwrap())
            .ipv6(CLIENT6, VIP6, 64)
            .udp(40000, 53)
            .write(&mut qinq6, b"query")
            .unwrap();
        let mut qinq4_other = Vec::new();
        PacketBuilder::ethernet2(MAC_B, MAC_A)
            .double_vlan(100.try_into().unwrap(), 200.try_into().unwrap())
            .ipv4(CLIENT4, OTHER4, 64)
            .udp(40000, 53)
            .write(&mut qinq4_other, b"query")
            .unwrap();
        let triple_tagged = tagged(&qinq6, 300);
        let mut arp = Vec::new();
        PacketBuilder::ethernet2(MAC_B, [0xff; 6])
            .arp(
                ArpPacket::new(
                    ArpHardwareId::ETHERNET,
                    EtherType::IPV4,
                    ArpOperation::REQUEST,
                    &MAC_B,
                    &CLIENT4,
                    &[0; 6],
                    &VIP4,
                )
                .unwrap(),
            )
            .write(&mut arp)
            .unwrap();
        let mut neighbor_solicitation = Vec::new();
        PacketBuilder::ethernet2(MAC_B, MAC_A)
            .ipv6(CLIENT6, VIP6, 255)
            .icmpv6(Icmpv6Type::Unknown { type_u8: 135, code_u8: 0, bytes5to8: [0; 4] })
            .write(&mut neighbor_solicitation, &VIP6)
            .unwrap();
        let mut echo6 = Vec::new();
        PacketBuilder::ethernet2(MAC_B, MAC_A)
            .ipv6(CLIENT6, VIP6, 64)
            .icmpv6_echo_request(1, 1)
            .write(&mut echo6, b"ping")
            .unwrap();
        let mut from_vip = Vec::new();
        PacketBuilder::ethernet2(MAC_B, MAC_A)
            .ipv4(VIP4, CLIENT4, 64)
            .udp(53, 40000)
            .write(&mut from_vip, b"reply")
            .unwrap();
        let v4 = udp4(VIP4);
        let ipv4_header_cut = v4[..14 + 19].to_vec();
        let v6 = udp6(VIP6);
        let ipv6_header_cut = v6[..14 + 39].to_vec();
        let mut vlan_header_cut = tagged(&v4, 100)[..16].to_vec();
        vlan_header_cut.resize(16, 0);

        vec![
            ("IPv4 UDP to a VIP", udp4(VIP4), Steered::ToSocket),
            ("IPv4 TCP SYN to a VIP", tcp4, Steered::ToSocket),
            ("IPv6 UDP to a VIP", udp6(VIP6), Steered::ToSocket),
            ("IPv6 echo request to a VIP (fwd answers it)", echo6, Steered::ToSocket),
            ("802.1Q IPv4 to a VIP", vlan4, Steered::ToSocket),
            ("QinQ IPv6 to a VIP", qinq6, Steered::ToSocket),
            ("IPv4 UDP to the box's own address", udp4(OTHER4), Steered::ToKernel),
            ("IPv6 UDP to the box's own address", udp6(OTHER6), Steered::ToKernel),
            ("QinQ IPv4 to the box's own address", qinq4_other, Steered::ToKernel),
            ("three VLAN tags: more than fwd parses", triple_tagged, Steered::ToKernel),
            ("ARP request for the VIP", arp, Steered::ToKernel),
            ("neighbour solicitation addressed to the VIP", neighbor_solicitation, Steered::ToKernel),
            ("IPv4 from a VIP, to a client", from_vip, Steered::ToKernel),
            ("IPv4 header cut short", ipv4_header_cut, Steered::ToKernel),
            ("IPv6 header cut short", ipv6_header_cut, Steered::ToKernel),
            ("VLAN tag cut short", vlan_header_cut, Steered::ToKernel),
            ("bare Ethernet header", v4[..14].to_vec(), Steered::ToKernel),
        ]
    }

    #[test]
    fn steers_exactly_the_vip_destinations() {
        testnet::require_root();
        let program = XdpProgram::load().unwrap();
        program.sync_vips(&vips()).unwrap();
        for (description, frame, expected) in cases() {
            let before = program.counters().unwrap();
            let action = program.test_run(&frame).unwrap();
            let after = program.counters().unwrap();
            // No socket is registered, so bpf_redirect_map falls back to XDP_PASS even for VIPs;
            // the counters tell the two paths apart.
            assert_eq!(action, XDP_PASS, "{description}");
            let steered = match (
                after.vip_without_socket - before.vip_without_socket,
                after.passed - before.passed,
                after.redirected - before.redirected,
            ) {
                (1, 0, 0) => Steered::ToSocket,
                (0, 1, 0) => Steered::ToKernel,
                deltas => panic!("{description}: counter deltas {deltas:?}"),
            };
            assert_eq!(steered, expected, "{description}");
        }
    }

    /// Whether the case of [`cases`] named `description` is an IP frame the program parses, which
    /// a capture takes whatever its destination (ARP, ND and frames it cannot parse stay with
    /// the kernel).
    fn is_captured_ip_frame(description: &str) -> bool {
        !matches!(
            description,
            "ARP request for the VIP"
                | "neighbour solicitation addressed to the VIP"
                | "three VLAN tags: more than fwd parses"
                | "IPv4 header cut short"
                | "IPv6 header cut short"
                | "VLAN tag cut short"
                | "bare Ethernet header"
        )
    }

    #[test]
    fn capture_all_steers_every_ip_frame_but_leaves_arp_and_nd_to_the_kernel() {
        testnet::require_root();
        let program = XdpProgram::load().unwrap();
        program.set_capture(Capture::AllToSockets).unwrap();
        let steered = |frame: &[u8]| {
            let before = program.counters().unwrap();
            program.test_run(frame).unwrap();
            let after = program.counters().unwrap();
            after.vip_without_socket - before.vip_without_socket == 1
        };
        for (description, frame, expected) in cases() {
            let is_ip = is_captured_ip_frame(description);
            assert_eq!(steered(&frame), is_ip, "capture all: {description} (normally {expected:?})");
        }
        program.set_capture(Capture::VipsOnly).unwrap();
        assert!(!steered(&udp4(OTHER4)), "back to VIPs only: no VIP is configured");
    }

    #[test]
    fn count_and_drop_counts_every_ip_frame_drops_it_and_leaves_arp_and_nd_to_the_kernel() {
        testnet::require_root();
        let program = XdpProgram::load().unwrap();
        program.set_capture(Capture::AllCountAndDrop).unwrap();
        // (action, counted and dropped, sent on to the socket path) for one frame.
        let run = |frame: &[u8]| {
            let before = program.counters().unwrap();
            let action = program.test_run(frame).unwrap();
            let after = program.counters().unwrap();
            let socket_path = (after.redirected + after.vip_without_socket)
                - (before.redirected + before.vip_without_socket);
            (action, after.counted_and_dropped - before.counted_and_dropped, socket_path)
        };
        for (description, frame, expected) in cases() {
            let is_ip = is_captured_ip_frame(description);
            let want = if is_ip { (XDP_DROP, 1, 0) } else { (XDP_PASS, 0, 0) };
            assert_eq!(run(&frame), want, "count and drop: {description} (normally {expected:?})");
        }
        program.set_capture(Capture::AllToSockets).unwrap();
        assert_eq!(
            run(&udp4(OTHER4)),
            (XDP_PASS, 0, 1),
            "to the sockets again (none registered: passed, counted as without socket)"
        );
    }

    #[test]
    fn sync_vips_adds_the_missing_and_deletes_the_rest() {
        testnet::require_root();
        let program = XdpProgram::load().unwrap();
        let [a, b, c]: [IpAddr; 3] =
            ["198.18.100.1", "fd00:18:100::1", "198.18.100.2"].map(|s| s.parse().unwrap());
        assert_eq!(program.sync_vips(&[a, b]).unwrap(), VipSync { added: 2, removed: 0 });
        assert_eq!(program.sync_vips(&[b, c, c]).unwrap(), VipSync { added: 1, removed: 1 });
        assert_eq!(program.sync_vips(&[c, b]).unwrap(), VipSync::default());
        let mut now = program.vips().unwrap();
        now.sort();
        assert_eq!(now, vec![c, b]);

        let too_many: Vec<IpAddr> =
            (0..=MAX_VIPS as u32).map(|i| IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i))).collect();
        assert!(matches!(
            program.sync_vips(&too_many),
            Err(ProgramError::TooManyVips { count }) if count == MAX_VIPS + 1
        ));
        assert_eq!(program.vips().unwrap().len(), 2, "a refused update changes nothing");
        assert_eq!(program.sync_vips(&[]).unwrap(), VipSync { added: 0, removed: 2 });
        assert!(program.vips().unwrap().is_empty());
    }

    #[test]
    fn attach_replaces_a_leftover_program_and_drop_detaches() {
        let net = NetnsPair::new();
        net.a.run(|| {
            let mut crashed = XdpProgram::load().unwrap();
            let first = crashed.attach(IFACE, AttachMode::Generic).unwrap();
            assert_eq!(first, AttachReport { mode: AttachedMode::Generic, removed: vec![] });
            // As if the process had died: the program stays attached without its owner.
            crashed.forget_attachment();
            drop(crashed);

            let mut program = XdpProgram::load().unwrap();
            let report = program.attach(IFACE, AttachMode::Auto).unwrap();
            assert_eq!(report.mode, AttachedMode::Native, "veth has native XDP");
            assert_eq!(report.removed.len(), 1, "{report:?}");
            assert_eq!((report.removed[0].name.as_str(), report.removed[0].mode), ("fwd_xdp", "generic"));
            assert_eq!(program.attached(), Some((IFACE, AttachedMode::Native)));
            assert!(matches!(
                program.attach(IFACE, AttachMode::Auto),
                Err(ProgramError::AlreadyAttached { .. })
            ));
            let link = net.a.link_json(IFACE);
            assert!(link.get("xdp").is_some(), "attached: {link}");
        });
        let link = net.a.link_json(IFACE);
        assert!(link.get("xdp").is_none(), "dropping the program detaches it: {link}");
    }

    #[test]
    fn attach_names_a_missing_interface() {
        testnet::require_root();
        let mut program = XdpProgram::load().unwrap();
        let err = program.attach("fwdt-nosuch0", AttachMode::Auto).unwrap_err();
        assert!(matches!(&err, ProgramError::NoSuchInterface { ifname } if ifname == "fwdt-nosuch0"));
        assert_eq!(err.to_string(), "interface `fwdt-nosuch0` does not exist (in this network namespace)");
        assert!(program.attached().is_none());
    }
}
