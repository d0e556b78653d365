//! `cargo xtask dist`: the one file a CI job downloads. A static musl build
//! of fdtrace (the eBPF object is embedded by fdtrace's build.rs), stripped,
//! with a `.sha256` beside it.

use std::{fs, path::PathBuf};

use anyhow::{Context, Result, bail};

use crate::process::{self, command, target_dir};
use crate::setup;

/// The Rust target of the release binary.
pub const TARGET: &str = "x86_64-unknown-linux-musl";
/// Its file name under target/dist.
const NAME: &str = "fdtrace-x86_64-linux-musl";

/// Builds the binary and returns its path.
pub fn dist() -> Result<PathBuf> {
    setup::run()?;
    process::run(
        "cargo build --target x86_64-unknown-linux-musl",
        command("cargo").args([
            "build",
            "--release",
            "--locked",
            "-p",
            "fdtrace",
            "--target",
            TARGET,
        ]),
    )
    .context("build the static binary")?;
    let built = target_dir().join(TARGET).join("release/fdtrace");
    let dir = target_dir().join("dist");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let binary = dir.join(NAME);
    // Symbols of fdtrace itself are not needed to symbolize other programs.
    process::run("strip", command("strip").arg("-o").arg(&binary).arg(&built))
        .context("strip the binary (binutils' strip)")?;
    let interp = process::stdout_of(
        "readelf -l",
        command("readelf").arg("--program-headers").arg(&binary),
    )?;
    if interp.contains("INTERP") {
        bail!(
            "{} is not static: it asks for a dynamic loader",
            binary.display()
        );
    }
    let sum = process::stdout_of("sha256sum", command("sha256sum").arg(&binary))?;
    let digest = sum.split_whitespace().next().unwrap_or_default();
    fs::write(
        dir.join(format!("{NAME}.sha256")),
        format!("{digest}  {NAME}\n"),
    )
    .context("write the checksum file")?;
    Ok(binary)
}
