//! The report file (`-o FILE`), made safe for a tool that runs as root.
//!
//! It is set up before the command starts, so a path that cannot be written
//! is an error before anything runs. The report goes into a new file in the
//! same directory (created with `O_EXCL | O_NOFOLLOW`, mode 0644, owned by
//! the user who ran sudo), which is renamed over FILE at the end: a symlink
//! or hard link planted at FILE is replaced, never followed. An existing
//! FILE owned by another user, or a symlink in the path owned by another
//! user, is refused. If the report cannot be put in place at the end it is
//! written to standard error instead, so nothing collected is lost.

use std::{
    ffi::{CString, OsStr, OsString},
    fs::{self, File},
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Component, Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::spawn::Identity;

/// A report file being written: a temporary name until [`ReportFile::commit`].
#[derive(Debug)]
pub struct ReportFile {
    path: PathBuf,
    dir: OwnedFd,
    temp: CString,
    name: CString,
    file: Option<File>,
}

impl ReportFile {
    /// Checks `path` and creates the temporary file next to it.
    pub fn create(path: &Path) -> Result<Self> {
        let owner = Identity::sudo_user().map(|i| (i.uid, i.gid));
        // SAFETY: no preconditions.
        let me = owner.map_or_else(|| unsafe { libc::geteuid() }, |(uid, _)| uid);
        let Some(name) = path.file_name() else {
            bail!("-o {}: name a file, not a directory", path.display());
        };
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        refuse_foreign_symlinks(&parent, me)?;
        let dir = open_dir(&parent).with_context(|| {
            format!(
                "-o {}: cannot open directory {}: create it or choose another path",
                path.display(),
                parent.display()
            )
        })?;
        let name = c_name(name)?;
        match stat_at(&dir, &name) {
            // Another user's file or link: theirs to keep, and it may
            // point anywhere. (A root-owned hard link is only replaced.)
            Ok(st) if st.st_uid != me && st.st_uid != 0 => {
                bail!(
                    "-o {}: refusing to replace a file that belongs to uid {}: remove it or choose another path",
                    path.display(),
                    st.st_uid
                );
            }
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                bail!("-o {}: is a directory: name a file", path.display());
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => bail!("-o {}: {e}", path.display()),
        }
        let (temp, file) = create_temp(&dir, name.as_bytes()).with_context(|| {
            format!(
                "-o {}: cannot create a file in {}: check that it is writable",
                path.display(),
                parent.display()
            )
        })?;
        // SAFETY: a valid open fd; plain syscalls on it.
        unsafe {
            libc::fchmod(file.as_raw_fd(), 0o644);
            if let Some((uid, gid)) = owner {
                libc::fchown(file.as_raw_fd(), uid, gid);
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            dir,
            temp,
            name,
            file: Some(file),
        })
    }

    /// Where the report will be.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open temporary file to write the report into.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("not yet committed")
    }

    /// Puts the written report in place.
    pub fn commit(mut self) -> Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_all()
                .with_context(|| format!("write report file {}", self.path.display()))?;
        }
        // SAFETY: both names are NUL-terminated and relative to `dir`.
        let ret = unsafe {
            libc::renameat(
                self.dir.as_raw_fd(),
                self.temp.as_ptr(),
                self.dir.as_raw_fd(),
                self.name.as_ptr(),
            )
        };
        if ret != 0 {
            let e = io::Error::last_os_error();
            bail!("put report file {} in place: {e}", self.path.display());
        }
        // Renamed: nothing to clean up.
        self.temp = CString::default();
        Ok(())
    }
}

impl Drop for ReportFile {
    fn drop(&mut self) {
        if !self.temp.as_bytes().is_empty() {
            // SAFETY: a NUL-terminated name relative to `dir`.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.temp.as_ptr(), 0) };
        }
    }
}

/// Each symlink along `dir` must belong to root or `me`: another user's
/// link could point a root process anywhere.
fn refuse_foreign_symlinks(dir: &Path, me: libc::uid_t) -> Result<()> {
    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .context("read the working directory")?
            .join(dir)
    };
    let mut at = PathBuf::new();
    for part in absolute.components() {
        if part == Component::ParentDir {
            at.pop();
            continue;
        }
        at.push(part);
        let Ok(meta) = fs::symlink_metadata(&at) else {
            return Ok(());
        };
        if meta.file_type().is_symlink() && meta.uid() != 0 && meta.uid() != me {
            bail!(
                "-o: {} is a symlink that belongs to uid {}: refusing to follow it; choose another path",
                at.display(),
                meta.uid()
            );
        }
        if meta.file_type().is_symlink() {
            // Go on from where the link leads.
            at = fs::canonicalize(&at).unwrap_or(at);
        }
    }
    Ok(())
}

fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_name(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).context("-o: the file name has a NUL byte")
}

/// `lstat` of `name` in `dir`: the entry itself, never what it links to.
fn stat_at(dir: &OwnedFd, name: &CString) -> io::Result<libc::stat> {
    // SAFETY: zeroed plain-old-data, filled in by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let flags = libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: a NUL-terminated name and a valid stat buffer.
    if unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// A new `.NAME.fdtrace-PID-N` next to NAME that nobody else can have made.
fn create_temp(dir: &OwnedFd, name: &[u8]) -> io::Result<(CString, File)> {
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for attempt in 0..100u32 {
        let mut temp = OsString::from(".");
        temp.push(OsStr::from_bytes(name));
        temp.push(format!(".fdtrace-{}-{attempt}", std::process::id()));
        let temp = CString::new(temp.as_bytes())?;
        // SAFETY: a NUL-terminated name relative to `dir`.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                temp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: a new fd we own.
            return Ok((temp, unsafe { File::from_raw_fd(fd) }));
        }
        last = io::Error::last_os_error();
        if last.kind() != io::ErrorKind::AlreadyExists {
            break;
        }
    }
    Err(last)
}
