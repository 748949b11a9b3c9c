//! The operator commands of the `fwd` binary, one module each.

pub mod check_config;
