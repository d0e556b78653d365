//! Guest kernels for `vm-test`: Debian's generic `linux-image-*-amd64-unsigned`
//! packages, fetched with apt into a private apt state under `target/vm/apt`
//! and unpacked with `dpkg-deb -x` under `target/vm/kernels/<release>/`.
//! Nothing is installed into the host: no dpkg status, no /boot, no
//! /lib/modules. Downloads and unpacked trees are reused on later runs.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::process::{self, command, target_dir};

/// A kernel series the matrix covers and the Debian suites that carry it.
pub struct Series {
    /// The name used by `--kernels`, e.g. "5.10".
    pub name: &'static str,
    /// Package name shapes (see [`abi_key`]).
    shape: Shape,
}

#[derive(Clone, Copy)]
enum Shape {
    /// `linux-image-X.Y.0-N-amd64-unsigned` (bullseye, bookworm).
    Abi(&'static str),
    /// `linux-image-X.Y.N+debM-amd64-unsigned` (trixie, bookworm-backports).
    Patch(&'static str),
}

/// Every guest series, oldest first.
pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        shape: Shape::Abi("5.10.0-"),
    },
    Series {
        name: "6.1",
        shape: Shape::Abi("6.1.0-"),
    },
    Series {
        name: "6.12",
        shape: Shape::Patch("6.12."),
    },
];

/// Suites searched, as (archive, suite): the main archive or the security one.
const SUITES: &[(Archive, &str)] = &[
    (Archive::Main, "bullseye"),
    (Archive::Security, "bullseye-security"),
    (Archive::Main, "bookworm"),
    (Archive::Security, "bookworm-security"),
    (Archive::Main, "trixie"),
    (Archive::Security, "trixie-security"),
];

#[derive(Clone, Copy)]
enum Archive {
    Main,
    Security,
}

/// Codenames that mark a host sources entry as Debian's own archive.
const DEBIAN_CODENAMES: &[&str] = &["buster", "bullseye", "bookworm", "trixie", "forky", "sid"];

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// An unpacked kernel: its image and the release its modules are built for.
pub struct Kernel {
    pub release: String,
    pub vmlinuz: PathBuf,
}

/// apt and apt-cache, pointed at `target/vm/apt` instead of the host's state.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn options(&self) -> Vec<String> {
        let dir = self.dir.display();
        vec![
            format!("-o=Dir::Etc::sourcelist={dir}/sources.list"),
            "-o=Dir::Etc::sourceparts=-".into(),
            format!("-o=Dir::State={dir}/state"),
            format!("-o=Dir::State::lists={dir}/lists"),
            "-o=Dir::State::status=/dev/null".into(),
            format!("-o=Dir::Cache={dir}/cache"),
            "-o=Debug::NoLocking=1".into(),
            // Downloads land in target/, which the _apt user may not reach.
            "-o=APT::Sandbox::User=root".into(),
            // Only package lists: no translations, appstream or Contents.
            "-o=Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "-o=Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".into(),
            "-o=Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
            "-o=Acquire::IndexTargets::deb::CNF::DefaultEnabled=false".into(),
            "-o=Acquire::Languages=none".into(),
        ]
    }

    fn command(&self, program: &str) -> std::process::Command {
        let mut cmd = command(program);
        cmd.args(self.options());
        cmd
    }
}

/// Makes sure the private package lists exist (fetched once; delete
/// `target/vm/apt` to refetch them) and returns the kernel of each series asked
/// for, downloaded and unpacked.
pub fn ensure(series: &[&Series]) -> Result<Vec<Kernel>> {
    let apt = PrivateApt {
        dir: target_dir().join("vm/apt"),
    };
    update_lists(&apt)?;
    let names = process::stdout_of(
        "apt-cache search linux-image",
        apt.command("apt-cache").args([
            "search",
            "--names-only",
            "^linux-image-.*-amd64-unsigned$",
        ]),
    )
    .context("search the private apt lists for kernels: delete target/vm/apt and rerun")?;
    let packages: Vec<&str> = names
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    series
        .iter()
        .map(|s| {
            let package = newest(s, &packages).with_context(|| {
                format!(
                    "no linux-image package for {} in {}: delete target/vm/apt to refetch the lists",
                    s.name,
                    SUITES.iter().map(|(_, suite)| *suite).collect::<Vec<_>>().join(", ")
                )
            })?;
            unpack(&apt, package)
        })
        .collect()
}

