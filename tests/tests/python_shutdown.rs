//! Python leaks interpreter shutdown hides: a descriptor only shutdown
//! closed is a leak, one only the cyclic garbage collector closed is its
//! own finding, and under pytest the report names the test. On every
//! CPython 3.8 to 3.14 the machine has.

use std::{fs, process::Command};

use fdtrace_tests::{
    Trace, bpf_or_skip, fixture_source, marker_line, python_frame as frame, python_frames,
    scratch_dir, supported_pythons, trace, trace_in,
};
use serde_json::{Value, json};

/// (fd, kind, target, closed_at_shutdown) of every leak, by fd.
fn leak_summary(t: &Trace) -> Vec<(i64, String, String, bool)> {
    let mut leaks: Vec<_> = t
        .leaks()
        .iter()
        .map(|l| {
            (
                l["fd"].as_i64().unwrap(),
                l["kind"].as_str().unwrap().to_owned(),
                l["target"].as_str().unwrap().to_owned(),
                l["closed_at_shutdown"].as_bool().unwrap(),
            )
        })
        .collect();
    leaks.sort();
    leaks
}

#[test]
fn a_module_level_cache_closed_only_by_shutdown_is_six_leaks_in_every_version() {
    if !bpf_or_skip() {
        return;
    }
    let script = fixture_source("pyshutdown.py");
    for (interpreter, (major, minor)) in supported_pythons() {
        let version = format!("{major}.{minor} ({interpreter})");
        let t = trace(
            &["--fail-on", "leak"],
            &[&interpreter, script.to_str().unwrap()],
        );
        // Leaks fail the run with --fail-on leak.
        assert_eq!(t.code(), Some(3), "{version}: {}", t.stderr());
        assert_eq!(t.report["notes"], json!([]), "{version}");
        let socket = |fd| (fd, "socket".to_owned(), "inet udp".to_owned(), true);
        let file = |fd| (fd, "file".to_owned(), "/etc/hostname".to_owned(), true);
        assert_eq!(
            leak_summary(&t),
            [file(3), socket(4), file(5), socket(6), file(7), socket(8)],
            "{version}"
        );
        for leak in t.leaks() {
            let frames = python_frames(&t, &leak["stack_id"]);
            let marker = if leak["kind"] == "file" {
                "LEAK-FILE"
            } else {
                "LEAK-SOCKET"
            };
            let remember = frame("remember", "pyshutdown.py", marker);
            assert!(
                frames.contains(&remember)
                    && frames.last() == Some(&frame("<module>", "pyshutdown.py", "CALL-REMEMBER")),
                "{version}: {frames:?}"
            );
        }
        assert!(t.report["gc_closed"].as_array().unwrap().is_empty());
    }
    // Suppressible like any leak.
    let dir = scratch_dir("shutdown-rules");
    let rules = dir.join("rules.toml");
    fs::write(
        &rules,
        "[[suppress]]\nreason = \"the cache lives as long as the program\"\nfunction = \"remember\"\n",
    )
    .unwrap();
    let t = trace(
        &[
            "--fail-on",
            "leak",
            "--suppressions",
            rules.to_str().unwrap(),
        ],
        &[&fdtrace_tests::python(), script.to_str().unwrap()],
    );
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    assert!(t.leaks().is_empty());
    assert_eq!(t.report["suppressed"], 6);
}

/// A copy of the pytest suite fixture in a scratch directory (pytest writes
/// bytecode next to the tests), as `tests/test_cache.py`.
fn pytest_suite() -> std::path::PathBuf {
    let dir = scratch_dir("pysuite");
    fs::create_dir_all(dir.join("tests")).unwrap();
    fs::copy(
        fixture_source("pysuite/test_cache.py"),
        dir.join("tests/test_cache.py"),
    )
    .unwrap();
    dir
}

fn has_pytest(interpreter: &str) -> bool {
    Command::new(interpreter)
        .args(["-m", "pytest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn pytest_names_the_two_leaking_tests_in_every_version() {
    if !bpf_or_skip() {
        return;
    }
    let file_line = marker_line("pysuite/test_cache.py", "LEAK-TEST-FILE");
    let socket_line = marker_line("pysuite/test_cache.py", "LEAK-TEST-SOCKET");
    for (interpreter, (major, minor)) in supported_pythons() {
        let version = format!("{major}.{minor} ({interpreter})");
        assert!(
            has_pytest(&interpreter),
            "{version} has no pytest: run `cargo xtask setup`"
        );
        let dir = pytest_suite();
        let cmd = [
            interpreter.as_str(),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
        ];
        let t = trace_in(&dir, &[], &[], &cmd);
        assert_eq!(t.code(), Some(0), "{version}: {}{}", t.stdout(), t.stderr());
        // No findings on pytest's own capture of stdin/stdout/stderr.
        assert!(t.exec_leaks().is_empty(), "{version}");
        let leaks = leak_summary(&t);
        assert_eq!(leaks.len(), 2, "{version}: {leaks:?}");
        assert!(leaks.iter().all(|l| l.0 > 2 && l.3), "{version}: {leaks:?}");
        let mut tests: Vec<(String, Option<u64>, Value)> = t.report["leaks_by_test"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["test"].as_str().unwrap().to_owned(),
                    e["line"].as_u64(),
                    e["kinds"].clone(),
                )
            })
            .collect();
        tests.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            tests,
            [
                (
                    "tests/test_cache.py::test_leaky_cache".to_owned(),
                    Some(file_line),
                    json!([{ "kind": "file", "count": 1 }])
                ),
                (
                    "tests/test_cache.py::test_socket_leak".to_owned(),
                    Some(socket_line),
                    json!([{ "kind": "socket", "count": 1 }])
                ),
            ],
            "{version}"
        );
        // The text report has the section.
        let text = Command::new(fdtrace_tests::fdtrace())
            .current_dir(&dir)
            .args(["run", "--"])
            .args(cmd)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stderr);
        assert!(
            text.contains("Leaks by test:")
                && text.contains("1  tests/test_cache.py::test_leaky_cache  (1 file)")
                && text.contains("closed only at interpreter shutdown"),
            "{version}: {text}"
        );
    }
}

