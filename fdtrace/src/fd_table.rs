//! Lifetime stage: a pure model of every traced process's descriptor table.
//!
//! `apply` takes decoded events in order and keeps, per process, what each
//! open fd is, whether it is close-on-exec and who created it. It records
//! leaks (fds a process created and still held when it exited), fds that
//! crossed an exec without CLOEXEC and that the new program never used,
//! and EMFILE/ENFILE failures. Descriptors 0, 1 and 2 are the process's
//! own by convention: never leaks, never exec-leaks. It knows
//! nothing of BPF or stacks: a stack is an opaque [`StackRef`] the caller
//! hands in, and every fd that goes away is reported back so the caller can
//! free what it keeps for that stack.

use hashbrown::HashMap;

use crate::{
    events::{Action, Closer, Creation, Event, Fd, FdKind, Side, socket_family},
    history::OpenHistory,
    misuse::{self, ClosedFd, Misuse},
};

/// Opaque handle to a captured stack, owned by the caller's stack store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackRef(pub u32);

/// Where an open fd came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Open before tracing started: not the traced program's doing.
    Inherited,
    /// Created during the trace by process `tgid`.
    Created {
        tgid: u32,
        syscall: &'static str,
        ts_ns: u64,
        stack: Option<StackRef>,
    },
}

/// Addresses of a socket, filled in as bind/connect/accept reveal them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketInfo {
    pub family: String,
    pub local: Option<String>,
    pub peer: Option<String>,
}

/// One open descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenFd {
    pub kind: FdKind,
    /// Path, `pipe:[inode]`, memfd name...; sockets use `socket` instead.
    pub target: String,
    pub socket: Option<SocketInfo>,
    pub cloexec: bool,
    pub origin: Origin,
    /// Unique among all fds the table has seen, so a fork's copy can name
    /// the very entry it came from.
    pub id: u64,
    /// For a fork's copy: the parent's entry (tgid, fd, id) it came from.
    pub forked_from: Option<FdEntry>,
    /// The program this fd crossed into through exec without CLOEXEC,
    /// while neither it nor a child it forked has used the fd since.
    pub crossed: Option<String>,
    /// The open file description it refers to (the [`OpenFd::id`] of the
    /// fd that opened it): shared by dup'd copies and fork copies.
    pub file: u64,
    /// Opened by CPython's own cleanup (shutdown, a finalizer the
    /// collector ran): its close by them is not a finding.
    pub in_cleanup: bool,
    /// Its close-on-exec flag was cleared explicitly (`F_SETFD`,
    /// `FIONCLEX`): passed to the next program on purpose, as
    /// `subprocess`'s `pass_fds` and `posix_spawn`'s file actions do.
    pub passed: bool,
}

impl OpenFd {
    /// Human description of what the fd refers to.
    pub fn describe(&self) -> String {
        match &self.socket {
            Some(s) => {
                let mut out = s.family.clone();
                if let Some(local) = &s.local {
                    out.push(' ');
                    out.push_str(local);
                }
                if let Some(peer) = &s.peer {
                    out.push_str(" -> ");
                    out.push_str(peer);
                }
                out
            }
            None => self.target.clone(),
        }
    }
}

/// A traced process.
#[derive(Clone, Debug, Default)]
pub struct Process {
    pub tgid: u32,
    pub ppid: Option<u32>,
    /// Short name: the last exec'd file's base name, or the parent's.
    pub comm: String,
    /// Path of the program last exec'd (the parent's for a fork not yet exec'd).
    pub exe: String,
    /// Command line, read from /proc while the process was alive (empty
    /// until then); a fork starts with its parent's.
    pub cmdline: Vec<String>,
    pub fds: HashMap<Fd, OpenFd>,
    /// Numbers this process closed (or inherited closed from its parent)
    /// that nobody reopened since, with where: what a later EBADF on them
    /// means. Never an open number.
    pub closed: HashMap<Fd, ClosedFd>,
    /// Status passed to exit_group, if it got that far.
    pub exit_status: Option<i32>,
    pub exited_ns: Option<u64>,
    /// Most fds open at once.
    pub peak_fds: usize,
    /// RLIMIT_NOFILE (soft, hard) as last read from /proc.
    pub rlimit: Option<(u64, u64)>,
    /// [`Process::preexisting_by_kind`] when it exited or tracing ended.
    pub preexisting_at_end: Vec<(FdKind, usize)>,
    /// Descriptors open over time.
    pub history: OpenHistory,
}

