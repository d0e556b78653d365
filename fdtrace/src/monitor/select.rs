//! Selection stage of `monitor`: which of the host's processes are traced.
//!
//! A process is picked by `--all`, by its name (`--comm`, a glob on
//! `/proc/PID/comm`), by its cgroup v2 subtree (`--cgroup`) or by being one
//! of the `-p` processes or their descendants. Names and cgroups are
//! checked when the monitor starts, at every exec (the kernel traces each
//! exec'd program from its first instruction until this says no) and at
//! every rescan, which catches renames and processes moved between
//! cgroups.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};
use fdtrace_common::{SELECT_EXECS, SELECT_NEW_PROCESSES};
use hashbrown::HashSet;

/// What `monitor` traces; the union of its selectors.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub all: bool,
    pub comms: Vec<glob::Pattern>,
    /// Cgroup v2 paths as `/proc/PID/cgroup` shows them (`/` is the root).
    pub cgroups: Vec<String>,
    pub pids: Vec<u32>,
}

impl Selection {
    /// The kernel's `SELECT` bits: with `--all` every new process is
    /// traced at its fork; with names or cgroups every exec is traced
    /// until userspace has looked at it.
    pub fn kernel_bits(&self) -> u32 {
        if self.all {
            SELECT_NEW_PROCESSES
        } else if !self.comms.is_empty() || !self.cgroups.is_empty() {
            SELECT_EXECS
        } else {
            0
        }
    }

    /// Whether a process with this name, in a selected cgroup or not, is
    /// picked by `--all`, `--comm` or `--cgroup` (`-p` is by ancestry,
    /// kept by the caller).
    pub fn picks(&self, comm: &str, in_cgroup: bool) -> bool {
        self.all || in_cgroup || self.comms.iter().any(|p| p.matches(comm))
    }

    /// Whether a process in cgroup `path` (as /proc/PID/cgroup shows it)
    /// is in a selected subtree.
    pub fn in_cgroups(&self, path: &str) -> bool {
        self.cgroups.iter().any(|root| within(path, root))
    }

    /// [`Selection::picks`] for a live process, from /proc; `false` once
    /// it is gone.
    pub fn picks_process(&self, tgid: u32) -> bool {
        if self.all {
            return true;
        }
        let Ok(comm) = fs::read_to_string(format!("/proc/{tgid}/comm")) else {
            return false;
        };
        let in_cgroup =
            !self.cgroups.is_empty() && cgroup_of(tgid).is_some_and(|path| self.in_cgroups(&path));
        self.picks(comm.trim_end_matches('\n'), in_cgroup)
    }

    /// One line naming the selection, for the start-up message.
    pub fn describe(&self) -> String {
        if self.all {
            return "every process".to_owned();
        }
        let mut parts: Vec<String> = Vec::new();
        parts.extend(self.comms.iter().map(|p| format!("--comm {p}")));
        parts.extend(self.cgroups.iter().map(|c| format!("--cgroup {c}")));
        parts.extend(self.pids.iter().map(|p| format!("-p {p}")));
        parts.join(" ")
    }
}

/// The cgroup v2 ids (directory inodes) of the selected subtrees, for
/// deciding on a program from its exec record alone: it may be gone
/// before /proc could say where it ran.
#[derive(Debug, Default)]
pub struct CgroupIds {
    /// The subtrees' directories.
    roots: Vec<PathBuf>,
    inside: HashSet<u64>,
    /// Ids seen outside after a fresh walk: a cgroup never moves.
    outside: HashSet<u64>,
    walked: Option<Instant>,
}

/// Directories walked at most (a bound on a hostile delegated tree).
const MAX_CGROUPS: usize = 10_000;
/// The subtrees are walked again for an unknown id at most this often.
const REWALK: Duration = Duration::from_secs(1);

impl CgroupIds {
    /// The subtrees `selection` names, walked once now.
    pub fn new(selection: &Selection) -> Self {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let roots = match cgroup2_mount(&mountinfo) {
            Some(mount) => selection
                .cgroups
                .iter()
                .map(|c| Path::new(&mount).join(c.trim_start_matches('/')))
                .collect(),
            None => Vec::new(),
        };
        let mut ids = Self {
            roots,
            ..Self::default()
        };
        ids.walk();
        ids
    }

    /// Whether cgroup `id` is in a selected subtree; a new one (created
    /// since the last walk) is looked for. `None`: not known, and the
    /// subtrees were walked too recently to walk them again (the caller
    /// asks /proc instead).
    pub fn contains(&mut self, id: u64) -> Option<bool> {
        if self.roots.is_empty() || self.outside.contains(&id) {
            return Some(false);
        }
        if self.inside.contains(&id) {
            return Some(true);
        }
        if self.walked.is_some_and(|at| at.elapsed() < REWALK) {
            return None;
        }
        self.walk();
        if self.inside.contains(&id) {
            return Some(true);
        }
        if self.outside.len() >= MAX_CGROUPS {
            self.outside.clear();
        }
        self.outside.insert(id);
        Some(false)
    }

