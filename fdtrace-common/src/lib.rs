//! Wire types shared by the kernel programs and userspace.
//!
//! Every record the kernel writes into the ring buffer starts with an
//! [`EventHeader`]; a creation or EMFILE event is followed by
//! `header.stack_len` bytes of stack sample: whole pages of user stack
//! starting at the page that holds `sp` (`regs[1] & !(PAGE_SIZE - 1)`), or
//! `u64` return addresses when frame-pointer stacks were asked for. Enums
//! travel as `u32` and are converted with `TryFrom` on the user side.
#![no_std]

/// Name of the ring buffer map.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the array of per-CPU scratch records `sys_exit` builds its
/// records in before copying them into the ring at their exact length;
/// userspace gives it one entry per possible CPU.
pub const SCRATCH_MAP: &str = "SCRATCH";
/// Name of the per-CPU drop counter map (one `u64` slot per [`Counter`]).
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the map holding the thread-group ids being traced.
pub const TRACED_MAP: &str = "TRACED";
/// Name of the array that answers "not traced" without a hash lookup: slot
/// `tgid % TRACED_SLOT_COUNT` holds 0 while no traced process has ever used it,
/// else a traced tgid or [`TRACED_SLOT_USED`]. Only a slot equal to the
/// caller's tgid, or one that is neither 0 nor it, sends the program on
/// to [`TRACED_MAP`]; nobody ever writes 0 back, so a traced process never
/// finds 0 in its slot.
pub const TRACED_SLOTS_MAP: &str = "TRACED_SLOTS";
/// Slots of [`TRACED_SLOTS_MAP`] (a power of two).
pub const TRACED_SLOT_COUNT: u32 = 65536;
/// A slot whose traced process exited: the hash decides.
pub const TRACED_SLOT_USED: u32 = u32::MAX;

/// Global set by userspace before load: which kind of stack to capture.
pub const STACK_MODE_GLOBAL: &str = "STACK_MODE";
/// Global set by userspace before load: bytes of user stack to copy.
pub const STACK_BYTES_GLOBAL: &str = "STACK_BYTES";

/// Globals set by userspace from the kernel's BTF before load.
pub const TASK_PID_OFFSET_GLOBAL: &str = "TASK_PID_OFFSET";
pub const TASK_TGID_OFFSET_GLOBAL: &str = "TASK_TGID_OFFSET";
pub const BPRM_FILENAME_OFFSET_GLOBAL: &str = "BPRM_FILENAME_OFFSET";
/// Offset of `task_struct.thread.fsbase`: a thread's `pthread_self()`, which
/// CPython stores in each thread state as `thread_id`.
pub const TASK_FSBASE_OFFSET_GLOBAL: &str = "TASK_FSBASE_OFFSET";
/// Global set by userspace before load: 1 when the user asked to stop a
/// process at its EMFILE failure (`--on-emfile stop`), the only time the
/// kernel side ever signals a traced process.
pub const EMFILE_STOP_GLOBAL: &str = "EMFILE_STOP";
/// Global: which processes the kernel starts tracing on its own, besides
/// the children of traced ones ([`SELECT_NEW_PROCESSES`],
/// [`SELECT_EXECS`]); 0 for `run` and `attach`.
pub const SELECT_GLOBAL: &str = "SELECT";
/// Global: fdtrace's own thread-group id, never traced by a selection.
pub const SELF_TGID_GLOBAL: &str = "SELF_TGID";
/// [`SELECT_GLOBAL`] bit: every process forked from now on is traced
/// (`monitor --all`).
pub const SELECT_NEW_PROCESSES: u32 = 1;
/// [`SELECT_GLOBAL`] bit: every process that execs is traced from its
/// exec on, until userspace looks at it and keeps or drops it
/// (`monitor --comm`, `--cgroup`).
pub const SELECT_EXECS: u32 = 2;

/// Kernel struct member offsets userspace reads from the kernel's BTF and
/// hands to the kernel side before load, in this order (see
/// [`KernelOffsets`]).
pub const KERNEL_OFFSETS_GLOBAL: &str = "KERNEL_OFFSETS";

/// Name of the map from thread-group id to [`PyWalk`]: processes running
/// CPython, and how to walk their frames.
pub const PYTHON_MAP: &str = "PYTHON";
/// Name of the map from file identity ([`PyFile`]) to [`PyBinary`]: CPython
/// interpreters userspace recognised, so the kernel can walk a process that
/// maps one from its first syscall.
pub const PYTHON_BINARIES_MAP: &str = "PY_BINARIES";
/// Name of the small ring buffer through which the kernel tells userspace,
/// at once and apart from the event stream, that a traced process exec'd or
/// mapped executable code from a file named like a CPython interpreter
/// (`python…`, `libpython…`) that is not in [`PYTHON_BINARIES_MAP`]. Each
/// record is one `u64`: the thread-group id.
pub const PYTHON_HINTS_MAP: &str = "PY_HINTS";

/// Largest user stack copy (`--stack-bytes`).
pub const MAX_STACK_BYTES: usize = 32 * 1024;
/// Default user stack copy.
pub const DEFAULT_STACK_BYTES: usize = 8 * 1024;
/// Frames captured in frame-pointer mode.
pub const MAX_FP_FRAMES: usize = 64;
/// Bytes of the text field: a path, a memfd name or a raw `sockaddr`.
pub const TEXT_LEN: usize = 256;
/// Descriptors carried by one event: pipe/socketpair pairs, SCM_RIGHTS.
pub const MAX_EVENT_FDS: usize = 16;
/// Page size: stack copies are made of whole pages.
pub const PAGE_SIZE: u64 = 4096;

