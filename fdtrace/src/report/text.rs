//! Text renderer: what a person reads after "Too many open files". Fits in
//! 80 columns; colour only when asked (the caller checks for a terminal).

use std::io::{self, Write};

use crate::history::sparkline;

use super::{
    ExecLeakEntry, FrameEntry, GcClosedEntry, Group, LeakEntry, Report, live, sections,
    terminal::Terminal,
};

pub use sections::stale_suppressions;

pub const WIDTH: usize = 80;
/// Frames shown per stack; JSON has them all.
const MAX_FRAMES: usize = 16;
/// Width function names are padded to, so locations line up.
const FUNCTION_COLUMN: usize = 32;
/// Processes listed in the headroom section.
const MAX_PROCESSES: usize = 10;
/// Descriptors listed per group.
const MAX_SAMPLES: usize = 3;

/// Rendering options.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    pub color: bool,
}

impl Style {
    pub(super) fn bold(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
    pub(super) fn red(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[1;31m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
}

/// Writes the text report; control characters in what it names are shown
/// as `?` (see [`super::terminal`]).
pub fn render(report: &Report, style: Style, out: &mut impl Write) -> io::Result<()> {
    render_text(report, style, &mut Terminal::new(out, style.color))
}

fn render_text(report: &Report, style: Style, out: &mut impl Write) -> io::Result<()> {
    summary(report, style, out)?;
    let mut shown_groups: Vec<Option<u32>> = Vec::new();
    for g in &report.groups {
        if g.count > 0 {
            shown_groups.push(Some(g.stack_id));
        }
    }
    if report.leaks.iter().any(|l| l.stack_id.is_none()) {
        shown_groups.push(None);
    }
    for id in shown_groups {
        let leaks: Vec<&LeakEntry> = report.leaks_of(id).collect();
        writeln!(out)?;
        leak_group(
            report,
            id.and_then(|id| report.group(id)),
            &leaks,
            style,
            out,
        )?;
    }
    if !report.exec_leaks.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{}",
            style.red("Descriptors that crossed exec without CLOEXEC:")
        )?;
        let mut groups: Vec<Vec<&ExecLeakEntry>> = Vec::new();
        for e in &report.exec_leaks {
            let same = |g: &&mut Vec<&ExecLeakEntry>| {
                g[0].stack_id == e.stack_id && g[0].pid == e.pid && g[0].exec == e.exec
            };
            match groups.iter_mut().find(same) {
                Some(g) => g.push(e),
                None => groups.push(vec![e]),
            }
        }
        for (i, group) in groups.iter().enumerate() {
            if i > 0 {
                writeln!(out)?;
            }
            let first = group[0];
            let head = format!(
                "{}, opened by {}, into {} in {}",
                what(group.iter().map(|e| e.kind)),
                first.opened_by,
                first.exec,
                process_name(report, first.pid)
            );
            writeln!(out, "{}", style.bold(&fit(&head, WIDTH)))?;
            samples(group.iter().map(|e| (e.fd, e.target.as_str(), "")), out)?;
            match first.stack_id.and_then(|id| report.group(id)) {
                Some(g) => frames(g, out)?,
                None => writeln!(out, "  (no stack captured)")?,
            }
        }
    }
    gc_closed(report, style, out)?;
    super::misuse::section(report, style, out)?;
    if !report.unknown_leaks.is_empty() {
        writeln!(out)?;
        let n = report.unknown_leaks.len();
        let head = format!(
            "Unknown (events lost): {n} {} not seen closed",
            plural(n, "descriptor", "descriptors")
        );
        writeln!(out, "{}", style.bold(&head))?;
        for line in wrap(
            "Opened before an event was dropped, so their close may be the lost \
             event. Not counted as leaks (nor by --fail-on leak).",
            WIDTH - 2,
        ) {
            writeln!(out, "  {line}")?;
        }
        for l in report.unknown_leaks.iter().take(MAX_SAMPLES) {
            let line = format!(
                "    fd {:<4} {} in {}",
                l.fd,
                l.target,
                process_name(report, l.pid)
            );
            writeln!(out, "{}", fit(&line, WIDTH))?;
        }
        if n > MAX_SAMPLES {
            writeln!(out, "    ... and {} more", n - MAX_SAMPLES)?;
        }
    }
    if !report.fd_set_overflows.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{}",
            style.red("select() past FD_SETSIZE (memory corruption):")
        )?;
        for index in 0..report.fd_set_overflows.len() {
            live::fd_set_overflow(report, index, style, out)?;
        }
    }
    for index in 0..report.emfile.len() {
        writeln!(out)?;
        live::emfile(report, index, style, out)?;
    }
    sections::by_process(report, style, out)?;
    sections::by_test(report, style, out)?;
    sections::suppressions(report, style, out)?;
    headroom(report, style, out)
}