impl Process {
    /// Open fds from before tracing (origin unknown), counted by kind.
    pub fn preexisting_by_kind(&self) -> Vec<(FdKind, usize)> {
        let mut counts: Vec<(FdKind, usize)> = Vec::new();
        for f in self.fds.values().filter(|f| f.origin == Origin::Inherited) {
            match counts.iter_mut().find(|(k, _)| *k == f.kind) {
                Some((_, n)) => *n += 1,
                None => counts.push((f.kind, 1)),
            }
        }
        counts.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        counts
    }

    /// Stack and creation time of every fd created while traced.
    pub fn created(&self) -> impl Iterator<Item = (Fd, Option<StackRef>, u64)> + '_ {
        self.fds.iter().filter_map(|(&fd, f)| match f.origin {
            Origin::Created { stack, ts_ns, .. } => Some((fd, stack, ts_ns)),
            Origin::Inherited => None,
        })
    }
}

/// Descriptors one stack held when the table filled up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub count: usize,
    /// One of the group's stacks (held for the report).
    pub stack: Option<StackRef>,
    pub oldest_ns: u64,
}

/// An fd its creator still held when it exited (or when tracing ended).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leak {
    pub tgid: u32,
    pub fd: Fd,
    pub kind: FdKind,
    pub target: String,
    pub cloexec: bool,
    pub opened_by: &'static str,
    pub opened_ns: u64,
    /// When the process exited, or tracing ended.
    pub seen_ns: u64,
    pub stack: Option<StackRef>,
    /// The process was still running when tracing ended.
    pub still_running: bool,
    /// Closed only by CPython's interpreter shutdown (`seen_ns` is then
    /// when): the program itself never released it.
    pub closed_at_shutdown: bool,
}

/// An fd closed only because CPython's cyclic garbage collector freed the
/// object that held it (an object in a reference cycle).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcClosed {
    pub tgid: u32,
    pub fd: Fd,
    pub kind: FdKind,
    pub target: String,
    pub opened_by: &'static str,
    pub opened_ns: u64,
    pub closed_ns: u64,
    pub stack: Option<StackRef>,
}

/// An fd without CLOEXEC that was open across execve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecLeak {
    pub tgid: u32,
    pub fd: Fd,
    pub kind: FdKind,
    pub target: String,
    pub opened_by: &'static str,
    /// The program that was exec'd.
    pub exec: String,
    pub stack: Option<StackRef>,
}

/// A creation that failed because the table (EMFILE) or the system (ENFILE) was full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exhaustion {
    pub tgid: u32,
    pub tid: u32,
    pub syscall: &'static str,
    pub errno: i32,
    pub argument: Option<String>,
    pub ts_ns: u64,
    pub open_fds: usize,
    pub stack: Option<StackRef>,
    /// RLIMIT_NOFILE (soft, hard) at the failure.
    pub rlimit: Option<(u64, u64)>,
    /// Who held the table then, largest first (filled in by the caller,
    /// which can tell equal stacks apart).
    pub holders: Vec<Holder>,
    /// Fds open since before tracing, by kind.
    pub preexisting: Vec<(FdKind, usize)>,
    /// The kernel left the process stopped at the failure, as asked
    /// (`--on-emfile stop`).
    pub stopped: bool,
}

/// select()/pselect6() asked about more than FD_SETSIZE descriptors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdSetOverflow {
    pub tgid: u32,
    pub tid: u32,
    pub syscall: &'static str,
    pub nfds: u64,
    /// Highest fd the process held then.
    pub highest_fd: Option<Fd>,
    pub stack: Option<StackRef>,
}

/// What [`FdTable::take_findings`] hands back.
#[derive(Debug, Default)]
pub struct Findings {
    pub exhaustions: Vec<Exhaustion>,
    pub misuses: Vec<Misuse>,
    /// Stack references the dropped and returned findings held.
    pub released: Vec<StackRef>,
}

