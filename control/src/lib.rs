//! fwd's control plane: the configuration, the tables it publishes to the workers, health checks,
//! the admin socket, the metrics and (later) the BGP announcer.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod health;
pub mod metrics;
pub mod tables;
