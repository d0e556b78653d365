//! Misused descriptors in the report: the table's double closes, uses
//! after close and invalid descriptors, identical ones (same type, call
//! and stacks) counted together like leaks, and their text section.

use std::io::{self, Write};

use serde::Serialize;

use super::{
    Report, StackLookup, age_ms,
    text::{Style, WIDTH, fit, frames},
};
use crate::{
    fd_table::{FdTable, StackRef},
    misuse::{Misuse, MisuseKind},
};

/// One group of identical misuses (the JSON `fd_misuse` entries).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MisuseEntry {
    /// `double-close`, `use-after-close` or `invalid-fd`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The first occurrence's process, thread and descriptor.
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub syscall: &'static str,
    /// 9 (EBADF); 0 for a close_range of one number closed before, which
    /// does not fail.
    pub errno: i32,
    /// Occurrences with this type, call and stacks.
    pub count: usize,
    /// The failing call's stack.
    pub stack_id: Option<u32>,
    /// Where the descriptor was closed before; null for `invalid-fd` (and
    /// for a number a close_range of several closed: no stack is taken).
    pub closed_stack_id: Option<u32>,
    /// The thread that closed it before, and how long before the failure.
    pub closed_tid: Option<u32>,
    pub closed_ms_before: Option<u64>,
}

/// Misuses the report can vouch for, grouped, and how many it cannot: after
/// a lost event (or, for a number that may have been open, a creation the
/// kernel kept) the table may be wrong about what was open. A negative
/// number never is.
pub fn entries(
    table: &FdTable,
    last_drop_ns: Option<u64>,
    kept_in_kernel: u64,
    stacks: &impl StackLookup,
) -> (Vec<MisuseEntry>, usize) {
    let id_of = |r: Option<StackRef>| r.and_then(|r| stacks.id(r));
    let mut entries: Vec<MisuseEntry> = Vec::new();
    let mut withheld = 0;
    for m in &table.misuses {
        let uncertain = m.fd >= 0
            && (last_drop_ns.is_some() || (m.kind == MisuseKind::InvalidFd && kept_in_kernel > 0));
        if uncertain {
            withheld += 1;
            continue;
        }
        let entry = entry_of(m, id_of(m.stack), id_of(m.closed.and_then(|c| c.stack)));
        let same = |e: &&mut MisuseEntry| {
            e.kind == entry.kind
                && e.syscall == entry.syscall
                && e.stack_id == entry.stack_id
                && e.closed_stack_id == entry.closed_stack_id
                // Without stacks, only the same descriptor of one process.
                && (entry.stack_id.is_some() || (e.pid == entry.pid && e.fd == entry.fd))
        };
        match entries.iter_mut().find(same) {
            Some(e) => e.count += 1,
            None => entries.push(entry),
        }
    }
    (entries, withheld)
}

fn entry_of(m: &Misuse, stack_id: Option<u32>, closed_stack_id: Option<u32>) -> MisuseEntry {
    MisuseEntry {
        kind: m.kind.name(),
        pid: m.tgid,
        tid: m.tid,
        fd: m.fd,
        syscall: m.syscall,
        errno: m.errno,
        count: 1,
        stack_id,
        closed_stack_id,
        closed_tid: m.closed.map(|c| c.tid),
        closed_ms_before: m.closed.map(|c| age_ms(c.ts_ns, m.ts_ns)),
    }
}

/// One line naming what happened: "double close: close(3) failed with
/// EBADF in demo [41] (thread 42)".
pub fn headline(report: &Report, m: &MisuseEntry) -> String {
    let what = match m.kind {
        "double-close" => "double close",
        "use-after-close" => "use after close",
        _ => "invalid descriptor",
    };
    let times = if m.count > 1 {
        format!(" ({} times)", m.count)
    } else {
        String::new()
    };
    let thread = if m.tid == m.pid {
        String::new()
    } else {
        format!(" thread {}", m.tid)
    };
    // close_range skips a number that is not open: nothing failed.
    let outcome = if m.errno == 0 {
        "closed nothing"
    } else {
        "failed with EBADF"
    };
    format!(
        "{what}: {}({}) {outcome}{times} in {} [{}]{thread}",
        m.syscall,
        m.fd,
        report.process(m.pid).map_or("?", |p| p.comm.as_str()),
        m.pid
    )
}

