//! `cargo xtask setup`: makes sure every tool the build and the tests need is
//! present, installing only what is missing. Idempotent: on a ready machine it
//! only checks, printing one "ok: ..." line per step.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::bpf_linker;
use crate::process::{self, command, succeeds, unpin_toolchain};

/// Where the kernel's tracepoint definitions appear once tracefs is mounted.
const TRACEFS_EVENTS: &str = "/sys/kernel/tracing/events";

/// Runs every setup step in order, stopping at the first that fails.
pub fn run() -> Result<()> {
    nightly_toolchain()?;
    rust_src()?;
    musl_target()?;
    bpf_linker::ensure()?;
    tracefs()?;
    system_tool("cc", "gcc")?;
    system_tool("python3", "python3")?;
    // Real programs the tests trace, which must report nothing.
    system_tool("make", "make")?;
    system_tool("git", "git")?;
    system_tool("tar", "tar")?;
    system_tool("bash", "bash")?;
    system_tool("go", "golang-go")?;
    // The browser the HTML report is tested in.
    system_tool("chromium", "chromium")?;
    // pytest under every interpreter the Python tests run (3.8 to 3.14).
    python_module("python3", "pytest")?;
    for (interpreter, version) in fdtrace_tests::interpreters() {
        if ((3, 8)..=(3, 14)).contains(&version) {
            python_module(&interpreter.to_string_lossy(), "pytest")?;
        }
    }
    Ok(())
}

/// A Python package the tests run (`PYTHON -m NAME`), installed when
/// missing: for Debian's own interpreters as Debian's `python3-NAME`
/// package (pip may not touch them), for any other with pip.
fn python_module(python: &str, name: &str) -> Result<()> {
    if succeeds(command(python).args(["-m", name, "--version"])) {
        println!("ok: {python} -m {name}");
        return Ok(());
    }
    if python.starts_with("/usr/bin/") {
        system_tool_package(python, &format!("python3-{name}"))?;
    } else {
        println!("installing: {name} ({python} -m pip install {name})");
        process::run(
            "pip install",
            command(python).args(["-m", "pip", "install", "--quiet", name]),
        )
        .with_context(|| {
            format!("install {name} with pip: run `{python} -m pip install {name}`, then rerun `cargo xtask setup`")
        })?;
    }
    if !succeeds(command(python).args(["-m", name, "--version"])) {
        bail!("installed {name} but `{python} -m {name} --version` still fails");
    }
    Ok(())
}

/// Whether xtask runs as root, so it may install system packages and mount.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions, touches no memory and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The eBPF crate is built with nightly (`-Z build-std`).
fn nightly_toolchain() -> Result<()> {
    let list = process::stdout_of(
        "rustup toolchain list",
        command("rustup").args(["toolchain", "list"]),
    )
    .context("list rustup toolchains: install rustup from https://rustup.rs")?;
    if list.lines().any(|line| line.starts_with("nightly")) {
        println!("ok: nightly toolchain");
        return Ok(());
    }
    println!("installing: nightly toolchain");
    process::run(
        "rustup toolchain install nightly",
        command("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]),
    )
    .context("install the nightly toolchain: check network access, then rerun `cargo xtask setup`")
}

/// The nightly sysroot, e.g. `~/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu`.
pub fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot = process::stdout_of(
        "rustc +nightly --print sysroot",
        unpin_toolchain(&mut command("rustc")).args(["+nightly", "--print", "sysroot"]),
    )
    .context("locate the nightly sysroot: run `rustup toolchain install nightly`")?;
    Ok(PathBuf::from(sysroot))
}

/// `-Z build-std=core` compiles `core` for the BPF target from rust-src.
fn rust_src() -> Result<()> {
    let core_manifest = nightly_sysroot()?.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core_manifest.exists() {
        println!("ok: rust-src for nightly");
        return Ok(());
    }
    println!("installing: rust-src for nightly");
    process::run(
        "rustup component add rust-src",
        command("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
    )
    .context("add rust-src to nightly: check network access, then rerun `cargo xtask setup`")
}

/// The standard library for the static release binary (`cargo xtask dist`).
fn musl_target() -> Result<()> {
    let installed = process::stdout_of(
        "rustup target list --installed",
        command("rustup").args(["target", "list", "--installed"]),
    )
    .context("list installed rustup targets")?;
    if installed.lines().any(|t| t == crate::dist::TARGET) {
        println!("ok: {} target", crate::dist::TARGET);
        return Ok(());
    }
    println!("installing: {} target", crate::dist::TARGET);
    process::run(
        "rustup target add",
        command("rustup").args(["target", "add", crate::dist::TARGET]),
    )
    .context("add the musl target: check network access, then rerun `cargo xtask setup`")
}

/// fdtrace attaches to tracepoints, which need tracefs mounted.
fn tracefs() -> Result<()> {
    if Path::new(TRACEFS_EVENTS).exists() {
        println!("ok: tracefs mounted");
        return Ok(());
    }
    let mount = ["-t", "tracefs", "nodev", "/sys/kernel/tracing"];
    if !is_root() {
        bail!(
            "tracefs is not mounted ({TRACEFS_EVENTS} is missing): run \
             `sudo mount {}`, then rerun `cargo xtask setup`",
            mount.join(" ")
        );
    }
    println!("installing: tracefs mount at /sys/kernel/tracing");
    process::run("mount -t tracefs", command("mount").args(mount))
        .context("mount tracefs at /sys/kernel/tracing: is this kernel built with tracefs?")?;
    if !Path::new(TRACEFS_EVENTS).exists() {
        bail!("mounted tracefs but {TRACEFS_EVENTS} is still missing: check the kernel config");
    }
    Ok(())
}

/// A tool the end-to-end tests use to build and run fixtures (`cc`,
/// `python3`) or trace as real programs (`make`, `go`...), installed with
/// apt when missing and running as root.
pub fn system_tool(tool: &str, apt_package: &str) -> Result<()> {
    // Go says `go version`; everything else `--version`.
    let version = if tool == "go" { "version" } else { "--version" };
    if succeeds(command(tool).arg(version)) {
        println!("ok: {tool}");
        return Ok(());
    }
    system_tool_package(tool, apt_package)?;
    if !succeeds(command(tool).arg(version)) {
        bail!("installed {apt_package} but `{tool} {version}` still fails: check PATH");
    }
    Ok(())
}

/// Installs Debian's `apt_package` (which provides `tool`), as root.
fn system_tool_package(tool: &str, apt_package: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "`{tool}` lacks {apt_package}: install it (e.g. `sudo apt-get install -y \
             {apt_package}`), then rerun `cargo xtask setup`"
        );
    }
    println!("installing: {tool} (apt-get install -y {apt_package})");
    process::run("apt-get update", command("apt-get").arg("update"))
        .context("update apt package lists: check network access")?;
    process::run(
        "apt-get install",
        command("apt-get").args(["install", "-y", apt_package]),
    )
    .with_context(|| format!("install {apt_package} with apt-get"))?;
    Ok(())
}
