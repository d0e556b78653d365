//! The report file (`-o FILE`), made safe for a tool that runs as root.
//!
//! It is set up before the command starts, so a path that cannot be written
//! is an error before anything runs. The directory is reached through no
//! symlink but root's or the user's own (checked link by link, then opened
//! with `RESOLVE_NO_SYMLINKS`, so one swapped in later fails). The report
//! goes into a new file there (`O_EXCL | O_NOFOLLOW`, a random name, mode
//! 0644, owned by the user who ran sudo), renamed over FILE at the end: a
//! hard link at FILE is replaced, never written through, and a FILE that
//! appeared meanwhile is not replaced. A FILE that belongs to another user
//! is refused. A device or FIFO (`/dev/null`) is written to, never replaced,
//! and so is what a link of root's or the user's own points to
//! (`/dev/stdout`). If the report cannot be put in place at the end it goes
//! to standard error instead, so nothing collected is lost.

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

use crate::spawn::{Identity, invoking_uid};

/// A report file being written, put in place by [`ReportFile::commit`].
#[derive(Debug)]
pub struct ReportFile {
    path: PathBuf,
    dir: OwnedFd,
    name: CString,
    file: Option<File>,
    how: How,
}

#[derive(Debug)]
enum How {
    /// A new file under a temporary name, renamed over `name` at the end;
    /// `existed` says whether `name` existed at setup.
    Replace { temp: CString, existed: bool },
    /// Written where it is: a device or FIFO (`/dev/null`, a terminal), or
    /// what a link of root's or the user's own points to (`/dev/stdout`).
    InPlace,
}

/// Symlinks followed at most while resolving a path, as the kernel does.
const MAX_LINKS: usize = 40;

impl ReportFile {
    /// Checks `path` and opens what the report will be written to.
    pub fn create(path: &Path) -> Result<Self> {
        let owner = Identity::sudo_user().map(|i| (i.uid, i.gid));
        let me = invoking_uid();
        let Some(name) = path.file_name() else {
            bail!("-o {}: name a file, not a directory", path.display());
        };
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let real_parent =
            resolve_trusted(&parent, me).with_context(|| format!("-o {}", path.display()))?;
        let dir = open_dir(&real_parent).with_context(|| {
            format!(
                "-o {}: cannot open directory {}: create it or choose another path",
                path.display(),
                parent.display()
            )
        })?;
        let name = c_name(name)?;
        let existing = match stat_at(&dir, &name) {
            Ok(st) => Some(st),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => bail!("-o {}: {e}", path.display()),
        };
        let (file, how) = match existing {
            // Another user's file or link: theirs to keep, and it may
            // point anywhere.
            Some(st) if st.st_uid != me && st.st_uid != 0 => bail!(
                "-o {}: refusing to write over a file that belongs to uid {}: remove it or choose another path",
                path.display(),
                st.st_uid
            ),
            Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                bail!("-o {}: is a directory: name a file", path.display())
            }
            Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                new_file(&dir, &name, owner, true, path)?
            }
            Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                // root's or the user's own link (/dev/stdout): where it
                // points, as they meant.
                let file = open_in_place(&dir, &name, true).with_context(|| {
                    format!("-o {}: open what the link points to", path.display())
                })?;
                (file, How::InPlace)
            }
            // /dev/null, a terminal, a FIFO: written to, never replaced.
            Some(_) => {
                let file = open_in_place(&dir, &name, false)
                    .with_context(|| format!("-o {}", path.display()))?;
                (file, How::InPlace)
            }
            None => new_file(&dir, &name, owner, false, path)?,
        };
        Ok(Self {
            path: path.to_path_buf(),
            dir,
            name,
            file: Some(file),
            how,
        })
    }

    /// Where the report will be.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file to write the report into.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("not yet committed")
    }

    /// Puts the written report in place.
    pub fn commit(mut self) -> Result<()> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let How::Replace { temp, existed } = &self.how else {
            return Ok(());
        };
        file.sync_all()
            .with_context(|| format!("write report file {}", self.path.display()))?;
        // Only replace a file that was there at setup (and checked then);
        // one that appeared since is left alone.
        let flags = if *existed { 0 } else { RENAME_NOREPLACE };
        // SAFETY: both names are NUL-terminated and relative to `dir`.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                self.dir.as_raw_fd(),
                temp.as_ptr(),
                self.dir.as_raw_fd(),
                self.name.as_ptr(),
                flags,
            )
        };
        if ret != 0 {
            let e = io::Error::last_os_error();
            let unsupported = e.raw_os_error() == Some(libc::EINVAL) && flags != 0;
            if !unsupported || !self.link_in_place(temp) {
                bail!("put report file {} in place: {e}", self.path.display());
            }
        }
        // Renamed: nothing to clean up.
        self.how = How::InPlace;
        Ok(())
    }
}

