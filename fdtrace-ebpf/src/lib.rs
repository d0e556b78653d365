//! Library target so `fdtrace` can name this crate as a build dependency;
//! the programs live in the `fdtrace` binary target (src/main.rs).
#![no_std]
