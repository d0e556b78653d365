//! Findings as annotations on the user's code, for the renderers that point
//! at source lines (SARIF, GitHub workflow commands): one per leak group,
//! one per exec-leak group, one per group of descriptors only the garbage
//! collector closed, one per EMFILE failure, one per group of misused
//! descriptors, each blamed on the innermost frame of the user's own code,
//! or on the line of the test a leak came from.

use super::{FrameEntry, Report, by_stack, by_test::test_frame, text::what, user_frame};

/// What an annotation reports; also its SARIF rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Leak,
    ExecLeak,
    GcClosed,
    Exhausted,
    DoubleClose,
    UseAfterClose,
    InvalidFd,
}

impl Rule {
    pub const ALL: [Rule; 7] = [
        Rule::Leak,
        Rule::ExecLeak,
        Rule::GcClosed,
        Rule::Exhausted,
        Rule::DoubleClose,
        Rule::UseAfterClose,
        Rule::InvalidFd,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Rule::Leak => "fd-leak",
            Rule::ExecLeak => "fd-exec-leak",
            Rule::GcClosed => "fd-gc-closed",
            Rule::Exhausted => "fd-exhausted",
            Rule::DoubleClose => "fd-double-close",
            Rule::UseAfterClose => "fd-use-after-close",
            Rule::InvalidFd => "fd-invalid",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Rule::Leak => "file descriptor never closed",
            Rule::ExecLeak => "file descriptor crossed exec without CLOEXEC",
            Rule::GcClosed => "file descriptor closed only by the garbage collector",
            Rule::Exhausted => "too many open files",
            Rule::DoubleClose => "file descriptor closed twice",
            Rule::UseAfterClose => "file descriptor used after it was closed",
            Rule::InvalidFd => "call on a descriptor that was never open",
        }
    }

    /// SARIF level: the garbage collector did close these, eventually.
    pub fn level(self) -> &'static str {
        match self {
            Rule::GcClosed => "warning",
            _ => "error",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Rule::Leak => {
                "A file descriptor opened here was still open when its process \
                 exited (or when tracing ended), or was closed only by Python's \
                 interpreter shutdown. Close it on every path, or hold it in an \
                 owner that closes it (`with`)."
            }
            Rule::ExecLeak => {
                "A file descriptor opened here without O_CLOEXEC / SOCK_CLOEXEC \
                 was inherited by a program the process exec'd."
            }
            Rule::GcClosed => {
                "A file descriptor opened here was closed only when Python's \
                 cyclic garbage collector freed the object holding it (a \
                 reference cycle): until a collection runs it stays open, which \
                 under load ends in EMFILE. Close it explicitly."
            }
            Rule::Exhausted => {
                "A call failed with EMFILE or ENFILE: the process's descriptor \
                 table (RLIMIT_NOFILE) or the system's was full."
            }
            Rule::DoubleClose => {
                "close() (failing with EBADF) or close_range() of a single \
                 descriptor this process had already closed. Had another \
                 thread opened a descriptor in \
                 between, it would have got the same number and this close \
                 would have closed it instead: its data would go to the wrong \
                 file or socket. The related location is the first close."
            }
            Rule::UseAfterClose => {
                "A call failed with EBADF on a descriptor this process had \
                 closed. Had the number been reused in between, the call would \
                 have read or written another file or socket. The related \
                 location is the close."
            }
            Rule::InvalidFd => {
                "A call failed with EBADF on a number that was never an open \
                 descriptor in this process (close(-1), an uninitialised or \
                 stale variable)."
            }
        }
    }
}

/// One finding, located.
#[derive(Clone, Debug)]
pub struct Annotation<'a> {
    pub rule: Rule,
    /// One line: what, how many, where, which process.
    pub message: String,
    pub stack_id: Option<u32>,
    /// Innermost first.
    pub stack: &'a [FrameEntry],
    /// Where to point: the line of the test a leak came from, else the
    /// innermost frame of the user's own code.
    pub blame: Option<&'a FrameEntry>,
    /// Descriptors this finding counts.
    pub count: usize,
    pub pids: Vec<u32>,
    /// For a double close or use after close: the earlier close, blamed
    /// like `blame`.
    pub closed_at: Option<&'a FrameEntry>,
}