impl ReportFile {
    /// For filesystems without `RENAME_NOREPLACE` (9p, some FUSE): a hard
    /// link fails just as atomically if the name appeared meanwhile; where
    /// links are not allowed either, a plain rename after checking the name
    /// is still free. True when the report is in place.
    fn link_in_place(&self, temp: &CString) -> bool {
        let dir = self.dir.as_raw_fd();
        // SAFETY: NUL-terminated names relative to `dir`.
        unsafe {
            if libc::linkat(dir, temp.as_ptr(), dir, self.name.as_ptr(), 0) == 0 {
                libc::unlinkat(dir, temp.as_ptr(), 0);
                return true;
            }
            if io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
                return false;
            }
            matches!(stat_at(&self.dir, &self.name), Err(e) if e.kind() == io::ErrorKind::NotFound)
                && libc::renameat(dir, temp.as_ptr(), dir, self.name.as_ptr()) == 0
        }
    }
}

impl Drop for ReportFile {
    fn drop(&mut self) {
        if let How::Replace { temp, .. } = &self.how {
            // SAFETY: a NUL-terminated name relative to `dir`.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), temp.as_ptr(), 0) };
        }
    }
}

/// Creates the trace file `path` (named by `flag`) for writing as tracing
/// goes, so a trace cut short is still there: reached like a report file
/// (no symlink but root's or the user's own on the way), created new with
/// `O_EXCL | O_NOFOLLOW`, mode 0644, owned by the user who ran sudo. An
/// existing name is refused unless `replace`; then only the user's own (or
/// root's) file is removed first, and a name that reappears meanwhile
/// makes the create fail rather than be written through.
pub fn create_new(path: &Path, replace: bool, flag: &str) -> Result<File> {
    let owner = Identity::sudo_user().map(|i| (i.uid, i.gid));
    let me = invoking_uid();
    let Some(name) = path.file_name() else {
        bail!("{flag} {}: name a file, not a directory", path.display());
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let real_parent =
        resolve_trusted(&parent, me).with_context(|| format!("{flag} {}", path.display()))?;
    let dir = open_dir(&real_parent).with_context(|| {
        format!(
            "{flag} {}: cannot open directory {}: create it or choose another path",
            path.display(),
            parent.display()
        )
    })?;
    let name = c_name(name)?;
    match stat_at(&dir, &name) {
        Ok(_) if !replace => bail!(
            "{flag} {}: already exists: choose another name, or add --force to replace it",
            path.display()
        ),
        Ok(st) if st.st_uid != me && st.st_uid != 0 => bail!(
            "{flag} {}: refusing to replace a file that belongs to uid {}: remove it or choose \
             another path",
            path.display(),
            st.st_uid
        ),
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
            bail!("{flag} {}: is a directory: name a file", path.display())
        }
        Ok(_) => {
            // SAFETY: a NUL-terminated name relative to `dir`; a link is
            // removed itself, never what it points to.
            if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
                let e = io::Error::last_os_error();
                bail!("{flag} {}: cannot replace it: {e}", path.display());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => bail!("{flag} {}: {e}", path.display()),
    }
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated name relative to `dir`.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, 0o644) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        bail!(
            "{flag} {}: cannot create it: {e}: check that its directory is writable",
            path.display()
        );
    }
    // SAFETY: a new fd we own.
    let file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: plain syscalls on our open fd.
    let ok = unsafe {
        libc::fchmod(fd, 0o644) == 0
            && owner.is_none_or(|(uid, gid)| libc::fchown(fd, uid, gid) == 0)
    };
    if !ok {
        let e = io::Error::last_os_error();
        // SAFETY: a NUL-terminated name relative to `dir`.
        unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
        bail!(
            "{flag} {}: cannot set its mode or owner: {e}",
            path.display()
        );
    }
    Ok(file)
}

/// `RENAME_NOREPLACE` (include/uapi/linux/fs.h).
const RENAME_NOREPLACE: libc::c_uint = 1;

