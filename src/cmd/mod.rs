//! The operator commands of the `fwd` binary, one module each.

pub mod admin;
pub mod check_config;
pub mod table;
pub mod which;
