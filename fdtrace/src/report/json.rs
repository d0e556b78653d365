//! JSON renderer: the documented machine-readable format (README, "JSON").

use std::io::{self, Write};

use super::Report;

pub fn render(report: &Report, out: &mut impl Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Group, LeakEntry, VERSION, misuse::MisuseEntry};

    #[test]
    fn has_the_documented_fields() {
        let report = Report {
            version: VERSION,
            mode: "run",
            fd_set_overflows: vec![],
            fd_misuse: vec![MisuseEntry {
                kind: "double-close",
                pid: 1,
                tid: 2,
                fd: 3,
                syscall: "close",
                errno: 9,
                count: 2,
                stack_id: Some(0),
                closed_stack_id: Some(0),
                closed_tid: Some(1),
                closed_ms_before: Some(4),
            }],
            misuse_withheld: 0,
            intervals: vec![],
            command: vec!["./a".into()],
            exit_status: Some(1),
            dropped_events: 0,
            incomplete: false,
            skipped_stacks: 0,
            kept_in_kernel: 0,
            unknown_leaks: vec![],
            processes: vec![],
            leaks: vec![LeakEntry {
                pid: 1,
                fd: 3,
                kind: "pipe",
                target: "pipe:[9]".into(),
                cloexec: true,
                opened_by: "pipe2",
                age_ms: 5,
                stack_id: Some(0),
                still_running: false,
                closed_at_shutdown: true,
            }],
            exec_leaks: vec![],
            gc_closed: vec![],
            leaks_by_test: vec![],
            emfile: vec![],
            notes: vec![],
            suppressed: 0,
            suppressions: vec![],
            groups: vec![Group {
                stack_id: 0,
                count: 1,
                truncated: false,
                stack: vec![],
            }],
        };
        let mut out = Vec::new();
        render(&report, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["exit_status"], 1);
        assert_eq!(v["leaks"][0]["kind"], "pipe");
        assert_eq!(v["leaks"][0]["opened_by"], "pipe2");
        assert_eq!(v["leaks"][0]["stack_id"], 0);
        assert_eq!(v["leaks"][0]["closed_at_shutdown"], true);
        assert_eq!(v["groups"][0]["count"], 1);
        let m = &v["fd_misuse"][0];
        assert_eq!(
            (&m["type"], &m["syscall"], &m["errno"], &m["count"]),
            (
                &serde_json::json!("double-close"),
                &serde_json::json!("close"),
                &serde_json::json!(9),
                &serde_json::json!(2)
            )
        );
        assert_eq!(
            (&m["stack_id"], &m["closed_stack_id"]),
            (&0.into(), &0.into())
        );
        assert_eq!(
            (&m["pid"], &m["tid"], &m["fd"]),
            (&1.into(), &2.into(), &3.into())
        );
        for key in [
            "command",
            "dropped_events",
            "processes",
            "exec_leaks",
            "gc_closed",
            "leaks_by_test",
            "emfile",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
    }
}