/// Every finding in `report`, leaks first, largest group first.
pub fn annotations(report: &Report) -> Vec<Annotation<'_>> {
    let mut out = Vec::new();
    let mut leak_ids: Vec<Option<u32>> = report
        .groups
        .iter()
        .filter(|g| g.count > 0)
        .map(|g| Some(g.stack_id))
        .collect();
    if report.leaks.iter().any(|l| l.stack_id.is_none()) {
        leak_ids.push(None);
    }
    for id in leak_ids {
        let leaks: Vec<_> = report.leaks_of(id).collect();
        let Some(first) = leaks.first() else { continue };
        let pids = distinct(leaks.iter().map(|l| l.pid));
        let fds: Vec<String> = leaks
            .iter()
            .take(3)
            .map(|l| format!("fd {} {}", l.fd, l.target).trim_end().to_owned())
            .collect();
        let more = if leaks.len() > 3 { ", ..." } else { "" };
        let never = if leaks.iter().all(|l| l.closed_at_shutdown) {
            "closed only at interpreter shutdown"
        } else {
            "never closed"
        };
        let test = id
            .and_then(|id| {
                report
                    .leaks_by_test
                    .iter()
                    .find(|t| t.stack_ids.contains(&id))
            })
            .map(|t| format!(" in test {}", t.test))
            .unwrap_or_default();
        let message = format!(
            "{} {never}, opened by {}{}{test} ({}): {}{more}",
            what(leaks.iter().map(|l| l.kind)),
            first.opened_by,
            in_function(report, id),
            processes(report, &pids),
            fds.join(", ")
        );
        let mut annotation = located(report, Rule::Leak, message, id, leaks.len(), pids);
        if let Some(test) = test_frame(annotation.stack).filter(|f| f.line.is_some()) {
            annotation.blame = Some(test);
        }
        out.push(annotation);
    }
    for (id, closed) in by_stack(&report.gc_closed, |g| g.stack_id) {
        let pids = distinct(closed.iter().map(|g| g.pid));
        let message = format!(
            "{} closed only by the garbage collector, opened by {}{} ({})",
            what(closed.iter().map(|g| g.kind)),
            closed[0].opened_by,
            in_function(report, id),
            processes(report, &pids),
        );
        out.push(located(
            report,
            Rule::GcClosed,
            message,
            id,
            closed.len(),
            pids,
        ));
    }
    for (id, leaks) in by_stack(&report.exec_leaks, |e| e.stack_id) {
        let first = leaks[0];
        let pids = distinct(leaks.iter().map(|e| e.pid));
        let message = format!(
            "{} without CLOEXEC, opened by {}{} ({}), crossed exec into {}",
            what(leaks.iter().map(|e| e.kind)),
            first.opened_by,
            in_function(report, id),
            processes(report, &pids),
            first.exec
        );
        out.push(located(
            report,
            Rule::ExecLeak,
            message,
            id,
            leaks.len(),
            pids,
        ));
    }
    for e in &report.emfile {
        let limit = e
            .rlimit
            .map(|[soft, _]| format!(" (limit {soft})"))
            .unwrap_or_default();
        let top = e
            .holders
            .first()
            .map(|h| {
                format!(
                    "; {} of them opened{}",
                    h.count,
                    in_function(report, h.stack_id)
                )
            })
            .unwrap_or_default();
        let message = format!(
            "{} failed with {}{} ({}) with {} descriptors open{limit}{top}",
            e.syscall,
            e.error,
            in_function(report, e.stack_id),
            processes(report, &[e.pid]),
            e.open_fds,
        );
        out.push(located(
            report,
            Rule::Exhausted,
            message,
            e.stack_id,
            e.open_fds,
            vec![e.pid],
        ));
    }
    for m in &report.fd_misuse {
        let rule = match m.kind {
            "double-close" => Rule::DoubleClose,
            "use-after-close" => Rule::UseAfterClose,
            _ => Rule::InvalidFd,
        };
        let closed_at = m
            .closed_stack_id
            .and_then(|id| report.group(id))
            .and_then(|g| user_frame(&g.stack));
        let closed = closed_at
            .and_then(|f| f.function.as_deref())
            .map(|f| format!(", closed before in {f}"))
            .unwrap_or_default();
        let message = format!(
            "{}{}{closed} ({})",
            super::misuse::headline(report, m),
            in_function(report, m.stack_id),
            processes(report, &[m.pid]),
        );
        let mut annotation = located(report, rule, message, m.stack_id, m.count, vec![m.pid]);
        annotation.closed_at = closed_at;
        out.push(annotation);
    }
    out
}

fn located(
    report: &Report,
    rule: Rule,
    message: String,
    stack_id: Option<u32>,
    count: usize,
    pids: Vec<u32>,
) -> Annotation<'_> {
    let stack = stack_id
        .and_then(|id| report.group(id))
        .map_or(&[][..], |g| g.stack.as_slice());
    Annotation {
        rule,
        message,
        stack_id,
        stack,
        blame: user_frame(stack),
        count,
        pids,
        closed_at: None,
    }
}

/// " in leak_it" for the blamed frame of a stack, or nothing.
fn in_function(report: &Report, stack_id: Option<u32>) -> String {
    stack_id
        .and_then(|id| report.group(id))
        .and_then(|g| user_frame(&g.stack))
        .and_then(|f| f.function.as_deref())
        .map(|f| format!(" in {f}"))
        .unwrap_or_default()
}

/// `pid 12: ./t --exact a`, at most two, then a count.
fn processes(report: &Report, pids: &[u32]) -> String {
    let mut names: Vec<String> = pids
        .iter()
        .take(2)
        .map(|&pid| format!("pid {pid}: {}", report.command_line(pid)))
        .collect();
    if pids.len() > 2 {
        names.push(format!("{} more", pids.len() - 2));
    }
    names.join("; ")
}

fn distinct(pids: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for pid in pids {
        if !out.contains(&pid) {
            out.push(pid);
        }
    }
    out
}