fn update_lists(apt: &PrivateApt) -> Result<()> {
    let lists = apt.dir.join("lists");
    let fetched = fs::read_dir(&lists)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false);
    if fetched {
        println!("ok: kernel package lists ({})", lists.display());
        return Ok(());
    }
    let (main, security) = host_mirrors();
    println!("installing: kernel package lists from {main} and {security}");
    for dir in ["lists/partial", "cache/archives/partial", "state"] {
        fs::create_dir_all(apt.dir.join(dir))
            .with_context(|| format!("create {}", apt.dir.join(dir).display()))?;
    }
    let sources: String = SUITES
        .iter()
        .map(|(archive, suite)| {
            let base = match archive {
                Archive::Main => &main,
                Archive::Security => &security,
            };
            format!("deb [signed-by={KEYRING}] {base} {suite} main\n")
        })
        .collect();
    let list = apt.dir.join("sources.list");
    fs::write(&list, sources).with_context(|| format!("write {}", list.display()))?;
    process::run(
        "apt-get update (private)",
        apt.command("apt-get").arg("update"),
    )
    .context(
        "fetch Debian package lists into target/vm/apt: check network access to the mirror \
         and that debian-archive-keyring is installed",
    )
}

/// The Debian archive and security mirror the host's apt uses, so CI machines
/// behind a local mirror keep using it; deb.debian.org when none is found.
fn host_mirrors() -> (String, String) {
    let mut texts = vec![fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in entries.flatten() {
            texts.push(fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    let mut main = None;
    let mut security = None;
    for (uri, suites) in texts.iter().flat_map(|text| sources_entries(text)) {
        let is_debian = suites.iter().any(|suite| {
            let codename = suite.split('-').next().unwrap_or_default();
            DEBIAN_CODENAMES.contains(&codename)
        });
        if !is_debian {
            continue;
        }
        if suites.iter().any(|s| s.ends_with("-security")) {
            security.get_or_insert(uri);
        } else {
            main.get_or_insert(uri);
        }
    }
    let main = main.unwrap_or_else(|| "http://deb.debian.org/debian".into());
    let security = security.unwrap_or_else(|| format!("{main}-security"));
    (main, security)
}

/// (URI, suites) of each entry of a one-line (`deb URI SUITE ...`) or
/// deb822 (`URIs:` / `Suites:`) sources file.
fn sources_entries(text: &str) -> Vec<(String, Vec<String>)> {
    let mut entries = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
        };
        if let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) {
            let suites: Vec<String> = suites.split_whitespace().map(str::to_owned).collect();
            for uri in uris.split_whitespace() {
                entries.push((uri.trim_end_matches('/').to_owned(), suites.clone()));
            }
        }
    }
    for line in text.lines() {
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for word in words.by_ref() {
                if word.ends_with(']') {
                    break;
                }
            }
        }
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            entries.push((uri.trim_end_matches('/').to_owned(), vec![suite.to_owned()]));
        }
    }
    entries
}

/// The newest package of `series` among `packages`: the highest ABI (or
/// patch level, then Debian release) number. Variants (`-cloud`, `-rt`)
/// and backports (`6.1.0-0.deb11.N`) do not match the shape.
fn newest<'a>(series: &Series, packages: &[&'a str]) -> Option<&'a str> {
    packages
        .iter()
        .filter_map(|&p| abi_key(series.shape, p).map(|key| (key, p)))
        .max()
        .map(|(_, p)| p)
}

fn abi_key(shape: Shape, package: &str) -> Option<(u64, u64)> {
    let middle = package
        .strip_prefix("linux-image-")?
        .strip_suffix("-amd64-unsigned")?;
    match shape {
        Shape::Abi(prefix) => Some((middle.strip_prefix(prefix)?.parse().ok()?, 0)),
        Shape::Patch(prefix) => {
            let (patch, debian) = middle.strip_prefix(prefix)?.split_once("+deb")?;
            Some((patch.parse().ok()?, debian.parse().ok()?))
        }
    }
}

