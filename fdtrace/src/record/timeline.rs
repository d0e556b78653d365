//! The HTML report's [`Timeline`], built while a trace is replayed: each
//! process's open descriptors after every event, kept as the most open in
//! each of [`BUCKETS`] spans (so the peak is exact), and which stacks held
//! them at that most.

use hashbrown::HashMap;

use super::replay::FileStacks;
use crate::{
    events::{Action, Event, Fd},
    fd_table::{FdTable, Origin, Process},
    report::{
        Report, StackLookup, site_name,
        timeline::{Mark, MarkKind, ProcessTimeline, Timeline, TimelinePoint, TimelineStack},
    },
};

/// Samples drawn per process.
const BUCKETS: usize = 300;
/// Stacks drawn per process.
const TOP_STACKS: usize = 6;
/// Processes drawn.
const TOP_PROCESSES: usize = 8;
/// Marks kept per process.
const MAX_MARKS: usize = 200;
/// Stacks remembered per sample (the most open first); the rest count as
/// "other" in the chart.
const MAX_SAMPLE_STACKS: usize = 32;

/// Open descriptors per stack (canonical id; `None`: created without a
/// known stack). Descriptors open before tracing are not in it.
type ByStack = HashMap<Option<u32>, usize>;

/// One process as the timeline follows it.
#[derive(Default)]
struct Track {
    comm: String,
    /// Open right now, in all and by stack.
    open: usize,
    by_stack: ByStack,
    peak: usize,
    peak_ns: u64,
    /// Per bucket: the most open within it, and by stack at that moment.
    most: Vec<usize>,
    at_most: Vec<Vec<(Option<u32>, usize)>>,
    /// Buckets before this one are final.
    filled: usize,
    marks: Vec<Mark>,
}

/// Follows the table through a replay.
pub struct TimelineBuilder {
    start_ns: u64,
    span_ns: u64,
    tracks: HashMap<u32, Track>,
    /// The stacks of the descriptors the event being applied takes away.
    going: Vec<Option<u32>>,
}

impl TimelineBuilder {
    /// A timeline from `start_ns` to `end_ns`.
    pub fn new(start_ns: u64, end_ns: u64) -> Self {
        TimelineBuilder {
            start_ns,
            span_ns: end_ns.saturating_sub(start_ns).max(1),
            tracks: HashMap::new(),
            going: Vec::new(),
        }
    }

    fn bucket(&self, ts: u64) -> usize {
        let offset = u128::from(ts.saturating_sub(self.start_ns));
        let b = offset * u128::try_from(BUCKETS).unwrap_or(1) / u128::from(self.span_ns);
        usize::try_from(b).unwrap_or(BUCKETS).min(BUCKETS - 1)
    }

    fn ms(&self, ts: u64) -> f64 {
        ms_f64(ts.saturating_sub(self.start_ns))
    }

    /// A process traced from the start, with what it inherited.
    pub fn root(&mut self, table: &FdTable, tgid: u32, stacks: &FileStacks) {
        self.recount(table, tgid, self.start_ns, stacks);
    }

    /// Before `event` is applied: what it will take away.
    pub fn before(&mut self, table: &FdTable, event: &Event, stacks: &FileStacks) {
        self.going.clear();
        let Some(p) = table.processes.get(&event.tgid) else {
            return;
        };
        let fds: &[Fd] = match &event.action {
            Action::Create(c) => &c.fds,
            Action::Close { fd, .. } => std::slice::from_ref(fd),
            _ => return,
        };
        for fd in fds {
            if let Some(f) = p.fds.get(fd)
                && let Some(id) = created_by(&f.origin, stacks)
            {
                self.going.push(id);
            }
        }
    }

