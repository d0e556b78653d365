//! Recorded traces: what `fdtrace record` and `attach --record` write as
//! events arrive, and what `fdtrace report` reads back.
//!
//! The tracer hands the recorder exactly what it hands its fd table (the
//! events, what `/proc` said, who held the table at an EMFILE, when tracing
//! ended) and every stack once, symbolized, as soon as it is unwound. So a
//! report replayed from the file is built by the same code from the same
//! inputs as the live one: byte for byte the same. See [`wire`] for the
//! layout and [`replay`] for the reading side.

pub mod replay;
mod timeline;
pub mod wire;

use std::{
    cell::RefCell,
    io::{self, Write},
    rc::Rc,
};

use anyhow::Result;
use hashbrown::{HashMap, HashSet};

use crate::{
    events::{Action, Event, Fd, FdKind},
    fd_table::StackRef,
    report::IntervalEntry,
    stacks::{StackId, Stacks, symbolize::Symbols},
};
use wire::{End, EventRecord, Header, IntervalRecord, MAGIC, Record, Target, VERSION};

/// What `/proc` said of a descriptor: (tgid, fd, its kind and target if
/// it could tell).
pub type Answer = (u32, Fd, Option<(FdKind, String)>);

/// A trace kept in memory (for an HTML report without a trace file);
/// clones share it.
#[derive(Clone, Default)]
pub struct Memory(Rc<RefCell<Vec<u8>>>);

impl Memory {
    /// What was written so far, leaving it empty.
    pub fn take(&self) -> Vec<u8> {
        self.0.take()
    }
}

impl Write for Memory {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes a trace as it happens. A write that fails (a full disk) ends the
/// recording there; tracing and its live report go on, and the report
/// says where the file was cut.
pub struct Recorder {
    out: Box<dyn Write>,
    /// Bytes written so far.
    written: u64,
    /// Why writing stopped (the file ends where the disk had room).
    failed: Option<String>,
    last_ts: u64,
    next_sample: u32,
    /// File sample number of each live stack handle (by slot).
    sample_of: Vec<u32>,
    targets: HashMap<String, u32>,
    stacks_written: HashSet<u32>,
    buf: Vec<u8>,
}

impl Recorder {
    /// Starts a trace in `out` with its header.
    pub fn new(out: Box<dyn Write>, header: &Header) -> Result<Self> {
        let mut recorder = Recorder {
            out,
            written: 0,
            failed: None,
            last_ts: header.start_ns,
            next_sample: 0,
            sample_of: Vec::new(),
            targets: HashMap::new(),
            stacks_written: HashSet::new(),
            buf: Vec::new(),
        };
        let mut start = MAGIC.to_vec();
        start.extend_from_slice(&VERSION.to_le_bytes());
        recorder.out.write_all(&start)?;
        recorder.written = u64::try_from(start.len())?;
        recorder.buf = postcard::to_stdvec(header)?;
        recorder.frame()?;
        Ok(recorder)
    }

    /// Bytes written so far, and why writing stopped if it did.
    pub fn written(&self) -> (u64, Option<&str>) {
        (self.written, self.failed.as_deref())
    }

    fn write(&mut self, record: &Record) {
        if self.failed.is_some() {
            return;
        }
        self.buf.clear();
        let encoded = postcard::to_extend(record, std::mem::take(&mut self.buf));
        let result = match encoded {
            Ok(buf) => {
                self.buf = buf;
                self.frame()
            }
            Err(e) => Err(io::Error::other(e)),
        };
        if let Err(e) = result {
            self.failed = Some(e.to_string());
        }
    }

    /// Writes `self.buf` as one length-prefixed record.
    fn frame(&mut self) -> io::Result<()> {
        let mut len = [0u8; 10];
        let n = varint(u64::try_from(self.buf.len()).unwrap_or(u64::MAX), &mut len);
        self.out.write_all(&len[..n])?;
        self.out.write_all(&self.buf)?;
        self.written += u64::try_from(n + self.buf.len()).unwrap_or(0);
        Ok(())
    }

    /// Pushes what is buffered to the file (each tick: a killed tracer
    /// loses at most the last few milliseconds).
    pub fn flush(&mut self) {
        if self.failed.is_none()
            && let Err(e) = self.out.flush()
        {
            self.failed = Some(e.to_string());
        }
    }

    pub fn root(&mut self, tgid: u32, exe: &str, inherited: &[(Fd, FdKind, String, bool)]) {
        self.write(&Record::Root {
            tgid,
            exe: exe.to_owned(),
            inherited: inherited.to_vec(),
        });
    }