/// What one `apply` did with stacks, so the caller can count references.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StackUse {
    /// One entry per fd now holding a stack (and per EMFILE record).
    pub held: Vec<StackRef>,
    /// One entry per fd that held a stack and went away.
    pub released: Vec<StackRef>,
}

/// Looks up what an fd is when the event alone does not say (a dup of an fd
/// we never saw, a descriptor received over a socket). `None` if unknown.
pub trait Describe {
    fn describe(&mut self, tgid: u32, fd: Fd) -> Option<(FdKind, String)>;
}

/// The new process a fork made.
fn fork_child(action: &Action) -> Option<u32> {
    match action {
        Action::Fork { child } => Some(*child),
        _ => None,
    }
}

/// One fd lifetime: (tgid, fd, [`OpenFd::id`]).
type FdEntry = (u32, Fd, u64);

/// All traced processes and everything found so far.
#[derive(Debug, Default)]
pub struct FdTable {
    pub processes: HashMap<u32, Process>,
    pub leaks: Vec<Leak>,
    pub exec_leaks: Vec<ExecLeak>,
    pub gc_closed: Vec<GcClosed>,
    pub exhaustions: Vec<Exhaustion>,
    pub fd_set_overflows: Vec<FdSetOverflow>,
    /// Double closes, uses after close and invalid descriptors.
    pub misuses: Vec<Misuse>,
    /// Order in which processes appeared, for stable reports.
    pub order: Vec<u32>,
    /// Last [`OpenFd::id`] handed out.
    last_id: u64,
    /// Exec-leaks of processes that exited, by (tgid, fd, id), with where
    /// the fd was forked from: a child still running may yet use its copy
    /// (`sh -c 'server --fd 3 &'`). Final at [`FdTable::finish`].
    pending_exec_leaks: HashMap<FdEntry, (ExecLeak, Option<FdEntry>)>,
}

/// Standard input, output and error: the process's own by convention,
/// however they were made (a shell's redirection, a pipeline, `open`
/// after `close(1)`). Never leaks or exec-leaks; they still count as held.
pub fn is_standard_stream(fd: Fd) -> bool {
    (0..=2).contains(&fd)
}

/// Descriptors whose first use after exec the kernel reports
/// (`fdtrace_common::INHERITED_FDS`); above that, use is unknown and a
/// crossing is not judged.
const WATCHED_FDS: Fd = 1024;

const EBADF: i32 = 9;
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

impl FdTable {
    /// Starts tracking `tgid` with the descriptors it already has, all
    /// [`Origin::Inherited`].
    pub fn add_root(&mut self, tgid: u32, exe: &str, inherited: Vec<(Fd, FdKind, String, bool)>) {
        let mut id = self.last_id;
        let fds = inherited
            .into_iter()
            .map(|(fd, kind, target, cloexec)| {
                id += 1;
                (
                    fd,
                    OpenFd {
                        kind,
                        target,
                        socket: None,
                        cloexec,
                        origin: Origin::Inherited,
                        id,
                        forked_from: None,
                        crossed: None,
                        file: id,
                        in_cleanup: false,
                        passed: false,
                    },
                )
            })
            .collect();
        self.last_id = id;
        self.insert_process(Process {
            tgid,
            comm: base_name(exe),
            exe: exe.to_owned(),
            fds,
            ..Default::default()
        });
    }

    fn insert_process(&mut self, mut process: Process) {
        process.peak_fds = process.fds.len();
        if !self.processes.contains_key(&process.tgid) {
            self.order.push(process.tgid);
        }
        self.processes.insert(process.tgid, process);
    }

    /// Applies one event. `stack` is the caller's handle for the event's
    /// stack sample, if any.
    pub fn apply(
        &mut self,
        event: &Event,
        stack: Option<StackRef>,
        describe: &mut dyn Describe,
    ) -> StackUse {
        let used = self.apply_action(event, stack, describe);
        for tgid in [Some(event.tgid), fork_child(&event.action)]
            .into_iter()
            .flatten()
        {
            if let Some(p) = self.processes.get_mut(&tgid) {
                p.history.observe(event.ts_ns, p.fds.len());
            }
        }
        used
    }