    /// After `event` was applied (`exhaustions`: how many EMFILE
    /// failures the table had before it).
    pub fn after(
        &mut self,
        table: &FdTable,
        event: &Event,
        exhaustions: usize,
        stacks: &FileStacks,
    ) {
        let ts = event.ts_ns;
        let tgid = event.tgid;
        match &event.action {
            Action::Create(c) => {
                let mut coming = Vec::new();
                if let Some(p) = table.processes.get(&tgid) {
                    for fd in &c.fds {
                        if let Some(id) = p.fds.get(fd).and_then(|f| created_by(&f.origin, stacks))
                        {
                            coming.push(id);
                        }
                    }
                }
                self.change(table, tgid, ts, &coming);
            }
            Action::Close { .. } => self.change(table, tgid, ts, &[]),
            Action::Fork { child } => self.recount(table, *child, ts, stacks),
            Action::Exec { filename } => {
                self.recount(table, tgid, ts, stacks);
                self.mark(tgid, ts, MarkKind::Exec, format!("exec {filename}"), None);
            }
            Action::Exit | Action::CloseRange { .. } => self.recount(table, tgid, ts, stacks),
            // Nothing else opens or closes (an EMFILE failure, a use, a
            // flag): the count stays.
            _ => {
                if !self.tracks.contains_key(&tgid) {
                    self.recount(table, tgid, ts, stacks);
                }
            }
        }
        if let Some(e) = table.exhaustions.get(exhaustions) {
            let errno = if e.errno == 23 { "ENFILE" } else { "EMFILE" };
            let label = format!("{} failed with {errno} ({} open)", e.syscall, e.open_fds);
            self.mark(tgid, ts, MarkKind::Emfile, label, Some(exhaustions));
        }
    }

    fn mark(&mut self, tgid: u32, ts: u64, kind: MarkKind, label: String, emfile: Option<usize>) {
        let t_ms = self.ms(ts);
        if let Some(track) = self.tracks.get_mut(&tgid)
            && track.marks.len() < MAX_MARKS
        {
            track.marks.push(Mark {
                t_ms,
                kind,
                label,
                emfile,
            });
        }
    }

    /// A creation or close: stacks `self.going` left, `coming` came.
    fn change(&mut self, table: &FdTable, tgid: u32, ts: u64, coming: &[Option<u32>]) {
        let Some(p) = table.processes.get(&tgid) else {
            return;
        };
        let going = std::mem::take(&mut self.going);
        self.track(tgid, p);
        self.carry(tgid, ts);
        let Some(track) = self.tracks.get_mut(&tgid) else {
            return;
        };
        for id in &going {
            if let Some(n) = track.by_stack.get_mut(id) {
                *n = n.saturating_sub(1);
            }
        }
        for id in coming {
            *track.by_stack.entry(*id).or_insert(0) += 1;
        }
        track.by_stack.retain(|_, n| *n > 0);
        self.going = going;
        self.update(tgid, p.fds.len(), ts);
    }

    /// Anything else: count the process's table again.
    fn recount(&mut self, table: &FdTable, tgid: u32, ts: u64, stacks: &FileStacks) {
        let Some(p) = table.processes.get(&tgid) else {
            return;
        };
        let mut by_stack = ByStack::new();
        for f in p.fds.values() {
            if let Some(id) = created_by(&f.origin, stacks) {
                *by_stack.entry(id).or_insert(0) += 1;
            }
        }
        self.track(tgid, p);
        self.carry(tgid, ts);
        if let Some(track) = self.tracks.get_mut(&tgid) {
            track.by_stack = by_stack;
        }
        self.update(tgid, p.fds.len(), ts);
    }

    fn track(&mut self, tgid: u32, p: &Process) -> &mut Track {
        let track = self.tracks.entry(tgid).or_insert_with(|| Track {
            most: vec![0; BUCKETS],
            at_most: vec![Vec::new(); BUCKETS],
            filled: BUCKETS,
            ..Track::default()
        });
        track.comm.clone_from(&p.comm);
        track
    }

    /// Buckets from the last change to the one `ts` falls in held what was
    /// open then (call before changing it).
    fn carry(&mut self, tgid: u32, ts: u64) {
        let b = self.bucket(ts);
        let Some(track) = self.tracks.get_mut(&tgid) else {
            return;
        };
        if track.filled == BUCKETS {
            // First sight of it.
            track.filled = b;
        }
        while track.filled < b {
            let i = track.filled;
            if track.most[i] <= track.open {
                track.most[i] = track.open;
                track.at_most[i] = top(&track.by_stack);
            }
            track.filled += 1;
        }
    }

    /// `tgid` has `open` descriptors after something at `ts`.
    fn update(&mut self, tgid: u32, open: usize, ts: u64) {
        self.carry(tgid, ts);
        let b = self.bucket(ts);
        let Some(track) = self.tracks.get_mut(&tgid) else {
            return;
        };
        track.open = open;
        if open >= track.most[b] {
            track.most[b] = open;
            track.at_most[b] = top(&track.by_stack);
        }
        if open > track.peak {
            track.peak = open;
            track.peak_ns = ts;
        }
    }

