//! Decoding stage: ring-buffer bytes -> [`Event`]s that say what happened to
//! which descriptors, in the kernel's terms turned into ours (which syscall
//! flag means close-on-exec, which fds a call created). Pure: no I/O.

use std::mem::offset_of;

use anyhow::{Result, anyhow, bail};
use fdtrace_common::{
    CLOEXEC_CLEARED, CLOEXEC_SET, DeferredFd, EventHeader, EventKind, FILE_ARGV_AT,
    FILE_ARGV_BYTES, FILE_NONE, FILE_PATH_BYTES, FILE_PATH_END, FILE_PATH_TRUNCATED, FLAG_PY_GC,
    FLAG_PY_SHUTDOWN, FLAG_SAMPLE_AFTER_SHORT, FLAG_STACK_FROM_SP, FLAG_STOPPED, FileRecord,
    FileUse, KeptRecord, MAX_EVENT_FDS, NO_ARG, PAGE_SIZE, PY_STACK_HEADER, PY_TRUNCATED,
    PY_WINDOW_CODE, PY_WINDOW_FILENAME, PY_WINDOW_NAME, PY_WINDOW_TABLE, PyCodeRecord, PyFrameSlot,
    PyStackRecord, SHORT_HEADER, StackMode, Syscall, TEXT_LEN, fd_arguments, fd_syscall_name, nr,
};

use serde::{Deserialize, Serialize};

use crate::procfs::classify_link;

/// A descriptor number.
pub type Fd = i32;

/// A syscall's name (an alias, so serde does not try to borrow it).
pub type SyscallName = &'static str;

/// One decoded record.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    /// The kernel stopped the process at an EMFILE failure, as asked
    /// (`--on-emfile stop`).
    pub stopped: bool,
    pub action: Action,
}

/// What a descriptor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FdKind {
    File,
    /// Opened with O_DIRECTORY (`opendir`, a `*at` base, a working directory).
    Directory,
    Socket,
    Pipe,
    Eventfd,
    Epoll,
    Timerfd,
    Signalfd,
    Inotify,
    Fanotify,
    Memfd,
    Pidfd,
    IoUring,
    Userfaultfd,
    Perf,
    Other,
    /// Not known from the syscall alone (dup of an unknown fd, SCM_RIGHTS):
    /// userspace asks /proc.
    Unknown,
}

impl FdKind {
    pub fn name(self) -> &'static str {
        match self {
            FdKind::File => "file",
            FdKind::Directory => "directory",
            FdKind::Socket => "socket",
            FdKind::Pipe => "pipe",
            FdKind::Eventfd => "eventfd",
            FdKind::Epoll => "epoll",
            FdKind::Timerfd => "timerfd",
            FdKind::Signalfd => "signalfd",
            FdKind::Inotify => "inotify",
            FdKind::Fanotify => "fanotify",
            FdKind::Memfd => "memfd",
            FdKind::Pidfd => "pidfd",
            FdKind::IoUring => "io_uring",
            FdKind::Userfaultfd => "userfaultfd",
            FdKind::Perf => "perf",
            FdKind::Other | FdKind::Unknown => "other",
        }
    }
}

/// Which end of a socket an address belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    Local,
    Peer,
}

/// User registers and stack bytes captured at a syscall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StackSample {
    /// A copy of the user stack from `sp` up, to unwind with CFI.
    Raw {
        ip: u64,
        sp: u64,
        bp: u64,
        bytes: Vec<u8>,
    },
    /// Return addresses from a frame-pointer walk, innermost first.
    FramePointer(Vec<u64>),
}

/// How a new descriptor came to be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Creation {
    #[serde(with = "crate::record::wire::syscall")]
    pub syscall: Syscall,
    /// Descriptors created (two for pipe/socketpair, many for SCM_RIGHTS).
    pub fds: Vec<Fd>,
    pub kind: FdKind,
    pub cloexec: bool,
    /// Copy kind and target from this fd (dup*, fcntl F_DUPFD*), or the
    /// listening socket's local address (accept).
    pub like: Option<Fd>,
    /// What the arguments say it refers to: a path, a memfd name, a socket.
    pub target: Option<String>,
    /// Socket family and type from socket()/socketpair().
    pub socket: Option<(u16, u32)>,
    /// Peer address written by accept().
    pub peer: Option<String>,
    #[serde(skip)]
    pub stack: Option<StackSample>,
    /// Opened by CPython's own cleanup: during interpreter shutdown, or by
    /// a finalizer the garbage collector ran.
    pub in_cleanup: bool,
}

/// Who closed a descriptor, as far as the kernel could tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Closer {
    /// The program, in its own time.
    #[default]
    Program,
    /// CPython's interpreter shutdown (`Py_FinalizeEx` past the exit
    /// handlers) closed it: nothing the program ran released it.
    InterpreterShutdown,
    /// CPython's cyclic garbage collector freed the object holding it.
    GarbageCollector,
}

/// Recorded traces (`record`) store these as they were applied, stack
/// samples left out (the recording names the sample instead).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Action {
    Create(Creation),
    Close {
        fd: Fd,
        by: Closer,
        /// Where it was called from (a compact sample: see
        /// `capture::close_site` in the kernel crate).
        #[serde(skip)]
        stack: Option<StackSample>,
    },
    /// A call given descriptors failed with EBADF: one of `fds` was not
    /// open (or was open in a mode the call cannot use).
    BadFd {
        #[serde(with = "crate::record::wire::syscall_name")]
        syscall: SyscallName,
        /// The descriptor arguments, in order (not `AT_FDCWD`).
        fds: Vec<Fd>,
        #[serde(skip)]
        stack: Option<StackSample>,
    },
    /// `close_range(first, last, flags)`; with `cloexec_only` it only marks.
    CloseRange {
        first: u32,
        last: u32,
        cloexec_only: bool,
        /// Taken for a single descriptor (`first == last`) only.
        #[serde(skip)]
        stack: Option<StackSample>,
    },
    SetCloexec {
        fd: Fd,
        on: bool,
    },
    Address {
        fd: Fd,
        side: Side,
        address: String,
    },
    /// A creation failed with EMFILE or ENFILE.
    Exhausted {
        #[serde(with = "crate::record::wire::syscall")]
        syscall: Syscall,
        errno: i32,
        argument: Option<String>,
        /// RLIMIT_NOFILE (soft, hard) at the failure, as the kernel had it.
        limit: Option<(u64, u64)>,
        #[serde(skip)]
        stack: Option<StackSample>,
    },
    ExitGroup {
        status: i32,
    },
    /// select()/pselect6() with `nfds` above FD_SETSIZE: an fd_set was
    /// written past its end.
    FdSetOverflow {
        #[serde(with = "crate::record::wire::syscall")]
        syscall: Syscall,
        nfds: u64,
        #[serde(skip)]
        stack: Option<StackSample>,
    },
    /// A call that changed nothing we track (dup2 onto itself, a signalfd
    /// mask update, a bind to an unknown address family).
    Nothing,
    /// A new process (not a thread) forked by the event's process.
    Fork {
        child: u32,
    },
    Exec {
        filename: String,
    },
    /// The program an exec started, where it and its ELF interpreter were
    /// loaded (AT_ENTRY, and AT_BASE or 0).
    Image {
        path: Option<String>,
        entry: u64,
        interpreter_base: u64,
        /// Its arguments, as far as the kernel copied them (`None` when
        /// they did not fit or could not be read).
        argv: Option<Vec<String>>,
        /// RLIMIT_NOFILE (soft, hard) it started with.
        limit: Option<(u64, u64)>,
    },
    /// Executable memory was mapped: a file's code (`path`) or anonymous.
    Mmap {
        start: u64,
        len: u64,
        offset: u64,
        path: Option<String>,
    },
    /// What a descriptor that arrived whole (SCM_RIGHTS, pidfd_getfd,
    /// open_by_handle_at) refers to, as the kernel saw it.
    Received {
        fd: Fd,
        kind: FdKind,
        target: String,
    },
    Exit,
    /// First use of a descriptor the process inherited across its last
    /// exec: it was handed over on purpose.
    Use {
        fd: Fd,
    },
    /// CPython frames of the thread's next syscall event (same `ts_ns`).
    #[serde(skip)]
    PyStack(PyStack),
    /// A CPython code object met for the first time in the process, as
    /// the kernel copied it.
    #[serde(skip)]
    PyCode(PyCode),
}