    fn apply_action(
        &mut self,
        event: &Event,
        stack: Option<StackRef>,
        describe: &mut dyn Describe,
    ) -> StackUse {
        let mut used = StackUse::default();
        let tgid = event.tgid;
        match &event.action {
            Action::Fork { child } => self.fork(tgid, *child, &mut used),
            Action::Exec { filename } => self.exec(tgid, filename, &mut used),
            Action::Exit => self.exit(tgid, event.ts_ns, false, &mut used),
            Action::Use { fd } => self.use_fd(tgid, *fd, &mut used),
            Action::ExitGroup { status } => {
                if let Some(p) = self.processes.get_mut(&tgid) {
                    p.exit_status = Some(*status);
                }
            }
            Action::Nothing
            | Action::PyStack(_)
            | Action::PyCode(_)
            | Action::Image { .. }
            | Action::Mmap { .. } => {}
            // Written right after the creation it describes.
            Action::Received { fd, kind, target } => {
                if let Some(f) = self
                    .processes
                    .get_mut(&tgid)
                    .and_then(|p| p.fds.get_mut(fd))
                {
                    f.kind = *kind;
                    f.target.clone_from(target);
                }
            }
            Action::FdSetOverflow { syscall, nfds, .. } => {
                let highest_fd = self
                    .processes
                    .get(&tgid)
                    .and_then(|p| p.fds.keys().max().copied());
                self.fd_set_overflows.push(FdSetOverflow {
                    tgid,
                    tid: event.tid,
                    syscall: syscall.name(),
                    nfds: *nfds,
                    highest_fd,
                    stack,
                });
                used.held.extend(stack);
            }
            Action::Create(creation) => self.create(event, creation, stack, describe, &mut used),
            Action::Close { fd, by, .. } => self.close(event, *fd, *by, stack, &mut used),
            Action::BadFd { syscall, fds, .. } => {
                self.bad_fd(event, syscall, fds, stack, &mut used);
            }
            Action::CloseRange {
                first,
                last,
                cloexec_only,
                ..
            } => self.close_range(event, (*first, *last), *cloexec_only, stack, &mut used),
            Action::SetCloexec { fd, on } => {
                if let Some(f) = self
                    .processes
                    .get_mut(&tgid)
                    .and_then(|p| p.fds.get_mut(fd))
                {
                    f.cloexec = *on;
                    f.passed |= !*on;
                }
            }
            Action::Address { fd, side, address } => {
                if let Some(s) = self
                    .processes
                    .get_mut(&tgid)
                    .and_then(|p| p.fds.get_mut(fd))
                    .and_then(|f| f.socket.as_mut())
                {
                    match side {
                        Side::Local => s.local = Some(address.clone()),
                        Side::Peer => s.peer = Some(address.clone()),
                    }
                }
            }
            Action::Exhausted {
                syscall,
                errno,
                argument,
                limit,
                ..
            } => {
                if let (Some(p), Some(limit)) = (self.processes.get_mut(&tgid), limit) {
                    p.rlimit = Some(*limit);
                }
                if *errno == EMFILE || *errno == ENFILE {
                    let open_fds = self.processes.get(&tgid).map_or(0, |p| p.fds.len());
                    let preexisting = self
                        .processes
                        .get(&tgid)
                        .map(Process::preexisting_by_kind)
                        .unwrap_or_default();
                    self.exhaustions.push(Exhaustion {
                        rlimit: self.processes.get(&tgid).and_then(|p| p.rlimit),
                        holders: Vec::new(),
                        preexisting,
                        stopped: event.stopped,
                        tgid,
                        tid: event.tid,
                        syscall: syscall.name(),
                        errno: *errno,
                        argument: argument.clone(),
                        ts_ns: event.ts_ns,
                        open_fds,
                        stack,
                    });
                    used.held.extend(stack);
                }
            }
        }
        used
    }

