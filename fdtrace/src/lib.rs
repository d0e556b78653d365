//! fdtrace: which code opened the file descriptors that never closed.
//!
//! Follow one descriptor through the stages in this order: `load` (kernel
//! programs), `events` (decoding), `stacks` (unwinding, symbolization),
//! `fd_table` (lifetimes), `report` (grouping, rendering); `session` runs
//! them for `fdtrace run`.

pub mod btf;
pub mod cli;
pub mod events;
pub mod fd_table;
pub mod history;
pub mod load;
pub mod misuse;
pub mod monitor;
pub mod output;
pub mod procfs;
pub mod python;
pub mod record;
pub mod report;
pub mod session;
pub mod signals;
pub mod spawn;
pub mod stacks;
pub mod suppress;
pub mod tracer;