/// What a record is about.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A traced syscall finished (or, for `close`, started).
    Syscall = 1,
    /// `sched_process_fork` of a new process: `args[0]` is its id.
    Fork = 2,
    /// `sched_process_exec`: `text` holds the file name, `args[0]` the
    /// cgroup v2 id of the process (the inode of its cgroup's directory).
    Exec = 3,
    /// `sched_process_exit` of a process's last thread.
    Exit = 4,
    /// A [`PyStackRecord`]: the CPython frames of the thread's next
    /// `Syscall` record (same `tid` and `ts_ns`), written just before it.
    PyStack = 5,
    /// A [`FileRecord`]: which file a process mapped as code or received
    /// as a descriptor, as the kernel saw it at that moment.
    File = 6,
    /// A [`PyCodeRecord`]: a CPython code object the walker met for the
    /// first time in this process, copied with the objects it points to.
    /// Written while its [`PyStackRecord`] is reserved, so it arrives after
    /// that record and before the `Syscall` record they belong to.
    PyCode = 7,
    /// The process used descriptor `args[0]`, which it inherited across its
    /// last exec, for the first time (see [`INHERITED_FDS`]).
    Use = 8,
    /// A [`KeptRecord`]: a creation the kernel kept, handed over just
    /// before the close that makes it a finding.
    Kept = 9,
    /// A call that takes descriptors failed with EBADF: `syscall` is the
    /// x86_64 syscall number (not a [`Syscall`]), `args` its arguments,
    /// with a stack sample. [`fd_arguments`] says which are descriptors.
    BadFd = 10,
}

/// How stacks are captured; the value of [`STACK_MODE_GLOBAL`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackMode {
    None = 0,
    FramePointer = 1,
    Dwarf = 2,
}

/// Counters in [`COUNTERS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A ring buffer write failed: the event is lost.
    DroppedEvents = 0,
    /// Per-thread argument stash was full: a syscall went untraced.
    DroppedArgs = 1,
    /// SCM_RIGHTS carried more descriptors than one event holds.
    DroppedFds = 2,
    /// The ring buffer was more than half full: a creation was recorded
    /// without its stack rather than risk losing the event itself.
    SkippedStacks = 3,
    /// The ring buffer was more than half full: a creation was kept in
    /// [`DEFERRED_MAP`] instead of written (no stack); if it is closed
    /// there, nothing crosses the ring at all.
    Deferred = 4,
    /// Not a count: the `bpf_ktime_get_ns` of this CPU's last dropped event.
    LastDropNs = 5,
}
/// Number of counters.
pub const COUNTER_SLOTS: u32 = 6;

/// Flag: the kernel stopped the process (SIGSTOP) at an EMFILE/ENFILE
/// failure because the user asked for it (`--on-emfile stop`).
pub const FLAG_STOPPED: u32 = 1;
/// Flag: the stack copy ended early because the user stack ended.
pub const FLAG_STACK_END: u32 = 2;
/// Flag: more descriptors arrived than `fds` holds (counted in `DroppedFds`).
pub const FLAG_FDS_TRUNCATED: u32 = 4;
/// Flag: no stack sample because the ring buffer was filling up.
pub const FLAG_STACK_SKIPPED: u32 = 8;
/// Flag: the process runs CPython, and the calling thread is finalizing
/// the interpreter (`Py_FinalizeEx` past its exit handlers): a close was
/// interpreter shutdown's doing; a creation was made during it.
pub const FLAG_PY_SHUTDOWN: u32 = 16;
/// Flag: the process runs CPython, and its cyclic garbage collector was
/// running (the calling thread being a Python thread): a close was the
/// collector's doing; a creation was made during a collection.
pub const FLAG_PY_GC: u32 = 32;
/// Flag: the stack sample starts at sp itself, not at the page holding it
/// (a main thread's stack, copied exactly up to `mm->start_stack`).
pub const FLAG_STACK_FROM_SP: u32 = 64;
/// Flag: the stack sample follows the first [`SHORT_HEADER`] bytes, not
/// the whole header (a close's compact close-site sample).
pub const FLAG_SAMPLE_AFTER_SHORT: u32 = 128;

/// Bytes of user stack from sp kept with each close (`dwarf` mode): enough
/// to unwind through libc's `close` into the function that called it and
/// usually a few callers more, at a fraction of a creation's sample.
pub const CLOSE_STACK_BYTES: u32 = 1024;

/// "No such argument" in [`fd_arguments`]' result.
pub const NO_ARG: usize = 6;

/// Which arguments of x86_64 syscall `nr` are descriptors the call reads,
/// writes, waits on or passes on (arch/x86/entry/syscalls/syscall_64.tbl),
/// [`NO_ARG`] for none. poll/select name theirs in user memory and are
/// left out. Not close: its descriptor is the one it ends.
#[inline(always)]
pub const fn fd_arguments(nr: u64) -> (usize, usize) {
    match nr {
        // read write fstat lseek ioctl pread64 pwrite64 readv writev.
        0 | 1 | 5 | 8 | 16 | 17 | 18 | 19 | 20 => (0, NO_ARG),
        // mmap's file
        9 => (4, NO_ARG),
        // dup dup2 dup3: the source
        32 | 33 | 292 => (0, NO_ARG),
        // sendfile(out, in), tee(in, out)
        40 | 276 => (0, 1),
        // connect accept sendto recvfrom sendmsg recvmsg shutdown bind
        // listen getsockname getpeername setsockopt getsockopt
        42..=52 | 54 | 55 => (0, NO_ARG),
        // fcntl flock fsync fdatasync ftruncate getdents fchdir fchmod fchown
        72..=75 | 77 | 78 | 81 | 91 | 93 => (0, NO_ARG),
        // fstatfs readahead f{set,get,list,remove}xattr getdents64 fadvise64
        138 | 187 | 190 | 193 | 196 | 199 | 217 | 221 => (0, NO_ARG),
        // epoll_wait; epoll_ctl(epfd, op, fd)
        232 => (0, NO_ARG),
        233 => (0, 2),
        // inotify_add_watch inotify_rm_watch, the *at family's directory
        254 | 255 | 257..=263 | 267..=269 | 280 => (0, NO_ARG),
        // renameat linkat renameat2 splice copy_file_range: two descriptors
        264 | 265 | 275 | 316 | 326 => (0, 2),
        // symlinkat(target, newdirfd, linkpath)
        266 => (1, NO_ARG),
        // sync_file_range vmsplice epoll_pwait signalfd fallocate
        // timerfd_settime timerfd_gettime accept4 signalfd4
        277 | 278 | 281 | 282 | 285..=289 => (0, NO_ARG),
        // preadv pwritev recvmmsg fanotify_mark name_to_handle_at
        // open_by_handle_at syncfs sendmmsg setns execveat
        295 | 296 | 299 | 301 | 303 | 304 | 306..=308 | 322 => (0, NO_ARG),
        // preadv2 pwritev2 statx pidfd_send_signal io_uring_enter openat2
        // pidfd_getfd faccessat2 epoll_pwait2
        327 | 328 | 332 | 424 | 426 | 437..=439 | 441 => (0, NO_ARG),
        _ => (NO_ARG, NO_ARG),
    }
}