#[test]
fn sarif_points_at_the_line_in_the_test() {
    if !bpf_or_skip() {
        return;
    }
    let interpreter = fdtrace_tests::python();
    let dir = pytest_suite();
    let sarif = dir.join("report.sarif");
    let status = Command::new(fdtrace_tests::fdtrace())
        .current_dir(&dir)
        .args(["run", "--format", "sarif", "-o"])
        .arg(&sarif)
        .args([
            "--",
            &interpreter,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let log: Value = serde_json::from_slice(&fs::read(&sarif).unwrap()).unwrap();
    let mut located: Vec<(String, u64)> = log["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let physical = &r["locations"][0]["physicalLocation"];
            (
                physical["artifactLocation"]["uri"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                physical["region"]["startLine"].as_u64().unwrap(),
            )
        })
        .collect();
    located.sort();
    let line = |marker| marker_line("pysuite/test_cache.py", marker);
    assert_eq!(
        located,
        [
            ("tests/test_cache.py".to_owned(), line("LEAK-TEST-FILE")),
            ("tests/test_cache.py".to_owned(), line("LEAK-TEST-SOCKET")),
        ]
    );
}

#[test]
fn a_socket_in_a_reference_cycle_is_closed_by_the_collector_not_leaked() {
    if !bpf_or_skip() {
        return;
    }
    let script = fixture_source("pygc.py");
    for (interpreter, (major, minor)) in supported_pythons() {
        let version = format!("{major}.{minor} ({interpreter})");
        let t = trace(
            &["--fail-on", "leak"],
            &[&interpreter, script.to_str().unwrap()],
        );
        assert_eq!(t.code(), Some(0), "{version}: {}", t.stderr());
        assert!(t.leaks().is_empty(), "{version}: {:?}", t.leaks());
        let gc = t.report["gc_closed"].as_array().unwrap();
        assert_eq!(gc.len(), 1, "{version}: {gc:?}");
        assert_eq!(
            (gc[0]["fd"].as_i64(), gc[0]["kind"].as_str()),
            (Some(3), Some("socket"))
        );
        let init = if minor >= 11 {
            "Connection.__init__"
        } else {
            "__init__"
        };
        let frames = python_frames(&t, &gc[0]["stack_id"]);
        assert!(
            frames.contains(&frame(init, "pygc.py", "GC-OPEN"))
                && frames.contains(&frame("connect", "pygc.py", "CALL-CONNECT")),
            "{version}: {frames:?}"
        );
        // Its own gate.
        let t = trace(
            &["--fail-on", "gc-closed"],
            &[&interpreter, script.to_str().unwrap()],
        );
        assert_eq!(t.code(), Some(3), "{version}");
    }
    // And its own section of the text report.
    let output = Command::new(fdtrace_tests::fdtrace())
        .args(["run", "--", &fdtrace_tests::python()])
        .arg(&script)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("Closed only by the garbage collector")
            && text.contains("1 x socket, opened by socket"),
        "{text}"
    );
}

#[test]
fn closing_everything_or_exiting_with_os_exit_is_unchanged() {
    if !bpf_or_skip() {
        return;
    }
    let clean = fixture_source("pyclean.py");
    let hard_exit = fixture_source("leak.py");
    for (interpreter, (major, minor)) in supported_pythons() {
        let version = format!("{major}.{minor} ({interpreter})");
        let t = trace(
            &["--fail-on", "leak,gc-closed"],
            &[&interpreter, clean.to_str().unwrap()],
        );
        assert_eq!(t.code(), Some(0), "{version}: {}", t.stderr());
        assert!(t.leaks().is_empty(), "{version}: {:?}", t.leaks());
        assert!(
            t.report["gc_closed"].as_array().unwrap().is_empty(),
            "{version}"
        );
        // os._exit: still open at exit, as before; not shutdown's doing.
        let t = trace(&[], &[&interpreter, hard_exit.to_str().unwrap()]);
        let leaks = leak_summary(&t);
        assert_eq!(leaks.len(), 4, "{version}: {leaks:?}");
        assert!(leaks.iter().all(|l| !l.3), "{version}: {leaks:?}");
    }
}

#[test]
fn a_python_fdtrace_cannot_walk_keeps_todays_behaviour_with_a_note() {
    if !bpf_or_skip() {
        return;
    }
    let old: Vec<_> = fdtrace_tests::interpreters()
        .into_iter()
        .filter(|(_, v)| *v < (3, 8))
        .collect();
    let Some((interpreter, _)) = old.first() else {
        eprintln!("skipping: no CPython older than 3.8 on this machine");
        return;
    };
    let script = fixture_source("pyshutdown.py");
    let t = trace(
        &[],
        &[interpreter.to_str().unwrap(), script.to_str().unwrap()],
    );
    // Shutdown's closes are closes there: nothing to report, and a note
    // says why.
    assert!(t.leaks().is_empty(), "{:?}", t.leaks());
    let notes = t.report["notes"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| n
            .as_str()
            .unwrap()
            .contains("closes at interpreter shutdown are not told apart")),
        "{notes:?}"
    );
}
