//! Reading a trace file back: every record through the same fd table and
//! report code the live trace used, plus the [`Timeline`] the HTML report
//! draws. Pure: bytes in, report out.

use std::collections::VecDeque;

use anyhow::{Result, anyhow, bail};
use hashbrown::HashMap;

use super::wire::{End, Header, MAGIC, MAX_RECORD, Record, Target, VERSION, kind_name};
use crate::{
    events::{Action, Event, Fd, FdKind},
    fd_table::{Describe, FdTable, Holder, Origin, StackRef},
    report::{
        Context, IntervalEntry, IntervalGroup, Report, StackLookup, frame_entry,
        timeline::{Mark, MarkKind, ProcessTimeline, Timeline, TimelinePoint, TimelineStack},
        user_frame,
    },
    stacks::symbolize::SymFrame,
};

/// A trace read back.
pub struct Replayed {
    pub header: Header,
    /// Before suppressions (the caller applies its own).
    pub report: Report,
    pub timeline: Timeline,
}

/// Where the records are and what each says; `Err` names the byte offset.
struct Records<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// How a walk over the records ended.
enum Next {
    Record(usize, Record),
    /// Clean end of file.
    Done,
    /// The file stops inside the record starting at this offset.
    Cut(usize),
}

impl Records<'_> {
    fn next(&mut self, name: &str) -> Result<Next> {
        let start = self.at;
        if start == self.bytes.len() {
            return Ok(Next::Done);
        }
        let mut len: u64 = 0;
        let mut shift = 0;
        let mut i = start;
        loop {
            let Some(&b) = self.bytes.get(i) else {
                return Ok(Next::Cut(start));
            };
            i += 1;
            if shift > 56 {
                bail!("{name}: corrupt record at byte {start}: bad length");
            }
            len |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_RECORD {
            bail!("{name}: corrupt record at byte {start}: length {len} is too large");
        }
        let Some(payload) = self.bytes.get(i..i + len) else {
            return Ok(Next::Cut(start));
        };
        let record: Record = postcard::from_bytes(payload)
            .map_err(|e| anyhow!("{name}: corrupt record at byte {start}: {e}"))?;
        self.at = i + len;
        Ok(Next::Record(start, record))
    }
}

/// Checks the magic and version; the header and where records start.
fn open<'a>(name: &str, bytes: &'a [u8]) -> Result<(Header, Records<'a>)> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        bail!(
            "{name}: not an fdtrace trace (byte 0): record one with `fdtrace record -o FILE -- CMD`"
        );
    }
    let Some(version) = bytes.get(8..10) else {
        bail!("{name}: cut short at byte 8, before its header");
    };
    let version = u16::from_le_bytes([version[0], version[1]]);
    if version > VERSION {
        bail!(
            "{name}: trace format version {version} (byte 8) is newer than this fdtrace reads \
             ({VERSION}): report it with the fdtrace that recorded it"
        );
    }
    if version == 0 {
        bail!("{name}: corrupt header at byte 8: version 0");
    }
    // The header is framed like a record but is not a `Record`.
    let mut records = Records { bytes, at: 10 };
    let start = records.at;
    let mut len: u64 = 0;
    let mut shift = 0;
    let mut i = start;
    loop {
        let Some(&b) = bytes.get(i) else {
            bail!("{name}: cut short at byte {start}, inside its header");
        };
        i += 1;
        if shift > 56 {
            bail!("{name}: corrupt header at byte {start}");
        }
        len |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let end = i.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
    let Some(payload) = bytes.get(i..end) else {
        bail!("{name}: cut short at byte {start}, inside its header");
    };
    let header: Header = postcard::from_bytes(payload)
        .map_err(|e| anyhow!("{name}: corrupt header at byte {start}: {e}"))?;
    records.at = end;
    Ok((header, records))
}