/// The name of x86_64 syscall `nr`, for the calls [`fd_arguments`] and
/// close cover.
pub fn fd_syscall_name(nr: u64) -> Option<&'static str> {
    Some(match nr {
        0 => "read",
        1 => "write",
        3 => "close",
        5 => "fstat",
        8 => "lseek",
        9 => "mmap",
        16 => "ioctl",
        17 => "pread64",
        18 => "pwrite64",
        19 => "readv",
        20 => "writev",
        32 => "dup",
        33 => "dup2",
        40 => "sendfile",
        42 => "connect",
        43 => "accept",
        44 => "sendto",
        45 => "recvfrom",
        46 => "sendmsg",
        47 => "recvmsg",
        48 => "shutdown",
        49 => "bind",
        50 => "listen",
        51 => "getsockname",
        52 => "getpeername",
        54 => "setsockopt",
        55 => "getsockopt",
        72 => "fcntl",
        73 => "flock",
        74 => "fsync",
        75 => "fdatasync",
        77 => "ftruncate",
        78 => "getdents",
        81 => "fchdir",
        91 => "fchmod",
        93 => "fchown",
        138 => "fstatfs",
        187 => "readahead",
        190 => "fsetxattr",
        193 => "fgetxattr",
        196 => "flistxattr",
        199 => "fremovexattr",
        217 => "getdents64",
        221 => "fadvise64",
        232 => "epoll_wait",
        233 => "epoll_ctl",
        254 => "inotify_add_watch",
        255 => "inotify_rm_watch",
        257 => "openat",
        258 => "mkdirat",
        259 => "mknodat",
        260 => "fchownat",
        261 => "futimesat",
        262 => "newfstatat",
        263 => "unlinkat",
        264 => "renameat",
        265 => "linkat",
        266 => "symlinkat",
        267 => "readlinkat",
        268 => "fchmodat",
        269 => "faccessat",
        275 => "splice",
        276 => "tee",
        277 => "sync_file_range",
        278 => "vmsplice",
        280 => "utimensat",
        281 => "epoll_pwait",
        282 => "signalfd",
        285 => "fallocate",
        286 => "timerfd_settime",
        287 => "timerfd_gettime",
        288 => "accept4",
        289 => "signalfd4",
        292 => "dup3",
        295 => "preadv",
        296 => "pwritev",
        299 => "recvmmsg",
        301 => "fanotify_mark",
        303 => "name_to_handle_at",
        304 => "open_by_handle_at",
        306 => "syncfs",
        307 => "sendmmsg",
        308 => "setns",
        316 => "renameat2",
        322 => "execveat",
        326 => "copy_file_range",
        327 => "preadv2",
        328 => "pwritev2",
        332 => "statx",
        424 => "pidfd_send_signal",
        426 => "io_uring_enter",
        437 => "openat2",
        438 => "pidfd_getfd",
        439 => "faccessat2",
        441 => "epoll_pwait2",
        _ => return None,
    })
}

/// Syscalls fdtrace follows. Values are ours, not kernel syscall numbers.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Syscall {
    Open = 1,
    Openat,
    Openat2,
    Creat,
    OpenByHandleAt,
    Socket,
    Socketpair,
    Accept,
    Accept4,
    Pipe,
    Pipe2,
    Dup,
    Dup2,
    Dup3,
    Fcntl,
    Eventfd,
    Eventfd2,
    EpollCreate,
    EpollCreate1,
    TimerfdCreate,
    Signalfd,
    Signalfd4,
    InotifyInit,
    InotifyInit1,
    FanotifyInit,
    MemfdCreate,
    PidfdOpen,
    PidfdGetfd,
    Userfaultfd,
    PerfEventOpen,
    IoUringSetup,
    Recvmsg,
    Recvmmsg,
    Close,
    CloseRange,
    Ioctl,
    Bind,
    Connect,
    ExitGroup,
    /// Only recorded when `nfds` > FD_SETSIZE (1024): the fd_set overflows.
    Select,
    Pselect6,
}

/// `FD_SETSIZE`: select() cannot watch descriptors at or above it.
pub const FD_SETSIZE: u64 = 1024;

/// Every syscall, in declaration order; `Syscall::ALL[i] as u32 == i + 1`.
impl Syscall {
    pub const ALL: [Syscall; 41] = [
        Syscall::Open,
        Syscall::Openat,
        Syscall::Openat2,
        Syscall::Creat,
        Syscall::OpenByHandleAt,
        Syscall::Socket,
        Syscall::Socketpair,
        Syscall::Accept,
        Syscall::Accept4,
        Syscall::Pipe,
        Syscall::Pipe2,
        Syscall::Dup,
        Syscall::Dup2,
        Syscall::Dup3,
        Syscall::Fcntl,
        Syscall::Eventfd,
        Syscall::Eventfd2,
        Syscall::EpollCreate,
        Syscall::EpollCreate1,
        Syscall::TimerfdCreate,
        Syscall::Signalfd,
        Syscall::Signalfd4,
        Syscall::InotifyInit,
        Syscall::InotifyInit1,
        Syscall::FanotifyInit,
        Syscall::MemfdCreate,
        Syscall::PidfdOpen,
        Syscall::PidfdGetfd,
        Syscall::Userfaultfd,
        Syscall::PerfEventOpen,
        Syscall::IoUringSetup,
        Syscall::Recvmsg,
        Syscall::Recvmmsg,
        Syscall::Close,
        Syscall::CloseRange,
        Syscall::Ioctl,
        Syscall::Bind,
        Syscall::Connect,
        Syscall::ExitGroup,
        Syscall::Select,
        Syscall::Pselect6,
    ];

