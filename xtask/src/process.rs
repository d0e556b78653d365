//! Child processes: every command xtask spawns is built here, so they all run
//! from the workspace root, can find tools in `~/.cargo/bin`, and report a
//! failure with the command's name and exit status.

use std::env;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result, bail};

/// Variables the outer `cargo run` sets that pin a nested cargo or rustc to
/// the outer (stable) toolchain; removed before running the nightly one.
pub const TOOLCHAIN_ENV: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTUP_TOOLCHAIN",
    "CARGO",
];

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.clone(), PathBuf::from)
}

/// The directory cargo builds into, honouring `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// `$HOME/.cargo`, where `cargo install` puts binaries.
pub fn cargo_home() -> Result<PathBuf> {
    if let Some(dir) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(dir));
    }
    let home = env::var_os("HOME").context("read $HOME to locate ~/.cargo: set HOME")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// `PATH` with `~/.cargo/bin` appended when it is not already on it.
fn child_path() -> Option<OsString> {
    let path = env::var_os("PATH").unwrap_or_default();
    let Ok(bin) = cargo_home().map(|home| home.join("bin")) else {
        return Some(path);
    };
    let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    if !dirs.contains(&bin) {
        dirs.push(bin);
    }
    env::join_paths(dirs).ok()
}

/// A command that runs from the workspace root with `~/.cargo/bin` on `PATH`.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    if let Some(path) = child_path() {
        cmd.env("PATH", path);
    }
    cmd
}

/// Removes the variables that would pin a nested toolchain (see
/// [`TOOLCHAIN_ENV`]) so `+nightly` or the default toolchain applies.
pub fn unpin_toolchain(cmd: &mut Command) -> &mut Command {
    for var in TOOLCHAIN_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Describes how a process ended, e.g. "exit status 101".
pub fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => format!("{status}"),
    }
}

/// Runs `cmd` with inherited stdio; fails naming `name` unless it exits 0.
pub fn run(name: &str, cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("start `{name}`: is it installed and on PATH?"))?;
    if !status.success() {
        bail!("`{name}` failed ({})", describe(status));
    }
    Ok(())
}

/// Whether `cmd` starts and exits 0; its output is discarded.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `cmd` and returns its trimmed stdout; fails unless it exits 0.
pub fn stdout_of(name: &str, cmd: &mut Command) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("start `{name}`: is it installed and on PATH?"))?;
    if !output.status.success() {
        bail!("`{name}` failed ({})", describe(output.status));
    }
    let stdout = String::from_utf8(output.stdout)
        .with_context(|| format!("read output of `{name}` as UTF-8"))?;
    Ok(stdout.trim().to_owned())
}