/// Stacks as the file has them.
#[derive(Default)]
struct FileStacks {
    /// Sample number -> interned stack id.
    samples: HashMap<u32, u32>,
    /// Interned stack id -> (canonical id, truncated, frames).
    stacks: HashMap<u32, (u32, bool, Vec<SymFrame>)>,
}

impl StackLookup for FileStacks {
    fn id(&self, stack: StackRef) -> Option<u32> {
        let id = self.samples.get(&stack.0)?;
        Some(self.stacks.get(id).map_or(*id, |s| s.0))
    }

    fn frames(&self, id: u32) -> Vec<SymFrame> {
        self.stacks
            .get(&id)
            .map(|s| s.2.clone())
            .unwrap_or_default()
    }

    fn truncated(&self, id: u32) -> bool {
        self.stacks.get(&id).is_some_and(|s| s.1)
    }
}

/// `/proc` as it answered while tracing.
#[derive(Default)]
struct Answers {
    queue: VecDeque<(u32, Fd, Option<(FdKind, String)>)>,
}

impl Describe for Answers {
    fn describe(&mut self, tgid: u32, fd: Fd) -> Option<(FdKind, String)> {
        match self.queue.front() {
            Some((t, f, _)) if *t == tgid && *f == fd => self.queue.pop_front().and_then(|a| a.2),
            _ => None,
        }
    }
}

