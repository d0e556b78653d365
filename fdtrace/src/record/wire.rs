//! The trace file's layout (`fdtrace record`, `attach --record`).
//!
//! ```text
//! magic    8 bytes   "FDTRACE\n"
//! version  2 bytes   little-endian; a reader refuses a newer one
//! records  ...       each: length (LEB128 varint), then that many bytes:
//!                    one postcard-encoded [`Record`]
//! ```
//!
//! The first record is the [`Header`]. Records are appended as tracing
//! goes, so a file cut short (the tracer killed, the disk full) holds every
//! record up to its last complete one. What a record says is what the fd
//! table was told, in the order it was told: replaying the records through
//! the same table code gives the same report.

use fdtrace_common::{StackMode, Syscall};
use serde::{Deserialize, Serialize};

use crate::{
    events::{Action, Fd, FdKind},
    report::IntervalEntry,
    stacks::symbolize::SymFrame,
};

pub const MAGIC: &[u8; 8] = b"FDTRACE\n";
/// Bumped whenever a record's encoding changes.
pub const VERSION: u16 = 1;
/// Longest record a reader accepts (a stack of 2,000 frames with long
/// names is well under this); longer is corruption.
pub const MAX_RECORD: usize = 16 << 20;

/// What was traced, written first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Header {
    /// The fdtrace version that wrote the file.
    pub writer: String,
    /// `run` or `attach`.
    pub mode: String,
    pub command: Vec<String>,
    pub stack_mode: u32,
    /// CLOCK_MONOTONIC when tracing began; event times are relative to it.
    pub start_ns: u64,
    /// Wall-clock time when tracing began (seconds since the epoch).
    pub started_unix: u64,
}

/// One record after the header.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Record {
    /// A process traced from the start with the descriptors it had.
    Root {
        tgid: u32,
        exe: String,
        inherited: Vec<(Fd, FdKind, String, bool)>,
    },
    /// What was learnt of a process outside its events (at attach, or
    /// what an exec's image record carried).
    Process {
        tgid: u32,
        comm: Option<String>,
        cmdline: Option<Vec<String>>,
        rlimit: Option<(u64, u64)>,
    },
    /// What `/proc` said of a descriptor the next event needed described.
    Describe {
        tgid: u32,
        fd: Fd,
        found: Option<(FdKind, String)>,
    },
    Event(EventRecord),
    /// A stack sample (by its number in the file) was unwound to an
    /// interned stack.
    Sample {
        sample: u32,
        stack: u32,
    },
    /// An interned stack, symbolized: `canonical` is the id reports
    /// group it under; frames are written once, with the canonical id.
    Stack {
        id: u32,
        canonical: u32,
        truncated: bool,
        frames: Vec<SymFrame>,
    },
    /// Who held the table at `Report::emfile[index]`: (count, sample,
    /// oldest creation).
    Holders {
        index: u32,
        holders: Vec<(u64, Option<u32>, u64)>,
    },
    /// An `attach --interval` snapshot.
    Interval(IntervalRecord),
    /// Tracing ended at `now_ns`: what live processes hold is reported.
    Finish {
        now_ns: u64,
    },
    /// The rest of what the final report says.
    End(End),
}

/// One event as the fd table got it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EventRecord {
    /// Nanoseconds since the previous event (negative for a creation the
    /// kernel kept and fdtrace claimed later).
    pub dt: i64,
    pub tgid: u32,
    /// 0 when it is `tgid`.
    pub tid: u32,
    pub stopped: bool,
    pub action: Action,
    /// The stack sample taken with it, numbered in the file.
    pub sample: Option<u32>,
    /// A creation's target, interned: the index of an earlier
    /// `target` in the file, or a new one.
    pub target: Option<Target>,
}

/// A string written once and referred to by number afterwards.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Target {
    New(String),
    Seen(u32),
}

/// `IntervalEntry` on the wire (kinds by name).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IntervalRecord {
    pub elapsed_ms: u64,
    pub groups: Vec<IntervalGroupRecord>,
}

/// `IntervalGroup` on the wire.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IntervalGroupRecord {
    pub stack_id: Option<u32>,
    pub count: u64,
    pub growth: i64,
    pub kind: String,
    pub pids: Vec<u32>,
}

impl From<&IntervalEntry> for IntervalRecord {
    fn from(e: &IntervalEntry) -> Self {
        IntervalRecord {
            elapsed_ms: e.elapsed_ms,
            groups: e
                .groups
                .iter()
                .map(|g| IntervalGroupRecord {
                    stack_id: g.stack_id,
                    count: u64::try_from(g.count).unwrap_or(u64::MAX),
                    growth: g.growth,
                    kind: g.kind.to_owned(),
                    pids: g.pids.clone(),
                })
                .collect(),
        }
    }
}

/// The end of a complete trace.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct End {
    pub exit_status: Option<i32>,
    pub dropped_events: u64,
    pub skipped_stacks: u64,
    pub kept_in_kernel: u64,
    pub last_drop_ns: Option<u64>,
    pub undecodable: u64,
    pub notes: Vec<String>,
}

/// The stack mode's number in the header.
pub fn stack_mode_number(mode: StackMode) -> u32 {
    match mode {
        StackMode::None => 0,
        StackMode::FramePointer => 1,
        StackMode::Dwarf => 2,
    }
}

/// `Syscall` as its wire number.
pub mod syscall {
    use super::*;

    pub fn serialize<S: serde::Serializer>(s: &Syscall, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_u32(*s as u32)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Syscall, D::Error> {
        let n = u32::deserialize(de)?;
        Syscall::try_from(n).map_err(|n| serde::de::Error::custom(format!("unknown syscall {n}")))
    }
}

/// A syscall name (one of `fd_syscall_name`'s) as its x86_64 number.
pub mod syscall_name {
    use fdtrace_common::fd_syscall_name;

    use super::*;

    /// Past every syscall number x86_64 has.
    const MAX_NR: u64 = 512;

    pub fn serialize<S: serde::Serializer>(name: &&'static str, ser: S) -> Result<S::Ok, S::Error> {
        let nr = (0..MAX_NR)
            .find(|&nr| fd_syscall_name(nr) == Some(name))
            .unwrap_or(MAX_NR);
        ser.serialize_u64(nr)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(de: D) -> Result<&'static str, D::Error> {
        let nr = u64::deserialize(de)?;
        Ok(fd_syscall_name(nr).unwrap_or("?"))
    }
}

/// The `&'static str` an fd kind name stands for (`FdKind::name`).
pub fn kind_name(name: &str) -> &'static str {
    const KINDS: [FdKind; 16] = [
        FdKind::File,
        FdKind::Directory,
        FdKind::Socket,
        FdKind::Pipe,
        FdKind::Eventfd,
        FdKind::Epoll,
        FdKind::Timerfd,
        FdKind::Signalfd,
        FdKind::Inotify,
        FdKind::Fanotify,
        FdKind::Memfd,
        FdKind::Pidfd,
        FdKind::IoUring,
        FdKind::Userfaultfd,
        FdKind::Perf,
        FdKind::Other,
    ];
    KINDS
        .iter()
        .map(|k| k.name())
        .find(|n| *n == name)
        .unwrap_or("other")
}
