//! Text blocks printed while tracing runs (and repeated in the final
//! report): an EMFILE failure with who held the table, a select() past
//! FD_SETSIZE, and `attach --interval` growth snapshots.

use std::{
    io::{self, Write},
    time::Duration,
};

use super::{
    EmfileEntry, IntervalEntry, Report,
    terminal::Terminal,
    text::{Style, WIDTH, fit, frames, frames_up_to, process_name},
};

/// Frames shown per holder and per interval group.
const SHORT_STACK: usize = 8;
/// Holders and interval groups shown.
const MAX_GROUPS: usize = 5;

/// A limit as people read it: `unlimited` for RLIM_INFINITY.
pub fn limit(value: u64) -> String {
    if value == u64::MAX {
        "unlimited".to_owned()
    } else {
        value.to_string()
    }
}

/// `EMFILE: openat("/etc/passwd") failed in hoard[42] thread 42`.
pub fn emfile_headline(report: &Report, e: &EmfileEntry) -> String {
    let arg = e
        .argument
        .as_deref()
        .map(|a| format!("(\"{a}\")"))
        .unwrap_or_default();
    format!(
        "{}: {}{arg} failed in {} thread {}",
        e.error,
        e.syscall,
        process_name(report, e.pid),
        e.tid
    )
}

/// `soft limit 64, hard limit 64`.
pub fn emfile_limits(e: &EmfileEntry) -> String {
    match e.rlimit {
        Some([soft, hard]) => format!("soft limit {}, hard limit {}", limit(soft), limit(hard)),
        None => "limit unknown".to_owned(),
    }
}

fn seconds(ms: u64) -> String {
    format!("{}.{}s", ms / 1000, (ms % 1000) / 100)
}

/// `report.emfile[index]`: the failing call and stack, the limit, and the
/// stacks holding the table at that moment.
pub fn emfile(report: &Report, index: usize, style: Style, out: &mut impl Write) -> io::Result<()> {
    emfile_text(report, index, style, &mut Terminal::new(out, style.color))
}

fn emfile_text(
    report: &Report,
    index: usize,
    style: Style,
    out: &mut impl Write,
) -> io::Result<()> {
    let Some(e) = report.emfile.get(index) else {
        return Ok(());
    };
    let head = emfile_headline(report, e);
    writeln!(out, "{}", style.red(&fit(&head, WIDTH)))?;
    writeln!(
        out,
        "  {} descriptors open; {}",
        e.open_fds,
        emfile_limits(e)
    )?;
    if e.stopped {
        let line = format!(
            "  Left stopped here (--on-emfile stop): resume with kill -CONT {}",
            e.pid
        );
        writeln!(out, "{}", style.bold(&fit(&line, WIDTH)))?;
    }
    match e.stack_id.and_then(|id| report.group(id)) {
        Some(g) => frames(g, out)?,
        None => writeln!(out, "  (no stack captured)")?,
    }
    if e.holders.is_empty() && e.preexisting.is_empty() {
        return Ok(());
    }
    writeln!(out, "  Held by:")?;
    for h in e.holders.iter().take(MAX_GROUPS) {
        let line = format!(
            "  {} opened here, oldest {} ago:",
            h.count,
            seconds(h.oldest_age_ms)
        );
        writeln!(out, "{}", style.bold(&line))?;
        match h.stack_id.and_then(|id| report.group(id)) {
            Some(g) => frames_up_to(g, SHORT_STACK, out)?,
            None => writeln!(out, "  (no stack captured)")?,
        }
    }
    if e.holders.len() > MAX_GROUPS {
        let rest: usize = e.holders[MAX_GROUPS..].iter().map(|h| h.count).sum();
        writeln!(
            out,
            "  ... and {rest} more from {} other stacks",
            e.holders.len() - MAX_GROUPS
        )?;
    }
    if !e.preexisting.is_empty() {
        let total: usize = e.preexisting.iter().map(|k| k.count).sum();
        let kinds: Vec<String> = e
            .preexisting
            .iter()
            .map(|k| format!("{} {}", k.count, k.kind))
            .collect();
        let line = format!(
            "  {total} open before tracing (origin unknown): {}",
            kinds.join(", ")
        );
        writeln!(out, "{}", fit(&line, WIDTH))?;
    }
    Ok(())
}

/// `report.fd_set_overflows[index]`.
pub fn fd_set_overflow(
    report: &Report,
    index: usize,
    style: Style,
    out: &mut impl Write,
) -> io::Result<()> {
    let out = &mut Terminal::new(out, style.color);
    let Some(o) = report.fd_set_overflows.get(index) else {
        return Ok(());
    };
    let highest = o
        .highest_fd
        .map(|fd| format!(", highest open fd {fd}"))
        .unwrap_or_default();
    let head = format!(
        "warning: {}(nfds={}) in {} thread {}{highest}",
        o.syscall,
        o.nfds,
        process_name(report, o.pid),
        o.tid
    );
    writeln!(out, "{}", style.red(&fit(&head, WIDTH)))?;
    writeln!(
        out,
        "  fd_set holds 1024 descriptors: this call read and wrote past it (use poll)"
    )?;
    match o.stack_id.and_then(|id| report.group(id)) {
        Some(g) => frames_up_to(g, SHORT_STACK, out),
        None => Ok(()),
    }
}

