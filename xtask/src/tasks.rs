//! `cargo xtask build`, `demo` and `test`: each runs setup, then a fixed
//! sequence of cargo and compiler invocations, failing fast and naming the
//! step that failed.

use std::env;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::process::{self, command, target_dir, unpin_toolchain, workspace_root};
use crate::setup;

/// The C program `demo` traces; it leaks a few descriptors on purpose.
const DEMO_SOURCE: &str = "examples/leaky.c";

/// Builds the fdtrace binary (with the eBPF object embedded by its build.rs).
pub fn build(release: bool) -> Result<()> {
    setup::run()?;
    build_fdtrace(release)
}

fn build_fdtrace(release: bool) -> Result<()> {
    let mut cargo = command("cargo");
    cargo.args(["build", "-p", "fdtrace", "--locked"]);
    if release {
        cargo.arg("--release");
    }
    process::run("cargo build -p fdtrace", &mut cargo)
}

/// Builds fdtrace and the leaky example, then traces the example. Returns
/// fdtrace's own exit code so the demo's outcome is visible to the shell.
pub fn demo() -> Result<ExitCode> {
    setup::run()?;
    build_fdtrace(true)?;

    let demo_dir = target_dir().join("demo");
    fs::create_dir_all(&demo_dir)
        .with_context(|| format!("create demo directory {}", demo_dir.display()))?;
    let leaky = demo_dir.join("leaky");
    process::run(
        "cc examples/leaky.c",
        command("cc")
            .args(["-g", "-O2", "-o"])
            .arg(&leaky)
            .arg(workspace_root().join(DEMO_SOURCE)),
    )
    .with_context(|| format!("compile the demo program {DEMO_SOURCE}"))?;

    let fdtrace = target_dir().join("release/fdtrace");
    let mut run = if setup::is_root() {
        command(&fdtrace)
    } else {
        println!("running fdtrace with sudo: loading BPF programs needs root");
        let mut sudo = command("sudo");
        sudo.arg(&fdtrace);
        sudo
    };
    run.args(["run", "--"]).arg(&leaky);
    let status = run
        .status()
        .with_context(|| format!("start {}", fdtrace.display()))?;
    // A signal death is reported like a shell does: 128 + signal number.
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Formatting, both clippy runs, then the test suite. `harness_args` go to
/// the test binaries, e.g. `--nocapture`.
pub fn test(harness_args: &[String]) -> Result<()> {
    setup::run()?;

    println!("step: cargo fmt --check");
    process::run(
        "cargo fmt --check",
        command("cargo").args(["fmt", "--all", "--", "--check"]),
    )
    .context("check formatting: run `cargo fmt --all` to fix it")?;

    println!("step: cargo clippy (host crates)");
    process::run(
        "cargo clippy",
        command("cargo")
            .args([
                "clippy",
                "--workspace",
                "--exclude",
                "fdtrace-ebpf",
                "--all-targets",
                "--locked",
            ])
            .args(["--", "-D", "warnings"]),
    )
    .context("lint the host crates: fix the warnings above")?;

    println!("step: cargo +nightly clippy (fdtrace-ebpf, bpfel-unknown-none)");
    let mut ebpf_clippy = command("cargo");
    unpin_toolchain(&mut ebpf_clippy)
        .current_dir(workspace_root().join("fdtrace-ebpf"))
        .args(["+nightly", "clippy", "--release", "--locked"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"]);
    process::run("cargo +nightly clippy", &mut ebpf_clippy)
        .context("lint the eBPF crate: fix the warnings above")?;

    println!("step: cargo test");
    let mut cargo_test = command("cargo");
    // The eBPF crate only builds for the BPF target; its clippy run is above.
    cargo_test.args([
        "test",
        "--workspace",
        "--exclude",
        "fdtrace-ebpf",
        "--locked",
    ]);
    if !harness_args.is_empty() {
        cargo_test.arg("--").args(harness_args);
    }
    // In CI a test that cannot load BPF must fail, never skip.
    if env::var_os("CI").is_some() {
        cargo_test.env("FDTRACE_REQUIRE_BPF", "1");
    }
    process::run("cargo test", &mut cargo_test)
        .context("run the test suite: see the failing tests above")
}
