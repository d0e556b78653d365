//! The synchronous core of a session: each ring-buffer record goes through
//! decode -> stacks -> fd table here, and reports (final, per interval, per
//! EMFILE) are built from what that left. The async loop in `session.rs`
//! only waits and calls in.

use std::{fs, path::Path, sync::Arc};

use fdtrace_common::{DeferredFd, PyBinary, PyFile, PyWalk, StackMode};
use hashbrown::HashMap;

use crate::{
    events::{Action, Event, Fd, FdKind, decode, decode_deferred, process_of},
    fd_table::{Describe, FdTable, Holder, Origin, StackRef, StackUse, is_standard_stream},
    procfs::{self, ProcDescribe},
    python::Python,
    record::{Answer, Recorder, wire::End},
    report::{Context, IntervalEntry, IntervalGroup, Report, StackLookup},
    stacks::{
        StackId, Stacks,
        maps::{Mapping, ProcessMaps},
        symbolize::SymFrame,
        symbolize::Symbols,
    },
};

/// Writes (or with `None` removes) a process's entry in the kernel's
/// CPython walker map; the error says why it could not.
pub type PythonWalker = Box<dyn FnMut(u32, Option<&PyWalk>) -> Result<(), String>>;

/// Registers a CPython interpreter file with the kernel (its
/// `PY_BINARIES` map); the error says why it could not.
pub type PythonRegistry = Box<dyn FnMut(&PyFile, &PyBinary) -> Result<(), String>>;

/// Claims (deletes from the kernel's map and returns) the creations the
/// kernel kept instead of writing, of the processes the predicate picks,
/// made before a time: `(tgid, fd, entry)`.
pub type DeferredClaim = Box<dyn FnMut(&dyn Fn(u32) -> bool, u64) -> Vec<(u32, i32, DeferredFd)>>;

/// Creations the kernel kept are claimed once they are this old, so the
/// table converges while processes live on.
const CLAIM_AFTER_NS: u64 = 1_000_000_000;

/// Something the session must act on now rather than at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// `table.exhaustions[index]` just happened; with `stopped`, the kernel
    /// stopped the process at the failure, as the user asked.
    Emfile {
        index: usize,
        tgid: u32,
        stopped: bool,
    },
    /// `table.fd_set_overflows[index]` just happened.
    FdSetOverflow { index: usize },
}

/// Decoded state of one tracing session.
pub struct Tracer {
    pub table: FdTable,
    pub stacks: Stacks,
    symbols: Symbols,
    stack_mode: StackMode,
    /// Records that did not decode (counted as dropped).
    pub undecodable: u64,
    /// Interval group sizes last time, by canonical stack.
    last_interval: HashMap<Option<StackId>, usize>,
    python: Python,
    /// Tells the kernel how to walk a process's CPython frames (`Some`) or
    /// to stop trying (`None`).
    python_walker: PythonWalker,
    /// Tells the kernel which files are CPython interpreters.
    python_registry: PythonRegistry,
    /// Claims creations the kernel kept while the ring was busy.
    deferred: Option<DeferredClaim>,
    /// When kept creations were last claimed.
    last_claim_ns: u64,
    /// Where the trace is being recorded (`record`, `attach --record`,
    /// and in memory for an HTML report).
    recorder: Option<Recorder>,
    /// For `monitor`: descriptors opened since [`Tracer::take_opened`],
    /// with their stacks unwound at once; events of processes the table
    /// does not know are skipped.
    opened: Option<Vec<Opened>>,
}

/// Descriptors a process came to hold at one stack: created there, or
/// copied at a fork or kept across an exec (`monitor` counts them by
/// program and site).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub tgid: u32,
    /// The program it ran then.
    pub comm: Arc<str>,
    /// `None`: created without a stack sample.
    pub stack: Option<StackId>,
    pub count: u32,
}

/// `/proc` lookups for the table, each written down for a recording.
struct Noted<'a> {
    found: &'a mut Vec<Answer>,
}

impl Describe for Noted<'_> {
    fn describe(&mut self, tgid: u32, fd: Fd) -> Option<(FdKind, String)> {
        let found = ProcDescribe.describe(tgid, fd);
        self.found.push((tgid, fd, found.clone()));
        found
    }
}

