//! `fdtrace monitor` on a fleet of long-running services: the metrics it
//! serves as Prometheus scrapes them, selection by process name and by
//! cgroup, how it refuses bad input, and the alerting rules shipped in
//! `deploy/` (checked and unit-tested with promtool).

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use fdtrace_tests::{
    bpf_or_skip, marker_line,
    monitor::{DEADLINE, Monitor, POLL, diagnostics, fleet_program, run_to_exit, signal},
    prometheus::{
        Prometheus, Sample, free_port, http_get, only_series, parse_metrics, promtool, vector,
    },
    scratch_dir, wait_until_ready, workspace,
};
use serde_json::Value;

#[test]
fn alert_rules_pass_promtool() {
    for args in [
        &["check", "rules", "deploy/alerts.yaml"][..],
        &["check", "config", "deploy/prometheus.yml"],
        // Synthetic series: growing ones fire FdLimitWithinAnHour and
        // FdSiteGrowing, flat, churning, warming-up, restarted and young
        // ones do not.
        &["test", "rules", "tests/fixtures/alerts_test.yaml"],
    ] {
        let output = Command::new(promtool())
            .args(args)
            .current_dir(workspace())
            .output()
            .expect("run promtool");
        assert!(
            output.status.success(),
            "promtool {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let output = Command::new(promtool())
        .args(["check", "rules", "deploy/alerts.yaml"])
        .current_dir(workspace())
        .output()
        .expect("run promtool");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("SUCCESS: 4 rules found"), "{text}");
}

#[test]
fn leaking_site_grows_and_churning_site_stays_flat() {
    if !bpf_or_skip() {
        return;
    }
    let dir = scratch_dir("fleet");
    let fleet = Service::start(&dir, "fleetsvc", None);
    let _other = Service::start(&dir, "othersvc", None);
    let monitor = Monitor::start(&["--comm", "fleet*"]);
    // Matched at its exec, after the monitor started.
    let late = Service::start(&dir, "fleetlate", None);
    let prometheus = Prometheus::start(&monitor.address);
    let leak_site = format!("leak_one (fleet.c:{})", marker_line("fleet.c", "// LEAK"));
    let churn_site = format!("churn (fleet.c:{})", marker_line("fleet.c", "// CHURN"));
    let leak = r#"fdtrace_site_open_fds{comm="fleetsvc",site=~"leak_one .*"}"#;

    let found = wait_for(&monitor, &prometheus, leak, |r| !vector(r).is_empty());
    let series = vector(&found);
    assert_eq!(series.len(), 1, "one leak site: {found}");
    assert_eq!(series[0].0["site"], leak_site, "{found}");

    // Watch the leak grow (five a second in the fixture): at least 15
    // looks a second apart (as many scrapes), and by at least 20.
    let first = series[0].1;
    let watching = Instant::now();
    let mut looks = 0;
    loop {
        thread::sleep(Duration::from_secs(1));
        looks += 1;
        let now = vector(&prometheus.query(leak)).first().map(|s| s.1);
        if looks >= 15 && now.is_some_and(|v| v >= first + 20.0) {
            break;
        }
        assert!(
            watching.elapsed() < DEADLINE,
            "the leak site went from {first} to {now:?} in {DEADLINE:?}\n{}",
            diagnostics(&monitor, Some(&prometheus))
        );
    }
    let window = watching.elapsed().as_secs() + 1;

    // As Prometheus recorded it, one sample a second: only ever up.
    let exact_leak = format!(r#"fdtrace_site_open_fds{{comm="fleetsvc",site="{leak_site}"}}"#);
    let recorded = prometheus.query_range(&exact_leak, window);
    let leak_values = only_series(&recorded, &exact_leak);
    assert!(
        leak_values.windows(2).all(|w| w[0] <= w[1]),
        "the leak site went down: {leak_values:?}"
    );
    let (leak_first, leak_last) = (leak_values[0], leak_values[leak_values.len() - 1]);
    assert!(
        leak_last >= leak_first + 20.0,
        "the leak site grew only from {leak_first} to {leak_last}"
    );

    // The churning site opens 400 descriptors a second and never holds
    // more than one.
    let churn_open = format!(r#"fdtrace_site_open_fds{{comm="fleetsvc",site="{churn_site}"}}"#);
    let churn_opened =
        format!(r#"fdtrace_site_opened_total{{comm="fleetsvc",site="{churn_site}"}}"#);
    let churn_closed =
        format!(r#"fdtrace_site_closed_total{{comm="fleetsvc",site="{churn_site}"}}"#);
    let held = only_series(&prometheus.query_range(&churn_open, window), &churn_open);
    assert!(
        held.iter().all(|&v| (0.0..=1.0).contains(&v)),
        "the churning site held more than one descriptor: {held:?}"
    );
    let opened = only_series(
        &prometheus.query_range(&churn_opened, window),
        &churn_opened,
    );
    let (low, high) = (opened[0], opened[opened.len() - 1]);
    assert!(
        high >= low + 100.0,
        "the churning site's opens grew only from {low} to {high}"
    );
    let still_open = format!("{churn_opened} - {churn_closed}");
    let difference = only_series(&prometheus.query_range(&still_open, window), &still_open);
    assert!(
        difference.iter().all(|&v| (0.0..=1.0).contains(&v)),
        "opened minus closed at the churning site: {difference:?}"
    );

    // The process: its pid, its descriptors, its limit.
    let processes = vector(&prometheus.query(r#"fdtrace_open_fds{comm="fleetsvc"}"#));
    assert_eq!(processes.len(), 1, "{processes:?}");
    assert_eq!(processes[0].0["pid"], fleet.child.id().to_string());
    assert!(
        processes[0].1 >= leak_last,
        "{processes:?}, leak at {leak_last}"
    );
    let limit = vector(&prometheus.query(&format!(
        r#"fdtrace_fd_limit{{pid="{}"}}"#,
        fleet.child.id()
    )));
    assert_eq!(limit.len(), 1, "{limit:?}");
    assert_eq!(limit[0].1, soft_fd_limit(fleet.child.id()));
    let traced = vector(&prometheus.query("fdtrace_traced_processes"));
    assert!(traced.len() == 1 && traced[0].1 >= 1.0, "{traced:?}");
    let late_leak = format!(r#"fdtrace_site_open_fds{{comm="fleetlate",site="{leak_site}"}} > 0"#);
    wait_for(&monitor, &prometheus, &late_leak, |r| vector(r).len() == 1);
    let late_pids = vector(&prometheus.query(r#"fdtrace_open_fds{comm="fleetlate"}"#));
    assert_eq!(late_pids.len(), 1, "{late_pids:?}");
    assert_eq!(late_pids[0].0["pid"], late.child.id().to_string());

    // othersvc was never selected: no series names it, then or now.
    // (A range selector: every raw sample of the last 10 minutes.)
    let other = prometheus.query(r#"{comm="othersvc"}[10m]"#);
    assert_eq!(other, Value::Array(vec![]), "othersvc was traced: {other}");
    let text = monitor.metrics();
    assert!(!text.contains(r#"comm="othersvc""#), "{text}");

    let status = monitor.stop();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn cgroup_selects_only_its_subtree() {
    if !bpf_or_skip() {
        return;
    }
    let cgroup = Cgroup::create();
    let dir = scratch_dir("cgroup");
    let leak_site = format!("leak_one (fleet.c:{})", marker_line("fleet.c", "// LEAK"));
    let path = cgroup.path.to_str().expect("UTF-8 cgroup path").to_owned();
    let monitor = Monitor::start(&["--cgroup", &path]);
    // Both start after the monitor: the subtree includes processes that
    // join it later.
    let inside = Service::start(&dir, "insider", Some(&cgroup));
    let _outside = Service::start(&dir, "outsider", None);
    let samples = watch_leak(&monitor, "insider", &leak_site);
    assert_only_insider(&samples, &inside, &monitor);
    let status = monitor.stop();
    assert_eq!(status.code(), Some(0), "{status}");

    // The same cgroup named as /proc/PID/cgroup shows it; the insider is
    // already running this time.
    let relative = cgroup.relative_path(inside.child.id());
    let monitor = Monitor::start(&["--cgroup", &relative]);
    let samples = watch_leak(&monitor, "insider", &leak_site);
    assert_only_insider(&samples, &inside, &monitor);
    let status = monitor.stop();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn bad_monitor_input_is_one_line() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let busy = taken.local_addr().expect("bound address").to_string();
    let free = format!("127.0.0.1:{}", free_port());
    let cases: [(&[&str], &str); 3] = [
        (&["--comm", "x", "--listen", &busy], &busy),
        (
            &["--cgroup", "/nonexistent-xyz", "--listen", &free],
            "/nonexistent-xyz",
        ),
        (&["--comm", "[abc", "--listen", &free], "[abc"),
    ];
    for (args, offending) in cases {
        let (status, stderr) = run_to_exit(args);
        assert!(!status.success(), "monitor {args:?} exited {status}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("fdtrace: "),
            "monitor {args:?} should say one line starting \"fdtrace: \", said:\n{stderr}"
        );
        // The line names what was wrong (unless BPF could not load here
        // and that was checked first).
        assert!(
            lines[0].contains(offending) || !bpf_or_skip(),
            "monitor {args:?} does not name {offending}: {stderr}"
        );
    }
    // No selector at all is refused too.
    let (status, stderr) = run_to_exit(&["--listen", &free]);
    assert!(
        !status.success(),
        "monitor without a selector: {status}\n{stderr}"
    );
}

#[test]
fn no_match_yet_waits() {
    if !bpf_or_skip() {
        return;
    }
    let mut monitor = Monitor::start(&["--comm", "nothing-matches-this"]);
    let (status, body) = http_get(&monitor.address, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let text = monitor.metrics();
    let traced: Vec<Sample> = parse_metrics(&text)
        .into_iter()
        .filter(|s| s.name == "fdtrace_traced_processes")
        .collect();
    assert!(traced.len() == 1 && traced[0].value == 0.0, "{text}");
    assert!(text.ends_with("# EOF\n"), "not OpenMetrics:\n{text}");
    assert!(
        monitor
            .child
            .try_wait()
            .expect("wait for fdtrace")
            .is_none(),
        "the monitor ended with nothing to trace:\n{}",
        monitor.stderr()
    );
    let status = monitor.stop();
    assert_eq!(status.code(), Some(0), "{status}");
}

/// A copy of the fleet fixture named `name` (its comm), running until
/// dropped.
struct Service {
    child: Child,
}

impl Service {
    /// Starts `dir/name`, inside `cgroup` if given (it moves itself there
    /// before exec), and waits until its loop runs.
    fn start(dir: &Path, name: &str, cgroup: Option<&Cgroup>) -> Self {
        let binary = fleet_program(dir, name);
        let mut command = match cgroup {
            None => Command::new(&binary),
            Some(cgroup) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", r#"echo $$ > "$1/cgroup.procs" && exec "$2""#, "sh"])
                    .arg(&cgroup.path)
                    .arg(&binary);
                sh
            }
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        wait_until_ready(&mut child);
        Self { child }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cgroup v2 directory for one test, removed (with whatever still runs
/// in it) on drop.
struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// `fdtrace-test-<pid>` at the top of the cgroup2 hierarchy.
    fn create() -> Self {
        let path = cgroup2_mount().join(format!("fdtrace-test-{}", std::process::id()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self { path }
    }

    /// The cgroup as /proc/PID/cgroup names it for `member` (`0::/...`).
    fn relative_path(&self, member: u32) -> String {
        let text = fs::read_to_string(format!("/proc/{member}/cgroup")).expect("read its cgroup");
        let relative = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or_else(|| panic!("no cgroup v2 line in /proc/{member}/cgroup: {text}"));
        let name = self.path.file_name().expect("cgroup name");
        assert!(
            relative.ends_with(&*name.to_string_lossy()),
            "{member} is in {relative}, not in {}",
            self.path.display()
        );
        relative.to_owned()
    }

    fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let started = Instant::now();
        while !self.pids().is_empty() && started.elapsed() < DEADLINE {
            for pid in self.pids() {
                signal(pid, libc::SIGKILL);
            }
            thread::sleep(Duration::from_millis(50));
        }
        if let Err(e) = fs::remove_dir(&self.path) {
            eprintln!("could not remove {}: {e}", self.path.display());
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on a unified
/// system, `/sys/fs/cgroup/unified` on a hybrid one).
fn cgroup2_mount() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            if fs.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            // Field 5 of mountinfo is the mount point.
            mount.split_whitespace().nth(4).map(PathBuf::from)
        })
        .expect("a cgroup2 mount (the --cgroup test needs cgroup v2)")
}

/// Polls `/metrics` until `comm`'s leak site has grown by 10 since it
/// first showed; every sample of that last scrape.
fn watch_leak(monitor: &Monitor, comm: &str, site: &str) -> Vec<Sample> {
    let leak_of = |samples: &[Sample]| {
        samples
            .iter()
            .find(|s| {
                s.name == "fdtrace_site_open_fds"
                    && s.label("comm") == comm
                    && s.label("site") == site
            })
            .map(|s| s.value)
    };
    let started = Instant::now();
    let mut first = None;
    loop {
        let samples = parse_metrics(&monitor.metrics());
        let now = leak_of(&samples);
        // Growth counts from the site's first sighting.
        first = first.or(now);
        if let (Some(first), Some(now)) = (first, now)
            && now >= first + 10.0
        {
            return samples;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{comm}'s site {site} did not grow by 10 within {DEADLINE:?} (first {first:?}, \
             now {now:?})\n{}",
            diagnostics(monitor, None)
        );
        thread::sleep(POLL);
    }
}

/// Of the two fleet copies, only the one in the cgroup shows, with its pid.
fn assert_only_insider(samples: &[Sample], inside: &Service, monitor: &Monitor) {
    let outsider: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.label("comm") == "outsider")
        .collect();
    assert!(
        outsider.is_empty(),
        "the process outside the cgroup was traced: {outsider:?}\n{}",
        diagnostics(monitor, None)
    );
    let pids: Vec<&str> = samples
        .iter()
        .filter(|s| s.name == "fdtrace_open_fds")
        .map(|s| s.label("pid"))
        .collect();
    assert_eq!(
        pids,
        [inside.child.id().to_string()],
        "fdtrace_open_fds pids"
    );
}

/// Polls `promql` until `done` accepts its result; the result.
fn wait_for(
    monitor: &Monitor,
    prometheus: &Prometheus,
    promql: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let result = prometheus.query(promql);
        if done(&result) {
            return result;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{promql} was still {result} after {DEADLINE:?}\n{}",
            diagnostics(monitor, Some(prometheus))
        );
        thread::sleep(POLL);
    }
}

/// The RLIMIT_NOFILE soft limit of a process, from /proc/PID/limits.
fn soft_fd_limit(pid: u32) -> f64 {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).expect("read its limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    line["Max open files".len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a numeric soft limit")
}
