//! bpf-linker, the linker rustc uses for the BPF target. It links against
//! rustc's own libLLVM from the nightly sysroot, through symlinks in a stable
//! directory that becomes its rpath, so nightly updates only need a rebuild.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::process::{self, cargo_home, command, succeeds};
use crate::setup::nightly_sysroot;

/// The bpf-linker release this workspace is known to build with.
const VERSION: &str = "0.13.0";

/// File-name prefix of the versioned libLLVM shipped in the nightly sysroot.
const LIBLLVM_PREFIX: &str = "libLLVM.so.";

/// Checks bpf-linker runs; builds it against nightly's LLVM otherwise.
pub fn ensure() -> Result<()> {
    // Runs only if it can load its libLLVM, so a stale build counts as missing.
    if succeeds(command("bpf-linker").arg("--version")) {
        println!("ok: bpf-linker");
        return Ok(());
    }
    let llvm_prefix = cargo_home()?.join("bpf-llvm");
    let libllvm = find_libllvm(&nightly_sysroot()?.join("lib"))?;
    let major = llvm_major(&libllvm)?;
    link_libllvm(&libllvm, &llvm_prefix.join("lib"))?;

    println!(
        "installing: bpf-linker {VERSION} with LLVM {major} from {} \
         (takes about 2 minutes)",
        llvm_prefix.display()
    );
    let mut install = command("cargo");
    install
        .args(["install", &format!("bpf-linker@{VERSION}"), "--locked"])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &llvm_prefix);
    process::unpin_toolchain(&mut install).env_remove("CARGO_TARGET_DIR");
    process::run("cargo install bpf-linker", &mut install)
        .context("build bpf-linker: check the error above, then rerun `cargo xtask setup`")?;

    if !succeeds(command("bpf-linker").arg("--version")) {
        bail!(
            "installed bpf-linker but `bpf-linker --version` fails: check that \
             {} links to an existing libLLVM",
            llvm_prefix.join("lib/libLLVM.so").display()
        );
    }
    Ok(())
}

/// The `libLLVM.so.<version>` file in the nightly sysroot's `lib` directory.
fn find_libllvm(lib_dir: &Path) -> Result<PathBuf> {
    let entries = fs::read_dir(lib_dir)
        .with_context(|| format!("list nightly sysroot libraries in {}", lib_dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("read an entry of {}", lib_dir.display()))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(LIBLLVM_PREFIX))
        {
            return Ok(entry.path());
        }
    }
    bail!(
        "no {LIBLLVM_PREFIX}* in {}: reinstall nightly with \
         `rustup toolchain install nightly --force`",
        lib_dir.display()
    )
}

/// The LLVM major version from a name like `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn llvm_major(libllvm: &Path) -> Result<u32> {
    let name = libllvm
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    let version = name.strip_prefix(LIBLLVM_PREFIX).unwrap_or_default();
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .with_context(|| format!("read the LLVM major version from {}", libllvm.display()))
}

/// Links `libllvm` into `lib_dir` under its own name (the soname bpf-linker
/// loads at run time) and as `libLLVM.so` (what its build links against).
fn link_libllvm(libllvm: &Path, lib_dir: &Path) -> Result<()> {
    fs::create_dir_all(lib_dir).with_context(|| format!("create {}", lib_dir.display()))?;
    let file_name = libllvm
        .file_name()
        .with_context(|| format!("take the file name of {}", libllvm.display()))?;
    for link in [lib_dir.join(file_name), lib_dir.join("libLLVM.so")] {
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link)
                .with_context(|| format!("remove old link {}", link.display()))?;
        }
        symlink(libllvm, &link)
            .with_context(|| format!("link {} -> {}", link.display(), libllvm.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_reads_leading_digits() {
        let path = Path::new("/x/libLLVM.so.22.1-rust-1.97.0-nightly");
        assert_eq!(llvm_major(path).unwrap(), 22);
        assert_eq!(llvm_major(Path::new("libLLVM.so.19")).unwrap(), 19);
        assert!(llvm_major(Path::new("libLLVM.so.")).is_err());
    }
}