/// Reads and replays a whole trace (`name` is for messages).
pub fn replay(name: &str, bytes: &[u8]) -> Result<Replayed> {
    let (header, mut records) = open(name, bytes)?;
    let first = records.at;
    // First pass: stacks (written when unwound, after the events that
    // took them), the end and the time span.
    let mut stacks = FileStacks::default();
    let mut end: Option<End> = None;
    let mut cut: Option<usize> = None;
    let mut ts = header.start_ns;
    let mut last_ns = header.start_ns;
    loop {
        match records.next(name)? {
            Next::Done => break,
            Next::Cut(at) => {
                cut = Some(at);
                break;
            }
            Next::Record(_, record) => match record {
                Record::Sample { sample, stack } => {
                    stacks.samples.insert(sample, stack);
                }
                Record::Stack {
                    id,
                    canonical,
                    truncated,
                    frames,
                } => {
                    stacks.stacks.insert(id, (canonical, truncated, frames));
                }
                Record::Event(e) => {
                    ts = ts.wrapping_add_signed(e.dt);
                    last_ns = last_ns.max(ts);
                }
                Record::Finish { now_ns } => last_ns = last_ns.max(now_ns),
                Record::End(e) => end = Some(e),
                _ => {}
            },
        }
    }
    let mut timeline = TimelineBuilder::new(header.start_ns, last_ns);
    let mut table = FdTable::default();
    let mut answers = Answers::default();
    let mut targets: Vec<String> = Vec::new();
    let mut intervals: Vec<IntervalEntry> = Vec::new();
    let mut finished = false;
    let mut ts = header.start_ns;
    records.at = first;
    while let Next::Record(at, record) = records.next(name)? {
        match record {
            Record::Root {
                tgid,
                exe,
                inherited,
            } => {
                table.add_root(tgid, &exe, inherited);
                timeline.observe(&table, tgid, header.start_ns, &stacks);
            }
            Record::Process {
                tgid,
                comm,
                cmdline,
                rlimit,
            } => {
                if let Some(p) = table.processes.get_mut(&tgid) {
                    if let Some(comm) = comm {
                        p.comm = comm;
                    }
                    if let Some(cmdline) = cmdline {
                        p.cmdline = cmdline;
                    }
                    p.rlimit = rlimit;
                }
            }
            Record::Describe { tgid, fd, found } => answers.queue.push_back((tgid, fd, found)),
            Record::Event(e) => {
                ts = ts.wrapping_add_signed(e.dt);
                let mut action = e.action;
                if let Action::Create(c) = &mut action {
                    c.target = match e.target {
                        Some(Target::New(t)) => {
                            targets.push(t.clone());
                            Some(t)
                        }
                        Some(Target::Seen(n)) => Some(
                            targets
                                .get(usize::try_from(n).unwrap_or(usize::MAX))
                                .cloned()
                                .ok_or_else(|| {
                                    anyhow!(
                                        "{name}: corrupt record at byte {at}: unknown target {n}"
                                    )
                                })?,
                        ),
                        None => None,
                    };
                }
                let event = Event {
                    ts_ns: ts,
                    tgid: e.tgid,
                    tid: if e.tid == 0 { e.tgid } else { e.tid },
                    stopped: e.stopped,
                    action,
                };
                let exhaustions = table.exhaustions.len();
                table.apply(&event, e.sample.map(StackRef), &mut answers);
                answers.queue.clear();
                timeline.event(&table, &event, exhaustions, &stacks);
            }
            Record::Holders { index, holders } => {
                let index = usize::try_from(index).unwrap_or(usize::MAX);
                let Some(e) = table.exhaustions.get_mut(index) else {
                    bail!("{name}: corrupt record at byte {at}: no EMFILE number {index}");
                };
                e.holders = holders
                    .into_iter()
                    .map(|(count, sample, oldest_ns)| Holder {
                        count: usize::try_from(count).unwrap_or(usize::MAX),
                        stack: sample.map(StackRef),
                        oldest_ns,
                    })
                    .collect();
            }
            Record::Interval(i) => intervals.push(IntervalEntry {
                elapsed_ms: i.elapsed_ms,
                groups: i
                    .groups
                    .into_iter()
                    .map(|(stack_id, count, growth, kind, pids)| IntervalGroup {
                        stack_id,
                        count: usize::try_from(count).unwrap_or(usize::MAX),
                        growth,
                        kind: kind_name(&kind),
                        pids,
                    })
                    .collect(),
            }),
            Record::Finish { now_ns } => {
                table.finish(now_ns);
                finished = true;
            }
            Record::Sample { .. } | Record::Stack { .. } | Record::End(_) => {}
        }
    }
    if !finished {
        table.finish(last_ns);
    }
    // No end record: the tracer stopped without writing it.
    let cut = cut.or((end.is_none()).then_some(bytes.len()));
    let end = end.unwrap_or(End {
        exit_status: None,
        dropped_events: 0,
        skipped_stacks: 0,
        kept_in_kernel: 0,
        last_drop_ns: None,
        undecodable: 0,
        notes: Vec::new(),
        cut_at: None,
    });
    let mut notes = end.notes.clone();
    if let Some(at) = cut.and_then(|c| u64::try_from(c).ok()).or(end.cut_at) {
        notes.push(format!(
            "the trace file was cut short at byte {at} (the tracer was stopped or the disk \
             filled): this is everything recorded before that"
        ));
    }
    let mode = match header.mode.as_str() {
        "attach" => "attach",
        _ => "run",
    };
    let report = Report::build_traced(
        &table,
        Context {
            mode,
            command: &header.command,
            exit_status: end.exit_status,
            dropped_events: end.dropped_events,
            skipped_stacks: end.skipped_stacks,
            kept_in_kernel: end.kept_in_kernel,
            last_drop_ns: end.last_drop_ns,
            intervals,
        },
        &stacks,
        &notes,
        end.undecodable,
    );
    let timeline = timeline.finish(&table, &report, &stacks);
    Ok(Replayed {
        header,
        report,
        timeline,
    })
}

/// Samples drawn per process.
const BUCKETS: usize = 300;
/// Stacks drawn per process.
const TOP_STACKS: usize = 6;
/// Processes drawn.
const TOP_PROCESSES: usize = 8;
/// Marks kept per process.
const MAX_MARKS: usize = 200;

/// One process as the timeline follows it.
#[derive(Default)]
struct Track {
    /// Open right now.
    current: usize,
    peak: usize,
    peak_ns: u64,
    /// Per bucket: the most open within it.
    most: Vec<usize>,
    /// Per bucket: open per stack (canonical id; `None` unknown) at its end.
    by_stack: Vec<Option<HashMap<Option<u32>, usize>>>,
    /// Last bucket filled.
    filled: usize,
    marks: Vec<Mark>,
    comm: String,
}