    fn walk(&mut self) {
        self.walked = Some(Instant::now());
        self.inside.clear();
        let mut pending: Vec<PathBuf> = self.roots.clone();
        while let Some(dir) = pending.pop() {
            if self.inside.len() >= MAX_CGROUPS {
                break;
            }
            // symlink_metadata: cgroupfs has no links, and none is followed.
            let Ok(meta) = fs::symlink_metadata(&dir) else {
                continue;
            };
            if !meta.is_dir() {
                continue;
            }
            self.inside.insert(meta.ino());
            if let Ok(entries) = fs::read_dir(&dir) {
                pending.extend(
                    entries
                        .filter_map(Result::ok)
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
    }
}

/// Whether cgroup path `path` is `root` or below it.
fn within(path: &str, root: &str) -> bool {
    root == "/"
        || path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A process's cgroup v2 path (the `0::` line of /proc/PID/cgroup).
pub fn cgroup_of(tgid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{tgid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Parses a `--comm` glob; a malformed one says where it goes wrong.
pub fn comm_pattern(text: &str) -> Result<glob::Pattern> {
    glob::Pattern::new(text).map_err(|e| {
        anyhow!(
            "--comm {text:?} is not a valid glob ({}, at character {}); quote it, and write \
             [[] or []] for a literal bracket",
            e.msg,
            e.pos
        )
    })
}

/// Turns a `--cgroup` argument into the path /proc/PID/cgroup shows: it
/// may be a directory of the cgroup v2 hierarchy
/// (`/sys/fs/cgroup/system.slice/nginx.service`) or that path already
/// (`/system.slice/nginx.service`).
pub fn cgroup_path(arg: &str) -> Result<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(mount) = cgroup2_mount(&mountinfo) else {
        bail!("--cgroup needs the cgroup v2 hierarchy, and none is mounted on this host");
    };
    let mount = Path::new(&mount);
    let as_directory = fs::canonicalize(arg)
        .ok()
        .and_then(|p| p.strip_prefix(mount).ok().map(Path::to_path_buf));
    let relative = match as_directory {
        Some(rel) => rel,
        None => Path::new(arg.trim_start_matches('/')).to_path_buf(),
    };
    let directory = mount.join(&relative);
    if relative
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
        || !directory.join("cgroup.procs").is_file()
    {
        bail!(
            "--cgroup {arg}: no such cgroup; give a directory under {} or the path \
             /proc/PID/cgroup shows (e.g. /system.slice/nginx.service)",
            mount.display()
        );
    }
    Ok(format!("/{}", relative.display()))
}

/// Where the cgroup v2 hierarchy is mounted, from /proc/self/mountinfo.
fn cgroup2_mount(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next() == Some("cgroup2"))
            .then(|| before.split_whitespace().nth(4).map(unescape))
            .flatten()
    })
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Every user-space process on the host but fdtrace itself (kernel
/// threads have no executable).
pub fn host_processes() -> Vec<u32> {
    let own = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&tgid| tgid != own && fs::read_link(format!("/proc/{tgid}/exe")).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(comms: &[&str], cgroups: &[&str]) -> Selection {
        Selection {
            comms: comms.iter().map(|c| comm_pattern(c).unwrap()).collect(),
            cgroups: cgroups.iter().map(|&c| c.to_owned()).collect(),
            ..Selection::default()
        }
    }

    #[test]
    fn names_match_as_globs() {
        let s = selection(&["nginx", "py*", "worker-[0-9]"], &[]);
        assert!(s.picks("nginx", false));
        assert!(s.picks("python3.11", false));
        assert!(s.picks("worker-7", false));
        assert!(!s.picks("nginx-debug", false));
        assert!(!s.picks("worker-x", false));
        assert_eq!(s.kernel_bits(), SELECT_EXECS);
    }

    #[test]
    fn a_cgroup_picks_its_whole_subtree_and_nothing_beside_it() {
        let s = selection(&[], &["/system.slice/app.service"]);
        assert!(s.in_cgroups("/system.slice/app.service"));
        assert!(s.in_cgroups("/system.slice/app.service/worker"));
        assert!(!s.in_cgroups("/system.slice/app.service2"));
        assert!(!s.in_cgroups("/system.slice"));
        assert!(selection(&[], &["/"]).in_cgroups("/user.slice"));
    }

    #[test]
    fn all_picks_everything_from_the_fork_on() {
        let s = Selection {
            all: true,
            ..Selection::default()
        };
        assert!(s.picks("anything", false));
        assert_eq!(s.kernel_bits(), SELECT_NEW_PROCESSES);
        assert_eq!(
            Selection {
                pids: vec![1],
                ..Selection::default()
            }
            .kernel_bits(),
            0
        );
    }

    #[test]
    fn a_malformed_glob_is_one_line_saying_what_to_do() {
        let err = comm_pattern("[abc").unwrap_err().to_string();
        assert!(
            err.starts_with("--comm \"[abc\" is not a valid glob"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }

    #[test]
    fn the_cgroup2_mount_is_found_in_mountinfo() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid).as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        let escaped = "31 30 0:27 / /mnt/cg\\040v2 rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(escaped).as_deref(), Some("/mnt/cg v2"));
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }

    #[test]
    fn an_unknown_cgroup_is_refused_with_what_to_give() {
        let err = cgroup_path("/no/such/cgroup-fdtrace")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--"), "{err}");
        assert!(!err.contains('\n'));
        let err = cgroup_path("../../etc").unwrap_err().to_string();
        assert!(
            err.contains("no such cgroup") || err.contains("none is mounted"),
            "{err}"
        );
    }
}