/// A new file next to `name`, mode 0644 and the sudo user's.
fn new_file(
    dir: &OwnedFd,
    name: &CString,
    owner: Option<(libc::uid_t, libc::gid_t)>,
    existed: bool,
    path: &Path,
) -> Result<(File, How)> {
    let (temp, file) = create_temp(dir, name.as_bytes()).with_context(|| {
        format!(
            "-o {}: cannot create a file next to it: check that its directory is writable",
            path.display()
        )
    })?;
    let fd = file.as_raw_fd();
    // SAFETY: a valid open fd; plain syscalls on it.
    let ok = unsafe {
        libc::fchmod(fd, 0o644) == 0
            && owner.is_none_or(|(uid, gid)| libc::fchown(fd, uid, gid) == 0)
    };
    if !ok {
        let e = io::Error::last_os_error();
        // SAFETY: a NUL-terminated name relative to `dir`.
        unsafe { libc::unlinkat(dir.as_raw_fd(), temp.as_ptr(), 0) };
        bail!(
            "-o {}: cannot set the report's mode or owner: {e}",
            path.display()
        );
    }
    Ok((file, How::Replace { temp, existed }))
}

/// Opens `name` for writing where it is: following it only if `follow`
/// (a link checked to be root's or the user's), never creating, never
/// becoming our terminal, never blocking on a FIFO without a reader.
fn open_in_place(dir: &OwnedFd, name: &CString, follow: bool) -> io::Result<File> {
    let mut flags = libc::O_WRONLY | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    // SAFETY: a NUL-terminated name relative to `dir`.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    let file = unsafe { File::from_raw_fd(fd) };
    let meta = file.metadata()?;
    // SAFETY: plain fcntl on our fd: back to blocking writes.
    unsafe { libc::fcntl(fd, libc::F_SETFL, 0) };
    if meta.is_file() {
        file.set_len(0)?;
    }
    Ok(file)
}

/// `dir` as a path without symlinks, each symlink on the way (and along
/// the links it leads to) checked to belong to root or `me`: another user's
/// link could point a root process anywhere.
fn resolve_trusted(dir: &Path, me: libc::uid_t) -> Result<PathBuf> {
    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .context("read the working directory")?
            .join(dir)
    };
    let mut pending: Vec<OsString> = absolute
        .components()
        .rev()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let mut at = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match Path::new(&part).components().next() {
            Some(Component::RootDir) => {
                at = PathBuf::from("/");
                continue;
            }
            Some(Component::ParentDir) => {
                at.pop();
                continue;
            }
            Some(Component::CurDir) | None => continue,
            Some(_) => {}
        }
        let next = at.join(&part);
        let Ok(meta) = fs::symlink_metadata(&next) else {
            // Missing: opening it will say so.
            at = next;
            continue;
        };
        if !meta.file_type().is_symlink() {
            at = next;
            continue;
        }
        if meta.uid() != 0 && meta.uid() != me {
            bail!(
                "{} is a symlink that belongs to uid {}: refusing to follow it; choose another path",
                next.display(),
                meta.uid()
            );
        }
        links += 1;
        if links > MAX_LINKS {
            bail!("{}: too many levels of symbolic links", dir.display());
        }
        let target =
            fs::read_link(&next).with_context(|| format!("read the symlink {}", next.display()))?;
        pending.extend(
            target
                .components()
                .rev()
                .map(|c| c.as_os_str().to_os_string()),
        );
    }
    Ok(at)
}

/// Opens a directory by a path that must not contain a symlink now: one
/// swapped in since [`resolve_trusted`] looked fails instead of leading
/// elsewhere (`openat2` with `RESOLVE_NO_SYMLINKS`, Linux 5.6).
fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    /// `struct open_how` (include/uapi/linux/openat2.h).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;
    let c = CString::new(dir.as_os_str().as_bytes())?;
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: a NUL-terminated path and an open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &raw const how,
            size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| io::ErrorKind::InvalidData)?;
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

/// A new `.NAME.fdtrace-RANDOM` next to NAME that nobody else can have made.
fn create_temp(dir: &OwnedFd, name: &[u8]) -> io::Result<(CString, File)> {
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..16 {
        let mut random = [0u8; 8];
        // SAFETY: fills the buffer of the length passed.
        if unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) } != 8 {
            return Err(io::Error::last_os_error());
        }
        let mut temp = OsString::from(".");
        temp.push(OsStr::from_bytes(name));
        temp.push(format!(".fdtrace-{:016x}", u64::from_ne_bytes(random)));
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