/// Each process's peak against its soft limit, and what it had open before
/// tracing began.
fn headroom(report: &Report, style: Style, out: &mut impl Write) -> io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "{}",
        style.bold("Processes (peak open descriptors / soft limit):")
    )?;
    for p in report.processes.iter().take(MAX_PROCESSES) {
        let limit = match p.rlimit {
            Some([soft, _]) if soft != u64::MAX => soft.to_string(),
            Some(_) => "unlimited".to_owned(),
            None => "?".to_owned(),
        };
        let status = match p.exit_status {
            Some(s) => format!(", exit {s}"),
            None => String::new(),
        };
        let mut line = format!("  {}[{}]  {} / {limit}{status}", p.comm, p.pid, p.peak_fds);
        if !p.preexisting.is_empty() && report.mode == "attach" {
            let kinds: Vec<String> = p
                .preexisting
                .iter()
                .map(|k| format!("{} {}", k.count, k.kind))
                .collect();
            line.push_str(&format!("; open before attach: {}", kinds.join(", ")));
        }
        writeln!(out, "{}", fit(&line, WIDTH))?;
        if p.open_over_time.len() > 1 {
            let over = format!("over {}", duration(p.open_over_ms));
            writeln!(out, "    {} {over}", sparkline(&p.open_over_time))?;
        }
    }
    if report.processes.len() > MAX_PROCESSES {
        writeln!(
            out,
            "  ... and {} more",
            report.processes.len() - MAX_PROCESSES
        )?;
    }
    Ok(())
}

/// `350 ms`, `1.2 s`, `4 min`.
fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{}.{} s", ms / 1000, ms % 1000 / 100),
        _ => format!("{} min", ms / 60_000),
    }
}

