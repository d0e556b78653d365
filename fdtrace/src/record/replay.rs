//! Reading a trace file back: every record through the same fd table and
//! report code the live trace used, plus the [`Timeline`] the HTML report
//! draws. Pure: bytes in, report out.

use std::collections::VecDeque;

use anyhow::{Result, anyhow, bail};
use hashbrown::HashMap;

use super::{
    Answer,
    timeline::TimelineBuilder,
    wire::{End, Header, MAGIC, MAX_RECORD, Record, Target, VERSION, kind_name},
};
use crate::{
    events::{Action, Event, Fd, FdKind},
    fd_table::{Describe, FdTable, Holder, StackRef},
    report::{Context, IntervalEntry, IntervalGroup, Report, StackLookup, timeline::Timeline},
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
    Record(usize, Box<Record>),
    /// Clean end of file.
    Done,
    /// The file stops inside the record starting at this offset.
    Cut(usize),
}

/// One length-prefixed frame.
enum Frame<'a> {
    /// Where it starts, and its payload.
    Payload(usize, &'a [u8]),
    Done,
    Cut(usize),
}

impl<'a> Records<'a> {
    fn frame(&mut self, name: &str) -> Result<Frame<'a>> {
        let start = self.at;
        if start == self.bytes.len() {
            return Ok(Frame::Done);
        }
        let mut len: u64 = 0;
        let mut shift = 0;
        let mut i = start;
        loop {
            let Some(&b) = self.bytes.get(i) else {
                return Ok(Frame::Cut(start));
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
            return Ok(Frame::Cut(start));
        };
        self.at = i + len;
        Ok(Frame::Payload(start, payload))
    }

    fn next(&mut self, name: &str) -> Result<Next> {
        Ok(match self.frame(name)? {
            Frame::Done => Next::Done,
            Frame::Cut(at) => Next::Cut(at),
            Frame::Payload(start, payload) => {
                let record: Record = postcard::from_bytes(payload)
                    .map_err(|e| anyhow!("{name}: corrupt record at byte {start}: {e}"))?;
                Next::Record(start, Box::new(record))
            }
        })
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
    let header = match records.frame(name)? {
        Frame::Payload(start, payload) => postcard::from_bytes(payload)
            .map_err(|e| anyhow!("{name}: corrupt header at byte {start}: {e}"))?,
        Frame::Done | Frame::Cut(_) => bail!("{name}: cut short at byte 10, inside its header"),
    };
    Ok((header, records))
}

/// Stacks as the file has them.
#[derive(Default)]
pub struct FileStacks {
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
    queue: VecDeque<Answer>,
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
            Next::Record(_, record) => match *record {
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
                // A run ends when its command does; an attach runs on.
                Record::Finish { now_ns } if header.mode == "attach" => {
                    last_ns = last_ns.max(now_ns);
                }
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
        match *record {
            Record::Root {
                tgid,
                exe,
                inherited,
            } => {
                table.add_root(tgid, &exe, inherited);
                timeline.root(&table, tgid, &stacks);
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
                timeline.before(&table, &event, &stacks);
                table.apply(&event, e.sample.map(StackRef), &mut answers);
                answers.queue.clear();
                timeline.after(&table, &event, exhaustions, &stacks);
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
                    .map(|g| IntervalGroup {
                        stack_id: g.stack_id,
                        count: usize::try_from(g.count).unwrap_or(usize::MAX),
                        growth: g.growth,
                        kind: kind_name(&g.kind),
                        pids: g.pids,
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
    let end = end.unwrap_or_default();
    let mut notes = end.notes.clone();
    if let Some(at) = cut {
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
