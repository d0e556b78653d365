//! Report stage: turns the fd table into a [`Report`] (leaks grouped by the
//! stack that opened them, largest group first) and renders it as text or
//! JSON into any `impl Write`. Knows nothing of BPF or async: stacks come
//! through [`StackLookup`].

pub mod annotate;
pub mod by_test;
pub mod github;
pub mod html;

pub mod json;
pub mod live;
pub mod misuse;
pub mod sarif;
mod sections;
pub mod terminal;
pub mod text;
pub mod timeline;

use hashbrown::HashMap;
use serde::Serialize;

use crate::{
    events::FdKind,
    fd_table::{FdTable, GcClosed, Leak, StackRef},
    stacks::symbolize::SymFrame,
};

/// What `--fail-on` can fail a run for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Finding {
    Leak,
    ExecLeak,
    Emfile,
    GcClosed,
    Misuse,
}

/// JSON format version.
pub const VERSION: u32 = 1;

/// Everything a report says. Serialized as the documented JSON format.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub version: u32,
    /// `run` or `attach`.
    pub mode: &'static str,
    pub command: Vec<String>,
    /// The command's exit status (128 + signal number if a signal killed
    /// it); null for `attach`.
    pub exit_status: Option<i32>,
    /// Events the kernel could not deliver; non-zero means the report is incomplete.
    pub dropped_events: u64,
    pub incomplete: bool,
    /// Creations recorded without a stack because the kernel's ring buffer
    /// was filling up (their events are all there).
    pub skipped_stacks: u64,
    /// Creations the kernel kept instead of writing while its ring buffer
    /// was busy (closed there, they never crossed it; a leak among them has
    /// no stack).
    pub kept_in_kernel: u64,
    pub processes: Vec<ProcessEntry>,
    pub leaks: Vec<LeakEntry>,
    /// Descriptors not seen closed, but opened before an event was
    /// dropped: their close may be the lost event. Not leaks, not counted
    /// by `--fail-on leak`.
    pub unknown_leaks: Vec<LeakEntry>,
    pub exec_leaks: Vec<ExecLeakEntry>,
    /// Descriptors closed only because CPython's cyclic garbage collector
    /// freed what held them. Not leaks; `--fail-on gc-closed` gates on them.
    pub gc_closed: Vec<GcClosedEntry>,
    /// Leaks whose Python stack passes through a test function, by test.
    pub leaks_by_test: Vec<by_test::TestLeaks>,
    pub emfile: Vec<EmfileEntry>,
    pub fd_set_overflows: Vec<FdSetOverflowEntry>,
    /// Double closes, uses after close and invalid descriptors, identical
    /// ones counted together.
    pub fd_misuse: Vec<misuse::MisuseEntry>,
    /// Misuses not reported because an event was lost before them (the
    /// number may have been open after all).
    pub misuse_withheld: usize,
    /// `attach --interval` snapshots, oldest first.
    pub intervals: Vec<IntervalEntry>,
    /// Things the reader should know about how complete stacks are (a
    /// Python version fdtrace cannot walk).
    pub notes: Vec<String>,
    /// Leaks and exec leaks taken out by suppression rules.
    pub suppressed: usize,
    /// Every rule loaded, with how many it took (0: the rule is stale).
    pub suppressions: Vec<SuppressionEntry>,
    pub groups: Vec<Group>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SuppressionEntry {
    /// `FILE:N`: the Nth rule in FILE.
    pub source: String,
    pub reason: String,
    pub matched: usize,
    /// One of fdtrace's own rules (`--no-default-suppressions` turns them off).
    pub built_in: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ProcessEntry {
    pub pid: u32,
    pub ppid: Option<u32>,
    pub comm: String,
    pub exe: String,
    /// Full command line (names the test under a one-process-per-test runner).
    pub cmdline: Vec<String>,
    pub exit_status: Option<i32>,
    pub peak_fds: usize,
    /// RLIMIT_NOFILE [soft, hard] as last read.
    pub rlimit: Option<[u64; 2]>,
    /// Descriptors open before tracing began (origin unknown), by kind.
    pub preexisting: Vec<KindCount>,
    /// Most descriptors open in each of at most 48 equal spans of time
    /// from the process's first traced event, oldest first.
    pub open_over_time: Vec<u32>,
    /// How long those spans cover together.
    pub open_over_ms: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KindCount {
    pub kind: &'static str,
    pub count: usize,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LeakEntry {
    pub pid: u32,
    pub fd: i32,
    pub kind: &'static str,
    pub target: String,
    pub cloexec: bool,
    pub opened_by: &'static str,
    /// Time from creation to process exit (or end of tracing).
    pub age_ms: u64,
    pub stack_id: Option<u32>,
    pub still_running: bool,
    /// Closed only by CPython's interpreter shutdown (`age_ms` runs to
    /// then): the program itself never closed it.
    pub closed_at_shutdown: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct GcClosedEntry {
    pub pid: u32,
    pub fd: i32,
    pub kind: &'static str,
    pub target: String,
    pub opened_by: &'static str,
    /// Time from creation to the collection that closed it.
    pub age_ms: u64,
    pub stack_id: Option<u32>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ExecLeakEntry {
    pub pid: u32,
    pub fd: i32,
    pub kind: &'static str,
    pub target: String,
    pub exec: String,
    pub opened_by: &'static str,
    pub stack_id: Option<u32>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EmfileEntry {
    pub pid: u32,
    pub tid: u32,
    pub syscall: &'static str,
    pub errno: i32,
    pub error: &'static str,
    pub argument: Option<String>,
    pub open_fds: usize,
    pub rlimit: Option<[u64; 2]>,
    pub stack_id: Option<u32>,
    /// Stacks holding the table at the failure, most descriptors first.
    pub holders: Vec<HolderEntry>,
    /// Descriptors open since before tracing, by kind.
    pub preexisting: Vec<KindCount>,
    /// The process was left stopped at the failure (`--on-emfile stop`);
    /// `kill -CONT <pid>` resumes it.
    pub stopped: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HolderEntry {
    pub count: usize,
    pub stack_id: Option<u32>,
    pub oldest_age_ms: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FdSetOverflowEntry {
    pub pid: u32,
    pub tid: u32,
    pub syscall: &'static str,
    pub nfds: u64,
    pub highest_fd: Option<i32>,
    pub stack_id: Option<u32>,
}

/// One `attach --interval` snapshot.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct IntervalEntry {
    /// Time since attach.
    pub elapsed_ms: u64,
    /// Stacks holding descriptors opened since attach and older than
    /// `--min-age`, most first.
    pub groups: Vec<IntervalGroup>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct IntervalGroup {
    pub stack_id: Option<u32>,
    pub count: usize,
    /// Change since the previous snapshot.
    pub growth: i64,
    pub kind: &'static str,
    pub pids: Vec<u32>,
}

/// One stack and how many leaks it opened.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Group {
    pub stack_id: u32,
    pub count: usize,
    pub truncated: bool,
    pub stack: Vec<FrameEntry>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FrameEntry {
    /// Hex address inside `module`, or the raw address of unknown code.
    pub address: String,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub module: Option<String>,
    pub inlined: bool,
    /// `native`, or `python` for a CPython frame (`function` is its
    /// qualified name, `file` the script, `address` empty).
    pub lang: &'static str,
}

/// How the report reaches stacks: handles to ids, ids to frames.
pub trait StackLookup {
    /// The report's stack id for a table handle (equal stacks, equal ids).
    fn id(&self, stack: StackRef) -> Option<u32>;
    fn frames(&self, id: u32) -> Vec<SymFrame>;
    fn truncated(&self, id: u32) -> bool;
}

/// Inputs for [`Report::build`] besides the table.
#[derive(Clone)]
pub struct Context<'a> {
    pub mode: &'static str,
    pub command: &'a [String],
    pub exit_status: Option<i32>,
    pub dropped_events: u64,
    pub skipped_stacks: u64,
    pub kept_in_kernel: u64,
    /// When the last event was lost (CLOCK_MONOTONIC ns; `u64::MAX` when
    /// unknown), if any was.
    pub last_drop_ns: Option<u64>,
    pub intervals: Vec<IntervalEntry>,
}

impl Context<'_> {
    /// For a report printed while tracing goes on (EMFILE, intervals):
    /// losses are totalled only at the end.
    pub fn live(intervals: Vec<IntervalEntry>) -> Self {
        Context {
            mode: "live",
            command: &[],
            exit_status: None,
            dropped_events: 0,
            skipped_stacks: 0,
            kept_in_kernel: 0,
            last_drop_ns: None,
            intervals,
        }
    }
}

fn kind_counts(counts: &[(FdKind, usize)]) -> Vec<KindCount> {
    counts
        .iter()
        .map(|&(kind, count)| KindCount {
            kind: kind.name(),
            count,
        })
        .collect()
}

/// Nanoseconds between two timestamps, in whole milliseconds.
pub fn age_ms(from_ns: u64, to_ns: u64) -> u64 {
    to_ns.saturating_sub(from_ns) / 1_000_000
}

impl Report {
    /// The report of a traced session: [`Report::build`] with what the
    /// tracer knows besides the table (`notes` on how complete stacks
    /// are, records that did not decode). Live and replayed from a trace
    /// file alike.
    pub fn build_traced(
        table: &FdTable,
        mut cx: Context<'_>,
        stacks: &impl StackLookup,
        notes: &[String],
        undecodable: u64,
    ) -> Self {
        if undecodable > 0 {
            // Lost records without a time: any close may be among them.
            cx.last_drop_ns = Some(u64::MAX);
        }
        let mut report = Report::build(table, cx, stacks);
        report.notes = notes.to_vec();
        report.dropped_events += undecodable;
        report.incomplete = report.dropped_events > 0;
        report
    }

    pub fn build(table: &FdTable, cx: Context<'_>, stacks: &impl StackLookup) -> Self {
        let id_of = |r: Option<StackRef>| r.and_then(|r| stacks.id(r));
        let processes = table
            .order
            .iter()
            .filter_map(|tgid| table.processes.get(tgid))
            .map(|p| ProcessEntry {
                pid: p.tgid,
                ppid: p.ppid,
                comm: p.comm.clone(),
                exe: p.exe.clone(),
                cmdline: p.cmdline.clone(),
                exit_status: p.exit_status,
                peak_fds: p.peak_fds,
                rlimit: p.rlimit.map(|(soft, hard)| [soft, hard]),
                preexisting: kind_counts(&if p.exited_ns.is_some() || p.fds.is_empty() {
                    p.preexisting_at_end.clone()
                } else {
                    p.preexisting_by_kind()
                }),
                open_over_time: p.history.buckets().to_vec(),
                open_over_ms: p.history.span_ms(),
            })
            .collect();
        // A descriptor opened before a lost event may have been closed by it.
        let maybe_closed = |opened_ns: u64| cx.last_drop_ns.is_some_and(|t| opened_ns <= t);
        let (unknown, certain): (Vec<_>, Vec<_>) =
            table.leaks.iter().partition(|l| maybe_closed(l.opened_ns));
        let entry = |l: &Leak| LeakEntry {
            pid: l.tgid,
            fd: l.fd,
            kind: l.kind.name(),
            target: l.target.clone(),
            cloexec: l.cloexec,
            opened_by: l.opened_by,
            age_ms: age_ms(l.opened_ns, l.seen_ns),
            stack_id: id_of(l.stack),
            still_running: l.still_running,
            closed_at_shutdown: l.closed_at_shutdown,
        };
        let unknown_leaks: Vec<LeakEntry> = unknown.into_iter().map(entry).collect();
        let leaks: Vec<LeakEntry> = certain.into_iter().map(entry).collect();
        let exec_leaks: Vec<ExecLeakEntry> = table
            .exec_leaks
            .iter()
            .map(|e| ExecLeakEntry {
                pid: e.tgid,
                fd: e.fd,
                kind: e.kind.name(),
                target: e.target.clone(),
                exec: e.exec.clone(),
                opened_by: e.opened_by,
                stack_id: id_of(e.stack),
            })
            .collect();
        let gc_closed: Vec<GcClosedEntry> = table
            .gc_closed
            .iter()
            .map(|g: &GcClosed| GcClosedEntry {
                pid: g.tgid,
                fd: g.fd,
                kind: g.kind.name(),
                target: g.target.clone(),
                opened_by: g.opened_by,
                age_ms: age_ms(g.opened_ns, g.closed_ns),
                stack_id: id_of(g.stack),
            })
            .collect();
        let emfile: Vec<EmfileEntry> = table
            .exhaustions
            .iter()
            .map(|e| EmfileEntry {
                pid: e.tgid,
                tid: e.tid,
                syscall: e.syscall,
                errno: e.errno,
                error: if e.errno == 24 { "EMFILE" } else { "ENFILE" },
                argument: e.argument.clone(),
                open_fds: e.open_fds,
                rlimit: e.rlimit.map(|(soft, hard)| [soft, hard]),
                stack_id: id_of(e.stack),
                stopped: e.stopped,
                holders: e
                    .holders
                    .iter()
                    .map(|h| HolderEntry {
                        count: h.count,
                        stack_id: id_of(h.stack),
                        oldest_age_ms: age_ms(h.oldest_ns, e.ts_ns),
                    })
                    .collect(),
                preexisting: kind_counts(&e.preexisting),
            })
            .collect();
        let fd_set_overflows: Vec<FdSetOverflowEntry> = table
            .fd_set_overflows
            .iter()
            .map(|o| FdSetOverflowEntry {
                pid: o.tgid,
                tid: o.tid,
                syscall: o.syscall,
                nfds: o.nfds,
                highest_fd: o.highest_fd,
                stack_id: id_of(o.stack),
            })
            .collect();
        let (fd_misuse, misuse_withheld) =
            misuse::entries(table, cx.last_drop_ns, cx.kept_in_kernel, stacks);
        let mut ids: Vec<(Option<u32>, bool)> = leaks.iter().map(|l| (l.stack_id, true)).collect();
        for m in &fd_misuse {
            ids.push((m.stack_id, false));
            ids.push((m.closed_stack_id, false));
        }
        ids.extend(exec_leaks.iter().map(|e| (e.stack_id, false)));
        ids.extend(unknown_leaks.iter().map(|l| (l.stack_id, false)));
        ids.extend(gc_closed.iter().map(|g| (g.stack_id, false)));
        for e in &emfile {
            ids.push((e.stack_id, false));
            ids.extend(e.holders.iter().map(|h| (h.stack_id, false)));
        }
        ids.extend(fd_set_overflows.iter().map(|o| (o.stack_id, false)));
        for interval in &cx.intervals {
            ids.extend(interval.groups.iter().map(|g| (g.stack_id, false)));
        }
        let groups = groups(&ids, stacks);
        Self {
            version: VERSION,
            mode: cx.mode,
            command: cx.command.to_vec(),
            exit_status: cx.exit_status,
            dropped_events: cx.dropped_events,
            incomplete: cx.dropped_events > 0,
            skipped_stacks: cx.skipped_stacks,
            kept_in_kernel: cx.kept_in_kernel,
            processes,
            leaks,
            unknown_leaks,
            exec_leaks,
            gc_closed,
            leaks_by_test: Vec::new(),
            emfile,
            fd_set_overflows,
            fd_misuse,
            misuse_withheld,
            intervals: cx.intervals,
            notes: Vec::new(),
            suppressed: 0,
            suppressions: Vec::new(),
            groups,
        }
    }

    /// Recounts leaks per group after leaks were taken out, drops the
    /// groups nothing mentions anymore, and says which tests the leaks
    /// came from.
    pub fn regroup(&mut self) {
        let mut mentioned: Vec<u32> = Vec::new();
        mentioned.extend(self.exec_leaks.iter().filter_map(|e| e.stack_id));
        mentioned.extend(self.unknown_leaks.iter().filter_map(|l| l.stack_id));
        mentioned.extend(self.gc_closed.iter().filter_map(|g| g.stack_id));
        for e in &self.emfile {
            mentioned.extend(e.stack_id);
            mentioned.extend(e.holders.iter().filter_map(|h| h.stack_id));
        }
        mentioned.extend(self.fd_set_overflows.iter().filter_map(|o| o.stack_id));
        for m in &self.fd_misuse {
            mentioned.extend(m.stack_id);
            mentioned.extend(m.closed_stack_id);
        }
        for interval in &self.intervals {
            mentioned.extend(interval.groups.iter().filter_map(|g| g.stack_id));
        }
        let leaks = &self.leaks;
        for g in &mut self.groups {
            g.count = leaks
                .iter()
                .filter(|l| l.stack_id == Some(g.stack_id))
                .count();
        }
        self.groups
            .retain(|g| g.count > 0 || mentioned.contains(&g.stack_id));
        self.groups.sort_by_key(|g| std::cmp::Reverse(g.count));
        let cwd = std::env::current_dir().ok();
        self.leaks_by_test =
            by_test::leaks_by_test(self, cwd.as_deref(), &mut by_test::read_source);
    }

    /// The command line of a process, or its executable when unknown.
    pub fn command_line(&self, pid: u32) -> String {
        match self.process(pid) {
            Some(p) if !p.cmdline.is_empty() => p.cmdline.join(" "),
            Some(p) => p.exe.clone(),
            None => String::new(),
        }
    }

    /// Whether the report has this kind of finding.
    pub fn has(&self, finding: Finding) -> bool {
        match finding {
            Finding::Leak => !self.leaks.is_empty(),
            Finding::ExecLeak => !self.exec_leaks.is_empty(),
            Finding::Emfile => !self.emfile.is_empty(),
            Finding::GcClosed => !self.gc_closed.is_empty(),
            Finding::Misuse => !self.fd_misuse.is_empty(),
        }
    }

    /// Leaks of one stack, in group order.
    pub fn leaks_of(&self, stack_id: Option<u32>) -> impl Iterator<Item = &LeakEntry> {
        self.leaks.iter().filter(move |l| l.stack_id == stack_id)
    }

    pub fn group(&self, stack_id: u32) -> Option<&Group> {
        self.groups.iter().find(|g| g.stack_id == stack_id)
    }

    pub fn process(&self, pid: u32) -> Option<&ProcessEntry> {
        self.processes.iter().find(|p| p.pid == pid)
    }
}

/// `items` grouped by the stack that opened them, in order of first
/// appearance.
pub fn by_stack<T>(
    items: &[T],
    stack_id: impl Fn(&T) -> Option<u32>,
) -> Vec<(Option<u32>, Vec<&T>)> {
    let mut groups: Vec<(Option<u32>, Vec<&T>)> = Vec::new();
    for item in items {
        let id = stack_id(item);
        match groups.iter_mut().find(|(g, _)| *g == id) {
            Some((_, members)) => members.push(item),
            None => groups.push((id, vec![item])),
        }
    }
    groups
}

/// Whether a frame is the user's own code rather than the C library, the
/// dynamic loader, a language runtime or its standard library.
pub fn own_code(frame: &FrameEntry) -> bool {
    const RUNTIME_MODULES: &[&str] = &[
        "libc.so",
        "libc-",
        "ld-linux",
        "ld-musl",
        "libpthread",
        "libm.so",
        "libdl",
        "librt",
        "libstdc++",
        "libgcc_s",
        "libpython",
        "python",
        "libuv",
    ];
    const RUNTIME_FILES: &[&str] = &[
        "/rustc/",
        "/.cargo/registry/",
        "/.rustup/",
        "/usr/include/",
        "/usr/src/",
        "/lib/python",
    ];
    let module_path = frame.module.as_deref().unwrap_or("");
    let module = module_path.rsplit('/').next().unwrap_or(module_path);
    let file = frame.file.as_deref().unwrap_or("");
    // `<frozen os>`, `<string>`: the interpreter's own or generated code.
    // A C extension under a Python library directory (`_socket` in
    // lib-dynload, a package's in site-packages) is not the user's either.
    !file.starts_with('<')
        && !RUNTIME_MODULES.iter().any(|m| module.starts_with(m))
        && !module_path.contains("/lib/python")
        && !RUNTIME_FILES
            .iter()
            .any(|f| file.starts_with(f) || (f.starts_with('/') && file.contains(f)))
        && !file.contains("/library/std/")
        && !file.contains("/library/core/")
        && !file.contains("/library/alloc/")
}

/// The frame a leak is blamed on: the innermost frame of the user's own
/// code with a source line, else the innermost of it with a name.
pub fn user_frame(frames: &[FrameEntry]) -> Option<&FrameEntry> {
    frames
        .iter()
        .find(|f| f.file.is_some() && f.line.is_some() && own_code(f))
        .or_else(|| frames.iter().find(|f| f.function.is_some() && own_code(f)))
}

/// A stack named by its innermost user frame, `function (file:line)` with
/// the file's base name (the timeline's legend, `monitor`'s `site`
/// label); `None` for a stack without frames.
pub fn site_name(frames: Vec<SymFrame>) -> Option<String> {
    let frames: Vec<FrameEntry> = frames.into_iter().map(frame_entry).collect();
    let f = user_frame(&frames).or(frames.first())?;
    let Some(function) = f.function.as_deref() else {
        // No symbols (a stripped binary): where in which file, which
        // stays the same from one run to the next.
        let module = f.module.as_deref().unwrap_or("");
        let base = module.rsplit('/').next().unwrap_or(module);
        return Some(format!("{base}+{}", f.address));
    };
    Some(match (&f.file, f.line) {
        (Some(file), Some(line)) => {
            let base = file.rsplit('/').next().unwrap_or(file);
            format!("{function} ({base}:{line})")
        }
        _ => function.to_owned(),
    })
}

/// Every stack the report mentions: by leak count (`true` entries), then
/// in order of first mention.
fn groups(ids: &[(Option<u32>, bool)], stacks: &impl StackLookup) -> Vec<Group> {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    let mut order: Vec<u32> = Vec::new();
    for &(id, is_leak) in ids {
        let Some(id) = id else { continue };
        let count = counts.entry(id).or_insert_with(|| {
            order.push(id);
            0
        });
        if is_leak {
            *count += 1;
        }
    }
    // Stable: equal counts keep first-seen order.
    order.sort_by_key(|id| std::cmp::Reverse(counts[id]));
    order
        .into_iter()
        .map(|id| Group {
            stack_id: id,
            count: counts[&id],
            truncated: stacks.truncated(id),
            stack: stacks.frames(id).into_iter().map(frame_entry).collect(),
        })
        .collect()
}

/// A symbolized frame as reports show it.
pub fn frame_entry(f: SymFrame) -> FrameEntry {
    FrameEntry {
        address: if f.python {
            String::new()
        } else {
            format!("{:#x}", f.address)
        },
        function: f.function,
        file: f.file,
        line: f.line,
        module: f.module,
        inlined: f.inlined,
        lang: if f.python { "python" } else { "native" },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A native frame for a hand-built report.
    pub(crate) fn frame(function: &str, file: &str, line: u32, module: &str) -> FrameEntry {
        FrameEntry {
            address: "0x1139".into(),
            function: Some(function.into()),
            file: Some(file.into()),
            line: Some(line),
            module: Some(module.into()),
            inlined: false,
            lang: "native",
        }
    }

    /// A CPython frame for a hand-built report.
    pub(crate) fn py_frame(function: &str, file: &str, line: u32) -> FrameEntry {
        FrameEntry {
            address: String::new(),
            function: Some(function.into()),
            file: Some(file.into()),
            line: Some(line),
            module: None,
            inlined: false,
            lang: "python",
        }
    }

    fn sym(function: Option<&str>, file: Option<&str>, module: &str, python: bool) -> SymFrame {
        SymFrame {
            address: 0x4a1b,
            function: function.map(str::to_owned),
            file: file.map(str::to_owned),
            line: file.map(|_| 12),
            module: Some(module.to_owned()),
            inlined: false,
            python,
        }
    }

    #[test]
    fn a_site_is_named_by_the_innermost_frame_of_the_programs_own_code() {
        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let c = vec![
            sym(Some("__libc_open64"), Some("open64.c"), libc, false),
            sym(
                Some("leak_one"),
                Some("/src/svc/fleet.c"),
                "/src/svc/fleet",
                false,
            ),
            sym(
                Some("main"),
                Some("/src/svc/fleet.c"),
                "/src/svc/fleet",
                false,
            ),
        ];
        assert_eq!(site_name(c).as_deref(), Some("leak_one (fleet.c:12)"));
        let python = vec![
            sym(Some("__libc_open64"), Some("open64.c"), libc, false),
            sym(Some("Cache.fill"), Some("/srv/app/cache.py"), "", true),
        ];
        assert_eq!(
            site_name(python).as_deref(),
            Some("Cache.fill (cache.py:12)")
        );
        // No symbols at all: the file and the address, stable across runs.
        let stripped = vec![sym(None, None, "/usr/bin/prometheus", false)];
        assert_eq!(site_name(stripped).as_deref(), Some("prometheus+0x4a1b"));
        assert_eq!(site_name(Vec::new()), None);
    }

    fn leak(fd: i32, target: &str) -> LeakEntry {
        LeakEntry {
            pid: 7,
            fd,
            kind: "file",
            target: target.into(),
            cloexec: false,
            opened_by: "openat",
            age_ms: 3,
            stack_id: Some(1),
            still_running: false,
            closed_at_shutdown: false,
        }
    }

    /// Two log files leaked through libc from `leak_it` in /src/app/src/leak.c.
    pub(crate) fn sample_report() -> Report {
        Report {
            version: VERSION,
            mode: "run",
            command: vec!["./app".into(), "--test".into(), "one".into()],
            exit_status: Some(0),
            dropped_events: 0,
            incomplete: false,
            skipped_stacks: 0,
            kept_in_kernel: 0,
            unknown_leaks: vec![],
            processes: vec![ProcessEntry {
                pid: 7,
                ppid: None,
                comm: "app".into(),
                exe: "/src/app/app".into(),
                cmdline: vec!["./app".into(), "--test".into(), "one".into()],
                exit_status: Some(0),
                peak_fds: 5,
                rlimit: Some([1024, 4096]),
                preexisting: vec![],
                open_over_time: Vec::new(),
                open_over_ms: 0,
            }],
            leaks: vec![leak(3, "/tmp/a.log"), leak(4, "/tmp/b.log")],
            exec_leaks: vec![],
            gc_closed: vec![],
            leaks_by_test: vec![],
            emfile: vec![],
            fd_set_overflows: vec![],
            fd_misuse: vec![],
            misuse_withheld: 0,
            intervals: vec![],
            notes: vec![],
            suppressed: 0,
            suppressions: vec![],
            groups: vec![Group {
                stack_id: 1,
                count: 2,
                truncated: false,
                stack: vec![
                    frame(
                        "open64",
                        "/usr/src/glibc/io/open64.c",
                        41,
                        "/usr/lib/x86_64-linux-gnu/libc.so.6",
                    ),
                    frame("leak_it", "/src/app/src/leak.c", 12, "/src/app/app"),
                    frame("main", "/src/app/src/leak.c", 30, "/src/app/app"),
                ],
            }],
        }
    }

    struct NoStacks;
    impl StackLookup for NoStacks {
        fn id(&self, _stack: StackRef) -> Option<u32> {
            None
        }
        fn frames(&self, _id: u32) -> Vec<SymFrame> {
            Vec::new()
        }
        fn truncated(&self, _id: u32) -> bool {
            false
        }
    }

    #[test]
    fn a_leak_opened_before_a_lost_event_is_unknown_not_a_leak() {
        let mut table = FdTable::default();
        for (fd, opened_ns) in [(3, 100), (4, 200), (5, 300)] {
            table.leaks.push(Leak {
                tgid: 7,
                fd,
                kind: crate::events::FdKind::File,
                target: format!("/f{fd}"),
                cloexec: false,
                opened_by: "openat",
                opened_ns,
                seen_ns: 400,
                stack: None,
                still_running: false,
                closed_at_shutdown: false,
            });
        }
        let cx = |last_drop_ns: Option<u64>| Context {
            mode: "run",
            command: &[],
            exit_status: Some(0),
            dropped_events: u64::from(last_drop_ns.is_some()),
            skipped_stacks: 0,
            kept_in_kernel: 0,
            last_drop_ns,
            intervals: vec![],
        };
        let fds = |v: &[LeakEntry]| v.iter().map(|l| l.fd).collect::<Vec<_>>();
        // The event lost at 200 may have been the close of 3 or 4, not of 5.
        let r = Report::build(&table, cx(Some(200)), &NoStacks);
        assert_eq!(
            (fds(&r.leaks), fds(&r.unknown_leaks)),
            (vec![5], vec![3, 4])
        );
        assert!(r.has(Finding::Leak));
        let r = Report::build(&table, cx(Some(50)), &NoStacks);
        assert!(r.unknown_leaks.is_empty() && r.leaks.len() == 3);
        let r = Report::build(&table, cx(Some(u64::MAX)), &NoStacks);
        assert!(r.leaks.is_empty() && !r.has(Finding::Leak));
        let r = Report::build(&table, cx(None), &NoStacks);
        assert_eq!(r.leaks.len(), 3);
    }

    #[test]
    fn blames_the_innermost_frame_of_the_users_code() {
        let r = sample_report();
        let blamed = user_frame(&r.groups[0].stack).unwrap();
        assert_eq!(blamed.function.as_deref(), Some("leak_it"));
        let rust_std = FrameEntry {
            file: Some("/rustc/abc/library/std/src/fs.rs".into()),
            ..frame("std::fs::File::open", "", 1, "/src/app/app")
        };
        assert!(!own_code(&rust_std));
        let registry = FrameEntry {
            file: Some("/root/.cargo/registry/src/x/tokio-1/src/fs.rs".into()),
            ..rust_std.clone()
        };
        assert!(!own_code(&registry));
    }

    #[test]
    fn regroup_drops_groups_only_suppressed_leaks_used() {
        let mut r = sample_report();
        r.leaks.clear();
        r.regroup();
        assert!(r.groups.is_empty());
        let mut r = sample_report();
        r.leaks.pop();
        r.regroup();
        assert_eq!(r.groups[0].count, 1);
    }
}