    pub fn process(
        &mut self,
        tgid: u32,
        comm: Option<&str>,
        cmdline: Option<&[String]>,
        rlimit: Option<(u64, u64)>,
    ) {
        self.write(&Record::Process {
            tgid,
            comm: comm.map(str::to_owned),
            cmdline: cmdline.map(<[String]>::to_vec),
            rlimit,
        });
    }

    pub fn describe(&mut self, tgid: u32, fd: Fd, found: Option<&(FdKind, String)>) {
        self.write(&Record::Describe {
            tgid,
            fd,
            found: found.cloned(),
        });
    }

    /// Numbers a new stack sample (its handle's slot may be reused later).
    pub fn sample(&mut self, r: StackRef) {
        let slot = r.0 as usize;
        if self.sample_of.len() <= slot {
            self.sample_of.resize(slot + 1, u32::MAX);
        }
        self.sample_of[slot] = self.next_sample;
        self.next_sample = self.next_sample.wrapping_add(1);
    }

    fn sample_number(&self, r: StackRef) -> Option<u32> {
        self.sample_of
            .get(r.0 as usize)
            .copied()
            .filter(|&n| n != u32::MAX)
    }

    /// An event as the table is about to apply it (stack samples are
    /// already out of it; `stack` names it).
    pub fn event(&mut self, event: &Event, stack: Option<StackRef>) {
        let dt = i128::from(event.ts_ns) - i128::from(self.last_ts);
        self.last_ts = event.ts_ns;
        let mut action = event.action.clone();
        let target = match &mut action {
            Action::Create(c) => c.target.take().map(|t| self.target(t)),
            _ => None,
        };
        let record = Record::Event(EventRecord {
            dt: i64::try_from(dt).unwrap_or(0),
            tgid: event.tgid,
            tid: if event.tid == event.tgid {
                0
            } else {
                event.tid
            },
            stopped: event.stopped,
            action,
            sample: stack.and_then(|r| self.sample_number(r)),
            target,
        });
        self.write(&record);
    }

    fn target(&mut self, target: String) -> Target {
        if let Some(&n) = self.targets.get(&target) {
            return Target::Seen(n);
        }
        let n = u32::try_from(self.targets.len()).unwrap_or(u32::MAX);
        self.targets.insert(target.clone(), n);
        Target::New(target)
    }

    /// Who held the table at EMFILE number `index`.
    pub fn holders(&mut self, index: usize, holders: &[crate::fd_table::Holder]) {
        let holders = holders
            .iter()
            .map(|h| {
                (
                    u64::try_from(h.count).unwrap_or(u64::MAX),
                    h.stack.and_then(|r| self.sample_number(r)),
                    h.oldest_ns,
                )
            })
            .collect();
        self.write(&Record::Holders {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            holders,
        });
    }

    pub fn interval(&mut self, entry: &IntervalEntry) {
        self.write(&Record::Interval(IntervalRecord::from(entry)));
    }

    pub fn finish(&mut self, now_ns: u64) {
        self.write(&Record::Finish { now_ns });
    }

    /// The last record.
    pub fn end(&mut self, end: End) {
        self.write(&Record::End(end));
        self.flush();
    }

