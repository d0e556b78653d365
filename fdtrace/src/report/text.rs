//! Text renderer: what a person reads after "Too many open files". Fits in
//! 80 columns; colour only when asked (the caller checks for a terminal).

use std::io::{self, Write};

use super::{FrameEntry, Group, LeakEntry, Report};

const WIDTH: usize = 80;
/// Frames shown per stack; JSON has them all.
const MAX_FRAMES: usize = 16;
/// Width function names are padded to, so locations line up.
const FUNCTION_COLUMN: usize = 32;
/// Descriptors listed per group.
const MAX_SAMPLES: usize = 3;

/// Rendering options.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn bold(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
    fn red(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[1;31m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
}

pub fn render(report: &Report, style: Style, out: &mut impl Write) -> io::Result<()> {
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
            style.bold("Descriptors that crossed exec without CLOEXEC:")
        )?;
        for e in &report.exec_leaks {
            let who = process_name(report, e.pid);
            let line = format!(
                "  fd {} {} {} -> exec {} in {who}",
                e.fd, e.kind, e.target, e.exec
            );
            writeln!(out, "{}", fit(&line, WIDTH))?;
            if let Some(g) = e.stack_id.and_then(|id| report.group(id)) {
                frames(g, out)?;
            }
        }
    }
    if !report.emfile.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{}",
            style.red("Calls that failed for lack of descriptors:")
        )?;
        for e in &report.emfile {
            let arg = e
                .argument
                .as_deref()
                .map(|a| format!("(\"{a}\")"))
                .unwrap_or_default();
            let line = format!(
                "  {}{arg} failed with {} in {} thread {}, {} fds open",
                e.syscall,
                e.error,
                process_name(report, e.pid),
                e.tid,
                e.open_fds
            );
            writeln!(out, "{}", fit(&line, WIDTH))?;
            if let Some(g) = e.stack_id.and_then(|id| report.group(id)) {
                frames(g, out)?;
            }
        }
    }
    Ok(())
}

fn summary(report: &Report, style: Style, out: &mut impl Write) -> io::Result<()> {
    let command = report.command.first().map(String::as_str).unwrap_or("?");
    let status = match report.exit_status {
        Some(s) => format!("exited with status {s}"),
        None => "is still running".to_owned(),
    };
    writeln!(
        out,
        "{}",
        style.bold(&fit(&format!("fdtrace: {command} {status}"), WIDTH))
    )?;
    let leaked = report.leaks.len();
    let stacks = report.groups.iter().filter(|g| g.count > 0).count();
    let mut pids: Vec<u32> = report.leaks.iter().map(|l| l.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    let line = if leaked == 0 {
        format!(
            "No leaked descriptors in {} processes traced.",
            report.processes.len()
        )
    } else {
        format!(
            "{leaked} {} never closed, from {stacks} {}, in {} {}.",
            plural(leaked, "descriptor", "descriptors"),
            plural(stacks, "stack", "stacks"),
            pids.len(),
            plural(pids.len(), "process", "processes"),
        )
    };
    writeln!(out, "{}", if leaked == 0 { line } else { style.red(&line) })?;
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
    Ok(())
}

fn leak_group(
    report: &Report,
    group: Option<&Group>,
    leaks: &[&LeakEntry],
    style: Style,
    out: &mut impl Write,
) -> io::Result<()> {
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for l in leaks {
        match kinds.iter_mut().find(|(k, _)| *k == l.kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((l.kind, 1)),
        }
    }
    let kinds = if kinds.len() == 1 {
        kinds[0].0.to_owned()
    } else {
        kinds
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
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
    let count = leaks.len();
    let what = if kinds.contains(',') {
        format!("{count} descriptors ({kinds})")
    } else {
        format!("{count} x {kinds}")
    };
    let head = format!("{what}, opened by {opened_by} in {}", who.join(", "));
    writeln!(out, "{}", style.bold(&fit(&head, WIDTH)))?;
    for l in leaks.iter().take(MAX_SAMPLES) {
        let running = if l.still_running {
            " (still running)"
        } else {
            ""
        };
        writeln!(
            out,
            "{}",
            fit(&format!("    fd {:<4} {}{running}", l.fd, l.target), WIDTH)
        )?;
    }
    if leaks.len() > MAX_SAMPLES {
        writeln!(out, "    ... and {} more", leaks.len() - MAX_SAMPLES)?;
    }
    match group {
        Some(g) => frames(g, out),
        None => writeln!(out, "  (no stack captured)"),
    }
}

fn frames(group: &Group, out: &mut impl Write) -> io::Result<()> {
    for (i, f) in group.stack.iter().enumerate().take(MAX_FRAMES) {
        writeln!(out, "{}", frame_line(i, f))?;
    }
    if group.stack.len() > MAX_FRAMES {
        writeln!(out, "  ... {} more frames", group.stack.len() - MAX_FRAMES)?;
    }
    if group.truncated {
        writeln!(out, "  (stack truncated)")?;
    }
    Ok(())
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

fn process_name(report: &Report, pid: u32) -> String {
    match report.process(pid) {
        Some(p) => format!("{}[{pid}]", p.comm),
        None => format!("[{pid}]"),
    }
}

fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// Cuts `s` to `width` characters, marking the cut with `…` at the end.
fn fit(s: &str, width: usize) -> String {
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
mod tests {
    use super::*;
    use crate::report::{ExecLeakEntry, ProcessEntry, VERSION};

    fn frame(function: &str, file: &str, line: u32) -> FrameEntry {
        FrameEntry {
            address: "0x1139".into(),
            function: Some(function.into()),
            file: Some(format!("/src/{file}")),
            line: Some(line),
            module: Some("/tmp/leaky".into()),
            inlined: false,
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
        }
    }

    fn report() -> Report {
        Report {
            version: VERSION,
            command: vec!["./leaky".into()],
            exit_status: Some(0),
            dropped_events: 0,
            incomplete: false,
            processes: vec![ProcessEntry {
                pid: 42,
                ppid: None,
                comm: "leaky".into(),
                exe: "/tmp/leaky".into(),
                exit_status: Some(0),
                peak_fds: 6,
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
            emfile: vec![],
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
  fd 3 file /tmp/a -> exec /bin/true in leaky[42]
  #0  open_config                      leaky.c:12
  #1  main                             leaky.c:30
";
        assert_eq!(text, expected);
        assert!(text.lines().all(|l| l.chars().count() <= WIDTH));
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