/// The "Misused descriptors" section: each group with the failing stack
/// and the stack of the close before it.
pub fn section(report: &Report, style: Style, out: &mut impl Write) -> io::Result<()> {
    if report.fd_misuse.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(out, "{}", style.red("Misused descriptors:"))?;
    for (i, m) in report.fd_misuse.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(out, "{}", style.bold(&fit(&headline(report, m), WIDTH)))?;
        match m.stack_id.and_then(|id| report.group(id)) {
            Some(g) => frames(g, out)?,
            None => writeln!(out, "  (no stack captured)")?,
        }
        if m.kind == "invalid-fd" {
            continue;
        }
        let by = match (m.closed_tid, m.closed_ms_before) {
            (Some(tid), Some(ms)) if tid != m.tid => format!(" by thread {tid}, {ms} ms before,"),
            (_, Some(ms)) => format!(" {ms} ms before,"),
            _ => String::new(),
        };
        writeln!(out, "  closed{by} at:")?;
        match m.closed_stack_id.and_then(|id| report.group(id)) {
            Some(g) => frames(g, out)?,
            None => writeln!(out, "  (no stack: closed by a close_range, or stacks off)")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{misuse::ClosedFd, stacks::symbolize::SymFrame};

    struct Ids;
    impl StackLookup for Ids {
        fn id(&self, stack: StackRef) -> Option<u32> {
            Some(stack.0)
        }
        fn frames(&self, _id: u32) -> Vec<SymFrame> {
            Vec::new()
        }
        fn truncated(&self, _id: u32) -> bool {
            false
        }
    }

    fn misuse(kind: MisuseKind, fd: i32, stack: u32, closed: Option<u32>) -> Misuse {
        Misuse {
            kind,
            tgid: 7,
            tid: 8,
            fd,
            syscall: "close",
            errno: 9,
            ts_ns: 5_000_000,
            stack: Some(StackRef(stack)),
            closed: closed.map(|s| ClosedFd {
                tid: 7,
                ts_ns: 2_000_000,
                stack: Some(StackRef(s)),
            }),
        }
    }

    fn table() -> FdTable {
        let mut t = FdTable::default();
        t.misuses = vec![
            misuse(MisuseKind::DoubleClose, 3, 1, Some(2)),
            misuse(MisuseKind::DoubleClose, 4, 1, Some(2)),
            misuse(MisuseKind::DoubleClose, 3, 1, Some(9)),
            misuse(MisuseKind::InvalidFd, -1, 1, None),
            misuse(MisuseKind::InvalidFd, 1000, 1, None),
        ];
        t
    }

    #[test]
    fn identical_misuses_are_counted_together() {
        let (entries, withheld) = entries(&table(), None, 0, &Ids);
        let got: Vec<_> = entries
            .iter()
            .map(|e| (e.kind, e.fd, e.count, e.stack_id, e.closed_stack_id))
            .collect();
        assert_eq!(
            got,
            [
                ("double-close", 3, 2, Some(1), Some(2)),
                ("double-close", 3, 1, Some(1), Some(9)),
                ("invalid-fd", -1, 2, Some(1), None),
            ]
        );
        assert_eq!(withheld, 0);
        assert_eq!(
            (
                entries[0].tid,
                entries[0].closed_tid,
                entries[0].closed_ms_before
            ),
            (8, Some(7), Some(3))
        );
    }

    #[test]
    fn after_a_lost_event_only_negative_numbers_are_certain() {
        let (found, withheld) = entries(&table(), Some(1), 0, &Ids);
        let got: Vec<_> = found.iter().map(|e| (e.kind, e.fd, e.count)).collect();
        assert_eq!((got, withheld), (vec![("invalid-fd", -1, 1)], 4));
        // A creation the kernel kept may be the open number behind an
        // "invalid" one; a close the table saw is still a close.
        let (found, withheld) = entries(&table(), None, 5, &Ids);
        let got: Vec<_> = found.iter().map(|e| (e.kind, e.fd, e.count)).collect();
        assert_eq!(
            (got, withheld),
            (
                vec![
                    ("double-close", 3, 2),
                    ("double-close", 3, 1),
                    ("invalid-fd", -1, 1)
                ],
                1
            )
        );
    }
}
