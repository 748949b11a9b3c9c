//! fwd's control plane: the configuration, the tables it publishes to the workers, health checks,
//! the BGP announcer, the admin socket and the metrics.
#![forbid(unsafe_code)]

pub mod admin;
pub mod announce;
pub mod config;
pub mod health;
pub mod metrics;
pub mod tables;