    /// The kernel's name, as in `syscalls/sys_enter_<name>`.
    pub const fn name(self) -> &'static str {
        match self {
            Syscall::Open => "open",
            Syscall::Openat => "openat",
            Syscall::Openat2 => "openat2",
            Syscall::Creat => "creat",
            Syscall::OpenByHandleAt => "open_by_handle_at",
            Syscall::Socket => "socket",
            Syscall::Socketpair => "socketpair",
            Syscall::Accept => "accept",
            Syscall::Accept4 => "accept4",
            Syscall::Pipe => "pipe",
            Syscall::Pipe2 => "pipe2",
            Syscall::Dup => "dup",
            Syscall::Dup2 => "dup2",
            Syscall::Dup3 => "dup3",
            Syscall::Fcntl => "fcntl",
            Syscall::Eventfd => "eventfd",
            Syscall::Eventfd2 => "eventfd2",
            Syscall::EpollCreate => "epoll_create",
            Syscall::EpollCreate1 => "epoll_create1",
            Syscall::TimerfdCreate => "timerfd_create",
            Syscall::Signalfd => "signalfd",
            Syscall::Signalfd4 => "signalfd4",
            Syscall::InotifyInit => "inotify_init",
            Syscall::InotifyInit1 => "inotify_init1",
            Syscall::FanotifyInit => "fanotify_init",
            Syscall::MemfdCreate => "memfd_create",
            Syscall::PidfdOpen => "pidfd_open",
            Syscall::PidfdGetfd => "pidfd_getfd",
            Syscall::Userfaultfd => "userfaultfd",
            Syscall::PerfEventOpen => "perf_event_open",
            Syscall::IoUringSetup => "io_uring_setup",
            Syscall::Recvmsg => "recvmsg",
            Syscall::Recvmmsg => "recvmmsg",
            Syscall::Close => "close",
            Syscall::CloseRange => "close_range",
            Syscall::Ioctl => "ioctl",
            Syscall::Bind => "bind",
            Syscall::Connect => "connect",
            Syscall::ExitGroup => "exit_group",
            Syscall::Select => "select",
            Syscall::Pselect6 => "pselect6",
        }
    }
}

/// x86_64 syscall numbers of calls that are not [`Syscall`]s but that the
/// kernel programs still watch.
pub mod nr {
    pub const CLOSE: u64 = 3;
    pub const MMAP: u64 = 9;
    pub const FCNTL: u64 = 72;
}

impl Syscall {
    /// The [`Syscall`] for an x86_64 syscall number.
    pub const fn from_x86_64(nr: u64) -> Option<Syscall> {
        Some(match nr {
            2 => Syscall::Open,
            3 => Syscall::Close,
            16 => Syscall::Ioctl,
            22 => Syscall::Pipe,
            23 => Syscall::Select,
            32 => Syscall::Dup,
            33 => Syscall::Dup2,
            41 => Syscall::Socket,
            42 => Syscall::Connect,
            43 => Syscall::Accept,
            47 => Syscall::Recvmsg,
            49 => Syscall::Bind,
            53 => Syscall::Socketpair,
            72 => Syscall::Fcntl,
            85 => Syscall::Creat,
            213 => Syscall::EpollCreate,
            231 => Syscall::ExitGroup,
            253 => Syscall::InotifyInit,
            257 => Syscall::Openat,
            270 => Syscall::Pselect6,
            282 => Syscall::Signalfd,
            283 => Syscall::TimerfdCreate,
            284 => Syscall::Eventfd,
            288 => Syscall::Accept4,
            289 => Syscall::Signalfd4,
            290 => Syscall::Eventfd2,
            291 => Syscall::EpollCreate1,
            292 => Syscall::Dup3,
            293 => Syscall::Pipe2,
            294 => Syscall::InotifyInit1,
            298 => Syscall::PerfEventOpen,
            299 => Syscall::Recvmmsg,
            300 => Syscall::FanotifyInit,
            304 => Syscall::OpenByHandleAt,
            319 => Syscall::MemfdCreate,
            323 => Syscall::Userfaultfd,
            425 => Syscall::IoUringSetup,
            434 => Syscall::PidfdOpen,
            436 => Syscall::CloseRange,
            437 => Syscall::Openat2,
            438 => Syscall::PidfdGetfd,
            _ => return None,
        })
    }
}

impl TryFrom<u32> for Syscall {
    type Error = u32;
    /// A `match`, not an index into [`Syscall::ALL`]: the kernel programs
    /// convert too, and verifiers before 6.x lose the bounds of a table
    /// index computed as `value - 1` ("unbounded memory access").
    fn try_from(value: u32) -> Result<Self, u32> {
        Ok(match value {
            1 => Syscall::Open,
            2 => Syscall::Openat,
            3 => Syscall::Openat2,
            4 => Syscall::Creat,
            5 => Syscall::OpenByHandleAt,
            6 => Syscall::Socket,
            7 => Syscall::Socketpair,
            8 => Syscall::Accept,
            9 => Syscall::Accept4,
            10 => Syscall::Pipe,
            11 => Syscall::Pipe2,
            12 => Syscall::Dup,
            13 => Syscall::Dup2,
            14 => Syscall::Dup3,
            15 => Syscall::Fcntl,
            16 => Syscall::Eventfd,
            17 => Syscall::Eventfd2,
            18 => Syscall::EpollCreate,
            19 => Syscall::EpollCreate1,
            20 => Syscall::TimerfdCreate,
            21 => Syscall::Signalfd,
            22 => Syscall::Signalfd4,
            23 => Syscall::InotifyInit,
            24 => Syscall::InotifyInit1,
            25 => Syscall::FanotifyInit,
            26 => Syscall::MemfdCreate,
            27 => Syscall::PidfdOpen,
            28 => Syscall::PidfdGetfd,
            29 => Syscall::Userfaultfd,
            30 => Syscall::PerfEventOpen,
            31 => Syscall::IoUringSetup,
            32 => Syscall::Recvmsg,
            33 => Syscall::Recvmmsg,
            34 => Syscall::Close,
            35 => Syscall::CloseRange,
            36 => Syscall::Ioctl,
            37 => Syscall::Bind,
            38 => Syscall::Connect,
            39 => Syscall::ExitGroup,
            40 => Syscall::Select,
            41 => Syscall::Pselect6,
            other => return Err(other),
        })
    }
}