/// One `attach --interval` snapshot: the stacks holding the most
/// descriptors, with their growth.
pub fn interval(
    report: &Report,
    entry: &IntervalEntry,
    every: Duration,
    min_age: Duration,
    style: Style,
    out: &mut impl Write,
) -> io::Result<()> {
    let out = &mut Terminal::new(out, style.color);
    let total: usize = entry.groups.iter().map(|g| g.count).sum();
    let head = format!(
        "[{}] {total} descriptors opened since attach, older than {}, still open:",
        seconds(entry.elapsed_ms),
        seconds(u64::try_from(min_age.as_millis()).unwrap_or(u64::MAX))
    );
    writeln!(out, "{}", style.bold(&fit(&head, WIDTH)))?;
    let every = seconds(u64::try_from(every.as_millis()).unwrap_or(u64::MAX));
    for g in entry.groups.iter().take(MAX_GROUPS) {
        let who: Vec<String> = g
            .pids
            .iter()
            .take(2)
            .map(|&p| process_name(report, p))
            .collect();
        let line = format!(
            "  {} x {} in {} ({:+} in {every})",
            g.count,
            g.kind,
            who.join(", "),
            g.growth
        );
        writeln!(out, "{}", fit(&line, WIDTH))?;
        match g.stack_id.and_then(|id| report.group(id)) {
            Some(group) => frames_up_to(group, SHORT_STACK, out)?,
            None => writeln!(out, "  (no stack captured)")?,
        }
    }
    if entry.groups.len() > MAX_GROUPS {
        writeln!(
            out,
            "  ... and {} more stacks",
            entry.groups.len() - MAX_GROUPS
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{EmfileEntry, HolderEntry, IntervalGroup, KindCount, text::tests::report};

    #[test]
    fn emfile_block_names_the_limit_the_stack_and_the_holders() {
        let mut r = report();
        r.emfile.push(EmfileEntry {
            pid: 42,
            tid: 43,
            syscall: "openat",
            errno: 24,
            error: "EMFILE",
            argument: Some("/etc/hosts".into()),
            open_fds: 64,
            rlimit: Some([64, 4096]),
            stack_id: Some(0),
            holders: vec![HolderEntry {
                count: 61,
                stack_id: Some(0),
                oldest_age_ms: 1234,
            }],
            preexisting: vec![KindCount {
                kind: "file",
                count: 3,
            }],
            stopped: false,
        });
        let mut out = Vec::new();
        emfile(&r, 0, Style::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "\
EMFILE: openat(\"/etc/hosts\") failed in leaky[42] thread 43
  64 descriptors open; soft limit 64, hard limit 4096
  #0  open_config                      leaky.c:12
  #1  main                             leaky.c:30
  Held by:
  61 opened here, oldest 1.2s ago:
  #0  open_config                      leaky.c:12
  #1  main                             leaky.c:30
  3 open before tracing (origin unknown): 3 file
"
        );
    }

    #[test]
    fn a_process_left_stopped_says_how_to_resume_it() {
        let mut r = report();
        r.emfile.push(EmfileEntry {
            pid: 42,
            tid: 42,
            syscall: "socket",
            errno: 24,
            error: "EMFILE",
            argument: None,
            open_fds: 64,
            rlimit: Some([64, 4096]),
            stack_id: None,
            holders: vec![],
            preexisting: vec![],
            stopped: true,
        });
        let mut out = Vec::new();
        emfile(&r, 0, Style::default(), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\
EMFILE: socket failed in leaky[42] thread 42
  64 descriptors open; soft limit 64, hard limit 4096
  Left stopped here (--on-emfile stop): resume with kill -CONT 42
  (no stack captured)
"
        );
    }

    #[test]
    fn interval_shows_growth() {
        let r = report();
        let entry = IntervalEntry {
            elapsed_ms: 5000,
            groups: vec![IntervalGroup {
                stack_id: Some(0),
                count: 30,
                growth: 12,
                kind: "file",
                pids: vec![42],
            }],
        };
        let mut out = Vec::new();
        interval(
            &r,
            &entry,
            Duration::from_secs(5),
            Duration::from_secs(1),
            Style::default(),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                "[5.0s] 30 descriptors opened since attach, older than 1.0s, still open:\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  30 x file in leaky[42] (+12 in 5.0s)\n"),
            "{text}"
        );
    }
}
