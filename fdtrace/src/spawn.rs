//! Starting the traced command: fork, hold the child at a gate until it is
//! in the traced set, then exec it (as the sudo user unless told not to).
//! The fork happens before any thread exists, and the child only makes
//! async-signal-safe calls.

use std::{
    env,
    ffi::{CString, OsStr},
    fs,
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};

/// The command could not be started; exits like a shell would.
#[derive(Debug)]
pub struct LaunchError {
    pub message: String,
    /// 127: not found; 126: found but not executable.
    pub exit_code: i32,
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LaunchError {}

/// Who the command runs as.
#[derive(Clone, Debug)]
pub struct Identity {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

impl Identity {
    /// The user who ran `sudo`, if we run under sudo as root.
    pub fn sudo_user() -> Option<Self> {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let uid: libc::uid_t = env::var("SUDO_UID").ok()?.parse().ok()?;
        let gid: libc::gid_t = env::var("SUDO_GID").ok()?.parse().ok()?;
        if uid == 0 {
            return None;
        }
        let groups = env::var("SUDO_USER")
            .ok()
            .and_then(|user| group_list(&user, gid))
            .unwrap_or_else(|| vec![gid]);
        Some(Self { uid, gid, groups })
    }
}

/// The user fdtrace works for: who ran `sudo`, or the effective user.
/// Files of theirs (and root's) are trusted; anyone else's are not.
pub fn invoking_uid() -> libc::uid_t {
    // SAFETY: no preconditions.
    Identity::sudo_user().map_or_else(|| unsafe { libc::geteuid() }, |i| i.uid)
}

fn group_list(user: &str, gid: libc::gid_t) -> Option<Vec<libc::gid_t>> {
    let name = CString::new(user).ok()?;
    let mut groups: Vec<libc::gid_t> = vec![0; 256];
    let mut n: libc::c_int = 256;
    // SAFETY: `groups` has room for `n` entries; `name` is NUL-terminated.
    let ret = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
    if ret < 0 {
        return None;
    }
    groups.truncate(usize::try_from(n).ok()?);
    Some(groups)
}

/// Finds `program` like execvp would, with shell-like errors.
pub fn resolve(program: &str) -> Result<PathBuf, LaunchError> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        let path = env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        env::split_paths(&path)
            .map(|dir| dir.join(program))
            .collect()
    };
    let mut found_not_executable = None;
    for candidate in candidates {
        let Ok(meta) = fs::metadata(&candidate) else {
            continue;
        };
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            return Ok(candidate);
        }
        found_not_executable.get_or_insert(candidate);
    }
    Err(match found_not_executable {
        Some(path) => LaunchError {
            message: format!(
                "cannot execute {}: permission denied (is it executable?)",
                path.display()
            ),
            exit_code: 126,
        },
        None => LaunchError {
            message: format!("command not found: {program} (check the name and your PATH)"),
            exit_code: 127,
        },
    })
}

/// A forked child waiting at the gate.
pub struct GatedChild {
    pub pid: u32,
    gate: libc::c_int,
    errors: libc::c_int,
}

/// Forks a child that waits for [`GatedChild::release`] before it execs `path`.
pub fn spawn_gated(
    path: &Path,
    argv: &[String],
    identity: Option<&Identity>,
) -> Result<GatedChild> {
    let c_path =
        CString::new(path.as_os_str().as_bytes()).context("command path contains a NUL byte")?;
    let c_args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(OsStr::new(a).as_bytes()))
        .collect::<Result<_, _>>()
        .context("command argument contains a NUL byte")?;
    let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    c_argv.push(std::ptr::null());
    let gate = pipe().context("create gate pipe")?;
    let errors = pipe().context("create exec error pipe")?;
    // SAFETY: the child only calls async-signal-safe functions before exec
    // or _exit, so what other threads (the Python hint reader) held at the
    // fork does not matter to it.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        // SAFETY: child side; all pointers were prepared before fork.
        unsafe { child(gate[0], errors[1], &c_path, &c_argv, identity) }
    }
    // SAFETY: closing our copies of the child's ends.
    unsafe {
        libc::close(gate[0]);
        libc::close(errors[1]);
    }
    Ok(GatedChild {
        pid: u32::try_from(pid)?,
        gate: gate[1],
        errors: errors[0],
    })
}

fn pipe() -> std::io::Result<[libc::c_int; 2]> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fds)
}

/// # Safety
/// Must only run in a freshly forked child.
unsafe fn child(
    gate: libc::c_int,
    errors: libc::c_int,
    path: &CString,
    argv: &[*const libc::c_char],
    identity: Option<&Identity>,
) -> ! {
    crate::signals::restore_in_child();
    // SAFETY: async-signal-safe calls only.
    unsafe {
        // 1: exec; anything else (0 from `cancel`): give up.
        let mut byte = 0u8;
        if libc::read(gate, (&raw mut byte).cast(), 1) != 1 || byte != 1 {
            libc::_exit(1);
        }
        if let Some(id) = identity
            && (libc::setgroups(id.groups.len(), id.groups.as_ptr()) != 0
                || libc::setgid(id.gid) != 0
                || libc::setuid(id.uid) != 0)
        {
            report_errno(errors);
            libc::_exit(126);
        }
        libc::execv(path.as_ptr(), argv.as_ptr());
        let errno = report_errno(errors);
        libc::_exit(if errno == libc::ENOENT { 127 } else { 126 });
    }
}

/// # Safety
/// Async-signal-safe; writes errno to `fd`.
unsafe fn report_errno(fd: libc::c_int) -> libc::c_int {
    // SAFETY: errno location is valid for this thread.
    unsafe {
        let errno = *libc::__errno_location();
        libc::write(fd, (&raw const errno).cast(), size_of::<libc::c_int>());
        errno
    }
}

impl GatedChild {
    /// Never lets the child exec: it is told to exit 1.
    pub fn cancel(self) {
        let byte = 0u8;
        // SAFETY: one byte from a valid buffer to our pipe end, then
        // closing our pipe ends once.
        unsafe {
            libc::write(self.gate, (&raw const byte).cast(), 1);
            libc::close(self.gate);
            libc::close(self.errors);
        }
    }

    /// Lets the child exec; fails if the exec did.
    pub fn release(self) -> Result<()> {
        let byte = 1u8;
        // SAFETY: writing one byte from a valid buffer to our pipe end.
        let wrote = unsafe { libc::write(self.gate, (&raw const byte).cast(), 1) };
        let mut errno: libc::c_int = 0;
        // SAFETY: reading at most size_of::<c_int>() into `errno`.
        let got = unsafe {
            libc::read(
                self.errors,
                (&raw mut errno).cast(),
                size_of::<libc::c_int>(),
            )
        };
        // SAFETY: closing our pipe ends once.
        unsafe {
            libc::close(self.gate);
            libc::close(self.errors);
        }
        if wrote != 1 {
            return Err(anyhow!(
                "could not release the command: it exited before exec"
            ));
        }
        if got > 0 {
            let err = std::io::Error::from_raw_os_error(errno);
            let exit_code = if errno == libc::ENOENT { 127 } else { 126 };
            return Err(LaunchError {
                message: format!("cannot execute the command: {err}"),
                exit_code,
            }
            .into());
        }
        Ok(())
    }
}