    /// Writes the samples unwound since last time, and each newly
    /// interned stack once, symbolized.
    pub fn stacks(&mut self, stacks: &mut Stacks, symbols: &mut Symbols) {
        let resolved = stacks.take_resolved();
        if resolved.is_empty() {
            return;
        }
        let new: Vec<StackId> = resolved
            .iter()
            .map(|&(_, id)| id)
            .filter(|id| !self.stacks_written.contains(&id.0))
            .collect();
        symbols.ensure(stacks, &new);
        for &(r, id) in &resolved {
            if let Some(sample) = self.sample_number(r) {
                self.write(&Record::Sample {
                    sample,
                    stack: id.0,
                });
            }
            if self.stacks_written.insert(id.0) {
                let canonical = symbols.canonical(id);
                let frames = if canonical == id {
                    symbols.frames(id).to_vec()
                } else {
                    Vec::new()
                };
                self.write(&Record::Stack {
                    id: id.0,
                    canonical: canonical.0,
                    truncated: stacks.stack(id).truncated,
                    frames,
                });
            }
        }
    }
}

/// LEB128: 7 bits a byte, low first.
fn varint(mut n: u64, out: &mut [u8; 10]) -> usize {
    let mut i = 0;
    loop {
        let byte = u8::try_from(n & 0x7f).unwrap_or(0);
        n >>= 7;
        if n == 0 {
            out[i] = byte;
            return i + 1;
        }
        out[i] = byte | 0x80;
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use fdtrace_common::Syscall;

    use super::*;
    use crate::{
        events::{Closer, Creation},
        stacks::symbolize::SymFrame,
    };

    fn open(ts_ns: u64, fd: Fd, path: &str) -> Event {
        Event {
            ts_ns,
            tgid: 42,
            tid: 42,
            stopped: false,
            action: Action::Create(Creation {
                syscall: Syscall::Openat,
                fds: vec![fd],
                kind: FdKind::File,
                cloexec: false,
                like: None,
                target: Some(path.into()),
                socket: None,
                peer: None,
                stack: None,
                in_cleanup: false,
            }),
        }
    }

    /// A small trace: fd 3 opened and closed, fd 4 (same path) leaked
    /// from a stack the file names.
    fn trace() -> Vec<u8> {
        let memory = Memory::default();
        let header = Header {
            writer: "test".into(),
            mode: "run".into(),
            command: vec!["./leaky".into()],
            stack_mode: 2,
            start_ns: 1_000,
            started_unix: 0,
        };
        let mut r = Recorder::new(Box::new(memory.clone()), &header).unwrap();
        r.root(
            42,
            "/bin/leaky",
            &[(0, FdKind::File, "/dev/null".into(), false)],
        );
        r.sample(StackRef(0));
        r.event(&open(2_000, 3, "/etc/hostname"), Some(StackRef(0)));
        r.event(
            &Event {
                ts_ns: 3_000,
                tgid: 42,
                tid: 43,
                stopped: false,
                action: Action::Close {
                    fd: 3,
                    by: Closer::Program,
                    stack: None,
                },
            },
            None,
        );
        r.sample(StackRef(0));
        r.event(&open(4_000, 4, "/etc/hostname"), Some(StackRef(0)));
        r.write(&Record::Sample {
            sample: 1,
            stack: 7,
        });
        r.write(&Record::Stack {
            id: 7,
            canonical: 7,
            truncated: false,
            frames: vec![SymFrame {
                address: 0x1234,
                function: Some("open_config".into()),
                file: Some("leaky.c".into()),
                line: Some(12),
                module: Some("/bin/leaky".into()),
                inlined: false,
                python: false,
            }],
        });
        r.finish(5_000);
        r.end(End {
            exit_status: Some(0),
            ..End::default()
        });
        memory.take()
    }

    #[test]
    fn a_trace_replays_into_the_report_it_recorded() {
        let bytes = trace();
        let replayed = replay::replay("t.fdt", &bytes).unwrap();
        let r = &replayed.report;
        assert_eq!(r.command, ["./leaky"]);
        assert_eq!(r.exit_status, Some(0));
        let leaks: Vec<(i32, &str, Option<u32>)> = r
            .leaks
            .iter()
            .map(|l| (l.fd, l.target.as_str(), l.stack_id))
            .collect();
        assert_eq!(leaks, [(4, "/etc/hostname", Some(7))]);
        assert_eq!(
            r.groups[0].stack[0].function.as_deref(),
            Some("open_config")
        );
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        let t = &replayed.timeline;
        assert_eq!(t.processes.len(), 1);
        assert_eq!(t.processes[0].peak, 2);
        assert_eq!(t.processes[0].points.iter().map(|p| p.open).max(), Some(2));
    }

    #[test]
    fn a_trace_cut_anywhere_reports_what_came_before() {
        let bytes = trace();
        // The header alone (and a bit of the root) is an error; from the
        // first record on, every cut is a report that says where it was cut.
        let first = replay::replay("t.fdt", &bytes).unwrap();
        assert!(first.report.notes.is_empty());
        let mut reports = 0;
        for cut in 10..bytes.len() {
            match replay::replay("t.fdt", &bytes[..cut]) {
                Ok(r) => {
                    reports += 1;
                    assert!(
                        r.report
                            .notes
                            .iter()
                            .any(|n| n.contains("cut short at byte")),
                        "cut at {cut}: {:?}",
                        r.report.notes
                    );
                }
                Err(e) => assert!(e.to_string().contains("t.fdt: cut short at byte"), "{e}"),
            }
        }
        assert!(reports > bytes.len() / 2);
    }
}