    /// The timeline of the processes with the highest peaks.
    pub fn finish(mut self, table: &FdTable, report: &Report, stacks: &FileStacks) -> Timeline {
        let end = self.start_ns + self.span_ns;
        // Carry each process's count to its exit, or to the end.
        let ends: Vec<(u32, u64)> = self
            .tracks
            .keys()
            .map(|&tgid| {
                let exit = table.processes.get(&tgid).and_then(|p| p.exited_ns);
                (tgid, exit.unwrap_or(end).min(end))
            })
            .collect();
        for (tgid, at) in ends {
            let open = self.tracks[&tgid].open;
            self.update(tgid, open, at);
        }
        let duration_ms = ms_f64(self.span_ns);
        let mut tracks: Vec<(u32, Track)> = self.tracks.into_iter().collect();
        // Highest peak first; by pid among equals, so the order is stable.
        tracks.sort_by(|a, b| b.1.peak.cmp(&a.1.peak).then(a.0.cmp(&b.0)));
        let more_processes = tracks.len().saturating_sub(TOP_PROCESSES);
        let step = duration_ms / f64::from(u32::try_from(BUCKETS).unwrap_or(1));
        let processes = tracks
            .into_iter()
            .take(TOP_PROCESSES)
            .map(|(pid, track)| {
                let last = track.filled.min(BUCKETS - 1);
                let first = track.most.iter().position(|&m| m > 0).unwrap_or(0);
                let mut most_by_stack: ByStack = ByStack::new();
                for sample in &track.at_most {
                    for &(id, n) in sample {
                        let m = most_by_stack.entry(id).or_insert(0);
                        *m = (*m).max(n);
                    }
                }
                let mut drawn: Vec<(Option<u32>, usize)> = most_by_stack.into_iter().collect();
                drawn.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                drawn.truncate(TOP_STACKS);
                let points = (first..=last)
                    .map(|b| TimelinePoint {
                        t_ms: step * (b + 1) as f64,
                        open: track.most[b],
                        by_stack: drawn
                            .iter()
                            .map(|(id, _)| {
                                track.at_most[b]
                                    .iter()
                                    .find(|(i, _)| i == id)
                                    .map_or(0, |(_, n)| *n)
                            })
                            .collect(),
                    })
                    .collect();
                let soft_limit = report
                    .process(pid)
                    .and_then(|p| p.rlimit)
                    .map(|[soft, _]| soft)
                    .filter(|&soft| soft != u64::MAX);
                ProcessTimeline {
                    pid,
                    comm: track.comm,
                    soft_limit,
                    peak: track.peak,
                    peak_ms: ms_f64(track.peak_ns.saturating_sub(self.start_ns)),
                    stacks: drawn
                        .iter()
                        .map(|(id, _)| TimelineStack {
                            stack_id: *id,
                            label: id.map_or_else(
                                || "stack not kept".to_owned(),
                                |id| label(id, stacks),
                            ),
                        })
                        .collect(),
                    points,
                    marks: track.marks,
                }
            })
            .collect();
        Timeline {
            duration_ms,
            processes,
            more_processes,
        }
    }
}

/// The stacks holding the most, at most [`MAX_SAMPLE_STACKS`] of them.
fn top(by_stack: &ByStack) -> Vec<(Option<u32>, usize)> {
    let mut all: Vec<(Option<u32>, usize)> = by_stack.iter().map(|(k, v)| (*k, *v)).collect();
    if all.len() > MAX_SAMPLE_STACKS {
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(MAX_SAMPLE_STACKS);
    }
    all
}

/// The stack a descriptor created while traced was created with; `None`
/// for one open before tracing.
fn created_by(origin: &Origin, stacks: &FileStacks) -> Option<Option<u32>> {
    match origin {
        Origin::Created { stack, .. } => Some(stack.and_then(|r| stacks.id(r))),
        Origin::Inherited => None,
    }
}

/// A stack named by its innermost user frame: `function (file:line)`.
fn label(id: u32, stacks: &FileStacks) -> String {
    site_name(stacks.frames(id)).unwrap_or_else(|| format!("stack {id}"))
}

#[expect(
    clippy::cast_precision_loss,
    reason = "milliseconds for a chart: a few significant digits are plenty"
)]
fn ms_f64(ns: u64) -> f64 {
    ns as f64 / 1e6
}
