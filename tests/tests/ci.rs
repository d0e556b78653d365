//! CI gating: --fail-on, suppressions, per-process attribution, SARIF and
//! GitHub workflow commands, on a fixture test suite with known leaks.
//!
//! `fixtures/sarif-schema-2.1.0.json` is the OASIS SARIF 2.1.0 schema as
//! published (oasis-tcs/sarif-spec, commit 3682e9ee,
//! Documents/CommitteeSpecifications/2.1.0/sarif-schema-2.1.0.json; sha256
//! 80cd7ffb9b62a4162d541aa9170862dd264f6cce0f04c57f1ac9f2337b808958).

use std::{fs, path::Path, process::Command};

use fdtrace_tests::{
    bpf_or_skip, c_fixture, fdtrace, fixture_source, marker_line, scratch_dir, trace, trace_in,
    workspace,
};
use serde_json::Value;

fn suite() -> String {
    c_fixture("suite.c").to_str().unwrap().to_owned()
}

fn functions_of(t: &fdtrace_tests::Trace) -> Vec<String> {
    let mut names: Vec<String> = t
        .leaks()
        .iter()
        .map(|l| t.functions(&l["stack_id"])[1].clone())
        .collect();
    names.sort();
    names
}

#[test]
fn fail_on_picks_which_findings_fail_the_run() {
    if !bpf_or_skip() {
        return;
    }
    let suite = suite();
    // Leaks, but no exec leak and no EMFILE: the command's own status.
    let t = trace(&["--fail-on", "exec-leak,emfile"], &[&suite, "pipe"]);
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    assert_eq!(t.leaks().len(), 2);
    let t = trace(
        &["--fail-on", "leak", "--leak-exit-code", "7"],
        &[&suite, "pipe"],
    );
    assert_eq!(t.code(), Some(7), "{}", t.stderr());
    let t = trace(&["--fail-on", "exec-leak"], &[&suite, "exec"]);
    assert_eq!(t.code(), Some(3), "{}", t.stderr());
    assert_eq!(t.exec_leaks().len(), 1);
    assert_eq!(t.exec_leaks()[0]["target"], "/etc/hostname");
    let t = trace(&["--fail-on", "leak"], &[&suite, "clean"]);
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    let lifetimes = c_fixture("lifetimes.c");
    let t = trace(
        &["--fail-on", "emfile"],
        &[lifetimes.to_str().unwrap(), "emfile"],
    );
    assert_eq!(t.report["emfile"].as_array().unwrap().len(), 1);
    assert_eq!(t.code(), Some(3), "{}", t.stderr());
}

