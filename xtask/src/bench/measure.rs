//! How each figure is taken. Workloads run under `bench time`, which writes
//! the command's own wall time to a file: fdtrace's start and end (load,
//! attach, report) are measured once, by `startup`, not in every ratio.
//! Every comparison alternates its sides run by run, so drift in the
//! machine hits both alike, and reports medians.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::workloads::Workload;

pub struct Paths {
    pub fdtrace: PathBuf,
    pub bench: PathBuf,
    pub report: PathBuf,
    pub elapsed: PathBuf,
}

/// How a workload is run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Untraced,
    Fdtrace(&'static str),
    /// The bpftrace script of issue #14: a `ustack` per live descriptor.
    Bpftrace,
    Valgrind,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Fdtrace(stack) => stack,
            Mode::Bpftrace => "bpftrace",
            Mode::Valgrind => "valgrind",
        }
    }
}

/// The peer script: what a bcc/bpftrace user writes for fd leaks. Keyed by
/// pid and fd, filtered on the workload's command name.
const BPFTRACE_SCRIPT: &str = "tracepoint:syscalls:sys_exit_openat /comm == \"bench\" && args->ret >= 0/ { @live[pid, args->ret] = ustack; } \
     tracepoint:syscalls:sys_enter_close /comm == \"bench\"/ { delete(@live[pid, args->fd]); } \
     END { clear(@live); }";

pub struct Row {
    pub medians: Vec<f64>,
    pub dropped: u64,
    pub skipped: u64,
}

pub fn workload(w: &Workload, modes: &[Mode], runs: usize, paths: &Paths) -> Result<Row> {
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let (mut dropped, mut skipped) = (0, 0);
    for _ in 0..runs {
        for (i, mode) in modes.iter().enumerate() {
            let (seconds, report) = timed(&w.command, *mode, paths)
                .with_context(|| format!("{} ({})", w.name, mode.label()))?;
            times[i].push(seconds);
            if let Some(r) = report {
                dropped += r["dropped_events"].as_u64().unwrap_or(0);
                skipped += r["skipped_stacks"].as_u64().unwrap_or(0);
            }
        }
    }
    Ok(Row {
        medians: times.iter_mut().map(|t| median(t)).collect(),
        dropped,
        skipped,
    })
}

/// The command's own time under `mode`, and fdtrace's report if traced.
fn timed(command: &[String], mode: Mode, paths: &Paths) -> Result<(f64, Option<Value>)> {
    let _ = fs::remove_file(&paths.elapsed);
    let mut inner = vec![
        paths.bench.to_string_lossy().into_owned(),
        "time".into(),
        paths.elapsed.to_string_lossy().into_owned(),
    ];
    let mut cmd = match mode {
        Mode::Untraced => plain(&inner, command),
        Mode::Fdtrace(stack) => {
            let mut cmd = Command::new(&paths.fdtrace);
            cmd.args(["run", "--stack", stack, "--format", "json", "-o"])
                .arg(&paths.report)
                .arg("--")
                .args(&inner)
                .args(command);
            cmd
        }
        Mode::Bpftrace => {
            inner.extend(command.iter().cloned());
            let mut cmd = Command::new("bpftrace");
            cmd.args(["-e", BPFTRACE_SCRIPT, "-c", &inner.join(" ")]);
            cmd
        }
        Mode::Valgrind => {
            inner.extend(["valgrind", "-q", "--track-fds=yes"].map(String::from));
            plain(&inner, command)
        }
    };
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("start")?;
    if !status.success() {
        bail!("failed: {status}");
    }
    let seconds = read_seconds(&paths.elapsed)?;
    let report = matches!(mode, Mode::Fdtrace(_))
        .then(|| read_report(&paths.report))
        .transpose()?;
    Ok((seconds, report))
}

fn plain(prefix: &[String], command: &[String]) -> Command {
    let mut cmd = Command::new(&prefix[0]);
    cmd.args(&prefix[1..]).args(command);
    cmd
}

fn read_seconds(path: &Path) -> Result<f64> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("parse {}", path.display()))
}