fn summary(report: &Report, style: Style, out: &mut impl Write) -> io::Result<()> {
    let attach = report.mode == "attach";
    let head = if attach {
        let who: Vec<String> = report
            .processes
            .iter()
            .filter(|p| p.ppid.is_none())
            .map(|p| format!("{}[{}]", p.comm, p.pid))
            .collect();
        format!("fdtrace: attached to {}", who.join(", "))
    } else {
        let command = report.command.first().map(String::as_str).unwrap_or("?");
        match report.exit_status {
            Some(s) => format!("fdtrace: {command} exited with status {s}"),
            None => format!("fdtrace: {command} was still running when tracing ended"),
        }
    };
    writeln!(out, "{}", style.bold(&fit(&head, WIDTH)))?;
    let leaked = report.leaks.len();
    let stacks = report.groups.iter().filter(|g| g.count > 0).count();
    let mut pids: Vec<u32> = report.leaks.iter().map(|l| l.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    let what = if attach {
        "opened since attach still open or leaked at exit"
    } else {
        "never closed"
    };
    let line = if leaked == 0 {
        let n = report.processes.len();
        format!(
            "No leaked descriptors in {n} {} traced.",
            plural(n, "process", "processes")
        )
    } else {
        format!(
            "{leaked} {} {what}, from {stacks} {}, in {} {}.",
            plural(leaked, "descriptor", "descriptors"),
            plural(stacks, "stack", "stacks"),
            pids.len(),
            plural(pids.len(), "process", "processes"),
        )
    };
    writeln!(out, "{}", if leaked == 0 { line } else { style.red(&line) })?;
    let collected = report.gc_closed.len();
    if collected > 0 {
        let line = format!(
            "{collected} {} closed only by the garbage collector.",
            plural(collected, "descriptor", "descriptors")
        );
        writeln!(out, "{}", style.red(&line))?;
    }
    let misused: usize = report.fd_misuse.iter().map(|m| m.count).sum();
    if misused > 0 {
        let line = format!(
            "{misused} {} on descriptors that were not open (see below).",
            plural(misused, "call", "calls")
        );
        writeln!(out, "{}", style.red(&line))?;
    }
    if report.misuse_withheld > 0 {
        let line = format!(
            "{} EBADF {} not judged: events were lost before them.",
            report.misuse_withheld,
            plural(report.misuse_withheld, "failure", "failures")
        );
        writeln!(out, "{}", fit(&line, WIDTH))?;
    }
    let dropped = format!("Dropped events: {}", report.dropped_events);
    if report.incomplete {
        writeln!(
            out,
            "{}",
            style.red(&format!("{dropped} (the report is INCOMPLETE)"))
        )?;
    } else {
        writeln!(out, "{dropped}.")?;
    }
    if report.kept_in_kernel > 0 {
        let line = format!(
            "Kept in the kernel under load: {} creations (a leak among them has no stack)",
            report.kept_in_kernel
        );
        writeln!(out, "{}", fit(&line, WIDTH))?;
    }
    if report.skipped_stacks > 0 {
        let line = format!(
            "Stacks skipped under load: {} (all events kept; --stack fp is cheaper)",
            report.skipped_stacks
        );
        writeln!(out, "{}", style.red(&fit(&line, WIDTH)))?;
    }
    for note in &report.notes {
        for line in wrap(&format!("Note: {note}."), WIDTH) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// Splits `text` at spaces into lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    lines.into_iter().map(|l| fit(&l, width)).collect()
}

fn leak_group(
    report: &Report,
    group: Option<&Group>,
    leaks: &[&LeakEntry],
    style: Style,
    out: &mut impl Write,
) -> io::Result<()> {
    let mut pids: Vec<u32> = leaks.iter().map(|l| l.pid).collect();
    pids.dedup();
    let mut who: Vec<String> = pids
        .iter()
        .take(2)
        .map(|&p| process_name(report, p))
        .collect();
    if pids.len() > 2 {
        who.push(format!("+{} more", pids.len() - 2));
    }
    let opened_by = leaks.first().map_or("?", |l| l.opened_by);
    let head = format!(
        "{}, opened by {opened_by} in {}",
        what(leaks.iter().map(|l| l.kind)),
        who.join(", ")
    );
    writeln!(out, "{}", style.bold(&fit(&head, WIDTH)))?;
    let at_shutdown = leaks.iter().filter(|l| l.closed_at_shutdown).count();
    if at_shutdown > 0 {
        let line = if at_shutdown == leaks.len() {
            "  closed only at interpreter shutdown: still held when Python exited".to_owned()
        } else {
            format!("  {at_shutdown} of them closed only at interpreter shutdown")
        };
        writeln!(out, "{}", fit(&line, WIDTH))?;
    }
    let running = |l: &LeakEntry| {
        if l.still_running {
            " (still running)"
        } else {
            ""
        }
    };
    samples(
        leaks.iter().map(|l| (l.fd, l.target.as_str(), running(l))),
        out,
    )?;
    match group {
        Some(g) => frames(g, out),
        None => writeln!(out, "  (no stack captured)"),
    }
}

/// Descriptors closed only by CPython's cyclic garbage collector, grouped
/// by the stack that opened them, with how long they lived.
fn gc_closed(report: &Report, style: Style, out: &mut impl Write) -> io::Result<()> {
    if report.gc_closed.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "{}",
        style.red("Closed only by the garbage collector (held in reference cycles):")
    )?;
    let mut groups: Vec<Vec<&GcClosedEntry>> = super::by_stack(&report.gc_closed, |g| g.stack_id)
        .into_iter()
        .map(|(_, members)| members)
        .collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    for (i, group) in groups.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        let first = group[0];
        let youngest = group.iter().map(|g| g.age_ms).min().unwrap_or(0);
        let oldest = group.iter().map(|g| g.age_ms).max().unwrap_or(0);
        let ages = if youngest == oldest {
            format!("after {oldest} ms")
        } else {
            format!("after {youngest} to {oldest} ms")
        };
        let head = format!(
            "{}, opened by {} in {}, closed {ages}",
            what(group.iter().map(|g| g.kind)),
            first.opened_by,
            process_name(report, first.pid)
        );
        writeln!(out, "{}", style.bold(&fit(&head, WIDTH)))?;
        samples(group.iter().map(|g| (g.fd, g.target.as_str(), "")), out)?;
        match first.stack_id.and_then(|id| report.group(id)) {
            Some(g) => frames(g, out)?,
            None => writeln!(out, "  (no stack captured)")?,
        }
    }
    Ok(())
}

/// "3 x file", or "4 descriptors (2 pipe, 2 file)" for mixed kinds.
pub fn what<'a>(kinds: impl Iterator<Item = &'a str>) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for kind in kinds {
        match counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((kind, 1)),
        }
    }
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    match counts.as_slice() {
        [(kind, _)] => format!("{total} x {kind}"),
        _ => {
            let list: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
            format!("{total} descriptors ({})", list.join(", "))
        }
    }
}

