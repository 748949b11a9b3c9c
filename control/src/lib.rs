//! fwd's control plane: the configuration, the health checks, and (in later modules) the tables it
//! publishes to the workers, the admin socket and the BGP announcer.
#![forbid(unsafe_code)]

pub mod config;
pub mod health;
pub mod tables;
