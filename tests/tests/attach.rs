//! `fdtrace attach`, and EMFILE handling in `run` and `attach`.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use fdtrace_tests::{
    Trace, bpf_or_skip, c_fixture, fdtrace, fixture_out, fixture_source, marker_line, python,
    trace, wait_until_ready,
};
use serde_json::Value;

/// Starts the service fixture and waits until its loop runs.
fn service() -> Child {
    let mut child = Command::new(c_fixture("service.c"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_ready(&mut child);
    child
}

fn attach(pid: u32, args: &[&str]) -> Trace {
    let report_path = fixture_out().join(format!("attach-{pid}.json"));
    let output = Command::new(fdtrace())
        .args(["attach", "-p", &pid.to_string(), "--format", "json", "-o"])
        .arg(&report_path)
        .args(args)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&report_path).unwrap_or_else(|e| {
        panic!(
            "no report ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    Trace {
        output,
        report: serde_json::from_str(&text).unwrap(),
    }
}

#[test]
fn attach_finds_the_stack_that_keeps_growing() {
    if !bpf_or_skip() {
        return;
    }
    let mut svc = service();
    let t = attach(
        svc.id(),
        &["--duration", "3s", "--interval", "1s", "--min-age", "200ms"],
    );
    svc.kill().unwrap();
    svc.wait().unwrap();
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    assert_eq!(t.report["mode"], "attach");
    // One leak per 100 ms for 3 s, nothing from the function that closes.
    let leaks = t.leaks_from("leak_one");
    assert!((25..=35).contains(&leaks.len()), "{} leaks", leaks.len());
    assert_eq!(leaks.len(), t.leaks().len());
    assert!(t.leaks_from("steady").is_empty());
    assert!(
        leaks
            .iter()
            .all(|l| l["still_running"] == true && l["target"] == "/etc/hostname")
    );
    let frames = t.frames(&leaks[0]["stack_id"]);
    let frame = frames.iter().find(|f| f["function"] == "leak_one").unwrap();
    assert_eq!(frame["line"], marker_line("service.c", "LEAK:service"));
    // Descriptors from before the attach are counted by kind, never leaks.
    let process = &t.report["processes"][0];
    let preexisting: u64 = process["preexisting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["count"].as_u64().unwrap())
        .sum();
    assert!(preexisting >= 3, "{process}");
    // Every interval shows the same stack growing by about ten a second.
    let intervals = t.report["intervals"].as_array().unwrap();
    assert!(intervals.len() >= 2, "{intervals:?}");
    for i in &intervals[1..] {
        let top = &i["groups"][0];
        assert_eq!(top["stack_id"], leaks[0]["stack_id"]);
        let growth = top["growth"].as_i64().unwrap();
        assert!((7..=13).contains(&growth), "{i}");
    }
    // The live interval text went to stderr.
    assert!(
        t.stderr().contains("descriptors opened since attach"),
        "{}",
        t.stderr()
    );
}

#[test]
fn attach_ends_when_the_process_exits_and_reports_its_leaks() {
    if !bpf_or_skip() {
        return;
    }
    let mut svc = service();
    let pid = svc.id();
    let killer = thread::spawn(move || {
        // Long enough for ten leaks after attaching, even on a loaded machine.
        thread::sleep(Duration::from_millis(2500));
        svc.kill().unwrap();
        svc.wait().unwrap();
    });
    let started = Instant::now();
    let t = attach(pid, &["--duration", "30s"]);
    killer.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "ended with the process"
    );
    assert!(t.leaks().len() >= 10, "{:?}", t.leaks().len());
    assert!(t.leaks().iter().all(|l| l["still_running"] == false));
}

#[test]
fn attach_refuses_bad_targets() {
    for (pid, message) in [
        ("2147483600", "no process with PID 2147483600"),
        ("2", "kernel thread"),
    ] {
        let output = Command::new(fdtrace())
            .args(["attach", "-p", pid])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
    }
}

fn emfile(t: &Trace) -> &Value {
    let all = t.report["emfile"].as_array().unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    &all[0]
}

#[test]
fn emfile_names_the_failing_call_and_the_hoarder() {
    if !bpf_or_skip() {
        return;
    }
    let bin = c_fixture("hoard.c");
    let t = trace(&[], &[bin.to_str().unwrap()]);
    assert_eq!(t.stdout(), "failed: Too many open files\n");
    let e = emfile(&t);
    assert_eq!(
        (e["syscall"].as_str(), e["error"].as_str()),
        (Some("openat"), Some("EMFILE"))
    );
    assert_eq!(e["rlimit"], serde_json::json!([64, 64]));
    assert_eq!(e["open_fds"], 64);
    let failing = t.frames(&e["stack_id"]);
    let frame = failing
        .iter()
        .find(|f| f["function"] == "fail_to_open")
        .expect("failing function");
    assert_eq!(frame["line"], marker_line("hoard.c", "LEAK:fail"));
    let top = &e["holders"][0];
    assert_eq!(top["count"], 60);
    assert!(t.functions(&top["stack_id"]).contains(&"hoard".to_owned()));
    let preexisting: u64 = e["preexisting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["count"].as_u64().unwrap())
        .sum();
    assert_eq!(preexisting, 3, "stdio");
    assert_eq!(t.report["processes"][0]["peak_fds"], 64);
    assert!(
        t.stderr()
            .contains("EMFILE: openat(\"/etc/passwd\") failed in hoard-g["),
        "{}",
        t.stderr()
    );
}

#[test]
fn emfile_in_python_shows_the_socket_hoard() {
    if !bpf_or_skip() {
        return;
    }
    let script = fixture_source("hoard.py");
    let t = trace(&[], &[&python(), script.to_str().unwrap()]);
    assert_eq!(t.stdout(), "failed: errno 24\n");
    let e = emfile(&t);
    assert_eq!(
        (e["syscall"].as_str(), e["errno"].as_i64()),
        (Some("socket"), Some(24))
    );
    assert_eq!(e["rlimit"], serde_json::json!([64, 64]));
    let top = &e["holders"][0];
    assert!(top["count"].as_u64().unwrap() >= 55, "{e}");
    assert!(
        t.functions(&top["stack_id"])
            .iter()
            .any(|f| f.contains("socket")),
        "{e}"
    );
}

#[test]
fn on_emfile_stop_leaves_the_process_stopped_at_the_failure() {
    if !bpf_or_skip() {
        return;
    }
    let bin = c_fixture("hoard.c");
    let mut child = Command::new(fdtrace())
        .args(["run", "--on-emfile", "stop", "--"])
        .arg(&bin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut pid = None;
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        if let Some(rest) = line.strip_prefix("fdtrace: process ") {
            pid = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
        line.clear();
    }
    let pid = pid.expect("stop notice");
    thread::sleep(Duration::from_millis(200));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = stat.rsplit_once(") ").unwrap().1.chars().next().unwrap();
    assert_eq!(state, 'T', "{stat}");
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "failed: Too many open files\n"
    );
}

#[test]
fn on_emfile_exit_ends_tracing_with_the_report() {
    if !bpf_or_skip() {
        return;
    }
    let bin = c_fixture("hoard.c");
    let t = trace(&["--on-emfile", "exit"], &[bin.to_str().unwrap()]);
    assert_eq!(emfile(&t)["holders"][0]["count"], 60);
}

#[test]
fn select_past_fd_setsize_is_flagged() {
    if !bpf_or_skip() {
        return;
    }
    let bin = c_fixture("lifetimes.c");
    let t = trace(&[], &[bin.to_str().unwrap(), "select"]);
    let all = t.report["fd_set_overflows"].as_array().unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        (all[0]["syscall"].as_str(), all[0]["nfds"].as_u64()),
        (Some("pselect6"), Some(1501))
    );
    assert_eq!(all[0]["highest_fd"], 1500);
    let frames = t.frames(&all[0]["stack_id"]);
    let frame = frames
        .iter()
        .find(|f| f["function"] == "select_high")
        .unwrap();
    assert_eq!(frame["line"], marker_line("lifetimes.c", "LEAK:select"));
    assert!(
        t.stderr().contains("warning: pselect6(nfds=1501)"),
        "{}",
        t.stderr()
    );
}

#[test]
fn attach_reports_double_closes_with_both_stacks() {
    if !bpf_or_skip() {
        return;
    }
    let mut child = Command::new(c_fixture("misuse.c"))
        .arg("serve")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_ready(&mut child);
    let t = attach(child.id(), &["--duration", "2s"]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    let misuse = t.report["fd_misuse"].as_array().unwrap();
    // The fresh descriptors, closed twice from the same two places, are
    // one group; the one opened before the attach (fd 3) is another.
    let got: Vec<_> = misuse
        .iter()
        .map(|m| (m["type"].as_str(), m["syscall"].as_str(), m["fd"].as_i64()))
        .collect();
    let (double, close) = (Some("double-close"), Some("close"));
    assert_eq!(
        got,
        [(double, close, Some(4)), (double, close, Some(3))],
        "{misuse:#?}"
    );
    assert!((12..=25).contains(&misuse[0]["count"].as_u64().unwrap()));
    assert_eq!(misuse[1]["count"], 1);
    for m in misuse {
        for (id, function) in [
            (&m["stack_id"], "second_close"),
            (&m["closed_stack_id"], "first_close"),
        ] {
            let functions = t.functions(id);
            assert!(
                functions.iter().any(|f| f == function) && functions.iter().any(|f| f == "serve"),
                "{functions:?}"
            );
        }
    }
}
