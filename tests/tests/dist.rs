//! `cargo xtask dist`: the static release binary, copied alone to another
//! directory, traces a leak.

use std::{env, fs, process::Command};

use fdtrace_tests::{bpf_or_skip, c_fixture, marker_line, scratch_dir, workspace};
use serde_json::Value;

#[test]
fn static_binary_runs_a_trace_on_its_own() {
    if !bpf_or_skip() {
        return;
    }
    let output = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["xtask", "dist"])
        .current_dir(workspace())
        .output()
        .expect("run cargo xtask dist");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cargo xtask dist failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let built = stdout
        .lines()
        .last()
        .expect("dist prints the binary's path");
    let dir = scratch_dir("dist");
    let binary = dir.join("fdtrace");
    fs::copy(built, &binary).unwrap();

    let dynamic = Command::new("readelf")
        .args(["--dynamic", "--program-headers"])
        .arg(&binary)
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&dynamic.stdout);
    assert!(!headers.contains("INTERP"), "{headers}");
    assert!(!headers.contains("(NEEDED)"), "{headers}");

    let suite = c_fixture("suite.c");
    let report = dir.join("report.json");
    let status = Command::new(&binary)
        .current_dir(&dir)
        .args(["run", "--fail-on", "leak", "--format", "json", "-o"])
        .arg(&report)
        .arg("--")
        .arg(&suite)
        .arg("pipe")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    let report: Value = serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
    let leaks = report["leaks"].as_array().unwrap();
    assert_eq!(leaks.len(), 2, "{leaks:?}");
    assert!(leaks.iter().all(|l| l["kind"] == "pipe"));
    let group = &report["groups"][0]["stack"];
    let frame = group
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function"] == "test_pipe")
        .unwrap_or_else(|| panic!("no test_pipe frame in {group}"));
    assert_eq!(frame["line"], marker_line("suite.c", "LEAK-PIPE"));
}