/// A few `fd N  target` lines, then how many more there are.
fn samples<'a>(
    fds: impl ExactSizeIterator<Item = (i32, &'a str, &'a str)>,
    out: &mut impl Write,
) -> io::Result<()> {
    let total = fds.len();
    for (fd, target, note) in fds.take(MAX_SAMPLES) {
        writeln!(
            out,
            "{}",
            fit(&format!("    fd {fd:<4} {target}{note}"), WIDTH)
        )?;
    }
    if total > MAX_SAMPLES {
        writeln!(out, "    ... and {} more", total - MAX_SAMPLES)?;
    }
    Ok(())
}

pub(super) fn frames(group: &Group, out: &mut impl Write) -> io::Result<()> {
    frames_up_to(group, MAX_FRAMES, out)
}

/// At most `max` frames, then how many more there are.
/// In a stack with Python frames the interpreter's own native frames are
/// left out (JSON has them): the Python frames say where the call came from.
pub(super) fn frames_up_to(group: &Group, max: usize, out: &mut impl Write) -> io::Result<()> {
    let python = group.stack.iter().any(|f| f.lang == "python");
    let shown: Vec<(usize, &FrameEntry)> = group
        .stack
        .iter()
        .enumerate()
        .filter(|&(_, f)| !python || !interpreter_frame(f))
        .collect();
    for &(i, f) in shown.iter().take(max) {
        writeln!(out, "{}", frame_line(i, f))?;
    }
    if shown.len() > max {
        writeln!(out, "  ... {} more frames", shown.len() - max)?;
    }
    let hidden = group.stack.len() - shown.len();
    if hidden > 0 {
        let s = plural(hidden, "", "s");
        writeln!(
            out,
            "  ({hidden} native frame{s} of the Python interpreter not shown)"
        )?;
    }
    if group.truncated {
        writeln!(out, "  (stack truncated)")?;
    }
    Ok(())
}

/// A native frame of the Python interpreter (executable or libpython).
fn interpreter_frame(f: &FrameEntry) -> bool {
    f.lang == "native"
        && f.module.as_deref().is_some_and(|m| {
            let name = base(m);
            name.starts_with("python") || name.starts_with("libpython")
        })
}

fn frame_line(i: usize, f: &FrameEntry) -> String {
    let function = match &f.function {
        Some(name) if f.inlined => format!("{name} (inlined)"),
        Some(name) => name.clone(),
        None => f.address.clone(),
    };
    let location = match (&f.file, f.line, &f.module) {
        (Some(file), Some(line), _) => format!("{}:{line}", base(file)),
        (Some(file), None, _) => base(file).to_owned(),
        (None, _, Some(module)) => base(module).to_owned(),
        (None, _, None) => "?".to_owned(),
    };
    let prefix = format!("  #{i:<2} ");
    let room = WIDTH - prefix.len() - 1;
    let location = fit_left(
        &location,
        room - FUNCTION_COLUMN.min(function.chars().count()),
    );
    let function = fit(&function, room - location.chars().count());
    format!("{prefix}{function:<FUNCTION_COLUMN$} {location}")
}

pub(super) fn process_name(report: &Report, pid: u32) -> String {
    match report.process(pid) {
        Some(p) => format!("{}[{pid}]", p.comm),
        None => format!("[{pid}]"),
    }
}

fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

