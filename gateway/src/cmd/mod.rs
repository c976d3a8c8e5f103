//! The subcommands that need a config: one module each (`hash-password` lives in `demo`).

pub mod admin;
pub mod check;
pub mod remote;
pub mod serve;
pub mod sync;