    fn create(
        &mut self,
        event: &Event,
        c: &Creation,
        stack: Option<StackRef>,
        describe: &mut dyn Describe,
        used: &mut StackUse,
    ) {
        let tgid = event.tgid;
        let mut id = self.last_id;
        let Some(p) = self.processes.get_mut(&tgid) else {
            return;
        };
        let like = c.like.and_then(|fd| p.fds.get(&fd)).cloned();
        for &fd in &c.fds {
            if fd < 0 {
                continue;
            }
            let origin = Origin::Created {
                tgid,
                syscall: c.syscall.name(),
                ts_ns: event.ts_ns,
                stack,
            };
            let mut new = OpenFd {
                kind: c.kind,
                target: c.target.clone().unwrap_or_default(),
                socket: c.socket.map(|(family, kind)| SocketInfo {
                    family: socket_family(family, kind),
                    ..Default::default()
                }),
                cloexec: c.cloexec,
                origin,
                id: {
                    id += 1;
                    id
                },
                forked_from: None,
                crossed: None,
                file: id,
                in_cleanup: c.in_cleanup,
                passed: false,
            };
            match (&like, c.kind) {
                // accept(): a new socket of the listener's family and local address.
                (Some(listener), FdKind::Socket) => {
                    let mut info = listener.socket.clone().unwrap_or_default();
                    info.peer = c.peer.clone();
                    new.socket = Some(info);
                }
                // dup*: the same open file.
                (Some(original), _) => {
                    new.file = original.file;
                    new.kind = original.kind;
                    new.target = original.target.clone();
                    new.socket = original.socket.clone();
                }
                (None, FdKind::Socket) if new.socket.is_none() => {
                    new.socket = Some(SocketInfo {
                        family: "socket".into(),
                        peer: c.peer.clone(),
                        ..Default::default()
                    });
                }
                _ => {}
            }
            let needs_proc =
                new.kind == FdKind::Unknown || (new.kind == FdKind::Pipe && new.target.is_empty());
            if needs_proc && let Some((kind, target)) = describe.describe(tgid, fd) {
                new.kind = kind;
                new.target = target;
            }
            if new.kind == FdKind::Unknown {
                new.kind = FdKind::Other;
            }
            // dup2/dup3 onto an open fd closes it first; any other creation
            // landing on a known fd means its close was not seen.
            release(p.fds.insert(fd, new), used);
            forget_closed(p.closed.remove(&fd), used);
            used.held.extend(stack);
        }
        p.peak_fds = p.peak_fds.max(p.fds.len());
        self.last_id = id;
    }

    /// `fd` was closed, at `site`. By CPython's shutdown or garbage
    /// collector, a descriptor the process opened itself (not in such
    /// cleanup) is a finding: nothing the program ran let go of it.
    ///
    /// Only the close of an open number is remembered as where it was
    /// closed: a close of a number already closed fails (the kernel's
    /// EBADF record that follows is the double close), and must not take
    /// the place of the close that worked.
    fn close(
        &mut self,
        event: &Event,
        fd: Fd,
        by: Closer,
        site: Option<StackRef>,
        used: &mut StackUse,
    ) {
        let tgid = event.tgid;
        let Some(p) = self.processes.get_mut(&tgid) else {
            return;
        };
        let Some(f) = p.fds.remove(&fd) else {
            return;
        };
        let at = ClosedFd {
            tid: event.tid,
            ts_ns: event.ts_ns,
            stack: site,
        };
        used.held.extend(site);
        forget_closed(p.closed.insert(fd, at), used);
        let Origin::Created {
            tgid: creator,
            syscall,
            ts_ns: opened_ns,
            stack,
        } = f.origin
        else {
            return;
        };
        let own = creator == tgid && !is_standard_stream(fd) && !f.in_cleanup;
        match by {
            Closer::InterpreterShutdown if own => {
                self.leaks
                    .extend(leak_of(tgid, fd, &f, event.ts_ns).map(|l| Leak {
                        closed_at_shutdown: true,
                        ..l
                    }));
            }
            Closer::GarbageCollector if own => self.gc_closed.push(GcClosed {
                tgid,
                fd,
                kind: f.kind,
                target: f.describe(),
                opened_by: syscall,
                opened_ns,
                closed_ns: event.ts_ns,
                stack,
            }),
            _ => used.released.extend(stack),
        }
    }