pub(super) fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// Cuts `s` to `width` characters, marking the cut with `…` at the end.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Cuts `s` to `width` characters, keeping its end (a file name's tail).
fn fit_left(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_owned();
    }
    let tail: String = s.chars().skip(n - width.saturating_sub(1)).collect();
    format!("…{tail}")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::report::{ProcessEntry, VERSION};

    fn frame(function: &str, file: &str, line: u32) -> FrameEntry {
        FrameEntry {
            address: "0x1139".into(),
            function: Some(function.into()),
            file: Some(format!("/src/{file}")),
            line: Some(line),
            module: Some("/tmp/leaky".into()),
            inlined: false,
            lang: "native",
        }
    }

    fn leak(fd: i32, target: &str) -> LeakEntry {
        LeakEntry {
            pid: 42,
            fd,
            kind: "file",
            target: target.into(),
            cloexec: false,
            opened_by: "openat",
            age_ms: 3,
            stack_id: Some(0),
            still_running: false,
            closed_at_shutdown: false,
        }
    }

    pub(in crate::report) fn report() -> Report {
        Report {
            version: VERSION,
            mode: "run",
            fd_set_overflows: vec![],
            fd_misuse: vec![],
            misuse_withheld: 0,
            intervals: vec![],
            command: vec!["./leaky".into()],
            exit_status: Some(0),
            dropped_events: 0,
            incomplete: false,
            skipped_stacks: 0,
            kept_in_kernel: 0,
            unknown_leaks: vec![],
            processes: vec![ProcessEntry {
                pid: 42,
                ppid: None,
                comm: "leaky".into(),
                exe: "/tmp/leaky".into(),
                cmdline: vec!["./leaky".into()],
                exit_status: Some(0),
                peak_fds: 6,
                rlimit: Some([1024, 4096]),
                preexisting: vec![],
                open_over_time: Vec::new(),
                open_over_ms: 0,
            }],
            leaks: vec![leak(3, "/tmp/a"), leak(4, "/tmp/b")],
            exec_leaks: vec![ExecLeakEntry {
                pid: 42,
                fd: 3,
                kind: "file",
                target: "/tmp/a".into(),
                exec: "/bin/true".into(),
                opened_by: "openat",
                stack_id: Some(0),
            }],
            gc_closed: vec![],
            leaks_by_test: vec![],
            emfile: vec![],
            notes: vec![],
            suppressed: 0,
            suppressions: vec![],
            groups: vec![Group {
                stack_id: 0,
                count: 2,
                truncated: false,
                stack: vec![
                    frame("open_config", "leaky.c", 12),
                    frame("main", "leaky.c", 30),
                ],
            }],
        }
    }

    #[test]
    fn renders_groups_frames_and_exec_section() {
        let mut out = Vec::new();
        render(&report(), Style::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let expected = "\
fdtrace: ./leaky exited with status 0
2 descriptors never closed, from 1 stack, in 1 process.
Dropped events: 0.

2 x file, opened by openat in leaky[42]
    fd 3    /tmp/a
    fd 4    /tmp/b
  #0  open_config                      leaky.c:12
  #1  main                             leaky.c:30

Descriptors that crossed exec without CLOEXEC:
1 x file, opened by openat, into /bin/true in leaky[42]
    fd 3    /tmp/a
  #0  open_config                      leaky.c:12
  #1  main                             leaky.c:30

Processes (peak open descriptors / soft limit):
  leaky[42]  6 / 1024, exit 0
";
        assert_eq!(text, expected);
        assert!(text.lines().all(|l| l.chars().count() <= WIDTH));
    }

    #[test]
    fn python_shutdown_and_collector_closes_are_said_as_such() {
        let mut r = report();
        r.exec_leaks.clear();
        r.leaks.iter_mut().for_each(|l| l.closed_at_shutdown = true);
        r.gc_closed = vec![
            GcClosedEntry {
                pid: 42,
                fd: 5,
                kind: "socket",
                target: "inet udp".into(),
                opened_by: "socket",
                age_ms: 7,
                stack_id: Some(0),
            },
            GcClosedEntry {
                pid: 42,
                fd: 6,
                kind: "socket",
                target: "inet udp".into(),
                opened_by: "socket",
                age_ms: 900,
                stack_id: Some(0),
            },
        ];
        let mut out = Vec::new();
        render(&r, Style::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let expected = "\
fdtrace: ./leaky exited with status 0
2 descriptors never closed, from 1 stack, in 1 process.
2 descriptors closed only by the garbage collector.
Dropped events: 0.

2 x file, opened by openat in leaky[42]
  closed only at interpreter shutdown: still held when Python exited
    fd 3    /tmp/a
    fd 4    /tmp/b
  #0  open_config                      leaky.c:12
  #1  main                             leaky.c:30

Closed only by the garbage collector (held in reference cycles):
2 x socket, opened by socket in leaky[42], closed after 7 to 900 ms
    fd 5    inet udp
    fd 6    inet udp
  #0  open_config                      leaky.c:12
  #1  main                             leaky.c:30

Processes (peak open descriptors / soft limit):
  leaky[42]  6 / 1024, exit 0
";
        assert_eq!(text, expected);
    }

    #[test]
    fn long_names_stay_within_80_columns() {
        let mut r = report();
        r.groups[0].stack[0].function = Some(
            "a::very::long::rust::path::to::some::generic::function<with, many, parameters>".into(),
        );
        r.groups[0].stack[0].file =
            Some("/a/deeply/nested/source/directory/with_a_long_file_name.rs".into());
        r.dropped_events = 3;
        r.incomplete = true;
        let mut out = Vec::new();
        render(&r, Style::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.lines().all(|l| l.chars().count() <= WIDTH), "{text}");
        assert!(text.contains("Dropped events: 3 (the report is INCOMPLETE)"));
    }
}