impl TryFrom<u32> for EventKind {
    type Error = u32;
    fn try_from(value: u32) -> Result<Self, u32> {
        match value {
            1 => Ok(EventKind::Syscall),
            2 => Ok(EventKind::Fork),
            3 => Ok(EventKind::Exec),
            4 => Ok(EventKind::Exit),
            5 => Ok(EventKind::PyStack),
            6 => Ok(EventKind::File),
            7 => Ok(EventKind::PyCode),
            8 => Ok(EventKind::Use),
            9 => Ok(EventKind::Kept),
            10 => Ok(EventKind::BadFd),
            other => Err(other),
        }
    }
}

impl TryFrom<u32> for StackMode {
    type Error = u32;
    fn try_from(value: u32) -> Result<Self, u32> {
        match value {
            0 => Ok(StackMode::None),
            1 => Ok(StackMode::FramePointer),
            2 => Ok(StackMode::Dwarf),
            other => Err(other),
        }
    }
}

/// Arguments stashed at `sys_enter_*` until the matching `sys_exit_*`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallArgs {
    pub args: [u64; 6],
}
const _: () = assert!(size_of::<SyscallArgs>() == 48);

/// Fixed part of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// [`EventKind`].
    pub kind: u32,
    /// [`Syscall`] for `EventKind::Syscall`, else 0.
    pub syscall: u32,
    pub tgid: u32,
    pub tid: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Syscall return value (negative errno on failure).
    pub ret: i64,
    /// Syscall arguments, or kind-specific values (see [`EventKind`]).
    pub args: [u64; 6],
    /// User registers at the syscall: ip, sp, bp.
    pub regs: [u64; 3],
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Bytes of stack sample after the header.
    pub stack_len: u32,
    /// Descriptors read from user memory (pipe, socketpair, SCM_RIGHTS).
    pub fds: [i32; MAX_EVENT_FDS],
    /// Valid entries in `fds`.
    pub nfds: u32,
    /// Valid bytes in `text`.
    pub text_len: u32,
    /// Path, memfd name, exec file name, raw sockaddr, or for pipe/pipe2
    /// the pipe's inode number (8 bytes, native endian).
    pub text: [u8; TEXT_LEN],
    /// RLIMIT_NOFILE (soft, hard) of the process at an EMFILE/ENFILE
    /// failure, read from `task->signal->rlim`; zero otherwise.
    pub nofile_limit: [u64; 2],
}
const _: () = assert!(size_of::<EventHeader>() == 32 + 48 + 24 + 8 + 64 + 8 + TEXT_LEN + 16);

/// Bytes of an [`EventHeader`] up to and including `stack_len`: records
/// that carry nothing after it (a close, exit_group, close-on-exec change,
/// fork, exit, first use) are written this long, a quarter of the whole
/// header; the reader takes the rest as zero, with no descriptors.
pub const SHORT_HEADER: usize = core::mem::offset_of!(EventHeader, fds);
const _: () = assert!(SHORT_HEADER == 112);

/// Member offsets of kernel structs, from the running kernel's BTF, in the
/// order of [`KERNEL_OFFSETS_GLOBAL`]'s array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelOffset {
    /// `task_struct.mm`
    TaskMm = 0,
    /// `task_struct.files`
    TaskFiles,
    /// `task_struct.signal`
    TaskSignal,
    /// `mm_struct.saved_auxv`
    MmSavedAuxv,
    /// `files_struct.fdt`
    FilesFdt,
    /// `fdtable.max_fds`
    FdtableMaxFds,
    /// `fdtable.fd`
    FdtableFd,
    /// `file.f_path` (`struct path { vfsmount *mnt; dentry *dentry; }`)
    FilePath,
    /// `file.f_inode`
    FileInode,
    /// `inode.i_mode`
    InodeMode,
    /// `inode.i_ino`
    InodeIno,
    /// `inode.i_sb`
    InodeSb,
    /// `super_block.s_magic`
    SbMagic,
    /// `super_block.s_dev`
    SbDev,
    /// `dentry.d_parent`
    DentryParent,
    /// `dentry.d_name` (`struct qstr { u32 hash; u32 len; const char *name; }`)
    DentryName,
    /// `vfsmount.mnt_root`
    VfsmountRoot,
    /// `mount.mnt`: where a `struct vfsmount` sits inside its `struct mount`
    MountMnt,
    /// `mount.mnt_parent`
    MountParent,
    /// `mount.mnt_mountpoint`
    MountMountpoint,
    /// `signal_struct.rlim`
    SignalRlim,
    /// `linux_binprm.file`
    BprmFile,
    /// `mm_struct.arg_start` and `arg_end`: where argv lies in user memory.
    MmArgStart,
    MmArgEnd,
    /// `signal_struct.live`: threads not yet exited; 0 once the whole
    /// group is dead (decremented in do_exit before `sched_process_exit`).
    SignalLive,
    /// `fdtable.open_fds`: the bitmap of open descriptors.
    FdtableOpenFds,
    /// `mm_struct.start_stack`: where the main thread's stack began (argc).
    MmStartStack,
}
/// Number of [`KernelOffset`]s.
pub const KERNEL_OFFSET_COUNT: usize = 27;

/// Creations the kernel keeps instead of writing them while the ring buffer
/// is busy: key `(tgid << 32) | fd`, value [`DeferredFd`]. A close finds
/// and deletes its entry in the kernel; userspace claims (deletes and
/// models) what is left of a process at its exec, close_range and exit,
/// every second for entries over a second old, and when tracing ends.
pub const DEFERRED_MAP: &str = "DEFERRED";
/// Entries [`DEFERRED_MAP`] holds at most; past that, creations are
/// written without a stack as before.
pub const DEFERRED_ENTRIES: u32 = 32768;