    /// `close_range(first, last)` at `stack` (the kernel takes one only for
    /// a single descriptor): closes what is open in the range, or with
    /// CLOSE_RANGE_CLOEXEC marks it. close_range skips numbers that are
    /// not open instead of failing, so a single number closed before is a
    /// double close found here, not through an EBADF (`errno` 0).
    fn close_range(
        &mut self,
        event: &Event,
        (first, last): (u32, u32),
        cloexec_only: bool,
        stack: Option<StackRef>,
        used: &mut StackUse,
    ) {
        let Some(p) = self.processes.get_mut(&event.tgid) else {
            return;
        };
        let in_range = |fd: &Fd| u32::try_from(*fd).is_ok_and(|fd| (first..=last).contains(&fd));
        if cloexec_only {
            p.fds
                .iter_mut()
                .filter(|(fd, _)| in_range(fd))
                .for_each(|(_, f)| f.cloexec = true);
            return;
        }
        let single = Fd::try_from(first).ok().filter(|_| first == last);
        if let Some(fd) = single
            && !p.fds.contains_key(&fd)
            && let Some(closed) = p.closed.get(&fd).copied()
        {
            used.held.extend(stack);
            used.held.extend(closed.stack);
            self.misuses.push(Misuse {
                kind: misuse::MisuseKind::DoubleClose,
                tgid: event.tgid,
                tid: event.tid,
                fd,
                syscall: "close_range",
                errno: 0,
                ts_ns: event.ts_ns,
                stack,
                closed: Some(closed),
            });
            return;
        }
        let doomed: Vec<Fd> = p.fds.keys().copied().filter(in_range).collect();
        for fd in doomed {
            release(p.fds.remove(&fd), used);
            let at = ClosedFd {
                tid: event.tid,
                ts_ns: event.ts_ns,
                stack,
            };
            used.held.extend(stack);
            forget_closed(p.closed.insert(fd, at), used);
        }
    }

    /// A call given `fds` failed with EBADF at `stack`.
    fn bad_fd(
        &mut self,
        event: &Event,
        syscall: &'static str,
        fds: &[Fd],
        stack: Option<StackRef>,
        used: &mut StackUse,
    ) {
        let Some(p) = self.processes.get(&event.tgid) else {
            return;
        };
        let Some((kind, fd, closed)) = misuse::classify(
            syscall,
            fds,
            |fd| p.fds.contains_key(&fd),
            |fd| p.closed.get(&fd).copied(),
        ) else {
            return;
        };
        // The report holds both stacks for as long as it lives.
        used.held.extend(stack);
        used.held.extend(closed.and_then(|c| c.stack));
        self.misuses.push(Misuse {
            kind,
            tgid: event.tgid,
            tid: event.tid,
            fd,
            syscall,
            errno: EBADF,
            ts_ns: event.ts_ns,
            stack,
            closed,
        });
    }

    /// The process used `fd`: if it crossed an exec, it was meant for this
    /// program. So it was for every process it was forked down from since,
    /// up to the one it crossed into.
    fn use_fd(&mut self, tgid: u32, fd: Fd, used: &mut StackUse) {
        let mut at = (tgid, fd, None);
        // A fork chain is never this deep; the bound only guards a cycle.
        for _ in 0..64 {
            let (tgid, fd, id) = at;
            let next = match self
                .processes
                .get_mut(&tgid)
                .and_then(|p| p.fds.get_mut(&fd))
            {
                Some(f) if id.is_none_or(|id| id == f.id) => {
                    f.crossed = None;
                    f.forked_from
                }
                // The process it crossed into has exited: its exec-leak
                // was waiting for this.
                _ => match id.and_then(|id| self.pending_exec_leaks.remove(&(tgid, fd, id))) {
                    Some((leak, forked_from)) => {
                        used.released.extend(leak.stack);
                        forked_from
                    }
                    None => return,
                },
            };
            match next {
                Some((parent, fd, id)) => at = (parent, fd, Some(id)),
                None => return,
            }
        }
    }