#[test]
fn suppressions_from_the_working_directory_and_flags_take_their_leaks() {
    if !bpf_or_skip() {
        return;
    }
    let dir = scratch_dir("suppress");
    fs::write(
        dir.join(".fdtrace.toml"),
        r#"
[[suppress]]
reason = "the CSPRNG stays open for the life of the process"
target = "/dev/urandom"

[[suppress]]
reason = "a rule for code that no longer exists"
function = "parse_legacy_config"
"#,
    )
    .unwrap();
    let extra = dir.join("logs.toml");
    fs::write(
        &extra,
        "[[suppress]]\nreason = \"logs are closed by the OS\"\nfunction = \"open_log\"\nkind = \"file\"\nprocess = \"suite*\"\n",
    )
    .unwrap();
    let t = trace_in(
        &dir,
        &[],
        &[
            "--fail-on",
            "leak",
            "--suppressions",
            extra.to_str().unwrap(),
        ],
        &[&suite(), "all"],
    );
    // Left: the pipe, which no rule covers.
    assert_eq!(t.code(), Some(3), "{}", t.stderr());
    assert_eq!(functions_of(&t), ["test_pipe", "test_pipe"]);
    assert_eq!(t.report["suppressed"], 3);
    let counts: Vec<(String, u64)> = t.report["suppressions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let source = s["source"].as_str().unwrap();
            let file = Path::new(source).file_name().unwrap().to_str().unwrap();
            (file.to_owned(), s["matched"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        counts,
        [
            (".fdtrace.toml:1".to_owned(), 1),
            (".fdtrace.toml:2".to_owned(), 0),
            ("logs.toml:1".to_owned(), 2)
        ]
    );
    assert!(
        t.stderr()
            .contains("warning: suppression .fdtrace.toml:2 matched nothing"),
        "{}",
        t.stderr()
    );
    // A stackless group cannot be kept by a stale groups entry.
    let groups = t.report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
}

#[test]
fn generated_suppressions_round_trip() {
    if !bpf_or_skip() {
        return;
    }
    let dir = scratch_dir("gen");
    let suite = suite();
    let t = trace_in(&dir, &[], &["--gen-suppressions"], &[&suite, "all"]);
    assert_eq!(t.leaks().len(), 5);
    let stderr = t.stderr();
    let start = stderr
        .find("# Suppressions for the leaks above")
        .unwrap_or_else(|| panic!("no rules in: {stderr}"));
    let rules = &stderr[start..];
    assert_eq!(rules.matches("[[suppress]]").count(), 3, "{rules}");
    assert!(rules.contains("function = \"open_log\"\ntarget = \"/tmp/fdtrace-suite-*.log\""));
    fs::write(
        dir.join(".fdtrace.toml"),
        rules.replace("TODO: why this leak is acceptable", "accepted in a test"),
    )
    .unwrap();
    let t = trace_in(&dir, &[], &["--fail-on", "leak"], &[&suite, "all"]);
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    assert!(t.leaks().is_empty());
    assert_eq!(t.report["suppressed"], 5);
    assert!(!t.stderr().contains("matched nothing"), "{}", t.stderr());
}

#[test]
fn one_process_per_test_names_the_leaking_test() {
    if !bpf_or_skip() {
        return;
    }
    let suite = suite();
    let runner = format!("for t in clean random pipe logs clean; do {suite} $t; done");
    let output = Command::new(fdtrace())
        .args(["run", "--", "sh", "-c", &runner])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    let section = &text[text.find("Leaks by process:").expect(&text)..];
    let lines: Vec<&str> = section.lines().skip(1).take(6).collect();
    let line = |m| marker_line("suite.c", m);
    let name = |l: &str| l.split_once("] ").map(|(_, cmd)| cmd.to_owned());
    assert_eq!(name(lines[0]), Some(format!("{suite} random")), "{section}");
    assert_eq!(
        lines[1].trim(),
        format!("1 x file in keep_random (suite.c:{})", line("LEAK-RANDOM"))
    );
    assert_eq!(name(lines[2]), Some(format!("{suite} pipe")), "{section}");
    assert_eq!(
        lines[3].trim(),
        format!("2 x pipe in test_pipe (suite.c:{})", line("LEAK-PIPE"))
    );
    assert_eq!(name(lines[4]), Some(format!("{suite} logs")), "{section}");
    assert_eq!(
        lines[5].trim(),
        format!("2 x file in open_log (suite.c:{})", line("LEAK-LOG"))
    );
    // The JSON has each process's command line too.
    let t = trace(&[], &["sh", "-c", &runner]);
    let cmdlines: Vec<Value> = t.report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["cmdline"].clone())
        .collect();
    assert!(
        cmdlines.contains(&serde_json::json!([suite, "pipe"])),
        "{cmdlines:?}"
    );
}

#[test]
fn github_actions_get_an_error_per_leak_group_at_the_users_line() {
    if !bpf_or_skip() {
        return;
    }
    let root = workspace();
    let t = trace_in(
        &root,
        &[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_WORKSPACE", root.to_str().unwrap()),
        ],
        &[],
        &[&suite(), "all"],
    );
    let mut errors: Vec<&str> = t
        .stdout()
        .leak()
        .lines()
        .filter(|l| l.starts_with("::error"))
        .collect();
    errors.sort();
    let at = |m| {
        format!(
            "::error file=tests/fixtures/suite.c,line={},title=fdtrace%3A file descriptor never closed::",
            marker_line("suite.c", m)
        )
    };
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.starts_with(&format!(
            "{}1 x file never closed, opened by openat in keep_random (pid ",
            at("LEAK-RANDOM")
        ))),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.starts_with(&format!(
            "{}2 x file never closed, opened by openat in open_log (pid ",
            at("LEAK-LOG")
        ))),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.starts_with(&format!(
            "{}2 x pipe never closed, opened by pipe2 in test_pipe (pid ",
            at("LEAK-PIPE")
        ))),
        "{errors:?}"
    );
    // Not in GitHub Actions: nothing on standard output.
    let t = trace_in(
        &root,
        &[("GITHUB_ACTIONS", "false")],
        &[],
        &[&suite(), "all"],
    );
    assert!(!t.stdout().contains("::error"));
}

#[test]
fn sarif_report_is_valid_and_located() {
    if !bpf_or_skip() {
        return;
    }
    let root = workspace();
    let out = scratch_dir("sarif").join("report.sarif");
    let status = Command::new(fdtrace())
        .current_dir(&root)
        .args([
            "run",
            "--format",
            "sarif",
            "-o",
            out.to_str().unwrap(),
            "--",
        ])
        .args([suite().as_str(), "all"])
        .status()
        .unwrap();
    assert!(status.success());
    let log: Value = serde_json::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
    let schema: Value = serde_json::from_str(
        &fs::read_to_string(fixture_source("sarif-schema-2.1.0.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::draft7::new(&schema).expect("the SARIF schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&log)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let results = log["runs"][0]["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for r in results {
        assert_eq!(r["ruleId"], "fd-leak");
        let physical = &r["locations"][0]["physicalLocation"];
        assert_eq!(
            physical["artifactLocation"]["uri"],
            "tests/fixtures/suite.c"
        );
        assert_eq!(physical["artifactLocation"]["uriBaseId"], "SRCROOT");
        let steps = r["codeFlows"][0]["threadFlows"][0]["locations"]
            .as_array()
            .unwrap();
        let outermost = &steps[0]["location"]["logicalLocations"][0]["fullyQualifiedName"];
        let innermost =
            &steps[steps.len() - 1]["location"]["logicalLocations"][0]["fullyQualifiedName"];
        assert!(steps.len() >= 3, "{steps:?}");
        assert_ne!(outermost, innermost);
    }
    let lines: Vec<u64> = results
        .iter()
        .map(|r| {
            r["locations"][0]["physicalLocation"]["region"]["startLine"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let mut expected: Vec<u64> = ["LEAK-LOG", "LEAK-PIPE", "LEAK-RANDOM"]
        .iter()
        .map(|m| marker_line("suite.c", m))
        .collect();
    let mut lines_sorted = lines.clone();
    lines_sorted.sort();
    expected.sort();
    assert_eq!(lines_sorted, expected);
    // Largest group first: the two log files and the two pipe ends.
    assert_eq!(results[0]["properties"]["count"], 2);
    assert_eq!(results[2]["properties"]["count"], 1);
}