struct TimelineBuilder {
    start_ns: u64,
    span_ns: u64,
    tracks: HashMap<u32, Track>,
    /// The bucket whose per-stack snapshot comes next.
    next_snapshot: usize,
}

impl TimelineBuilder {
    fn new(start_ns: u64, end_ns: u64) -> Self {
        TimelineBuilder {
            start_ns,
            span_ns: end_ns.saturating_sub(start_ns).max(1),
            tracks: HashMap::new(),
            next_snapshot: 0,
        }
    }

    fn bucket(&self, ts: u64) -> usize {
        let offset = u128::from(ts.saturating_sub(self.start_ns));
        let b = offset * (BUCKETS as u128) / u128::from(self.span_ns);
        usize::try_from(b).unwrap_or(BUCKETS).min(BUCKETS - 1)
    }

    fn ms(&self, ts: u64) -> f64 {
        ms_f64(ts.saturating_sub(self.start_ns))
    }

    /// `tgid`'s open count after something happened to it at `ts`.
    fn observe(&mut self, table: &FdTable, tgid: u32, ts: u64, stacks: &FileStacks) {
        let Some(p) = table.processes.get(&tgid) else {
            return;
        };
        let b = self.bucket(ts);
        self.snapshot_until(table, b, stacks);
        let track = self.tracks.entry(tgid).or_insert_with(|| Track {
            most: vec![0; BUCKETS],
            by_stack: vec![None; BUCKETS],
            filled: b,
            ..Track::default()
        });
        track.comm.clone_from(&p.comm);
        // Buckets since the last change hold what was open then.
        for m in &mut track.most[track.filled.min(b)..b] {
            *m = (*m).max(track.current);
        }
        track.filled = track.filled.max(b);
        let open = p.fds.len();
        track.current = open;
        track.most[b] = track.most[b].max(open);
        if open > track.peak {
            track.peak = open;
            track.peak_ns = ts;
        }
    }

    /// Takes the per-stack snapshots of buckets before `b`.
    fn snapshot_until(&mut self, table: &FdTable, b: usize, stacks: &FileStacks) {
        while self.next_snapshot < b {
            let bucket = self.next_snapshot;
            self.next_snapshot += 1;
            for (tgid, track) in &mut self.tracks {
                let Some(p) = table.processes.get(tgid) else {
                    continue;
                };
                if p.exited_ns.is_some() && p.fds.is_empty() {
                    continue;
                }
                track.by_stack[bucket] = Some(by_stack(p.fds.values().map(|f| &f.origin), stacks));
            }
        }
    }

    fn event(&mut self, table: &FdTable, event: &Event, exhaustions: usize, stacks: &FileStacks) {
        let ts = event.ts_ns;
        match &event.action {
            Action::Fork { child } => self.observe(table, *child, ts, stacks),
            Action::Exec { filename } => {
                let t = self.ms(ts);
                if let Some(track) = self.tracks.get_mut(&event.tgid)
                    && track.marks.len() < MAX_MARKS
                {
                    track.marks.push(Mark {
                        t_ms: t,
                        kind: MarkKind::Exec,
                        label: format!("exec {filename}"),
                        emfile: None,
                    });
                }
            }
            _ => {}
        }
        self.observe(table, event.tgid, ts, stacks);
        if table.exhaustions.len() > exhaustions {
            let e = &table.exhaustions[exhaustions];
            let t = self.ms(ts);
            if let Some(track) = self.tracks.get_mut(&event.tgid)
                && track.marks.len() < MAX_MARKS
            {
                track.marks.push(Mark {
                    t_ms: t,
                    kind: MarkKind::Emfile,
                    label: format!(
                        "{} failed with {} ({} open)",
                        e.syscall,
                        if e.errno == 23 { "ENFILE" } else { "EMFILE" },
                        e.open_fds
                    ),
                    emfile: Some(exhaustions),
                });
            }
        }
    }