    /// A forked process starts with a copy of its parent's table. (A table
    /// shared between processes, `CLONE_FILES` without `CLONE_THREAD`, is
    /// rare and modelled as a copy: right until either side changes it.)
    fn fork(&mut self, parent: u32, child: u32, used: &mut StackUse) {
        let Some(p) = self.processes.get(&parent) else {
            return;
        };
        // The copies hold the stacks too: each is released on its own.
        used.held.extend(p.fds.values().filter_map(stack_of));
        // What the parent had closed is closed in the child too.
        used.held.extend(p.closed.values().filter_map(|c| c.stack));
        let closed = p.closed.clone();
        let mut id = self.last_id;
        let fds = p
            .fds
            .iter()
            .map(|(&fd, f)| {
                id += 1;
                let copy = OpenFd {
                    id,
                    forked_from: Some((parent, fd, f.id)),
                    // The same program: only the process it crossed into
                    // reports it.
                    crossed: None,
                    ..f.clone()
                };
                (fd, copy)
            })
            .collect();
        self.last_id = id;
        let copy = Process {
            tgid: child,
            ppid: Some(parent),
            comm: p.comm.clone(),
            exe: p.exe.clone(),
            cmdline: p.cmdline.clone(),
            fds,
            closed,
            ..Default::default()
        };
        self.insert_process(copy);
    }

    fn exec(&mut self, tgid: u32, filename: &str, used: &mut StackUse) {
        let Some(p) = self.processes.get_mut(&tgid) else {
            return;
        };
        let mut fds: Vec<Fd> = p.fds.keys().copied().collect();
        fds.sort_unstable();
        // What stdin, stdout and stderr refer to across the exec: a
        // descriptor sharing its open file with one of them was handed
        // over on purpose (a shell's `cmd <&3` is `dup2(3, 0)`).
        let standard: Vec<u64> = (0..=2)
            .filter_map(|fd| p.fds.get(&fd).filter(|f| !f.cloexec).map(|f| f.file))
            .collect();
        for fd in fds {
            let Some(f) = p.fds.get_mut(&fd) else {
                continue;
            };
            if f.cloexec {
                release(p.fds.remove(&fd), used);
            } else if matches!(f.origin, Origin::Created { .. })
                && !is_standard_stream(fd)
                && fd < WATCHED_FDS
                && !standard.contains(&f.file)
                && !f.passed
            {
                // An exec-leak unless the new program uses it (decided
                // when the process exits).
                f.crossed = Some(filename.to_owned());
            }
        }
        // The new program never had what the old one closed.
        for (_, c) in p.closed.drain() {
            used.released.extend(c.stack);
        }
        p.exe = filename.to_owned();
        p.comm = base_name(filename);
        p.cmdline.clear();
    }

    fn exit(&mut self, tgid: u32, ts_ns: u64, still_running: bool, used: &mut StackUse) {
        let Some(p) = self.processes.get_mut(&tgid) else {
            return;
        };
        if p.exited_ns.is_some() {
            return;
        }
        if !still_running {
            p.exited_ns = Some(ts_ns);
        }
        p.preexisting_at_end = p.preexisting_by_kind();
        for (_, c) in p.closed.drain() {
            used.released.extend(c.stack);
        }
        let mut fds: Vec<(Fd, OpenFd)> = p.fds.drain().collect();
        fds.sort_unstable_by_key(|(fd, _)| *fd);
        for (fd, f) in fds {
            let Origin::Created {
                tgid: creator,
                syscall,
                stack,
                ..
            } = f.origin
            else {
                continue;
            };
            let leaked = creator == tgid && !is_standard_stream(fd);
            if let Some(exec) = &f.crossed {
                let leak = ExecLeak {
                    tgid,
                    fd,
                    kind: f.kind,
                    target: f.describe(),
                    opened_by: syscall,
                    exec: exec.clone(),
                    stack,
                };
                self.pending_exec_leaks
                    .insert((tgid, fd, f.id), (leak, f.forked_from));
                // The fd's own reference goes to the exec-leak; a leak
                // report needs one more.
                if leaked {
                    used.held.extend(stack);
                } else {
                    continue;
                }
            }
            if leaked {
                self.leaks
                    .extend(leak_of(tgid, fd, &f, ts_ns).map(|l| Leak { still_running, ..l }));
                continue;
            }
            used.released.extend(stack_of(&f));
        }
    }