/// A descriptor creation kept in the kernel (see [`DEFERRED_MAP`]): what
/// its `Syscall` record would have said, minus the stack.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DeferredFd {
    pub ts_ns: u64,
    pub tid: u32,
    /// [`Syscall`].
    pub syscall: u32,
    pub args: [u64; 6],
    /// Changed since creation by F_SETFD or FIOCLEX/FIONCLEX:
    /// [`CLOEXEC_UNCHANGED`], [`CLOEXEC_SET`] or [`CLOEXEC_CLEARED`].
    pub cloexec: u32,
    pub text_len: u32,
    /// The path an open named, or a memfd's name.
    pub text: [u8; TEXT_LEN],
}
const _: () = assert!(size_of::<DeferredFd>() == 8 + 8 + 48 + 8 + TEXT_LEN);

impl DeferredFd {
    /// The `Syscall` record the kernel would have written for descriptor
    /// `fd` of process `tgid`, without a stack.
    pub fn to_header(&self, tgid: u32, fd: i32) -> EventHeader {
        EventHeader {
            kind: EventKind::Syscall as u32,
            syscall: self.syscall,
            tgid,
            tid: self.tid,
            ts_ns: self.ts_ns,
            ret: i64::from(fd),
            args: self.args,
            regs: [0; 3],
            flags: 0,
            stack_len: 0,
            fds: [-1; MAX_EVENT_FDS],
            nfds: 0,
            text_len: self.text_len,
            text: self.text,
            nofile_limit: [0; 2],
        }
    }
}

/// A kept creation ([`DeferredFd`]) of descriptor `fd`, written by the
/// kernel when CPython's shutdown or collector closes it, right before that
/// close's record: the kernel deleted the entry, so this record is the only
/// owner.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KeptRecord {
    /// [`EventKind::Kept`]; first, as in [`EventHeader`].
    pub kind: u32,
    pub tgid: u32,
    pub fd: i32,
    pub _pad: u32,
    pub entry: DeferredFd,
}
const _: () = assert!(size_of::<KeptRecord>() == 16 + size_of::<DeferredFd>());

pub const CLOEXEC_UNCHANGED: u32 = 0;
pub const CLOEXEC_SET: u32 = 1;
pub const CLOEXEC_CLEARED: u32 = 2;

/// Descriptors below this number that a process inherited across exec are
/// watched for their first use ([`EventKind::Use`]); one bit each.
pub const INHERITED_FDS: usize = 1024;
/// `u64` words of an inherited-descriptor bitmap.
pub const INHERITED_WORDS: usize = INHERITED_FDS / 64;

/// What a [`FileRecord`] is about; the top byte of its `usage` word.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileUse {
    /// The program an exec started: `args` = [AT_ENTRY, AT_BASE, argv
    /// bytes] from the new auxv (AT_BASE is the ELF interpreter's load
    /// address, 0 for a static program); `path[FILE_ARGV_AT..]` holds the
    /// start of argv (NUL-separated) and `nofile_limit` the process's limit.
    Exec = 1,
    /// An executable mmap of a file, or anonymous code (no file):
    /// `args` = [address, file offset, length].
    Mmap = 2,
    /// A descriptor that arrived whole (SCM_RIGHTS, pidfd_getfd,
    /// open_by_handle_at): `args` = [fd, 0, 0]. Written just after the
    /// syscall record that created it.
    Received = 3,
}

impl TryFrom<u32> for FileUse {
    type Error = u32;
    fn try_from(value: u32) -> Result<Self, u32> {
        match value {
            1 => Ok(FileUse::Exec),
            2 => Ok(FileUse::Mmap),
            3 => Ok(FileUse::Received),
            other => Err(other),
        }
    }
}

/// Bytes of a [`FileRecord`]'s path buffer; the path ends at
/// [`FILE_PATH_END`] and starts at `path_start`.
pub const FILE_PATH_BYTES: usize = 1024;
/// Where a [`FileRecord`]'s path ends: it is built from the last
/// component backwards, so it is `path[path_start..FILE_PATH_END]`.
pub const FILE_PATH_END: u32 = 512;
/// Where an exec record's argv starts in its `path` buffer (the path ends
/// before it), and how many bytes of argv fit.
pub const FILE_ARGV_AT: usize = FILE_PATH_END as usize;
pub const FILE_ARGV_BYTES: usize = FILE_PATH_BYTES - FILE_ARGV_AT;
/// [`FileRecord`] flag: the path was longer than the buffer or deeper
/// than the walk; what is there is its tail.
pub const FILE_PATH_TRUNCATED: u32 = 1;
/// [`FileRecord`] flag: no file (anonymous executable memory, or the fd
/// was not found).
pub const FILE_NONE: u32 = 2;

/// A file as the kernel saw it: its path from the global root (built by
/// walking dentries and mounts), inode, device and filesystem type.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileRecord {
    /// [`EventKind::File`]; first, as in [`EventHeader`].
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// [`FileUse`].
    pub usage: u32,
    pub ts_ns: u64,
    /// Per [`FileUse`].
    pub args: [u64; 3],
    /// `inode.i_ino`.
    pub ino: u64,
    /// `super_block.s_magic`: tells sockets, pipes and anonymous inodes.
    pub magic: u64,
    /// `super_block.s_dev` (kernel encoding: major << 20 | minor).
    pub dev: u32,
    /// `inode.i_mode`.
    pub mode: u32,
    /// `FILE_*` flags.
    pub flags: u32,
    pub path_start: u32,
    /// Exec: RLIMIT_NOFILE (soft, hard) the new program starts with.
    pub nofile_limit: [u64; 2],
    pub path: [u8; FILE_PATH_BYTES],
}
const _: () = assert!(size_of::<FileRecord>() == 16 + 8 + 24 + 16 + 16 + 16 + FILE_PATH_BYTES);

