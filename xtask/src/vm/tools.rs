//! The host tools `vm-test` needs: qemu, busybox (virtme-ng's initramfs),
//! kmod (depmod, for the modules of a kernel that is not installed) and
//! virtme-ng's `vng`. Installs only what is missing, printing one
//! "ok: ..." or "installing: ..." line per tool, like `cargo xtask setup`.

use std::env;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::process::{self, command, succeeds};
use crate::setup::is_root;

/// (executable that proves the package is there, Debian package).
const APT_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("/bin/busybox", "busybox-static"),
    ("depmod", "kmod"),
];

/// virtme-ng's PyPI distribution, which provides `vng`.
const VIRTME_NG: &str = "virtme-ng";

/// Ensures every tool is present and returns the path of `vng`.
pub fn ensure() -> Result<PathBuf> {
    for &(tool, package) in APT_TOOLS {
        apt_tool(tool, package)?;
    }
    vng()
}

/// Where `tool` is: itself if it is a path, else the first match on `PATH`.
pub fn which(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        return Path::new(tool).is_file().then(|| PathBuf::from(tool));
    }
    let path = env::var_os("PATH")?;
    let extra = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

fn apt_tool(tool: &str, package: &str) -> Result<()> {
    if which(tool).is_some() {
        println!("ok: {package}");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{tool} is missing: run `sudo apt-get install -y {package}`, then rerun \
             `cargo xtask vm-test`"
        );
    }
    println!("installing: {package} (apt-get install -y {package})");
    let install =
        || succeeds(command("apt-get").args(["install", "-y", "--no-install-recommends", package]));
    // Fresh containers ship without package lists: update only then.
    if !install() {
        println!("installing: apt package lists (apt-get update)");
        process::run("apt-get update", command("apt-get").arg("update"))
            .context("update apt package lists: check network access")?;
        process::run(
            "apt-get install",
            command("apt-get").args(["install", "-y", "--no-install-recommends", package]),
        )
        .with_context(|| format!("install {package} with apt-get"))?;
    }
    if which(tool).is_none() {
        bail!("installed {package} but {tool} is still missing: check PATH");
    }
    Ok(())
}

/// `vng`, installed with the default `python3 -m pip` when missing. Looked
/// for next to that interpreter first (pip's scripts directory, which may not
/// be on `PATH`: `~/.local/bin`, a pyenv version's bin), then on `PATH`.
fn vng() -> Result<PathBuf> {
    if let Some(vng) = find_vng()? {
        println!("ok: {VIRTME_NG} ({})", vng.display());
        return Ok(vng);
    }
    println!("installing: {VIRTME_NG} (python3 -m pip install {VIRTME_NG})");
    process::run(
        "python3 -m pip install",
        command("python3").args(["-m", "pip", "install", VIRTME_NG]),
    )
    .context(
        "install virtme-ng from PyPI: check that `python3 -m pip` works and PyPI is reachable",
    )?;
    find_vng()?.context(
        "installed virtme-ng but found no `vng`: check `python3 -m pip show -f virtme-ng` \
         and put its scripts directory on PATH",
    )
}

fn find_vng() -> Result<Option<PathBuf>> {
    let scripts = process::stdout_of(
        "python3 sysconfig scripts",
        command("python3").args([
            "-c",
            "import os, sysconfig; print(sysconfig.get_path('scripts')); \
             print(sysconfig.get_path('scripts', f'{os.name}_user'))",
        ]),
    )
    .context("ask python3 where pip puts scripts: is python3 installed?")?;
    let candidates = scripts
        .lines()
        .map(|dir| Path::new(dir).join("vng"))
        .chain(which("vng"));
    Ok(candidates
        .into_iter()
        .find(|vng| vng.is_file() && succeeds(command(vng).arg("--version"))))
}