    /// Stops tracking `tgid` at once, whatever it holds (a monitor's
    /// process it no longer selects, or evicts). Nothing is reported.
    pub fn drop_process(&mut self, tgid: u32) -> StackUse {
        let mut used = StackUse::default();
        if let Some(p) = self.processes.remove(&tgid) {
            used.released.extend(p.fds.values().filter_map(stack_of));
            used.released
                .extend(p.closed.values().filter_map(|c| c.stack));
            self.order.retain(|&t| t != tgid);
        }
        used
    }

    /// For a table that lives as long as its host (`monitor`): hands back
    /// the EMFILE failures and misuses found since the last call. Every other finding is dropped;
    /// the stacks all of them held are in `released` (those of the
    /// returned findings too, for the caller to release once it has used
    /// them).
    pub fn take_findings(&mut self) -> Findings {
        let mut released = Vec::new();
        released.extend(self.leaks.drain(..).filter_map(|l| l.stack));
        released.extend(self.exec_leaks.drain(..).filter_map(|l| l.stack));
        released.extend(self.gc_closed.drain(..).filter_map(|l| l.stack));
        released.extend(self.fd_set_overflows.drain(..).filter_map(|o| o.stack));
        released.extend(
            self.pending_exec_leaks
                .drain()
                .filter_map(|(_, (leak, _))| leak.stack),
        );
        let exhaustions = std::mem::take(&mut self.exhaustions);
        let misuses = std::mem::take(&mut self.misuses);
        for e in &exhaustions {
            released.extend(e.stack);
            released.extend(e.holders.iter().filter_map(|h| h.stack));
        }
        for m in &misuses {
            released.extend(m.stack);
            released.extend(m.closed.as_ref().and_then(|c| c.stack));
        }
        Findings {
            exhaustions,
            misuses,
            released,
        }
    }

    /// Forgets the processes that exited (`monitor`: their findings were
    /// taken already, and what they held went with them).
    pub fn forget_exited(&mut self) {
        let processes = &mut self.processes;
        processes.retain(|_, p| p.exited_ns.is_none());
        self.order.retain(|t| processes.contains_key(t));
    }

    /// Tracing is over: whatever live processes hold is reported too.
    pub fn finish(&mut self, now_ns: u64) -> StackUse {
        let mut used = StackUse::default();
        let live: Vec<u32> = self
            .order
            .iter()
            .copied()
            .filter(|t| self.processes[t].exited_ns.is_none())
            .collect();
        for tgid in live {
            self.exit(tgid, now_ns, true, &mut used);
        }
        let mut pending: Vec<_> = self.pending_exec_leaks.drain().collect();
        pending.sort_unstable_by_key(|(key, _)| *key);
        self.exec_leaks
            .extend(pending.into_iter().map(|(_, (leak, _))| leak));
        used
    }
}

/// Descriptor `fd` of `tgid` as a leak seen at `seen_ns`, if it was created
/// during the trace.
fn leak_of(tgid: u32, fd: Fd, f: &OpenFd, seen_ns: u64) -> Option<Leak> {
    let Origin::Created {
        syscall,
        ts_ns,
        stack,
        ..
    } = f.origin
    else {
        return None;
    };
    Some(Leak {
        tgid,
        fd,
        kind: f.kind,
        target: f.describe(),
        cloexec: f.cloexec,
        opened_by: syscall,
        opened_ns: ts_ns,
        seen_ns,
        stack,
        still_running: false,
        closed_at_shutdown: false,
    })
}

fn stack_of(f: &OpenFd) -> Option<StackRef> {
    match f.origin {
        Origin::Created { stack, .. } => stack,
        Origin::Inherited => None,
    }
}

/// An earlier close of a number that was reopened, or closed again.
fn forget_closed(closed: Option<ClosedFd>, used: &mut StackUse) {
    used.released.extend(closed.and_then(|c| c.stack));
}

fn release(closed: Option<OpenFd>, used: &mut StackUse) {
    if let Some(f) = closed {
        used.released.extend(stack_of(&f));
    }
}

fn base_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_owned()
}

#[cfg(test)]
mod tests;
