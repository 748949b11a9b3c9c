//! fwd's control plane: the configuration, and (in later modules) health checks, the tables it
//! publishes to the workers, the admin socket and the BGP announcer.
#![forbid(unsafe_code)]

pub mod announce;
pub mod config;
pub mod tables;
