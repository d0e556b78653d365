//! `fdtrace monitor`'s counters besides growth: EMFILE failures and misuses
//! by program and site (from programs that exit at once), a `-p` Python
//! service's leaking line, and the `--max-fds` bound with its eviction
//! counter. Read straight from `/metrics`.

use std::{
    process::{Child, Command, Stdio},
    thread,
    time::Instant,
};

use fdtrace_tests::{
    bpf_or_skip, c_fixture, fixture_source, marker_line,
    monitor::{DEADLINE, Monitor, POLL, diagnostics, fleet_program, signal},
    prometheus::{Sample, parse_metrics},
    python, scratch_dir, wait_until_ready,
};

/// Polls `/metrics` until `done` accepts its samples; those samples.
fn wait_for(monitor: &Monitor, what: &str, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let started = Instant::now();
    loop {
        let samples = parse_metrics(&monitor.metrics());
        if done(&samples) {
            return samples;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no {what} within {DEADLINE:?}\n{}",
            diagnostics(monitor, None)
        );
        thread::sleep(POLL);
    }
}

/// The value of `name` with exactly these labels (among others), if served.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == *v))
        .map(|s| s.value)
}

/// Runs a fixture to its end.
fn run(program: &std::path::Path, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run the fixture");
    assert!(
        status.code().is_some(),
        "{} {args:?}: {status}",
        program.display()
    );
}

/// Kills a process this test started indirectly (a shell's child).
struct KilledPid(u32);

