//! Report stage: turns the final fd table into a [`Report`] (leaks grouped
//! by the stack that opened them, largest group first) and renders it as
//! text or JSON into any `impl Write`. Knows nothing of BPF or async.

pub mod json;
pub mod text;

use hashbrown::HashMap;
use serde::Serialize;

use crate::{
    fd_table::{FdTable, StackRef},
    stacks::{StackId, symbolize::SymFrame},
};

/// JSON format version.
pub const VERSION: u32 = 1;

/// Everything a report says. Serialized as the documented JSON format.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub version: u32,
    pub command: Vec<String>,
    /// The command's exit status (128 + signal number if a signal killed it).
    pub exit_status: Option<i32>,
    /// Events the kernel could not deliver; non-zero means the report is incomplete.
    pub dropped_events: u64,
    pub incomplete: bool,
    pub processes: Vec<ProcessEntry>,
    pub leaks: Vec<LeakEntry>,
    pub exec_leaks: Vec<ExecLeakEntry>,
    pub emfile: Vec<EmfileEntry>,
    pub groups: Vec<Group>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ProcessEntry {
    pub pid: u32,
    pub ppid: Option<u32>,
    pub comm: String,
    pub exe: String,
    pub exit_status: Option<i32>,
    pub peak_fds: usize,
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
    pub stack_id: Option<u32>,
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
}

/// Inputs for [`Report::build`] besides the table.
pub struct Context<'a> {
    pub command: &'a [String],
    pub exit_status: Option<i32>,
    pub dropped_events: u64,
    /// Maps the table's stack handles to interned stacks.
    pub stack_ids: &'a HashMap<StackRef, StackId>,
    pub frames: &'a HashMap<StackId, Vec<SymFrame>>,
    pub truncated: &'a HashMap<StackId, bool>,
}

impl Report {
    pub fn build(table: &FdTable, cx: &Context<'_>) -> Self {
        let id_of = |r: Option<StackRef>| r.and_then(|r| cx.stack_ids.get(&r)).map(|id| id.0);
        let processes = table
            .order
            .iter()
            .filter_map(|tgid| table.processes.get(tgid))
            .map(|p| ProcessEntry {
                pid: p.tgid,
                ppid: p.ppid,
                comm: p.comm.clone(),
                exe: p.exe.clone(),
                exit_status: p.exit_status,
                peak_fds: p.peak_fds,
            })
            .collect();
        let leaks: Vec<LeakEntry> = table
            .leaks
            .iter()
            .map(|l| LeakEntry {
                pid: l.tgid,
                fd: l.fd,
                kind: l.kind.name(),
                target: l.target.clone(),
                cloexec: l.cloexec,
                opened_by: l.opened_by,
                age_ms: l.seen_ns.saturating_sub(l.opened_ns) / 1_000_000,
                stack_id: id_of(l.stack),
                still_running: l.still_running,
            })
            .collect();
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
                stack_id: id_of(e.stack),
            })
            .collect();
        let groups = groups(&leaks, &exec_leaks, &emfile, cx);
        Self {
            version: VERSION,
            command: cx.command.to_vec(),
            exit_status: cx.exit_status,
            dropped_events: cx.dropped_events,
            incomplete: cx.dropped_events > 0,
            processes,
            leaks,
            exec_leaks,
            emfile,
            groups,
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

/// Every stack the report mentions: leak stacks first, by leak count, then
/// those only exec leaks or EMFILE failures refer to.
fn groups(
    leaks: &[LeakEntry],
    exec_leaks: &[ExecLeakEntry],
    emfile: &[EmfileEntry],
    cx: &Context<'_>,
) -> Vec<Group> {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    let mut order: Vec<u32> = Vec::new();
    let ids = leaks
        .iter()
        .map(|l| (l.stack_id, true))
        .chain(exec_leaks.iter().map(|e| (e.stack_id, false)))
        .chain(emfile.iter().map(|e| (e.stack_id, false)));
    for (id, is_leak) in ids {
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
        .map(|id| {
            let frames = cx.frames.get(&StackId(id)).cloned().unwrap_or_default();
            Group {
                stack_id: id,
                count: counts[&id],
                truncated: cx.truncated.get(&StackId(id)).copied().unwrap_or(false),
                stack: frames
                    .into_iter()
                    .map(|f| FrameEntry {
                        address: format!("{:#x}", f.address),
                        function: f.function,
                        file: f.file,
                        line: f.line,
                        module: f.module,
                        inlined: f.inlined,
                    })
                    .collect(),
            }
        })
        .collect()
}