pub fn read_report(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// fdtrace's fixed cost: wall time of `fdtrace run -- /bin/true` minus that
/// of `/bin/true`, medians, in seconds.
pub fn startup(runs: usize, paths: &Paths) -> Result<(f64, f64)> {
    let (mut plain_runs, mut traced_runs) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(5) {
        let started = Instant::now();
        quiet(Command::new("/bin/true"))?;
        plain_runs.push(started.elapsed().as_secs_f64());
        let mut cmd = Command::new(&paths.fdtrace);
        cmd.args(["run", "--format", "json", "-o"])
            .arg(&paths.report)
            .args(["--", "/bin/true"]);
        let started = Instant::now();
        quiet(cmd)?;
        traced_runs.push(started.elapsed().as_secs_f64());
    }
    Ok((median(&mut plain_runs), median(&mut traced_runs)))
}

fn quiet(mut cmd: Command) -> Result<()> {
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("start")?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// The tax on processes fdtrace does not trace: `command` alone, then while
/// fdtrace (dwarf) is attached to an unrelated sleeping process; medians of
/// each, in seconds.
pub fn untraced_tax(command: &[String], runs: usize, paths: &Paths) -> Result<(f64, f64)> {
    let mut sleeper = Command::new("sleep")
        .arg("600")
        .spawn()
        .context("start sleep")?;
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    let result = (|| -> Result<()> {
        for _ in 0..runs {
            alone.push(timed(command, Mode::Untraced, paths)?.0);
            let tracer = attach(paths, sleeper.id())?;
            let measured = timed(command, Mode::Untraced, paths);
            stop(tracer)?;
            beside.push(measured?.0);
        }
        Ok(())
    })();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    result?;
    Ok((median(&mut alone), median(&mut beside)))
}

/// `fdtrace attach -p PID`, returned once it says it is attached.
fn attach(paths: &Paths, pid: u32) -> Result<Child> {
    let mut child = Command::new(&paths.fdtrace)
        .args(["attach", "-p", &pid.to_string(), "-o"])
        .arg(&paths.report)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start fdtrace attach")?;
    let mut line = String::new();
    BufReader::new(child.stderr.take().context("stderr")?).read_line(&mut line)?;
    if !line.contains("attached") {
        bail!("fdtrace attach did not report ready: {line}");
    }
    Ok(child)
}

/// Ends an `attach` the way a user does (Ctrl-C) and waits for its report.
fn stop(mut tracer: Child) -> Result<()> {
    let pid = libc::pid_t::try_from(tracer.id())?;
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = tracer.wait()?;
    if !status.success() {
        bail!("fdtrace attach ended with {status}");
    }
    Ok(())
}

/// (dropped events, skipped stacks, kept in kernel) of one dwarf run.
pub fn losses(command: &[String], paths: &Paths) -> Result<(u64, u64, u64)> {
    let (_, report) = timed(command, Mode::Fdtrace("dwarf"), paths)?;
    let r = report.context("no report")?;
    Ok((
        r["dropped_events"].as_u64().unwrap_or(0),
        r["skipped_stacks"].as_u64().unwrap_or(0),
        r["kept_in_kernel"].as_u64().unwrap_or(0),
    ))
}

/// fdtrace's peak RSS (KiB, from wait4) while the fixture holds 100,000 fds.
pub fn peak_rss(paths: &Paths) -> Result<u64> {
    let child = Command::new(&paths.fdtrace)
        .args(["run", "--format", "json", "-o"])
        .arg(&paths.report)
        .arg("--")
        .arg(&paths.bench)
        .args(["hold", "100000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = libc::pid_t::try_from(child.id())?;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; reaps our own child (std's Child is not waited).
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        bail!("wait for the RSS run: {}", std::io::Error::last_os_error());
    }
    Ok(u64::try_from(usage.ru_maxrss)?)
}

/// Median time from starting `fdtrace attach` to its "attached" line.
pub fn attach_ready(paths: &Paths, runs: usize) -> Result<Duration> {
    let mut target = Command::new("sleep")
        .arg("60")
        .spawn()
        .context("start sleep")?;
    let mut times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let tracer = attach(paths, target.id())?;
        times.push(started.elapsed().as_secs_f64());
        stop(tracer)?;
    }
    target.kill()?;
    target.wait()?;
    Ok(Duration::from_secs_f64(median(&mut times)))
}