/// Live descriptors of one stack, for an interval snapshot.
struct Holding {
    id: Option<StackId>,
    count: usize,
    kinds: HashMap<FdKind, usize>,
    pids: Vec<u32>,
}

/// Stack ids as a report sees them: canonical (same source, same id).
struct Lookup<'a> {
    ids: HashMap<StackRef, StackId>,
    symbols: &'a Symbols,
    stacks: &'a Stacks,
}

impl StackLookup for Lookup<'_> {
    fn id(&self, stack: StackRef) -> Option<u32> {
        self.ids.get(&stack).map(|id| self.symbols.canonical(*id).0)
    }

    fn frames(&self, id: u32) -> Vec<SymFrame> {
        self.symbols.frames(StackId(id)).to_vec()
    }

    fn truncated(&self, id: u32) -> bool {
        self.stacks.stack(StackId(id)).truncated
    }
}

impl Tracer {
    pub fn new(stack_mode: StackMode) -> Self {
        Self {
            table: FdTable::default(),
            stacks: Stacks::default(),
            symbols: Symbols::default(),
            stack_mode,
            undecodable: 0,
            last_interval: HashMap::new(),
            python: Python::default(),
            python_walker: Box::new(|_, _| Ok(())),
            python_registry: Box::new(|_, _| Ok(())),
            deferred: None,
            last_claim_ns: 0,
            recorder: None,
            opened: None,
        }
    }

    /// Monitor mode: counts what each process comes to hold, by stack
    /// ([`Tracer::take_opened`]), unwinding each creation's stack at once
    /// (a site must be known even for a descriptor closed a moment later),
    /// and skips events of processes the table does not know.
    pub fn count_opened(&mut self) {
        self.opened = Some(Vec::new());
    }