    fn finish(mut self, table: &FdTable, report: &Report, stacks: &FileStacks) -> Timeline {
        self.snapshot_until(table, BUCKETS, stacks);
        let duration_ms = ms_f64(self.span_ns);
        let mut tracks: Vec<(u32, Track)> = self.tracks.into_iter().collect();
        // Highest peak first; by pid among equals, so the order is stable.
        tracks.sort_by(|a, b| b.1.peak.cmp(&a.1.peak).then(a.0.cmp(&b.0)));
        let more_processes = tracks.len().saturating_sub(TOP_PROCESSES);
        let processes = tracks
            .into_iter()
            .take(TOP_PROCESSES)
            .map(|(pid, mut track)| {
                // Carry the count through the buckets after its last change
                // (to the end, or to its exit).
                let last =
                    table
                        .processes
                        .get(&pid)
                        .and_then(|p| p.exited_ns)
                        .map_or(BUCKETS, |ns| {
                            let offset = u128::from(ns.saturating_sub(self.start_ns));
                            let b = offset * (BUCKETS as u128) / u128::from(self.span_ns);
                            usize::try_from(b).unwrap_or(BUCKETS).min(BUCKETS - 1) + 1
                        });
                for m in &mut track.most[track.filled.min(last)..last] {
                    *m = (*m).max(track.current);
                }
                let mut totals: HashMap<Option<u32>, usize> = HashMap::new();
                for snapshot in track.by_stack.iter().flatten() {
                    for (id, n) in snapshot {
                        let t = totals.entry(*id).or_insert(0);
                        *t = (*t).max(*n);
                    }
                }
                let mut top: Vec<(Option<u32>, usize)> = totals.into_iter().collect();
                top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                top.truncate(TOP_STACKS);
                let stacks_drawn: Vec<TimelineStack> = top
                    .iter()
                    .map(|(id, _)| TimelineStack {
                        stack_id: *id,
                        label: id
                            .map_or_else(|| "stack unknown".to_owned(), |id| label(id, stacks)),
                    })
                    .collect();
                let step = duration_ms / BUCKETS as f64;
                let points = (0..last.min(BUCKETS))
                    .map(|b| TimelinePoint {
                        t_ms: step * (b + 1) as f64,
                        open: track.most[b],
                        by_stack: top
                            .iter()
                            .map(|(id, _)| {
                                track.by_stack[b]
                                    .as_ref()
                                    .and_then(|s| s.get(id).copied())
                                    .unwrap_or(0)
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
                    stacks: stacks_drawn,
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

/// Open descriptors by canonical stack (`None`: created without a known
/// stack; descriptors open before tracing are left out).
fn by_stack<'a>(
    origins: impl Iterator<Item = &'a Origin>,
    stacks: &FileStacks,
) -> HashMap<Option<u32>, usize> {
    let mut counts = HashMap::new();
    for origin in origins {
        if let Origin::Created { stack, .. } = origin {
            let id = stack.and_then(|r| stacks.id(r));
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

/// A stack named by its innermost user frame: `function (file:line)`.
fn label(id: u32, stacks: &FileStacks) -> String {
    let frames: Vec<_> = stacks.frames(id).into_iter().map(frame_entry).collect();
    let Some(f) = user_frame(&frames).or(frames.first()) else {
        return format!("stack {id}");
    };
    let function = f.function.as_deref().unwrap_or("??");
    match (&f.file, f.line) {
        (Some(file), Some(line)) => {
            let base = file.rsplit('/').next().unwrap_or(file);
            format!("{function} ({base}:{line})")
        }
        _ => function.to_owned(),
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "milliseconds for a chart: a few significant digits are plenty"
)]
fn ms_f64(ns: u64) -> f64 {
    ns as f64 / 1e6
}