/// A CPython code object and the objects it points to, as copied ranges
/// of the process's memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PyCode {
    pub code: u64,
    pub tag: u64,
    /// (address, bytes read there): the code object, its file name, its
    /// name and its line table, each as much as could be read.
    pub windows: Vec<(u64, Vec<u8>)>,
}

/// Raw CPython frames, innermost first, as the kernel found them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PyStack {
    /// Frames, and boundaries (`code == 0`) closing the run of frames one
    /// native evaluation call executed.
    pub slots: Vec<PyFrameSlot>,
    /// Outer frames did not fit.
    pub truncated: bool,
}

// Flag values from include/uapi (x86_64).
const O_CLOEXEC: u64 = 0o2_000_000;
const O_DIRECTORY: u64 = 0o200_000;

/// What an open with `flags` made: the call fails unless a directory
/// was named with O_DIRECTORY.
fn open_kind(flags: u64) -> FdKind {
    if flags & O_DIRECTORY != 0 {
        FdKind::Directory
    } else {
        FdKind::File
    }
}
const SOCK_CLOEXEC: u64 = O_CLOEXEC;
const FAN_CLOEXEC: u64 = 0x1;
const MFD_CLOEXEC: u64 = 0x1;
const PERF_FLAG_FD_CLOEXEC: u64 = 0x8;
const MSG_CMSG_CLOEXEC: u64 = 0x4000_0000;
const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;
const FD_CLOEXEC: u64 = 1;
const F_DUPFD_CLOEXEC: u64 = 1030;
const FIOCLEX: u64 = 0x5451;
const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// A record that brings a process to a monitor's attention: a program
/// exec'd, or a process forked. Read from the record's fixed header
/// alone, so the monitor can decide about the process before the record
/// is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// `comm` is the name the kernel gave the new program (the file
    /// name's last component, 15 bytes at most); `cgroup` its cgroup v2
    /// id.
    Exec {
        tgid: u32,
        comm: String,
        cgroup: u64,
    },
    Fork {
        parent: u32,
        child: u32,
    },
    /// A whole process exited: its pid may be reused.
    Exit {
        tgid: u32,
    },
}

/// The kernel's `TASK_COMM_LEN` less its terminating NUL.
const COMM_LEN: usize = 15;

/// The process a record with the fixed header is about; `None` for the
/// records laid out otherwise (Python stacks and code, files, kept
/// creations), which the decoder handles.
pub fn process_of(bytes: &[u8]) -> Option<u32> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let kind = word(offset_of!(EventHeader, kind))?;
    let other = [
        EventKind::PyStack,
        EventKind::File,
        EventKind::PyCode,
        EventKind::Kept,
    ];
    if other.iter().any(|k| *k as u32 == kind) {
        return None;
    }
    word(offset_of!(EventHeader, tgid))
}

/// The [`Arrival`] a ring-buffer record is, if any.
pub fn arrival(bytes: &[u8]) -> Option<Arrival> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let kind = word(offset_of!(EventHeader, kind))?;
    let tgid = word(offset_of!(EventHeader, tgid))?;
    if kind == EventKind::Exec as u32 {
        let at = offset_of!(EventHeader, args);
        let cgroup = u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?);
        let len = usize::try_from(word(offset_of!(EventHeader, text_len))?).ok()?;
        let start = offset_of!(EventHeader, text);
        let path = bytes.get(start..start + len.min(TEXT_LEN))?;
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        let comm = String::from_utf8_lossy(&name[..name.len().min(COMM_LEN)]).into_owned();
        return Some(Arrival::Exec { tgid, comm, cgroup });
    }
    if kind == EventKind::Exit as u32 {
        return Some(Arrival::Exit { tgid });
    }
    if kind == EventKind::Fork as u32 {
        // `args[0]`, a pid, in the low half of the word (little-endian).
        let child = word(offset_of!(EventHeader, args))?;
        return Some(Arrival::Fork {
            parent: tgid,
            child,
        });
    }
    None
}

/// Decodes one ring-buffer record captured with `stack_mode`.
pub fn decode(bytes: &[u8], stack_mode: StackMode) -> Result<Event> {
    let kind: [u8; 4] = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("short record: {} bytes", bytes.len()))?;
    if u32::from_ne_bytes(kind) == EventKind::PyStack as u32 {
        return decode_py_stack(bytes);
    }
    if u32::from_ne_bytes(kind) == EventKind::File as u32 {
        return decode_file(bytes);
    }
    if u32::from_ne_bytes(kind) == EventKind::PyCode as u32 {
        return decode_py_code(bytes);
    }
    if u32::from_ne_bytes(kind) == EventKind::Kept as u32 {
        return decode_kept(bytes);
    }
    let header_len = size_of::<EventHeader>();
    if bytes.len() < header_len || flags_of(bytes) & FLAG_SAMPLE_AFTER_SHORT != 0 {
        return decode_short(bytes, stack_mode);
    }
    // SAFETY: the length was checked; EventHeader is plain integers and
    // arrays of integers, so any bit pattern is a valid value.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let stack_len = usize::try_from(header.stack_len)?;
    let stack_bytes = bytes
        .get(header_len..header_len + stack_len)
        .ok_or_else(|| anyhow!("record shorter than its stack sample"))?;
    decode_header(&header, stack_bytes, stack_mode)
}

