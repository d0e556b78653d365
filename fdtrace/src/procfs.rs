//! Reading what /proc says about a live process's descriptors.

use std::fs;

use crate::{
    events::{Fd, FdKind},
    fd_table::Describe,
};

const O_CLOEXEC: u32 = 0o2_000_000;

/// Kind and description from a `/proc/PID/fd/N` link target.
pub fn classify_link(link: &str) -> (FdKind, String) {
    let kind = if link.starts_with("socket:") {
        FdKind::Socket
    } else if link.starts_with("pipe:") {
        FdKind::Pipe
    } else if link.starts_with("/memfd:") {
        FdKind::Memfd
    } else if let Some(anon) = link.strip_prefix("anon_inode:") {
        match anon.trim_matches(|c| c == '[' || c == ']') {
            "eventfd" => FdKind::Eventfd,
            "eventpoll" => FdKind::Epoll,
            "timerfd" => FdKind::Timerfd,
            "signalfd" => FdKind::Signalfd,
            "inotify" => FdKind::Inotify,
            "fanotify" => FdKind::Fanotify,
            "pidfd" => FdKind::Pidfd,
            "io_uring" => FdKind::IoUring,
            "userfaultfd" => FdKind::Userfaultfd,
            "perf_event" => FdKind::Perf,
            _ => FdKind::Other,
        }
    } else if link.starts_with('/') {
        FdKind::File
    } else {
        FdKind::Other
    };
    let target = match kind {
        FdKind::Memfd => link.trim_start_matches('/').to_owned(),
        _ => link.to_owned(),
    };
    (kind, target)
}

/// Every open fd of a process: number, kind, target, close-on-exec.
pub fn snapshot(tgid: u32) -> std::io::Result<Vec<(Fd, FdKind, String, bool)>> {
    let mut fds = Vec::new();
    for entry in fs::read_dir(format!("/proc/{tgid}/fd"))? {
        let entry = entry?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<Fd>().ok())
        else {
            continue;
        };
        let Ok(link) = fs::read_link(entry.path()) else {
            continue;
        };
        let (kind, target) = classify_link(&link.to_string_lossy());
        let cloexec = fdinfo_flags(tgid, fd).is_some_and(|flags| flags & O_CLOEXEC != 0);
        fds.push((fd, kind, target, cloexec));
    }
    fds.sort_unstable_by_key(|(fd, ..)| *fd);
    Ok(fds)
}

fn fdinfo_flags(tgid: u32, fd: Fd) -> Option<u32> {
    let info = fs::read_to_string(format!("/proc/{tgid}/fdinfo/{fd}")).ok()?;
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
    u32::from_str_radix(flags.trim(), 8).ok()
}

/// RLIMIT_NOFILE (soft, hard) of a live process; "unlimited" is u64::MAX.
pub fn nofile_limit(tgid: u32) -> Option<(u64, u64)> {
    parse_nofile_limit(&fs::read_to_string(format!("/proc/{tgid}/limits")).ok()?)
}

fn parse_nofile_limit(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut values = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| match v {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        });
    Some((values.next()??, values.next()??))
}

/// Why `tgid` cannot be attached to, if it cannot.
pub fn attach_problem(tgid: u32) -> Option<String> {
    let Ok(stat) = fs::read_to_string(format!("/proc/{tgid}/stat")) else {
        return Some(format!(
            "no process with PID {tgid} (check the PID; it may have exited)"
        ));
    };
    // Field 9 (after the parenthesised comm) is the flags word; PF_KTHREAD = 0x00200000.
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let flags: u64 = after_comm
        .split_whitespace()
        .nth(6)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    if flags & 0x0020_0000 != 0 {
        return Some(format!(
            "PID {tgid} is a kernel thread: it has no user-space descriptors to trace"
        ));
    }
    // Field 3 is the state; a zombie has exited and released its table
    // (unless only its main thread exited and others run on).
    let threads = after_comm
        .split_whitespace()
        .nth(17)
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(1);
    if after_comm.split_whitespace().next() == Some("Z") && threads <= 1 {
        return Some(format!(
            "PID {tgid} is a zombie: it has exited and holds no descriptors \
             (its parent has not reaped it yet); attach to a live process"
        ));
    }
    let tgid_line = fs::read_to_string(format!("/proc/{tgid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:").map(|v| v.trim().to_owned()))?;
    if tgid_line != tgid.to_string() {
        return Some(format!(
            "PID {tgid} is a thread of process {tgid_line}: attach to {tgid_line}"
        ));
    }
    None
}