/// How to find a thread's CPython frames in one process: the address of
/// `_PyRuntime` and the offsets of the interpreter version it runs. Written
/// by userspace into [`PYTHON_MAP`] once it has recognised the interpreter.
/// Offsets are bytes; [`PY_ABSENT`] marks a field this version lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyWalk {
    /// Address of `_PyRuntime` in the process.
    pub runtime: u64,
    /// Mask applied to a frame's code pointer (3.14 tags its low bits).
    pub code_mask: u64,
    /// `_PyRuntimeState.interpreters.head`.
    pub interp_head: u32,
    /// `PyInterpreterState` thread list head.
    pub threads_head: u32,
    /// `PyThreadState.next`.
    pub thread_next: u32,
    /// `PyThreadState.thread_id` (`pthread_self()`).
    pub thread_id: u32,
    /// `PyThreadState` field holding the current frame (`frame` up to 3.10,
    /// `cframe` in 3.11 and 3.12, `current_frame` from 3.13).
    pub thread_frame: u32,
    /// `_PyCFrame.current_frame` when `thread_frame` is a `cframe`.
    pub cframe_frame: u32,
    /// Frame fields: its code object, the calling frame, and the
    /// instruction: `f_lasti` (an `i32`) when `frame_object` is 1, else the
    /// `prev_instr`/`instr_ptr` pointer.
    pub frame_code: u32,
    pub frame_previous: u32,
    pub frame_instr: u32,
    /// `_PyInterpreterFrame.owner` (a byte), from 3.12; any readable
    /// offset (0) before, where `shim_owner` is [`PY_NO_SHIMS`].
    pub frame_owner: u32,
    /// `_PyInterpreterFrame.is_entry` (a byte), 3.11 only.
    pub frame_is_entry: u32,
    /// An `owner` at or above this marks a C-stack shim frame (3.12+);
    /// [`PY_NO_SHIMS`] before.
    pub shim_owner: u32,
    /// 1 for `PyFrameObject` chains (3.8 to 3.10), 0 for interpreter frames.
    pub frame_object: u32,
    /// Code object fields the kernel reads to tell a code object from one
    /// later allocated at the same address: its line table pointer and
    /// first line.
    pub code_line_table: u32,
    pub code_first_line: u32,
    /// Code object fields pointing at the objects a [`PyCodeRecord`]
    /// copies: its file name and its qualified name (its name before 3.11).
    pub code_filename: u32,
    pub code_name: u32,
    /// `_PyRuntime` field that is non-null once interpreter finalization
    /// has begun (`finalizing`, `_finalizing` from 3.9); [`PY_ABSENT`] when
    /// unknown, and then no close is judged by when it happened.
    pub finalizing: u32,
    /// `_gc_runtime_state.collecting` (an `int`, non-zero while the cyclic
    /// garbage collector runs), as an offset from the main interpreter's
    /// `PyInterpreterState` (3.9+) or, when `gc_in_runtime` is 1, from
    /// `_PyRuntime` (3.8).
    pub gc_collecting: u32,
    pub gc_in_runtime: u32,
}
const _: () = assert!(size_of::<PyWalk>() == 16 + 20 * 4);

impl PyWalk {
    /// Size of the map value.
    pub const SIZE: usize = size_of::<PyWalk>();

    /// The map value's bytes (native endian, `repr(C)` order, no padding).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let words = [
            self.interp_head,
            self.threads_head,
            self.thread_next,
            self.thread_id,
            self.thread_frame,
            self.cframe_frame,
            self.frame_code,
            self.frame_previous,
            self.frame_instr,
            self.frame_owner,
            self.frame_is_entry,
            self.shim_owner,
            self.frame_object,
            self.code_line_table,
            self.code_first_line,
            self.code_filename,
            self.code_name,
            self.finalizing,
            self.gc_collecting,
            self.gc_in_runtime,
        ];
        let mut out = [0u8; Self::SIZE];
        out[..8].copy_from_slice(&self.runtime.to_ne_bytes());
        out[8..16].copy_from_slice(&self.code_mask.to_ne_bytes());
        for (i, w) in words.iter().enumerate() {
            out[16 + 4 * i..20 + 4 * i].copy_from_slice(&w.to_ne_bytes());
        }
        out
    }
}

/// [`PyWalk`] value for an offset the interpreter version does not have.
pub const PY_ABSENT: u32 = u32::MAX;
/// [`PyWalk::shim_owner`] of versions without shim frames: no byte reaches it.
pub const PY_NO_SHIMS: u32 = 256;

/// Frame slots in a [`PyStackRecord`] (frames plus group boundaries).
pub const MAX_PY_SLOTS: usize = 128;

/// One slot of a [`PyStackRecord`]: a frame's code object and instruction
/// (`f_lasti`, or a pointer into the code's bytecode). [`PY_ENTRY`] in
/// `instr` marks the last frame (innermost first) one call of the
/// interpreter's C evaluation function ran; `code == 0` is a C-stack shim
/// frame (3.12+), which ends the run of frames before it the same way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyFrameSlot {
    pub code: u64,
    pub instr: u64,
    /// The code object's line table pointer xor its first line shifted to
    /// the top: with `code`, names one code object over the process's life.
    pub tag: u64,
}

/// Bit of [`PyFrameSlot::instr`]: the frame is the first one its native
/// evaluation call ran (user addresses never have it set).
pub const PY_ENTRY: u64 = 1 << 63;

/// Flag of a [`PyStackRecord`]: more frames than slots.
pub const PY_TRUNCATED: u32 = 1;

/// Python frames a close's record keeps (its compact close site): the
/// innermost ones, where the code that closed is. A deeper stack is marked
/// truncated.
pub const CLOSE_PY_SLOTS: usize = 16;

/// The CPython frames of one thread at one syscall, innermost first.
pub type PyStackRecord = PyStackRecordOf<MAX_PY_SLOTS>;

