//! fwd's data plane: everything a worker does to a packet, and the tables it reads.
//!
//! The crate is built so that the whole per-packet path runs on frames in memory: tests, fuzzing
//! and benchmarks drive it without a NIC. Control (the `fwd-control` crate) builds the immutable
//! [`snapshot::Snapshot`] that workers read once per batch.
#![forbid(unsafe_code)]

pub mod checksum;
pub mod conntrack;
pub mod counters;
pub mod flow;
pub mod frame;
pub mod hash;
pub mod icmp;
pub mod io;
pub mod maglev;
pub mod parse;
pub mod pipeline;
pub mod prefetch;
pub mod rewrite;
pub mod snapshot;