/// The process's short name (`/proc/PID/comm`).
pub fn comm(tgid: u32) -> String {
    fs::read_to_string(format!("/proc/{tgid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_default()
}

/// The process's command line (empty for a kernel thread or a process gone).
pub fn cmdline(tgid: u32) -> Vec<String> {
    fs::read(format!("/proc/{tgid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|&b| b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Where a process's paths can be opened from here.
///
/// Paths the kernel records are walked up to the root of the process's
/// mount namespace: the same files as ours unless the process lives in
/// another namespace (a container), where they are under
/// `/proc/PID/root` for as long as it runs.
pub struct Root {
    prefix: Option<String>,
}

impl Root {
    /// The root `tgid` sees, as seen from ours: its own when it is in
    /// another mount namespace (a container; also a host process when
    /// fdtrace runs in one, where its root still reads as `/`) or chroot'd.
    pub fn of(tgid: u32) -> Self {
        // Ours never changes: read once, not per exec and mmap record.
        static OURS: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
        let ours = OURS.get_or_init(|| fs::read_link("/proc/self/ns/mnt").ok());
        let theirs = fs::read_link(format!("/proc/{tgid}/ns/mnt")).ok();
        let other_namespace =
            matches!((ours, theirs), (Some(ours), Some(theirs)) if *ours != theirs);
        let chrooted = fs::read_link(format!("/proc/{tgid}/root"))
            .is_ok_and(|root| root != std::path::Path::new("/"));
        let prefix = (other_namespace || chrooted).then(|| format!("/proc/{tgid}/root"));
        Self { prefix }
    }

    /// `path` (as the process sees it) as we can open it.
    pub fn host_path(&self, path: &str) -> std::path::PathBuf {
        match &self.prefix {
            Some(prefix) => format!("{prefix}{path}").into(),
            None => path.into(),
        }
    }
}

/// Describes fds by reading their /proc link while the process is alive.
pub struct ProcDescribe;

impl Describe for ProcDescribe {
    fn describe(&mut self, tgid: u32, fd: Fd) -> Option<(FdKind, String)> {
        let link = fs::read_link(format!("/proc/{tgid}/fd/{fd}")).ok()?;
        Some(classify_link(&link.to_string_lossy()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_proc_links() {
        assert_eq!(
            classify_link("socket:[123]"),
            (FdKind::Socket, "socket:[123]".into())
        );
        assert_eq!(classify_link("pipe:[9]").0, FdKind::Pipe);
        assert_eq!(classify_link("anon_inode:[eventfd]").0, FdKind::Eventfd);
        assert_eq!(classify_link("anon_inode:[eventpoll]").0, FdKind::Epoll);
        assert_eq!(classify_link("anon_inode:inotify").0, FdKind::Inotify);
        assert_eq!(classify_link("anon_inode:[pidfd]").0, FdKind::Pidfd);
        assert_eq!(
            classify_link("/memfd:cache (deleted)"),
            (FdKind::Memfd, "memfd:cache (deleted)".into())
        );
        assert_eq!(classify_link("/etc/hosts").0, FdKind::File);
    }

    #[test]
    fn parses_the_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_nofile_limit(limits), Some((1024, 524_288)));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_nofile_limit(unlimited), Some((u64::MAX, u64::MAX)));
        assert_eq!(
            nofile_limit(std::process::id()).map(|(s, h)| s <= h),
            Some(true)
        );
    }

    #[test]
    fn refuses_missing_processes_kernel_threads_threads_and_zombies() {
        assert!(attach_problem(std::process::id()).is_none());
        assert!(attach_problem(0x7fff_fff0).unwrap().contains("no process"));
        assert!(
            attach_problem(2).unwrap().contains("kernel thread"),
            "kthreadd is PID 2"
        );
        // A child that exited and is not reaped yet.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let zombie = child.id();
        let stat = format!("/proc/{zombie}/stat");
        while !fs::read_to_string(&stat).unwrap().contains(") Z ") {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(attach_problem(zombie).unwrap().contains("is a zombie"));
        child.wait().unwrap();
    }

    #[test]
    fn snapshot_sees_our_own_stdio() {
        let me = std::process::id();
        let fds = snapshot(me).unwrap();
        assert!(fds.iter().any(|(fd, ..)| *fd == 0));
    }
}