/// The `flags` of a record with an event header, 0 if it is too short.
fn flags_of(bytes: &[u8]) -> u32 {
    let at = std::mem::offset_of!(EventHeader, flags);
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

/// A record cut after `stack_len` ([`SHORT_HEADER`] bytes): the rest of
/// the header is zero, with no descriptors. Its stack sample, if
/// [`FLAG_SAMPLE_AFTER_SHORT`] says it has one, follows right there.
fn decode_short(bytes: &[u8], stack_mode: StackMode) -> Result<Event> {
    if bytes.len() < SHORT_HEADER {
        bail!(
            "short record: {} bytes, the shortest header is {SHORT_HEADER}",
            bytes.len()
        );
    }
    let mut whole = [0u8; size_of::<EventHeader>()];
    whole[..SHORT_HEADER].copy_from_slice(&bytes[..SHORT_HEADER]);
    // SAFETY: `whole` is a whole header's bytes; EventHeader is plain
    // integers and arrays of integers, so any bit pattern is valid.
    let mut header: EventHeader = unsafe { std::ptr::read_unaligned(whole.as_ptr().cast()) };
    header.fds = [-1; MAX_EVENT_FDS];
    if header.flags & FLAG_SAMPLE_AFTER_SHORT == 0 {
        header.stack_len = 0;
        return decode_header(&header, &[], stack_mode);
    }
    let len = usize::try_from(header.stack_len)?;
    let sample = bytes
        .get(SHORT_HEADER..SHORT_HEADER + len)
        .ok_or_else(|| anyhow!("record shorter than its stack sample"))?;
    // A close's sample is a stack copy from sp in every mode that takes
    // one (see `capture::close_site` in the kernel crate).
    let mode = match stack_mode {
        StackMode::None => StackMode::None,
        StackMode::FramePointer | StackMode::Dwarf => StackMode::Dwarf,
    };
    decode_header(&header, sample, mode)
}

/// A [`KeptRecord`]: the creation the kernel kept, handed over before the
/// close by CPython's shutdown or collector that follows it, as one
/// creation event with the close-on-exec state it had by then.
fn decode_kept(bytes: &[u8]) -> Result<Event> {
    if bytes.len() < size_of::<KeptRecord>() {
        bail!("short kept record: {} bytes", bytes.len());
    }
    // SAFETY: the length was checked; the record is plain integers and
    // arrays of integers, so any bit pattern is a valid value.
    let record: KeptRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let mut events = decode_deferred(record.tgid, record.fd, &record.entry)?;
    let mut event = events.swap_remove(0);
    if let (
        Action::Create(c),
        Some(Event {
            action: Action::SetCloexec { on, .. },
            ..
        }),
    ) = (&mut event.action, events.first())
    {
        c.cloexec = *on;
    }
    Ok(event)
}

/// The creation the kernel kept for descriptor `fd` of `tgid` instead of
/// writing it (see [`fdtrace_common::DEFERRED_MAP`]), as the event it would
/// have been (no stack), followed by what F_SETFD/FIOCLEX since changed.
pub fn decode_deferred(tgid: u32, fd: Fd, kept: &DeferredFd) -> Result<Vec<Event>> {
    let header = kept.to_header(tgid, fd);
    let mut events = vec![decode_header(&header, &[], StackMode::None)?];
    let on = match kept.cloexec {
        CLOEXEC_SET => Some(true),
        CLOEXEC_CLEARED => Some(false),
        _ => None,
    };
    if let Some(on) = on {
        events.push(Event {
            action: Action::SetCloexec { fd, on },
            ..events[0].clone()
        });
    }
    Ok(events)
}

fn decode_header(header: &EventHeader, stack_bytes: &[u8], stack_mode: StackMode) -> Result<Event> {
    let header = *header;
    let kind = EventKind::try_from(header.kind).map_err(|k| anyhow!("unknown event kind {k}"))?;
    let text = text_of(&header);
    let action = match kind {
        EventKind::Fork => Action::Fork {
            child: u32::try_from(header.args[0])?,
        },
        EventKind::Exec => Action::Exec {
            filename: String::from_utf8_lossy(text).into_owned(),
        },
        EventKind::Exit => Action::Exit,
        EventKind::Use => Action::Use {
            fd: Fd::try_from(header.args[0])?,
        },
        EventKind::PyStack | EventKind::PyCode => bail!("a Python record with an event header"),
        EventKind::Kept => bail!("a kept creation with an event header"),
        EventKind::File => bail!("a file record with an event header"),
        EventKind::BadFd => bad_fd(&header, stack_bytes, stack_mode)?,
        EventKind::Syscall => {
            let syscall =
                Syscall::try_from(header.syscall).map_err(|s| anyhow!("unknown syscall id {s}"))?;
            syscall_action(syscall, &header, text, stack_bytes, stack_mode)?
        }
    };
    Ok(Event {
        ts_ns: header.ts_ns,
        tgid: header.tgid,
        tid: header.tid,
        stopped: header.flags & FLAG_STOPPED != 0,
        action,
    })
}

/// `*at` calls' "the current directory" in place of a directory descriptor.
const AT_FDCWD: Fd = -100;

/// An EBADF failure of x86_64 syscall `header.syscall`.
fn bad_fd(header: &EventHeader, stack: &[u8], mode: StackMode) -> Result<Action> {
    let nr = u64::from(header.syscall);
    let name = fd_syscall_name(nr).ok_or_else(|| anyhow!("EBADF of unknown syscall {nr}"))?;
    let (first, second) = if nr == nr::CLOSE {
        (0, NO_ARG)
    } else {
        fd_arguments(nr)
    };
    let fds = [first, second]
        .into_iter()
        .filter_map(|i| header.args.get(i).copied())
        .map(fd_arg)
        .filter(|&fd| fd != AT_FDCWD)
        .collect();
    Ok(Action::BadFd {
        syscall: name,
        fds,
        stack: stack_sample(header, stack, mode),
    })
}

/// A [`fdtrace_common::PyStackRecordOf`] of any length: a creation's has
/// room for [`fdtrace_common::MAX_PY_SLOTS`] frames, a close's for [`fdtrace_common::CLOSE_PY_SLOTS`].
fn decode_py_stack(bytes: &[u8]) -> Result<Event> {
    let slot_size = size_of::<PyFrameSlot>();
    if bytes.len() < PY_STACK_HEADER + slot_size {
        bail!("short Python stack record: {} bytes", bytes.len());
    }
    let mut whole = [0u8; size_of::<PyStackRecord>()];
    let copied = bytes.len().min(whole.len());
    whole[..copied].copy_from_slice(&bytes[..copied]);
    // SAFETY: `whole` is a whole record's bytes; the record is plain
    // integers, so any bit pattern is a valid value.
    let record: PyStackRecord = unsafe { std::ptr::read_unaligned(whole.as_ptr().cast()) };
    let room = (copied - PY_STACK_HEADER) / slot_size;
    let len = usize::try_from(record.len)?.min(room);
    Ok(Event {
        ts_ns: record.ts_ns,
        tgid: record.tgid,
        tid: record.tid,
        stopped: false,
        action: Action::PyStack(PyStack {
            slots: record.slots[..len].to_vec(),
            truncated: record.flags & PY_TRUNCATED != 0,
        }),
    })
}

/// `super_block.s_magic` values (include/uapi/linux/magic.h).
const SOCKFS_MAGIC: u64 = 0x534f_434b;
const PIPEFS_MAGIC: u64 = 0x5049_5045;
const ANON_INODE_FS_MAGIC: u64 = 0x0904_1934;
const PID_FS_MAGIC: u64 = 0x5049_4446;

fn decode_file(bytes: &[u8]) -> Result<Event> {
    if bytes.len() < size_of::<FileRecord>() {
        bail!("short file record: {} bytes", bytes.len());
    }
    // SAFETY: the length was checked; the record is plain integers and
    // arrays of integers, so any bit pattern is a valid value.
    let record: FileRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let usage = FileUse::try_from(record.usage).map_err(|u| anyhow!("unknown file use {u}"))?;
    let path = file_path(&record);
    let [a0, a1, a2] = record.args;
    let action = match usage {
        FileUse::Exec => Action::Image {
            path,
            entry: a0,
            interpreter_base: a1,
            argv: argv(&record.path[FILE_ARGV_AT..], a2),
            limit: (record.nofile_limit[1] != 0)
                .then_some((record.nofile_limit[0], record.nofile_limit[1])),
        },
        FileUse::Mmap => Action::Mmap {
            start: a0,
            offset: a1,
            len: a2,
            path,
        },
        FileUse::Received => {
            let fd = fd_arg(a2);
            let link = describe_file(&record, path.as_deref());
            let (kind, target) = match &link {
                Some(link) => classify_link(link),
                None => (FdKind::Other, String::new()),
            };
            Action::Received { fd, kind, target }
        }
    };
    Ok(Event {
        ts_ns: record.ts_ns,
        tgid: record.tgid,
        tid: record.tid,
        stopped: false,
        action,
    })
}

/// NUL-separated arguments, `len` bytes of `bytes`; `None` if empty or cut
/// (the kernel copies one byte less than it has room for).
fn argv(bytes: &[u8], len: u64) -> Option<Vec<String>> {
    let len = usize::try_from(len).ok()?;
    if len == 0 || len >= FILE_ARGV_BYTES - 1 {
        return None;
    }
    let bytes = bytes.get(..len)?;
    Some(
        bytes
            .split(|&b| b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect(),
    )
}

/// The path a file record carries; `None` for no file, or for a path cut
/// short (a tail would name the wrong file).
fn file_path(record: &FileRecord) -> Option<String> {
    if record.flags & (FILE_NONE | FILE_PATH_TRUNCATED) != 0 {
        return None;
    }
    let start = usize::try_from(record.path_start).ok()?;
    let end = usize::try_from(FILE_PATH_END).ok()?.min(FILE_PATH_BYTES);
    let bytes = record.path.get(start..end)?;
    if bytes.is_empty() {
        return Some("/".to_owned());
    }
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// What `/proc/PID/fd/N` would say of the file: `socket:[ino]`,
/// `pipe:[ino]`, `anon_inode:[name]` or its path.
fn describe_file(record: &FileRecord, path: Option<&str>) -> Option<String> {
    let name = || path.map(|p| p.trim_start_matches('/').to_owned());
    Some(match record.magic {
        SOCKFS_MAGIC => format!("socket:[{}]", record.ino),
        PIPEFS_MAGIC => format!("pipe:[{}]", record.ino),
        ANON_INODE_FS_MAGIC => format!("anon_inode:{}", name()?),
        PID_FS_MAGIC => "anon_inode:[pidfd]".to_owned(),
        _ => path?.to_owned(),
    })
}

fn decode_py_code(bytes: &[u8]) -> Result<Event> {
    if bytes.len() < size_of::<PyCodeRecord>() {
        bail!("short Python code record: {} bytes", bytes.len());
    }
    // SAFETY: the length was checked; the record is plain integers and
    // byte arrays, so any bit pattern is a valid value.
    let record: PyCodeRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let arrays: [(usize, &[u8]); 4] = [
        (PY_WINDOW_CODE, &record.code_bytes),
        (PY_WINDOW_FILENAME, &record.filename),
        (PY_WINDOW_NAME, &record.name),
        (PY_WINDOW_TABLE, &record.line_table),
    ];
    let windows = arrays
        .into_iter()
        .filter_map(|(i, array)| {
            let window = record.windows[i];
            let len = usize::try_from(window.len).ok()?.min(array.len());
            (len > 0).then(|| (window.addr, array[..len].to_vec()))
        })
        .collect();
    Ok(Event {
        ts_ns: 0,
        tgid: record.tgid,
        tid: 0,
        stopped: false,
        action: Action::PyCode(PyCode {
            code: record.code,
            tag: record.tag,
            windows,
        }),
    })
}

/// The inode number the kernel put in a pipe event's text, if it found one.
fn pipe_inode(header: &EventHeader) -> Option<u64> {
    if header.text_len != 8 {
        return None;
    }
    let ino = u64::from_ne_bytes(header.text[..8].try_into().ok()?);
    (ino != 0).then_some(ino)
}

fn text_of(header: &EventHeader) -> &[u8] {
    let len = usize::try_from(header.text_len).unwrap_or(0).min(TEXT_LEN);
    let text = &header.text[..len];
    // String reads include the terminating NUL.
    text.strip_suffix(&[0]).unwrap_or(text)
}

fn fd_arg(value: u64) -> Fd {
    // Descriptor arguments are C ints: the low 32 bits, sign included.
    i32::from_ne_bytes((value as u32).to_ne_bytes())
}

fn stack_sample(header: &EventHeader, bytes: &[u8], mode: StackMode) -> Option<StackSample> {
    match mode {
        StackMode::None => None,
        _ if header.regs == [0; 3] => None,
        StackMode::FramePointer => {
            let frames = bytes.chunks_exact(8).map(|c| {
                let word: [u8; 8] = c.try_into().unwrap_or([0; 8]);
                u64::from_ne_bytes(word)
            });
            Some(StackSample::FramePointer(
                frames.take_while(|&a| a != 0).collect(),
            ))
        }
        StackMode::Dwarf => {
            // The copy starts at sp, or at the page holding it.
            let sp = header.regs[1];
            let skip = if header.flags & FLAG_STACK_FROM_SP != 0 {
                0
            } else {
                usize::try_from(sp & (PAGE_SIZE - 1)).ok()?
            };
            Some(StackSample::Raw {
                ip: header.regs[0],
                sp,
                bp: header.regs[2],
                bytes: bytes.get(skip..).unwrap_or_default().to_vec(),
            })
        }
    }
}

fn syscall_action(
    syscall: Syscall,
    h: &EventHeader,
    text: &[u8],
    stack: &[u8],
    mode: StackMode,
) -> Result<Action> {
    let a = &h.args;
    let text_str = || (!text.is_empty()).then(|| String::from_utf8_lossy(text).into_owned());
    if matches!(syscall, Syscall::Select | Syscall::Pselect6) {
        return Ok(Action::FdSetOverflow {
            syscall,
            nfds: a[0],
            stack: stack_sample(h, stack, mode),
        });
    }
    if h.ret < 0 {
        let errno = i32::try_from(-h.ret)?;
        let [soft, hard] = h.nofile_limit;
        return Ok(Action::Exhausted {
            syscall,
            errno,
            argument: text_str(),
            limit: (hard != 0).then_some((soft, hard)),
            stack: stack_sample(h, stack, mode),
        });
    }
    let ret_fd = i32::try_from(h.ret)?;
    let received: Vec<Fd> = h.fds[..usize::try_from(h.nfds)?.min(MAX_EVENT_FDS)].to_vec();
    let create = |kind: FdKind, cloexec: bool| Creation {
        syscall,
        fds: vec![ret_fd],
        kind,
        cloexec,
        like: None,
        target: None,
        socket: None,
        peer: None,
        stack: stack_sample(h, stack, mode),
        in_cleanup: h.flags & (FLAG_PY_SHUTDOWN | FLAG_PY_GC) != 0,
    };
    let action = match syscall {
        Syscall::Open | Syscall::Creat => Action::Create(Creation {
            target: text_str(),
            ..create(
                open_kind(if syscall == Syscall::Open { a[1] } else { 0 }),
                syscall == Syscall::Open && a[1] & O_CLOEXEC != 0,
            )
        }),
        // openat2: the kernel programs put `how->flags` in args[2].
        Syscall::Openat | Syscall::Openat2 => Action::Create(Creation {
            target: text_str(),
            ..create(open_kind(a[2]), a[2] & O_CLOEXEC != 0)
        }),
        Syscall::OpenByHandleAt => Action::Create(create(FdKind::Unknown, a[2] & O_CLOEXEC != 0)),
        Syscall::Socket => Action::Create(Creation {
            socket: Some((u16::try_from(a[0] & 0xffff)?, u32::try_from(a[1] & 0xf)?)),
            ..create(FdKind::Socket, a[1] & SOCK_CLOEXEC != 0)
        }),
        Syscall::Socketpair => Action::Create(Creation {
            fds: received,
            socket: Some((u16::try_from(a[0] & 0xffff)?, u32::try_from(a[1] & 0xf)?)),
            ..create(FdKind::Socket, a[1] & SOCK_CLOEXEC != 0)
        }),
        Syscall::Accept | Syscall::Accept4 => Action::Create(Creation {
            like: Some(fd_arg(a[0])),
            peer: decode_sockaddr(text),
            ..create(
                FdKind::Socket,
                syscall == Syscall::Accept4 && a[3] & SOCK_CLOEXEC != 0,
            )
        }),
        Syscall::Pipe | Syscall::Pipe2 => Action::Create(Creation {
            fds: received,
            target: pipe_inode(h).map(|ino| format!("pipe:[{ino}]")),
            ..create(
                FdKind::Pipe,
                syscall == Syscall::Pipe2 && a[1] & O_CLOEXEC != 0,
            )
        }),
        Syscall::Dup | Syscall::Dup2 | Syscall::Dup3 => {
            if syscall != Syscall::Dup && fd_arg(a[0]) == fd_arg(a[1]) {
                // dup2(fd, fd) changes nothing.
                return Ok(Action::Nothing);
            }
            Action::Create(Creation {
                like: Some(fd_arg(a[0])),
                ..create(
                    FdKind::Unknown,
                    syscall == Syscall::Dup3 && a[2] & O_CLOEXEC != 0,
                )
            })
        }
        Syscall::Fcntl => match a[1] {
            2 => Action::SetCloexec {
                fd: fd_arg(a[0]),
                on: a[2] & FD_CLOEXEC != 0,
            },
            cmd => Action::Create(Creation {
                like: Some(fd_arg(a[0])),
                ..create(FdKind::Unknown, cmd == F_DUPFD_CLOEXEC)
            }),
        },
        Syscall::Eventfd => Action::Create(create(FdKind::Eventfd, false)),
        Syscall::Eventfd2 => Action::Create(create(FdKind::Eventfd, a[1] & O_CLOEXEC != 0)),
        Syscall::EpollCreate => Action::Create(create(FdKind::Epoll, false)),
        Syscall::EpollCreate1 => Action::Create(create(FdKind::Epoll, a[0] & O_CLOEXEC != 0)),
        Syscall::TimerfdCreate => Action::Create(create(FdKind::Timerfd, a[1] & O_CLOEXEC != 0)),
        Syscall::Signalfd | Syscall::Signalfd4 => {
            if fd_arg(a[0]) != -1 {
                // An existing signalfd got a new mask: nothing was created.
                return Ok(Action::Nothing);
            }
            Action::Create(create(
                FdKind::Signalfd,
                syscall == Syscall::Signalfd4 && a[3] & O_CLOEXEC != 0,
            ))
        }
        Syscall::InotifyInit => Action::Create(create(FdKind::Inotify, false)),
        Syscall::InotifyInit1 => Action::Create(create(FdKind::Inotify, a[0] & O_CLOEXEC != 0)),
        Syscall::FanotifyInit => Action::Create(create(FdKind::Fanotify, a[0] & FAN_CLOEXEC != 0)),
        Syscall::MemfdCreate => Action::Create(Creation {
            target: text_str().map(|name| format!("memfd:{name}")),
            ..create(FdKind::Memfd, a[1] & MFD_CLOEXEC != 0)
        }),
        // The kernel always sets O_CLOEXEC on these.
        Syscall::PidfdOpen => Action::Create(create(FdKind::Pidfd, true)),
        Syscall::PidfdGetfd => Action::Create(create(FdKind::Unknown, true)),
        Syscall::IoUringSetup => Action::Create(create(FdKind::IoUring, true)),
        Syscall::Userfaultfd => Action::Create(create(FdKind::Userfaultfd, a[0] & O_CLOEXEC != 0)),
        Syscall::PerfEventOpen => {
            Action::Create(create(FdKind::Perf, a[4] & PERF_FLAG_FD_CLOEXEC != 0))
        }
        Syscall::Recvmsg | Syscall::Recvmmsg => {
            let flags = if syscall == Syscall::Recvmsg {
                a[2]
            } else {
                a[3]
            };
            Action::Create(Creation {
                fds: received,
                ..create(FdKind::Unknown, flags & MSG_CMSG_CLOEXEC != 0)
            })
        }
        Syscall::Close => Action::Close {
            fd: fd_arg(a[0]),
            by: if h.flags & FLAG_PY_SHUTDOWN != 0 {
                Closer::InterpreterShutdown
            } else if h.flags & FLAG_PY_GC != 0 {
                Closer::GarbageCollector
            } else {
                Closer::Program
            },
            stack: stack_sample(h, stack, mode),
        },
        Syscall::CloseRange => Action::CloseRange {
            first: u32::try_from(a[0] & 0xffff_ffff)?,
            last: u32::try_from(a[1] & 0xffff_ffff)?,
            cloexec_only: a[2] & CLOSE_RANGE_CLOEXEC != 0,
            stack: stack_sample(h, stack, mode),
        },
        Syscall::Ioctl => Action::SetCloexec {
            fd: fd_arg(a[0]),
            on: a[1] == FIOCLEX,
        },
        Syscall::Bind | Syscall::Connect => match decode_sockaddr(text) {
            Some(address) => Action::Address {
                fd: fd_arg(a[0]),
                side: if syscall == Syscall::Bind {
                    Side::Local
                } else {
                    Side::Peer
                },
                address,
            },
            None => Action::Nothing,
        },
        Syscall::ExitGroup => Action::ExitGroup {
            status: fd_arg(a[0]),
        },
        Syscall::Select | Syscall::Pselect6 => Action::Nothing,
    };
    Ok(action)
}

/// Renders a raw `struct sockaddr` as `1.2.3.4:80`, `[::1]:80` or a unix path.
pub fn decode_sockaddr(raw: &[u8]) -> Option<String> {
    let family = u16::from_ne_bytes(raw.get(..2)?.try_into().ok()?);
    match family {
        AF_INET => {
            let port = u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?);
            let ip: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
            Some(format!("{}:{port}", std::net::Ipv4Addr::from(ip)))
        }
        AF_INET6 => {
            let port = u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?);
            let ip: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
            Some(format!("[{}]:{port}", std::net::Ipv6Addr::from(ip)))
        }
        AF_UNIX => {
            let path = raw.get(2..)?;
            match path.first() {
                None => Some("unix:(unnamed)".to_owned()),
                Some(0) => {
                    let name = &path[1..];
                    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                    Some(format!("unix:@{}", String::from_utf8_lossy(&name[..end])))
                }
                Some(_) => {
                    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                    Some(format!("unix:{}", String::from_utf8_lossy(&path[..end])))
                }
            }
        }
        _ => None,
    }
}

/// `AF_INET tcp` style description of a socket's family and type.
pub fn socket_family(family: u16, kind: u32) -> String {
    let family = match family {
        AF_UNIX => "unix",
        AF_INET => "inet",
        AF_INET6 => "inet6",
        16 => "netlink",
        17 => "packet",
        40 => "vsock",
        other => return format!("family {other}"),
    };
    let kind = match (family, kind) {
        ("inet" | "inet6", 1) => "tcp",
        ("inet" | "inet6", 2) => "udp",
        (_, 1) => "stream",
        (_, 2) => "dgram",
        (_, 3) => "raw",
        (_, 5) => "seqpacket",
        _ => "",
    };
    if kind.is_empty() {
        family.to_owned()
    } else {
        format!("{family} {kind}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file record as the kernel writes it, path built from the end.
    fn file_record(usage: FileUse, args: [u64; 3], magic: u64, path: &str) -> Vec<u8> {
        let mut record = FileRecord {
            kind: EventKind::File as u32,
            tgid: 7,
            tid: 8,
            usage: usage as u32,
            ts_ns: 99,
            args,
            ino: 4242,
            magic,
            dev: 0,
            mode: 0,
            flags: 0,
            path_start: FILE_PATH_END - u32::try_from(path.len()).unwrap(),
            nofile_limit: [1024, 4096],
            path: [0; FILE_PATH_BYTES],
        };
        let argv = b"app\0--port\0\08080\0";
        record.path[FILE_ARGV_AT..FILE_ARGV_AT + argv.len()].copy_from_slice(argv);
        let start = usize::try_from(record.path_start).unwrap();
        record.path[start..start + path.len()].copy_from_slice(path.as_bytes());
        // SAFETY: FileRecord is plain integers, read as its bytes.
        unsafe {
            std::slice::from_raw_parts((&raw const record).cast::<u8>(), size_of::<FileRecord>())
        }
        .to_vec()
    }

    /// A creation the kernel kept: thread 8 at time 42, close-on-exec set
    /// since, no text.
    fn kept_creation(syscall: Syscall, args: [u64; 6]) -> DeferredFd {
        DeferredFd {
            ts_ns: 42,
            tid: 8,
            syscall: syscall as u32,
            args,
            cloexec: CLOEXEC_SET,
            text_len: 0,
            text: [0; TEXT_LEN],
        }
    }

    #[test]
    fn a_creation_the_kernel_kept_decodes_like_its_record_with_later_cloexec() {
        let mut kept = kept_creation(Syscall::Openat, [u64::MAX - 99, 0, O_DIRECTORY, 0, 0, 0]);
        kept.text_len = 4;
        kept.text[..4].copy_from_slice(b"/var");
        let events = decode_deferred(7, 5, &kept).unwrap();
        let Action::Create(c) = &events[0].action else {
            panic!("{events:?}")
        };
        assert_eq!((events[0].tgid, events[0].tid, events[0].ts_ns), (7, 8, 42));
        assert_eq!(
            (c.fds.as_slice(), c.kind, c.cloexec, c.target.as_deref()),
            (&[5][..], FdKind::Directory, false, Some("/var"))
        );
        assert!(c.stack.is_none());
        assert_eq!(events[1].action, Action::SetCloexec { fd: 5, on: true });
        kept.cloexec = fdtrace_common::CLOEXEC_UNCHANGED;
        assert_eq!(decode_deferred(7, 5, &kept).unwrap().len(), 1);
    }

    #[test]
    fn a_short_record_decodes_as_its_whole_header_would() {
        let mut h = kept_creation(Syscall::Close, [9, 0, 0, 0, 0, 0]).to_header(7, 3);
        h.flags = FLAG_PY_GC;
        // SAFETY: EventHeader is plain integers, read as its bytes.
        let whole = unsafe {
            std::slice::from_raw_parts((&raw const h).cast::<u8>(), size_of::<EventHeader>())
        };
        let short = decode(&whole[..SHORT_HEADER], StackMode::Dwarf).unwrap();
        assert_eq!(
            short.action,
            Action::Close {
                fd: 9,
                by: Closer::GarbageCollector,
                stack: None,
            }
        );
        assert_eq!((short.tgid, short.tid, short.ts_ns), (7, 8, 42));
        assert_eq!(short, decode(whole, StackMode::Dwarf).unwrap());
        let cut = decode(&whole[..SHORT_HEADER - 1], StackMode::Dwarf).unwrap_err();
        assert!(cut.to_string().contains("short record"), "{cut}");
    }

    /// `h`'s first SHORT_HEADER bytes followed by `sample`.
    fn short_with(h: &EventHeader, sample: &[u8]) -> Vec<u8> {
        // SAFETY: EventHeader is plain integers, read as its bytes.
        let whole = unsafe {
            std::slice::from_raw_parts((&raw const *h).cast::<u8>(), size_of::<EventHeader>())
        };
        [&whole[..SHORT_HEADER], sample].concat()
    }

    #[test]
    fn a_python_stack_record_decodes_at_either_length() {
        let record = |n: usize, len: u32| {
            let mut bytes = vec![0u8; PY_STACK_HEADER + n * size_of::<PyFrameSlot>()];
            bytes[..4].copy_from_slice(&(EventKind::PyStack as u32).to_ne_bytes());
            bytes[4..8].copy_from_slice(&7u32.to_ne_bytes());
            bytes[12..16].copy_from_slice(&len.to_ne_bytes());
            bytes[24..28].copy_from_slice(&PY_TRUNCATED.to_ne_bytes());
            for i in 0..n {
                let at = PY_STACK_HEADER + i * size_of::<PyFrameSlot>();
                bytes[at..at + 8].copy_from_slice(&(0x1000 + i as u64).to_ne_bytes());
            }
            bytes
        };
        let slots = |bytes: &[u8]| match decode(bytes, StackMode::Dwarf).unwrap().action {
            Action::PyStack(s) => (
                s.slots.iter().map(|s| s.code).collect::<Vec<_>>(),
                s.truncated,
            ),
            other => panic!("{other:?}"),
        };
        // A close's 16 slots, 3 used.
        let close = fdtrace_common::CLOSE_PY_SLOTS;
        assert_eq!(
            slots(&record(close, 3)),
            (vec![0x1000, 0x1001, 0x1002], true)
        );
        // A length past the room that arrived is cut to it, never read past.
        assert_eq!(slots(&record(close, 200)).0.len(), close);
        let most = fdtrace_common::MAX_PY_SLOTS;
        assert_eq!(slots(&record(most, 200)).0.len(), most);
        assert!(decode(&record(0, 0), StackMode::Dwarf).is_err());
    }

    #[test]
    fn a_close_carries_its_compact_sample_right_after_the_short_header() {
        let mut h = kept_creation(Syscall::Close, [5, 0, 0, 0, 0, 0]).to_header(7, 3);
        h.flags = FLAG_SAMPLE_AFTER_SHORT | FLAG_STACK_FROM_SP;
        h.regs = [0x1000, 0x7ffc_0000_0010, 0];
        h.stack_len = 24;
        let sample: Vec<u8> = (0..24).collect();
        let Action::Close { fd, stack, .. } = decode(&short_with(&h, &sample), StackMode::Dwarf)
            .unwrap()
            .action
        else {
            panic!()
        };
        assert_eq!(fd, 5);
        assert_eq!(
            stack,
            Some(StackSample::Raw {
                ip: 0x1000,
                sp: 0x7ffc_0000_0010,
                bp: 0,
                bytes: sample.clone(),
            })
        );
        // A sample longer than the record is refused, not read past.
        let cut = decode(&short_with(&h, &sample[..10]), StackMode::Dwarf).unwrap_err();
        assert!(cut.to_string().contains("stack sample"), "{cut}");
        // With frame-pointer stacks too it is a stack copy, for CFI; with
        // none there is none.
        let close_stack = |mode| match decode(&short_with(&h, &sample), mode).unwrap().action {
            Action::Close { stack, .. } => stack,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            close_stack(StackMode::FramePointer),
            close_stack(StackMode::Dwarf)
        );
        assert_eq!(close_stack(StackMode::None), None);
    }

    #[test]
    fn an_ebadf_names_the_call_and_its_descriptor_arguments() {
        let bad = |nr: u64, args: [u64; 6]| {
            let mut h = kept_creation(Syscall::Close, args).to_header(7, 3);
            h.kind = EventKind::BadFd as u32;
            h.syscall = u32::try_from(nr).unwrap();
            h.ret = -9;
            decode_header(&h, &[], StackMode::None).unwrap().action
        };
        let minus = |n: i64| u64::from_ne_bytes(n.to_ne_bytes());
        let expect = |syscall: &'static str, fds: Vec<Fd>| Action::BadFd {
            syscall,
            fds,
            stack: None,
        };
        assert_eq!(
            bad(3, [minus(-1), 0, 0, 0, 0, 0]),
            expect("close", vec![-1])
        );
        assert_eq!(bad(0, [4, 0x1000, 8, 0, 0, 0]), expect("read", vec![4]));
        // dup2(old, new): only the source can be "not open".
        assert_eq!(bad(33, [7, 1, 0, 0, 0, 0]), expect("dup2", vec![7]));
        // epoll_ctl(epfd, op, fd): both.
        assert_eq!(
            bad(233, [5, 1, 6, 0, 0, 0]),
            expect("epoll_ctl", vec![5, 6])
        );
        // openat(AT_FDCWD, ...) names no descriptor.
        assert_eq!(
            bad(257, [minus(-100), 0, 0, 0, 0, 0]),
            expect("openat", vec![])
        );
        assert!(
            decode_header(
                &{
                    let mut h = kept_creation(Syscall::Close, [0; 6]).to_header(7, 3);
                    h.kind = EventKind::BadFd as u32;
                    h.syscall = 9999;
                    h
                },
                &[],
                StackMode::None
            )
            .is_err()
        );
    }

    #[test]
    fn a_close_says_whether_pythons_shutdown_or_collector_made_it() {
        let header = |syscall: Syscall, ret: i64, flags: u32| {
            let mut h = kept_creation(syscall, [3, 0, 0, 0, 0, 0]).to_header(7, 3);
            h.ret = ret;
            h.flags = flags;
            h
        };
        let close = |flags: u32| {
            decode_header(&header(Syscall::Close, 0, flags), &[], StackMode::None)
                .unwrap()
                .action
        };
        let by = |by: Closer| Action::Close {
            fd: 3,
            by,
            stack: None,
        };
        assert_eq!(close(0), by(Closer::Program));
        assert_eq!(close(FLAG_PY_SHUTDOWN), by(Closer::InterpreterShutdown));
        assert_eq!(close(FLAG_PY_GC), by(Closer::GarbageCollector));
        let open = |flags: u32| match decode_header(
            &header(Syscall::Openat, 3, flags),
            &[],
            StackMode::None,
        )
        .unwrap()
        .action
        {
            Action::Create(c) => c.in_cleanup,
            other => panic!("{other:?}"),
        };
        assert!(open(FLAG_PY_SHUTDOWN));
        assert!(open(FLAG_PY_GC));
        assert!(!open(0));
    }

    #[test]
    fn a_kept_creation_handed_over_decodes_as_one_creation_with_its_cloexec() {
        let mut entry = kept_creation(Syscall::Socket, [2, 2, 0, 0, 0, 0]);
        let bytes = |entry: &DeferredFd| {
            let record = KeptRecord {
                kind: EventKind::Kept as u32,
                tgid: 7,
                fd: 9,
                _pad: 0,
                entry: *entry,
            };
            // SAFETY: KeptRecord is plain integers, read as its bytes.
            unsafe {
                std::slice::from_raw_parts(
                    (&raw const record).cast::<u8>(),
                    size_of::<KeptRecord>(),
                )
            }
            .to_vec()
        };
        let event = decode(&bytes(&entry), StackMode::Dwarf).unwrap();
        assert_eq!((event.tgid, event.tid, event.ts_ns), (7, 8, 42));
        let Action::Create(c) = &event.action else {
            panic!("{event:?}")
        };
        assert_eq!(
            (c.fds.as_slice(), c.kind, c.cloexec, c.stack.is_none()),
            (&[9][..], FdKind::Socket, true, true)
        );
        entry.cloexec = fdtrace_common::CLOEXEC_UNCHANGED;
        let event = decode(&bytes(&entry), StackMode::Dwarf).unwrap();
        assert!(matches!(
            event.action,
            Action::Create(Creation { cloexec: false, .. })
        ));
        assert!(decode(&bytes(&entry)[..40], StackMode::Dwarf).is_err());
    }

    #[test]
    fn decodes_the_layout_an_exec_and_an_mmap_left() {
        let exec = decode(
            &file_record(
                FileUse::Exec,
                [0x5555_0000_1040, 0x7f00_0000_0000, 18],
                0xef53,
                "/usr/bin/app",
            ),
            StackMode::Dwarf,
        )
        .unwrap();
        assert_eq!((exec.tgid, exec.tid), (7, 8));
        assert_eq!(
            exec.action,
            Action::Image {
                path: Some("/usr/bin/app".into()),
                entry: 0x5555_0000_1040,
                interpreter_base: 0x7f00_0000_0000,
                argv: Some(vec!["app".into(), "--port".into(), "8080".into()]),
                limit: Some((1024, 4096)),
            }
        );
        let mmap = decode(
            &file_record(
                FileUse::Mmap,
                [0x7f00_1000_0000, 0x2000, 0x5000],
                0xef53,
                "/opt/p.so",
            ),
            StackMode::Dwarf,
        )
        .unwrap();
        assert_eq!(
            mmap.action,
            Action::Mmap {
                start: 0x7f00_1000_0000,
                len: 0x5000,
                offset: 0x2000,
                path: Some("/opt/p.so".into()),
            }
        );
    }

    #[test]
    fn names_received_descriptors_as_proc_would() {
        let received = |magic: u64, path: &str| match decode(
            &file_record(FileUse::Received, [0, 0, 9], magic, path),
            StackMode::None,
        )
        .unwrap()
        .action
        {
            Action::Received { fd, kind, target } => (fd, kind, target),
            other => panic!("not a received fd: {other:?}"),
        };
        assert_eq!(
            received(SOCKFS_MAGIC, "/"),
            (9, FdKind::Socket, "socket:[4242]".into())
        );
        assert_eq!(received(PIPEFS_MAGIC, "/").1, FdKind::Pipe);
        assert_eq!(
            received(ANON_INODE_FS_MAGIC, "/[eventfd]"),
            (9, FdKind::Eventfd, "anon_inode:[eventfd]".into())
        );
        assert_eq!(received(PID_FS_MAGIC, "/").1, FdKind::Pidfd);
        assert_eq!(
            received(0xef53, "/etc/hosts"),
            (9, FdKind::File, "/etc/hosts".into())
        );
        assert_eq!(received(0x0102_1994, "/memfd:cache").1, FdKind::Memfd);
    }

    #[test]
    fn a_cut_path_is_no_path() {
        let mut bytes = file_record(FileUse::Mmap, [1, 0, 1], 0xef53, "/deep/tail");
        let flags = std::mem::offset_of!(FileRecord, flags);
        bytes[flags..flags + 4].copy_from_slice(&FILE_PATH_TRUNCATED.to_ne_bytes());
        match decode(&bytes, StackMode::Dwarf).unwrap().action {
            Action::Mmap { path, .. } => assert_eq!(path, None),
            other => panic!("not an mmap: {other:?}"),
        }
    }
    #[test]
    fn forks_and_execs_are_seen_from_the_header_alone() {
        let h = kept_creation(Syscall::Close, [101, 0, 0, 0, 0, 0]).to_header(100, 3);
        let at = |h: &EventHeader, kind: EventKind| {
            let mut h = *h;
            h.kind = kind as u32;
            short_with(&h, &[])
        };
        assert_eq!(
            arrival(&at(&h, EventKind::Fork)),
            Some(Arrival::Fork {
                parent: 100,
                child: 101
            })
        );
        assert_eq!(process_of(&at(&h, EventKind::Fork)), Some(100));
        let mut exec = h;
        exec.kind = EventKind::Exec as u32;
        exec.args[0] = 4242;
        let path = b"/usr/local/bin/a-rather-long-program-name";
        exec.text[..path.len()].copy_from_slice(path);
        exec.text_len = u32::try_from(path.len()).unwrap();
        // SAFETY: EventHeader is plain integers, read as its bytes.
        let whole = unsafe {
            std::slice::from_raw_parts((&raw const exec).cast::<u8>(), size_of::<EventHeader>())
        };
        assert_eq!(
            arrival(whole),
            Some(Arrival::Exec {
                tgid: 100,
                comm: "a-rather-long-p".to_owned(),
                cgroup: 4242
            })
        );
        assert_eq!(arrival(&at(&h, EventKind::Syscall)), None);
        assert_eq!(process_of(&at(&h, EventKind::PyStack)), None);
        assert_eq!(arrival(&whole[..4]), None);
        assert_eq!(arrival(&whole[..SHORT_HEADER]), None);
    }
}