    /// What processes came to hold since the last call.
    pub fn take_opened(&mut self) -> Vec<Opened> {
        self.opened.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Stops following `tgid` at once (a monitor's process it no longer
    /// selects, or evicts): its table entry and the stacks it held, its
    /// address space, its Python state and the kernel's walker entry.
    pub fn drop_process(&mut self, tgid: u32) {
        let used = self.table.drop_process(tgid);
        for r in used.released {
            self.stacks.release(r);
        }
        self.stacks.forget(tgid);
        self.python.forget(tgid);
        let _ = (self.python_walker)(tgid, None);
    }

    /// Lets go of the symbol tables parsed so far (a daemon's binaries
    /// change on upgrade).
    pub fn drop_parsed_files(&mut self) {
        self.symbols.drop_parsed_files();
        self.stacks.drop_parsed_files();
    }

    /// The table and stack store, for a monitor that names sites.
    pub fn parts(&mut self) -> (&mut FdTable, &mut Stacks, &mut Symbols) {
        (&mut self.table, &mut self.stacks, &mut self.symbols)
    }

    /// Records everything the table is told, from now on, into `recorder`.
    pub fn record_to(&mut self, recorder: Recorder) {
        self.stacks.log_resolutions();
        self.recorder = Some(recorder);
    }

    /// The recording, once tracing is over.
    pub fn take_recorder(&mut self) -> Option<Recorder> {
        self.recorder.take()
    }

    /// Applies one event to the table (and to the recording).
    fn apply(&mut self, event: &Event, stack: Option<StackRef>) -> StackUse {
        if self.opened.is_some() {
            let used = self.table.apply(event, stack, &mut ProcDescribe);
            self.note_opened(event, stack);
            return used;
        }
        let Some(recorder) = self.recorder.as_mut() else {
            return self.table.apply(event, stack, &mut ProcDescribe);
        };
        let mut found = Vec::new();
        let used = self
            .table
            .apply(event, stack, &mut Noted { found: &mut found });
        for (tgid, fd, what) in &found {
            recorder.describe(*tgid, *fd, what.as_ref());
        }
        recorder.event(event, stack);
        used
    }

    /// After `event` was applied: what its process (or a fork's child)
    /// came to hold, by stack.
    fn note_opened(&mut self, event: &Event, stack: Option<StackRef>) {
        let tgid = event.tgid;
        let mut found: Vec<Opened> = Vec::new();
        let comm = |table: &FdTable, tgid: u32| -> Arc<str> {
            Arc::from(table.processes.get(&tgid).map_or("", |p| p.comm.as_str()))
        };
        match &event.action {
            Action::Create(c) => {
                let count = c
                    .fds
                    .iter()
                    .filter(|&&fd| fd >= 0 && !is_standard_stream(fd))
                    .count();
                if count > 0 {
                    found.push(Opened {
                        tgid,
                        comm: comm(&self.table, tgid),
                        stack: stack.and_then(|r| self.stacks.resolve(r)),
                        count: u32::try_from(count).unwrap_or(u32::MAX),
                    });
                }
            }
            // The child's copies, and what crossed an exec into the new
            // program, are now held by another process or program.
            Action::Fork { child } => found.extend(self.held_by(*child)),
            Action::Exec { .. } => found.extend(self.held_by(tgid)),
            _ => {}
        }
        if let Some(opened) = self.opened.as_mut() {
            opened.extend(found);
        }
    }

    /// The descriptors `tgid` created (or got from its parent) while
    /// traced, one entry each; not 0, 1 and 2, which are the program's
    /// own by convention, whoever set them up.
    fn held_by(&mut self, tgid: u32) -> Vec<Opened> {
        let Some(p) = self.table.processes.get(&tgid) else {
            return Vec::new();
        };
        let comm: Arc<str> = Arc::from(p.comm.as_str());
        let refs: Vec<Option<StackRef>> = p
            .fds
            .iter()
            .filter(|(fd, _)| !is_standard_stream(**fd))
            .filter_map(|(_, f)| match f.origin {
                Origin::Created { stack, .. } => Some(stack),
                Origin::Inherited => None,
            })
            .collect();
        refs.into_iter()
            .map(|r| Opened {
                tgid,
                comm: comm.clone(),
                stack: r.and_then(|r| self.stacks.resolve(r)),
                count: 1,
            })
            .collect()
    }

    /// Starts tracking `tgid` with the descriptors it already has.
    pub fn add_root(&mut self, tgid: u32, exe: &str, inherited: Vec<(Fd, FdKind, String, bool)>) {
        if let Some(r) = self.recorder.as_mut() {
            r.root(tgid, exe, &inherited);
        }
        self.table.add_root(tgid, exe, inherited);
    }

    /// What was read of a process besides its events (at attach).
    pub fn set_process(
        &mut self,
        tgid: u32,
        comm: String,
        cmdline: Vec<String>,
        rlimit: Option<(u64, u64)>,
    ) {
        if let Some(r) = self.recorder.as_mut() {
            r.process(tgid, Some(&comm), Some(&cmdline), rlimit);
        }
        if let Some(p) = self.table.processes.get_mut(&tgid) {
            p.rlimit = rlimit;
            p.comm = comm;
            p.cmdline = cmdline;
        }
    }

    /// Writes down the stacks unwound since last time.
    fn record_stacks(&mut self) {
        if let Some(r) = self.recorder.as_mut() {
            r.stacks(&mut self.stacks, &mut self.symbols);
        }
    }

    /// Unwinds samples older than `age` (raw bytes are kept only for
    /// young descriptors) and pushes the recording to its file.
    pub fn mature(&mut self, now_ns: u64, age: std::time::Duration) {
        self.stacks.mature(now_ns, age);
        self.record_stacks();
        if let Some(r) = self.recorder.as_mut() {
            r.flush();
        }
    }

    /// Ends the recording with what the report says besides the table.
    pub fn end_recording(&mut self, cx: &Context<'_>) {
        self.record_stacks();
        let notes = self.python.notes.clone();
        let undecodable = self.undecodable;
        if let Some(r) = self.recorder.as_mut() {
            r.end(End {
                exit_status: cx.exit_status,
                dropped_events: cx.dropped_events,
                skipped_stacks: cx.skipped_stacks,
                kept_in_kernel: cx.kept_in_kernel,
                last_drop_ns: cx.last_drop_ns,
                undecodable,
                notes,
            });
        }
    }

    /// Where creations the kernel kept are claimed from (its `DEFERRED` map).
    pub fn set_deferred_claim(&mut self, claim: DeferredClaim) {
        self.deferred = Some(claim);
    }

    /// Models the creations the kernel kept for `tgid` (or every process
    /// the table knows, with `None`) made before `before_ns`: they are
    /// still open, since their close would have deleted them.
    fn claim_deferred(&mut self, tgid: Option<u32>, before_ns: u64) {
        let Some(claim) = self.deferred.as_mut() else {
            return;
        };
        // A process the table does not know yet (its fork is still on its
        // way) keeps its entries for the next round.
        let known = &self.table.processes;
        let wanted = |t: u32| tgid.map_or_else(|| known.contains_key(&t), |tgid| tgid == t);
        let mut kept = claim(&wanted, before_ns);
        kept.sort_unstable_by_key(|(_, _, entry)| entry.ts_ns);
        for (tgid, fd, entry) in kept {
            // One that does not decode is a creation missed, not a close:
            // nothing to doubt the other leaks for.
            let Ok(events) = decode_deferred(tgid, fd, &entry) else {
                continue;
            };
            for event in events {
                let used = self.apply(&event, None);
                for r in used.released {
                    self.stacks.release(r);
                }
            }
        }
    }

    /// Claims what the kernel kept more than a second ago, at most once a
    /// second: long-lived descriptors made under load join the table.
    pub fn claim_old(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.last_claim_ns) < CLAIM_AFTER_NS {
            return;
        }
        self.last_claim_ns = now_ns;
        self.claim_deferred(None, now_ns.saturating_sub(CLAIM_AFTER_NS));
    }

    /// Where CPython walker entries go (the kernel's `PYTHON` map).
    pub fn set_python_walker(&mut self, walker: PythonWalker) {
        self.python_walker = walker;
    }

    /// Where CPython interpreter files are registered (the kernel's
    /// `PY_BINARIES` map).
    pub fn set_python_registry(&mut self, registry: PythonRegistry) {
        self.python_registry = registry;
    }

    /// Tells the kernel which CPython files `program` will run, before it
    /// starts: its Python frames are then walked from its first syscall,
    /// however soon it leaks and exits.
    pub fn register_python_program(&mut self, program: &Path) {
        for (file, binary) in self.python.command_binaries(program) {
            self.register_python(program, &file, &binary);
        }
    }

    fn register_python(&mut self, path: &Path, file: &PyFile, binary: &PyBinary) {
        if let Err(why) = (self.python_registry)(file, binary) {
            self.python.registry_failed(path, &why);
        }
    }

    /// Handles one ring-buffer record. Nothing here waits on, signals or
    /// needs the traced process: what /proc is read is read if it is
    /// still there, and is never required.
    pub fn handle(&mut self, bytes: &[u8]) -> Option<Notice> {
        if self.opened.is_some()
            && process_of(bytes).is_some_and(|tgid| !self.table.processes.contains_key(&tgid))
        {
            // A monitor's candidate it dropped: not even decoded.
            return None;
        }
        let Ok(mut event) = decode(bytes, self.stack_mode) else {
            self.undecodable += 1;
            return None;
        };
        let tgid = event.tgid;
        if self.opened.is_some() && !self.table.processes.contains_key(&tgid) {
            // A monitor's candidate it dropped, or records still on their
            // way from one that exited.
            return None;
        }
        match event.action {
            Action::PyStack(stack) => {
                self.python.stash(event.tid, event.ts_ns, stack);
                return None;
            }
            Action::PyCode(code) => {
                self.python.store_code(tgid, code);
                return None;
            }
            _ => {}
        }
        match &mut event.action {
            Action::Fork { child } => {
                self.stacks.fork(tgid, *child);
                self.python.fork(tgid, *child);
            }
            Action::Exit => {
                self.stacks.forget(tgid);
                self.python.forget(tgid);
            }
            Action::Exec { filename } => {
                self.stacks.forget(tgid);
                self.python.forget(tgid);
                // execve got a relative path: name the program by its real path.
                if !filename.starts_with('/')
                    && let Ok(exe) = fs::read_link(format!("/proc/{tgid}/exe"))
                {
                    *filename = exe.to_string_lossy().into_owned();
                }
            }
            Action::Image {
                path,
                entry,
                interpreter_base,
                argv,
                limit,
            } => {
                // What the kernel copied at the exec; /proc only for what
                // did not fit, and only if the program is still there.
                if let Some(p) = self.table.processes.get_mut(&tgid) {
                    p.cmdline = argv.take().unwrap_or_else(|| procfs::cmdline(tgid));
                    p.rlimit = limit.or_else(|| procfs::nofile_limit(tgid));
                    if let Some(r) = self.recorder.as_mut() {
                        r.process(tgid, None, Some(&p.cmdline), p.rlimit);
                    }
                }
                if let Some(path) = path.take() {
                    let root = procfs::Root::of(tgid);
                    let host = Arc::new(root.host_path(&path));
                    self.stacks.exec_image(
                        tgid,
                        (Arc::from(path.as_str()), host),
                        *entry,
                        *interpreter_base,
                        |p| root.host_path(p),
                    );
                    self.maps_changed(tgid, false);
                }
            }
            Action::Mmap {
                start,
                len,
                offset,
                path,
            } => {
                let path: Arc<str> = Arc::from(path.take().unwrap_or_default().as_str());
                let host = Arc::new(procfs::Root::of(tgid).host_path(&path));
                let python_like = is_python_like(&path);
                self.stacks.map_code(
                    tgid,
                    Mapping {
                        start: *start,
                        end: start.saturating_add(*len),
                        offset: *offset,
                        executable: true,
                        path,
                        host_path: host,
                    },
                );
                if python_like {
                    self.maps_changed(tgid, false);
                }
            }
            _ => {}
        }
        let sample = match &mut event.action {
            Action::Create(c) => c.stack.take(),
            Action::Exhausted { stack, .. }
            | Action::FdSetOverflow { stack, .. }
            | Action::Close { stack, .. }
            | Action::CloseRange { stack, .. }
            | Action::BadFd { stack, .. } => stack.take(),
            _ => None,
        };
        let stack = sample.map(|s| {
            let python = self.python.frames(tgid, event.tid, event.ts_ns);
            for retired in self.python.take_retired() {
                let _ = (self.python_walker)(retired, None);
            }
            let r = self.stacks.add(tgid, s, python, event.ts_ns);
            if let Some(recorder) = self.recorder.as_mut() {
                recorder.sample(r);
            }
            r
        });
        // What the kernel kept for this process must be in the table
        // before its fork (the child's copy), exec, close_range or exit.
        // And before an EBADF is judged: a kept creation is an open number.
        if matches!(
            event.action,
            Action::Fork { .. }
                | Action::Exec { .. }
                | Action::Exit
                | Action::CloseRange { .. }
                | Action::BadFd { .. }
        ) {
            self.claim_deferred(Some(tgid), event.ts_ns);
        }
        let exhaustions = self.table.exhaustions.len();
        let overflows = self.table.fd_set_overflows.len();
        let used = self.apply(&event, stack);
        for r in used.held {
            self.stacks.hold(r);
        }
        for r in used.released {
            self.stacks.release(r);
        }
        if let Some(r) = stack {
            self.stacks.drop_if_unused(r);
        }
        self.record_stacks();
        if self.table.exhaustions.len() > exhaustions {
            self.fill_holders(exhaustions);
            return Some(Notice::Emfile {
                index: exhaustions,
                tgid,
                stopped: event.stopped,
            });
        }
        (self.table.fd_set_overflows.len() > overflows)
            .then_some(Notice::FdSetOverflow { index: overflows })
    }

    /// Reads the memory maps of a process being attached to (without
    /// stopping it) and looks for a CPython interpreter in them. From then
    /// on the kernel's records keep its layout current.
    pub fn read_maps(&mut self, tgid: u32) {
        let Ok(maps) = ProcessMaps::read(tgid) else {
            return;
        };
        self.stacks.set_maps(tgid, maps);
        self.maps_changed(tgid, true);
    }

    /// Looks for a CPython interpreter in the code `tgid` has mapped;
    /// `readable`: the process is known to be there to read.
    fn maps_changed(&mut self, tgid: u32, readable: bool) {
        let Some(maps) = self.stacks.maps(tgid) else {
            return;
        };
        if let Some(found) = self.python.detect(tgid, maps) {
            if let Some((file, binary)) = found.binary {
                self.register_python(&found.module, &file, &binary);
            }
            self.stacks.set_eval_loop(found.module, found.eval);
            if let Err(why) = (self.python_walker)(tgid, Some(&found.walk)) {
                self.python.walker_failed(tgid, &why);
            }
            // Readable now: its thread states can vouch for the offsets.
            if readable {
                self.python.check_live(tgid);
            }
            for retired in self.python.take_retired() {
                let _ = (self.python_walker)(retired, None);
            }
        }
    }

    /// Canonical stack of a handle, symbolizing it if needed.
    fn canonical(&mut self, stack: Option<StackRef>) -> Option<StackId> {
        let id = self.stacks.resolve(stack?)?;
        self.symbols.ensure(&self.stacks, &[id]);
        Some(self.symbols.canonical(id))
    }

    /// Groups the fds process `tgid` created while traced by stack:
    /// (count, a representative handle, oldest creation), most first.
    fn holders(&mut self, tgid: u32, older_than_ns: u64) -> Vec<(Option<StackId>, Holder)> {
        let Some(p) = self.table.processes.get(&tgid) else {
            return Vec::new();
        };
        let created: Vec<(Option<StackRef>, u64)> = p
            .created()
            .filter(|&(_, _, ts)| ts <= older_than_ns)
            .map(|(_, stack, ts)| (stack, ts))
            .collect();
        let mut groups: Vec<(Option<StackId>, Holder)> = Vec::new();
        for (stack, ts_ns) in created {
            let id = self.canonical(stack);
            match groups.iter_mut().find(|(g, _)| *g == id) {
                Some((_, h)) => {
                    h.count += 1;
                    h.oldest_ns = h.oldest_ns.min(ts_ns);
                }
                None => groups.push((
                    id,
                    Holder {
                        count: 1,
                        stack,
                        oldest_ns: ts_ns,
                    },
                )),
            }
        }
        groups.sort_by_key(|g| std::cmp::Reverse(g.1.count));
        groups
    }

    fn fill_holders(&mut self, index: usize) {
        let (tgid, at) = {
            let e = &self.table.exhaustions[index];
            (e.tgid, e.ts_ns)
        };
        let holders: Vec<Holder> = self.holders(tgid, at).into_iter().map(|(_, h)| h).collect();
        for h in &holders {
            if let Some(r) = h.stack {
                // Kept for the final report even after those fds close.
                self.stacks.hold(r);
            }
        }
        if let Some(r) = self.recorder.as_mut() {
            r.holders(index, &holders);
        }
        self.table.exhaustions[index].holders = holders;
        self.record_stacks();
    }

    /// Descriptors opened since tracing began, still open in live
    /// processes and created before `older_than_ns`, grouped by stack, with
    /// growth since the previous call.
    pub fn interval(&mut self, elapsed_ms: u64, older_than_ns: u64) -> IntervalEntry {
        let live: Vec<u32> = self
            .table
            .order
            .iter()
            .copied()
            .filter(|t| {
                self.table
                    .processes
                    .get(t)
                    .is_some_and(|p| p.exited_ns.is_none())
            })
            .collect();
        let mut groups: Vec<Holding> = Vec::new();
        for tgid in live {
            let p = &self.table.processes[&tgid];
            let created: Vec<(Option<StackRef>, FdKind)> = p
                .fds
                .values()
                .filter_map(|f| match f.origin {
                    Origin::Created { stack, ts_ns, .. } if ts_ns <= older_than_ns => {
                        Some((stack, f.kind))
                    }
                    _ => None,
                })
                .collect();
            for (stack, kind) in created {
                let id = self.canonical(stack);
                let index = match groups.iter().position(|g| g.id == id) {
                    Some(i) => i,
                    None => {
                        groups.push(Holding {
                            id,
                            count: 0,
                            kinds: HashMap::new(),
                            pids: Vec::new(),
                        });
                        groups.len() - 1
                    }
                };
                let g = &mut groups[index];
                g.count += 1;
                *g.kinds.entry(kind).or_insert(0) += 1;
                if !g.pids.contains(&tgid) {
                    g.pids.push(tgid);
                }
            }
        }
        groups.sort_by_key(|g| std::cmp::Reverse(g.count));
        let previous = std::mem::take(&mut self.last_interval);
        let entry = IntervalEntry {
            elapsed_ms,
            groups: groups
                .iter()
                .map(|g| IntervalGroup {
                    stack_id: g.id.map(|id| id.0),
                    count: g.count,
                    growth: i64::try_from(g.count).unwrap_or(i64::MAX)
                        - i64::try_from(previous.get(&g.id).copied().unwrap_or(0)).unwrap_or(0),
                    kind: g
                        .kinds
                        .iter()
                        .max_by_key(|(_, n)| **n)
                        .map_or("other", |(k, _)| k.name()),
                    pids: g.pids.clone(),
                })
                .collect(),
        };
        self.last_interval = groups.into_iter().map(|g| (g.id, g.count)).collect();
        self.record_stacks();
        if let Some(r) = self.recorder.as_mut() {
            r.interval(&entry);
        }
        entry
    }

    /// Builds a report of the table as it is now.
    pub fn report(&mut self, cx: Context<'_>) -> Report {
        let t = &self.table;
        let mut refs: Vec<StackRef> = t.leaks.iter().filter_map(|l| l.stack).collect();
        refs.extend(t.exec_leaks.iter().filter_map(|e| e.stack));
        refs.extend(t.gc_closed.iter().filter_map(|g| g.stack));
        for e in &t.exhaustions {
            refs.extend(e.stack);
            refs.extend(e.holders.iter().filter_map(|h| h.stack));
        }
        refs.extend(t.fd_set_overflows.iter().filter_map(|o| o.stack));
        for m in &t.misuses {
            refs.extend(m.stack);
            refs.extend(m.closed.and_then(|c| c.stack));
        }
        let mut ids = HashMap::new();
        for r in refs {
            if let Some(id) = self.stacks.resolve(r) {
                ids.insert(r, id);
            }
        }
        let all: Vec<StackId> = ids.values().copied().collect();
        self.symbols.ensure(&self.stacks, &all);
        let lookup = Lookup {
            ids,
            symbols: &self.symbols,
            stacks: &self.stacks,
        };
        let report = Report::build_traced(
            &self.table,
            cx,
            &lookup,
            &self.python.notes,
            self.undecodable,
        );
        self.record_stacks();
        report
    }

    /// Ends tracing: what live processes still hold is reported too.
    pub fn finish(&mut self, now_ns: u64) {
        self.claim_deferred(None, u64::MAX);
        if let Some(r) = self.recorder.as_mut() {
            r.finish(now_ns);
        }
        let used = self.table.finish(now_ns);
        for r in used.released {
            self.stacks.release(r);
        }
    }
}

/// A file that may be CPython (its executable or libpython).
fn is_python_like(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or("");
    name.starts_with("python") || name.starts_with("libpython")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_process_leaves_no_address_space_or_table_entry_behind() {
        let mut tracer = Tracer::new(StackMode::FramePointer);
        let mut walked = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel();
        tracer.set_python_walker(Box::new(move |tgid, walk| {
            let _ = tx.send((tgid, walk.is_some()));
            Ok(())
        }));
        tracer.add_root(100, "/bin/svc", vec![]);
        tracer.stacks.set_maps(100, ProcessMaps::default());
        assert_eq!(tracer.stacks.space_count(), 1);
        tracer.drop_process(100);
        assert_eq!(tracer.stacks.space_count(), 0);
        assert!(tracer.table.processes.is_empty() && tracer.table.order.is_empty());
        walked.extend(rx.try_iter());
        // The kernel's walker entry for it is removed too.
        assert_eq!(walked, vec![(100, false)]);
    }
}
