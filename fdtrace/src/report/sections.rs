//! Text report sections CI users read: leaks by process, with the full
//! command line that names the test under a one-process-per-test runner,
//! and what each suppression rule took (or that it took nothing).

use std::io::{self, Write};

use super::{
    Report,
    text::{Style, WIDTH, fit, what},
    user_frame,
};

/// Processes listed in "Leaks by process".
const MAX_PROCESSES: usize = 20;

/// Each leaking process with its command line and its leaks by stack.
/// Only when the leaks are not all the traced command's own (then the
/// groups above already say which process).
pub fn by_process(report: &Report, style: Style, out: &mut impl Write) -> io::Result<()> {
    let mut pids: Vec<u32> = Vec::new();
    for l in &report.leaks {
        if !pids.contains(&l.pid) {
            pids.push(l.pid);
        }
    }
    let only_the_command = match pids.as_slice() {
        [pid] => report.process(*pid).is_none_or(|p| p.ppid.is_none()),
        _ => pids.is_empty(),
    };
    if only_the_command {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(out, "{}", style.bold("Leaks by process:"))?;
    for &pid in pids.iter().take(MAX_PROCESSES) {
        let line = format!("  [{pid}] {}", report.command_line(pid));
        writeln!(out, "{}", fit(&line, WIDTH))?;
        let mut stacks: Vec<Option<u32>> = Vec::new();
        for l in report.leaks.iter().filter(|l| l.pid == pid) {
            if !stacks.contains(&l.stack_id) {
                stacks.push(l.stack_id);
            }
        }
        for id in stacks {
            let kinds = report
                .leaks
                .iter()
                .filter(|l| l.pid == pid && l.stack_id == id)
                .map(|l| l.kind);
            let blame = id
                .and_then(|id| report.group(id))
                .and_then(|g| user_frame(&g.stack));
            let place = match blame {
                Some(f) => {
                    let function = f.function.as_deref().unwrap_or(&f.address);
                    match (&f.file, f.line) {
                        (Some(file), Some(line)) => {
                            let file = file.rsplit('/').next().unwrap_or(file);
                            format!(" in {function} ({file}:{line})")
                        }
                        _ => format!(" in {function}"),
                    }
                }
                None => String::new(),
            };
            writeln!(
                out,
                "{}",
                fit(&format!("      {}{place}", what(kinds)), WIDTH)
            )?;
        }
    }
    if pids.len() > MAX_PROCESSES {
        writeln!(out, "  ... and {} more", pids.len() - MAX_PROCESSES)?;
    }
    Ok(())
}

/// Which tests the leaks came from (a pytest or unittest test in their
/// Python stacks), most first, named so `pytest NAME` runs just that test.
pub fn by_test(report: &Report, style: Style, out: &mut impl Write) -> io::Result<()> {
    if report.leaks_by_test.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(out, "{}", style.bold("Leaks by test:"))?;
    for t in report.leaks_by_test.iter().take(MAX_PROCESSES) {
        let kinds: Vec<String> = t
            .kinds
            .iter()
            .map(|k| format!("{} {}", k.count, k.kind))
            .collect();
        let line = format!("  {:>5}  {}  ({})", t.count, t.test, kinds.join(", "));
        writeln!(out, "{}", fit(&line, WIDTH))?;
    }
    if report.leaks_by_test.len() > MAX_PROCESSES {
        writeln!(
            out,
            "  ... and {} more",
            report.leaks_by_test.len() - MAX_PROCESSES
        )?;
    }
    Ok(())
}

/// What each rule suppressed, and the rules that matched nothing.
pub fn suppressions(report: &Report, style: Style, out: &mut impl Write) -> io::Result<()> {
    if report.suppressions.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    let head = format!(
        "Suppressed: {} (by {} {}):",
        report.suppressed,
        report.suppressions.len(),
        if report.suppressions.len() == 1 {
            "rule"
        } else {
            "rules"
        }
    );
    writeln!(out, "{}", style.bold(&head))?;
    for s in &report.suppressions {
        let line = format!("  {:>5}  {}  {}", s.matched, s.source, s.reason);
        writeln!(out, "{}", fit(&line, WIDTH))?;
    }
    for line in stale_suppressions(report) {
        writeln!(out, "{}", style.red(&fit(&line, WIDTH)))?;
    }
    Ok(())
}

/// One warning per rule that matched nothing.
pub fn stale_suppressions(report: &Report) -> Vec<String> {
    report
        .suppressions
        .iter()
        .filter(|s| s.matched == 0 && !s.built_in)
        .map(|s| {
            format!(
                "warning: suppression {} matched nothing: remove it or fix it",
                s.source
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{LeakEntry, ProcessEntry, SuppressionEntry, tests::sample_report};

    #[test]
    fn names_each_leaking_process_by_its_command_line() {
        let mut r = sample_report();
        let mut child = r.processes[0].clone();
        child.pid = 8;
        child.cmdline = vec!["./app".into(), "--test".into(), "two".into()];
        r.processes.push(ProcessEntry {
            ppid: Some(7),
            ..child
        });
        r.leaks.push(LeakEntry {
            pid: 8,
            stack_id: None,
            kind: "pipe",
            ..r.leaks[0].clone()
        });
        let mut out = Vec::new();
        by_process(&r, Style::default(), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "
Leaks by process:
  [7] ./app --test one
      2 x file in leak_it (leak.c:12)
  [8] ./app --test two
      1 x pipe
"
        );
    }

    #[test]
    fn lists_the_tests_leaks_came_from() {
        let mut r = sample_report();
        r.leaks_by_test = vec![crate::report::by_test::TestLeaks {
            test: "tests/test_cache.py::test_leaky_cache".into(),
            file: "/src/app/tests/test_cache.py".into(),
            line: Some(10),
            count: 2,
            kinds: vec![
                crate::report::KindCount {
                    kind: "file",
                    count: 1,
                },
                crate::report::KindCount {
                    kind: "socket",
                    count: 1,
                },
            ],
            stack_ids: vec![1],
        }];
        let mut out = Vec::new();
        by_test(&r, Style::default(), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "
Leaks by test:
      2  tests/test_cache.py::test_leaky_cache  (1 file, 1 socket)
"
        );
    }

    #[test]
    fn the_commands_own_leaks_need_no_section() {
        let r = sample_report();
        let mut out = Vec::new();
        by_process(&r, Style::default(), &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn counts_per_rule_and_warns_about_stale_ones() {
        let mut r = sample_report();
        r.suppressed = 2;
        r.suppressions = vec![
            SuppressionEntry {
                source: ".fdtrace.toml:1".into(),
                reason: "logs live as long as the process".into(),
                matched: 2,
                built_in: false,
            },
            SuppressionEntry {
                source: ".fdtrace.toml:2".into(),
                reason: "old".into(),
                matched: 0,
                built_in: false,
            },
        ];
        let mut out = Vec::new();
        suppressions(&r, Style::default(), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "
Suppressed: 2 (by 2 rules):
      2  .fdtrace.toml:1  logs live as long as the process
      0  .fdtrace.toml:2  old
warning: suppression .fdtrace.toml:2 matched nothing: remove it or fix it
"
        );
    }
}