/// Downloads `package` (unless its .deb is there) and unpacks it (unless
/// already unpacked), checking the kernel carries BTF.
fn unpack(apt: &PrivateApt, package: &str) -> Result<Kernel> {
    let release = package
        .strip_prefix("linux-image-")
        .and_then(|p| p.strip_suffix("-unsigned"))
        .with_context(|| format!("unexpected kernel package name {package}"))?
        .to_owned();
    let root = target_dir().join("vm/kernels").join(&release);
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if vmlinuz.is_file() {
        println!("ok: kernel {release} ({})", root.display());
    } else {
        let debs = target_dir().join("vm/debs");
        fs::create_dir_all(&debs).with_context(|| format!("create {}", debs.display()))?;
        let deb = match find_deb(&debs, package)? {
            Some(deb) => deb,
            None => {
                println!(
                    "installing: {package} (apt-get download into {})",
                    debs.display()
                );
                process::run(
                    "apt-get download",
                    apt.command("apt-get")
                        .current_dir(&debs)
                        .args(["download", package]),
                )
                .with_context(|| format!("download {package}: check network access"))?;
                find_deb(&debs, package)?
                    .with_context(|| format!("apt-get downloaded no .deb for {package}"))?
            }
        };
        println!(
            "installing: kernel {release} (dpkg-deb -x into {})",
            root.display()
        );
        // Unpack beside the final place, then rename, so an interrupted
        // unpack is never mistaken for a finished one.
        let partial = root.with_file_name(format!("{release}.partial"));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial).with_context(|| format!("create {}", partial.display()))?;
        process::run(
            "dpkg-deb -x",
            command("dpkg-deb").arg("-x").arg(&deb).arg(&partial),
        )
        .with_context(|| format!("unpack {}", deb.display()))?;
        fs::rename(&partial, &root)
            .with_context(|| format!("move {} into place", partial.display()))?;
    }
    check_btf(&root, &release)?;
    Ok(Kernel { release, vmlinuz })
}

fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    let entries = fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))?;
    Ok(entries.flatten().map(|e| e.path()).find(|path| {
        path.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
    }))
}

/// fdtrace relies on the kernel's BTF (CO-RE); a kernel without it would
/// fail for a reason that is not fdtrace's.
fn check_btf(root: &Path, release: &str) -> Result<()> {
    let config = root.join("boot").join(format!("config-{release}"));
    let text = fs::read_to_string(&config).with_context(|| {
        format!(
            "read {}: delete {} and rerun",
            config.display(),
            root.display()
        )
    })?;
    if !text.lines().any(|line| line == "CONFIG_DEBUG_INFO_BTF=y") {
        bail!("kernel {release} is built without CONFIG_DEBUG_INFO_BTF: fdtrace cannot run on it");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_generic_image_of_each_series() {
        let packages = [
            "linux-image-5.10.0-30-amd64-unsigned",
            "linux-image-5.10.0-46-amd64-unsigned",
            "linux-image-5.10.0-46-cloud-amd64-unsigned",
            "linux-image-6.1.0-0.deb11.52-amd64-unsigned",
            "linux-image-6.1.0-57-amd64-unsigned",
            "linux-image-6.1.0-9-amd64-unsigned",
            "linux-image-6.12.117+deb12-amd64-unsigned",
            "linux-image-6.12.117+deb13-amd64-unsigned",
            "linux-image-6.12.117+deb13-rt-amd64-unsigned",
            "linux-image-6.12.99+deb13-amd64-unsigned",
        ];
        let picked: Vec<&str> = SERIES.iter().filter_map(|s| newest(s, &packages)).collect();
        assert_eq!(
            picked,
            [
                "linux-image-5.10.0-46-amd64-unsigned",
                "linux-image-6.1.0-57-amd64-unsigned",
                "linux-image-6.12.117+deb13-amd64-unsigned",
            ]
        );
    }

    #[test]
    fn reads_one_line_and_deb822_sources() {
        let text = "deb [arch=amd64 signed-by=/k.gpg] http://mirror.local/debian/ bookworm main\n\
                    \n\
                    Types: deb\nURIs: http://deb.debian.org/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n";
        let mut got = sources_entries(text);
        got.sort();
        assert_eq!(
            got,
            [
                (
                    "http://deb.debian.org/debian-security".to_owned(),
                    vec!["bookworm-security".to_owned()]
                ),
                (
                    "http://mirror.local/debian".to_owned(),
                    vec!["bookworm".to_owned()]
                ),
            ]
        );
    }
}
