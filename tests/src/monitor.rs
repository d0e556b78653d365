//! A running `fdtrace monitor` for tests: started on a free loopback port,
//! ready once it says so, its metrics fetched, stopped with SIGTERM.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    c_fixture, fdtrace,
    prometheus::{Prometheus, free_port, http_get, try_http_get},
    scratch_dir,
};

/// How long anything a test waits for may take before it fails. Generous:
/// the tests wait for data to arrive, they do not time it.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Between two looks at something the test waits for.
pub const POLL: Duration = Duration::from_millis(500);

/// The fleet fixture (fleet.c) as `dir/name`: the monitor selects a
/// program by its name.
pub fn fleet_program(dir: &Path, name: &str) -> PathBuf {
    let binary = dir.join(name);
    fs::copy(c_fixture("fleet.c"), &binary).expect("copy the fleet fixture");
    binary
}

/// A running `fdtrace monitor`, killed on drop unless the test stopped it.
pub struct Monitor {
    pub child: Child,
    /// `127.0.0.1:PORT` it serves on.
    pub address: String,
    stderr: PathBuf,
}

impl Monitor {
    /// Starts `fdtrace monitor ARGS --listen 127.0.0.1:PORT` and waits for
    /// its one line saying it is ready.
    pub fn start(args: &[&str]) -> Self {
        let address = format!("127.0.0.1:{}", free_port());
        let stderr = scratch_dir("monitor").join("stderr");
        let child = Command::new(fdtrace())
            .arg("monitor")
            .args(args)
            .args(["--listen", &address])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("create the stderr file"))
            .spawn()
            .expect("start fdtrace monitor");
        let mut monitor = Self {
            child,
            address,
            stderr,
        };
        let started = Instant::now();
        let ready = loop {
            let text = monitor.stderr();
            if let Some(line) = text.lines().find(|l| l.contains("metrics on http://")) {
                break line.to_owned();
            }
            if let Some(status) = monitor.child.try_wait().expect("wait for fdtrace") {
                panic!("fdtrace monitor {args:?} exited ({status}) before it was ready:\n{text}");
            }
            assert!(
                started.elapsed() < DEADLINE,
                "fdtrace monitor {args:?} was not ready within {DEADLINE:?}:\n{text}"
            );
            thread::sleep(Duration::from_millis(100));
        };
        let url = format!("metrics on http://{}/metrics", monitor.address);
        assert!(
            ready.starts_with("fdtrace: monitoring ") && ready.ends_with(&url),
            "ready line: {ready}"
        );
        monitor
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `GET /metrics`, which must answer 200.
    pub fn metrics(&self) -> String {
        let (status, body) = http_get(&self.address, "/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// SIGTERM, then its exit status.
    pub fn stop(mut self) -> ExitStatus {
        signal(self.child.id(), libc::SIGTERM);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for fdtrace") {
                return status;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "fdtrace monitor did not exit on SIGTERM within {DEADLINE:?}:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `fdtrace monitor ARGS`, which must end by itself: its exit status
/// and stderr.
pub fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let stderr = scratch_dir("monitor-error").join("stderr");
    let mut child = Command::new(fdtrace())
        .arg("monitor")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr).expect("create the stderr file"))
        .spawn()
        .expect("start fdtrace monitor");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for fdtrace") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "fdtrace monitor {args:?} was still running after {DEADLINE:?}:\n{}",
                fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    (status, fs::read_to_string(&stderr).unwrap_or_default())
}

/// What fdtrace said, what it serves, and what Prometheus made of it.
pub fn diagnostics(monitor: &Monitor, prometheus: Option<&Prometheus>) -> String {
    let metrics = match try_http_get(&monitor.address, "/metrics") {
        Ok((status, body)) => format!("HTTP {status}\n{body}"),
        Err(e) => format!("GET /metrics failed: {e}"),
    };
    let targets = prometheus.map_or_else(String::new, |p| {
        format!("prometheus targets: {}", p.targets())
    });
    format!(
        "fdtrace stderr:\n{}\n/metrics: {metrics}\n{targets}",
        monitor.stderr()
    )
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("PID");
    // SAFETY: plain kill(2) of a process this test started.
    unsafe { libc::kill(pid, signal) };
}
