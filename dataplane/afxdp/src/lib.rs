//! fwd's kernel interface: the XDP program that steers VIP traffic to AF_XDP sockets, and the
//! AF_XDP ports the workers poll.
//!
//! - [`XdpProgram`] loads `bpf/fwd_xdp.c` (compiled by build.rs, embedded in the binary), attaches
//!   it to an interface, keeps its `vips` map in sync and registers each queue's socket.
//! - [`Port`] is one AF_XDP socket with its own UMEM, bound to one queue; it implements
//!   [`fwd_dataplane::io::PacketIo`], so the pipeline sees batches of [`fwd_dataplane::frame::Frame`]s.
//!   A port can also set frames aside for traffic it generates ([`Port::transmit`]) and show
//!   received frames read-only ([`Port::receive_each`]): the two halves of a traffic generator.
//! - [`CpuPrefetch`] is the CPU's prefetch instruction for the pipeline's connection-table
//!   lookups (the dataplane crate, which forbids `unsafe`, can only issue ordinary loads).
//! - [`HugePageAlloc`] is a global allocator that backs large blocks (a worker's connection
//!   table) with transparent huge pages.
//! - [`PacketSocket`] is an AF_PACKET socket with the same transmit/receive shape, the fallback
//!   where AF_XDP is unavailable.
//!
//! Typical start-up for one interface:
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use fwd_afxdp::{AttachMode, Port, PortConfig, XdpProgram};
//! let mut program = XdpProgram::load()?;
//! program.attach("eth0", AttachMode::Auto)?;
//! let port = Port::open("eth0", 0, &PortConfig::default())?;
//! program.register_port(&port)?;
//! program.sync_vips(&["198.18.100.1".parse()?])?;
//! // ... a worker thread polls `port` ...
//! # Ok(()) }
//! ```
//!
//! With the `testnet` feature (off by default; fwd-control's and fwd-pktgen's dev-dependencies turn
//! it on) the `testnet` module, the network namespaces of every root-only test, is public too.
//!
//! This is the only crate of the workspace with `unsafe` code: every block says why it is sound.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod hugealloc;
pub mod idle;
pub mod memory;
pub mod packet;
pub mod port;
pub mod prefetch;
pub mod program;
mod sys;
#[cfg(any(test, feature = "testnet"))]
pub mod testnet;

pub use hugealloc::HugePageAlloc;
pub use idle::IdleWait;
pub use memory::advise_huge_pages;
pub use packet::{PacketConfig, PacketError, PacketSocket, PacketStats};
pub use port::{BindMode, BoundMode, KernelStats, Port, PortConfig, PortError, PortStats, Wait};
pub use prefetch::CpuPrefetch;
pub use program::{
    AttachMode, AttachReport, AttachedMode, Capture, ProgramError, RemovedProgram, VipSync, XdpCounters,
    XdpProgram, MAX_QUEUES, MAX_VIPS,
};