/// A [`PyStackRecord`] with room for `N` frames: a close's is
/// [`CLOSE_PY_SLOTS`] long. Userspace reads `len` slots of whatever
/// length arrives.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PyStackRecordOf<const N: usize> {
    /// [`EventKind::PyStack`]; first, as in [`EventHeader`].
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// Valid entries in `slots`.
    pub len: u32,
    /// Equal to the `ts_ns` of the event these frames belong to.
    pub ts_ns: u64,
    /// `PY_*` flags.
    pub flags: u32,
    pub _pad: u32,
    pub slots: [PyFrameSlot; N],
}
const _: () = assert!(size_of::<PyStackRecord>() == 32 + 24 * MAX_PY_SLOTS);
/// Bytes of a [`PyStackRecordOf`] before its slots.
pub const PY_STACK_HEADER: usize = 32;

/// Bytes of a code object a [`PyCodeRecord`] copies: past every field
/// userspace reads in 3.8 to 3.14 (the last, 3.14's `_co_firsttraceable`,
/// ends at 196).
pub const PY_CODE_BYTES: usize = 256;
/// The shorter copy tried when [`PY_CODE_BYTES`] cannot be read whole.
pub const PY_CODE_MIN_BYTES: usize = 200;
/// Bytes of a `str` object (header and characters) a [`PyCodeRecord`]
/// copies; a longer string arrives cut.
pub const PY_STR_BYTES: usize = 512;
/// Bytes of the line table `bytes` object (header and data) copied; a
/// longer table arrives cut (lines past the cut are unknown).
pub const PY_TABLE_BYTES: usize = 4096;

/// One copied range of user memory: `len` bytes read at `addr`; `len == 0`
/// when nothing could be read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyWindow {
    pub addr: u64,
    pub len: u32,
    pub _pad: u32,
}

/// Which [`PyCodeRecord::windows`] entry holds which object.
pub const PY_WINDOW_CODE: usize = 0;
pub const PY_WINDOW_FILENAME: usize = 1;
pub const PY_WINDOW_NAME: usize = 2;
pub const PY_WINDOW_TABLE: usize = 3;

/// A CPython code object and the objects userspace parses from it, copied
/// by the kernel the first time the walker meets it in a process, so the
/// process never waits for userspace to read them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PyCodeRecord {
    /// [`EventKind::PyCode`]; first, as in [`EventHeader`].
    pub kind: u32,
    pub tgid: u32,
    /// The code object's address and tag, as in [`PyFrameSlot`].
    pub code: u64,
    pub tag: u64,
    /// Where each byte array below was read from, and how much of it.
    pub windows: [PyWindow; 4],
    pub code_bytes: [u8; PY_CODE_BYTES],
    pub filename: [u8; PY_STR_BYTES],
    pub name: [u8; PY_STR_BYTES],
    pub line_table: [u8; PY_TABLE_BYTES],
}
const _: () = assert!(
    size_of::<PyCodeRecord>() == 24 + 4 * 16 + PY_CODE_BYTES + 2 * PY_STR_BYTES + PY_TABLE_BYTES
);

/// Identity of a file: its path from the root of the mount namespace (as
/// the kernel's dentry walk spells it, symlinks resolved), as an FNV-1a
/// hash and a length. The key of [`PYTHON_BINARIES_MAP`]. Not inode and
/// device: on overlayfs (containers) and 9p, `stat()` reports the lower
/// file's, while an exec'd file's inode is the overlay's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PyFile {
    pub path_hash: u64,
    pub path_len: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<PyFile>() == 16);

/// FNV-1a, 64-bit: offset basis and prime.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0100_0000_01b3;

impl PyFile {
    pub const SIZE: usize = size_of::<PyFile>();

    /// The identity of the file at `path` (absolute, symlinks resolved).
    pub fn of_path(path: &[u8]) -> Self {
        let mut hash = FNV_OFFSET;
        for &b in path {
            hash = (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
        Self {
            path_hash: hash,
            path_len: path.len() as u32,
            _pad: 0,
        }
    }

    /// The map key's bytes (native endian, `repr(C)` order).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[..8].copy_from_slice(&self.path_hash.to_ne_bytes());
        out[8..12].copy_from_slice(&self.path_len.to_ne_bytes());
        out[12..].copy_from_slice(&self._pad.to_ne_bytes());
        out
    }
}

/// How to walk a process that maps a registered CPython file: the
/// [`PyWalk`] of its interpreter with `walk.runtime` the link-time address
/// of `_PyRuntime`, and what turns it into the process's address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyBinary {
    pub walk: PyWalk,
    /// The ELF header's `e_entry`.
    pub entry: u64,
    /// Page-aligned `p_vaddr` and `p_offset` of the file's first
    /// executable PT_LOAD segment.
    pub exec_vaddr: u64,
    pub exec_offset: u64,
}
const _: () = assert!(size_of::<PyBinary>() == PyWalk::SIZE + 24);

impl PyBinary {
    pub const SIZE: usize = size_of::<PyBinary>();

    /// `_PyRuntime` in a process that exec'd this file, from its `AT_ENTRY`.
    pub fn runtime_at_exec(&self, at_entry: u64) -> u64 {
        at_entry
            .wrapping_sub(self.entry)
            .wrapping_add(self.walk.runtime)
    }

    /// `_PyRuntime` in a process that mapped `pgoff` (bytes) of this file at
    /// `start`: known only from the mapping of the executable segment.
    pub fn runtime_at_mapping(&self, start: u64, pgoff: u64) -> Option<u64> {
        if pgoff != self.exec_offset {
            return None;
        }
        Some(
            start
                .wrapping_sub(self.exec_vaddr)
                .wrapping_add(self.walk.runtime),
        )
    }

    /// The map value's bytes (native endian, `repr(C)` order, no padding).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[..PyWalk::SIZE].copy_from_slice(&self.walk.to_bytes());
        let rest = [self.entry, self.exec_vaddr, self.exec_offset];
        for (i, w) in rest.iter().enumerate() {
            let at = PyWalk::SIZE + 8 * i;
            out[at..at + 8].copy_from_slice(&w.to_ne_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_syscall_round_trips_through_its_wire_value() {
        for (i, &s) in Syscall::ALL.iter().enumerate() {
            assert_eq!(s as u32 as usize, i + 1);
            assert_eq!(Syscall::try_from(s as u32), Ok(s));
        }
        assert_eq!(Syscall::try_from(0), Err(0));
        assert_eq!(Syscall::try_from(42), Err(42));
    }
}