impl Drop for KilledPid {
    fn drop(&mut self) {
        signal(self.0, libc::SIGKILL);
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn emfile_failures_and_misuses_are_counted_by_program() {
    if !bpf_or_skip() {
        return;
    }
    let hoard = c_fixture("hoard.c");
    let misuse = c_fixture("misuse.c");
    let monitor = Monitor::start(&["--comm", "hoard-g", "--comm", "misuse-g"]);
    // Both start after the monitor and exit within milliseconds: their
    // counters outlive them.
    run(&hoard, &[]);
    run(&misuse, &["double"]);
    let site = format!(
        "fail_to_open (hoard.c:{})",
        marker_line("hoard.c", "LEAK:fail")
    );
    let emfile = [("comm", "hoard-g"), ("site", site.as_str())];
    let double = [("comm", "misuse-g"), ("type", "double-close")];
    let samples = wait_for(&monitor, "EMFILE and double-close counts", |s| {
        value(s, "fdtrace_emfile_total", &emfile).is_some()
            && value(s, "fdtrace_fd_misuse_total", &double).is_some()
    });
    let diag = || diagnostics(&monitor, None);
    assert_eq!(
        value(&samples, "fdtrace_emfile_total", &emfile),
        Some(1.0),
        "{}",
        diag()
    );
    assert_eq!(
        value(&samples, "fdtrace_fd_misuse_total", &double),
        Some(1.0),
        "{}",
        diag()
    );
    // hoard's 60 files from hoard() were opened and, with its exit, went
    // away: opened = closed, nothing open, and the process is forgotten.
    let hoarded = [
        ("comm", "hoard-g"),
        (
            "site",
            &*format!("hoard (hoard.c:{})", marker_line("hoard.c", "LEAK:hoard")),
        ),
    ];
    assert_eq!(
        value(&samples, "fdtrace_site_opened_total", &hoarded),
        Some(60.0),
        "{}",
        diag()
    );
    assert_eq!(
        value(&samples, "fdtrace_site_closed_total", &hoarded),
        Some(60.0),
        "{}",
        diag()
    );
    assert_eq!(
        value(&samples, "fdtrace_site_open_fds", &hoarded),
        Some(0.0),
        "{}",
        diag()
    );
    assert!(
        !samples.iter().any(|s| s.name == "fdtrace_open_fds"),
        "exited processes still served:\n{}",
        diag()
    );
    assert_eq!(value(&samples, "fdtrace_traced_processes", &[]), Some(0.0));
    assert_eq!(
        value(&samples, "fdtrace_dropped_events_total", &[]),
        Some(0.0)
    );
    assert_eq!(monitor.stop().code(), Some(0));
}

#[test]
fn a_python_service_given_by_pid_shows_its_leaking_line() {
    if !bpf_or_skip() {
        return;
    }
    let script = fixture_source("pyservice.py");
    let mut service = Command::new(python())
        .arg(&script)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Python service");
    wait_until_ready(&mut service);
    let pid = service.id().to_string();
    let service = Killed(service);
    let monitor = Monitor::start(&["-p", &pid]);
    let site = format!(
        "leak_one (pyservice.py:{})",
        marker_line("pyservice.py", "LEAK-SERVICE")
    );
    let leaking = [("site", site.as_str())];
    let first = wait_for(&monitor, "the Python leak's site", |s| {
        value(s, "fdtrace_site_open_fds", &leaking).is_some_and(|v| v >= 1.0)
    });
    let then = value(&first, "fdtrace_site_open_fds", &leaking).unwrap_or(0.0);
    let grown = wait_for(&monitor, "growth of the Python leak", |s| {
        value(s, "fdtrace_site_open_fds", &leaking).is_some_and(|v| v >= then + 10.0)
    });
    let process = [("pid", pid.as_str())];
    assert!(
        value(&grown, "fdtrace_open_fds", &process).is_some(),
        "{}",
        diagnostics(&monitor, None)
    );
    drop(service);
    assert_eq!(monitor.stop().code(), Some(0));
}

#[test]
fn past_max_fds_the_process_holding_most_is_evicted_and_stays_out() {
    if !bpf_or_skip() {
        return;
    }
    let binary = fleet_program(&scratch_dir("fleet-evict"), "evictsvc");
    let monitor = Monitor::start(&["--comm", "evictsvc", "--max-fds", "40"]);
    let mut child = Command::new(&binary)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the fleet fixture");
    wait_until_ready(&mut child);
    let _service = Killed(child);
    let evicted = [("what", "process")];
    let samples = wait_for(&monitor, "an eviction", |s| {
        value(s, "fdtrace_evicted_total", &evicted).is_some_and(|v| v >= 1.0)
    });
    assert_eq!(
        value(&samples, "fdtrace_evicted_total", &evicted),
        Some(1.0)
    );
    let fds = value(&samples, "fdtrace_evicted_total", &[("what", "fd")]).unwrap_or(0.0);
    assert!(
        fds > 40.0,
        "evicted {fds} descriptors\n{}",
        diagnostics(&monitor, None)
    );
    assert!(
        monitor.stderr().contains("no longer traced"),
        "{}",
        monitor.stderr()
    );
    // Two rescans later (every 5 s) it is still out.
    thread::sleep(std::time::Duration::from_secs(11));
    let later = parse_metrics(&monitor.metrics());
    assert!(
        value(&later, "fdtrace_open_fds", &[("comm", "evictsvc")]).is_none(),
        "the evicted process came back:\n{}",
        diagnostics(&monitor, None)
    );
    assert_eq!(value(&later, "fdtrace_evicted_total", &evicted), Some(1.0));
    assert_eq!(monitor.stop().code(), Some(0));
}

#[test]
fn programs_started_through_env_or_a_shell_keep_being_traced() {
    if !bpf_or_skip() {
        return;
    }
    let binary = fleet_program(&scratch_dir("fleet-chain"), "chainsvc");
    let monitor = Monitor::start(&["--comm", "chainsvc"]);
    // `env` execs the program in the same process; `sh -c 'prog; :'`
    // forks a child that execs it. Both pass through a program the
    // selection drops first.
    let mut via_env = Command::new("/usr/bin/env")
        .arg(&binary)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start env chainsvc");
    wait_until_ready(&mut via_env);
    let mut via_sh = Command::new("sh")
        .arg("-c")
        .arg(format!("{}; :", binary.display()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start sh -c chainsvc");
    wait_until_ready(&mut via_sh);
    let pids = [via_env.id(), child_of(via_sh.id())];
    let (_env, _sh, _child) = (Killed(via_env), Killed(via_sh), KilledPid(pids[1]));
    // Each keeps leaking one descriptor every 200 ms: what fdtrace counts
    // for each must keep up with what /proc shows.
    for pid in pids {
        let pid_label = pid.to_string();
        let process = [("pid", pid_label.as_str()), ("comm", "chainsvc")];
        let samples = wait_for(&monitor, "descriptors of a chained program", |s| {
            value(s, "fdtrace_open_fds", &process).is_some_and(|v| v >= 25.0)
        });
        let open = value(&samples, "fdtrace_open_fds", &process).unwrap_or(0.0);
        let in_proc = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        // Within a second of leaks (fdtrace publishes once a second).
        assert!(
            (open - in_proc as f64).abs() <= 6.0,
            "process {pid}: fdtrace counts {open}, /proc has {in_proc}\n{}",
            diagnostics(&monitor, None)
        );
    }
    assert_eq!(monitor.stop().code(), Some(0));
}

/// The only child of `pid` (the program `sh -c` started).
fn child_of(pid: u32) -> u32 {
    let started = Instant::now();
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(child) = children.split_whitespace().next() {
            return child.parse().expect("a pid");
        }
        assert!(started.elapsed() < DEADLINE, "{pid} started no child");
        thread::sleep(POLL);
    }
}
