//! `cargo xtask bench`: fdtrace against the same workloads run untraced.
//!
//! Traced and untraced runs alternate (so drift in the machine hits both
//! alike); medians and traced/untraced ratios go to stdout as a table and
//! to `target/bench.json`. Also measured: the highest paced event rate with
//! no dropped event and no skipped stack, userspace peak RSS while 100,000
//! descriptors are live, and the time from `fdtrace attach` to ready.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{
    process::{command, run, target_dir, workspace_root},
    setup,
};

const MODES: [&str; 4] = ["untraced", "none", "fp", "dwarf"];
/// Paced rates tried, in events per second (an open/close pair is two).
const RATES: [u64; 5] = [25_000, 50_000, 100_000, 200_000, 400_000];

struct Workload {
    name: &'static str,
    about: &'static str,
    command: Vec<String>,
}

struct Paths {
    fdtrace: PathBuf,
    bench: PathBuf,
    report: PathBuf,
}

pub fn bench(runs: usize) -> Result<()> {
    if runs < 1 {
        bail!("--runs must be at least 1");
    }
    setup::run()?;
    if !setup::is_root() {
        bail!("the benchmark loads BPF programs: run it as root (sudo -E cargo xtask bench)");
    }
    println!("step: cargo build --release -p fdtrace");
    run(
        "cargo build",
        command("cargo").args(["build", "--release", "--locked", "-p", "fdtrace"]),
    )?;
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let paths = Paths {
        fdtrace: target_dir().join("release/fdtrace"),
        bench: dir.join("bench"),
        report: dir.join("report.json"),
    };
    let source = workspace_root().join("tests/fixtures/bench.c");
    run(
        "cc",
        command("cc")
            .args(["-O2", "-o"])
            .arg(&paths.bench)
            .arg(&source),
    )?;
    let bench = paths.bench.to_string_lossy().into_owned();
    let tar_out = dir.join("tree.tar").to_string_lossy().into_owned();
    let workloads = [
        Workload {
            name: "startup",
            about: "/bin/true: fdtrace's fixed cost (load, attach, spawn, detach)",
            command: vec!["/bin/true".into()],
        },
        Workload {
            name: "openclose",
            about: "C loop, 200,000 open/close pairs",
            command: vec![bench.clone(), "openclose".into(), "200000".into()],
        },
        Workload {
            name: "tcp",
            about: "loopback TCP connect/accept/close x 20,000",
            command: vec![bench.clone(), "tcp".into(), "20000".into()],
        },
        Workload {
            name: "tar",
            about: "tar of /usr/include + /usr/lib/python3.11 (~9,000 files)",
            command: [
                "tar",
                "-cf",
                &tar_out,
                "-C",
                "/usr",
                "include",
                "lib/python3.11",
            ]
            .map(String::from)
            .to_vec(),
        },
        Workload {
            name: "python",
            about: "CPython 3.11 loop, 50,000 open/close pairs (Python frames walked)",
            command: [
                "/usr/bin/python3",
                "-c",
                "for _ in range(50000): open('/etc/hostname').close()",
            ]
            .map(String::from)
            .to_vec(),
        },
    ];
    let mut results = Vec::new();
    println!();
    println!(
        "{:<10} {:>9} {:>15} {:>15} {:>15}  dropped",
        "workload", "untraced", "none", "fp", "dwarf"
    );
    for w in &workloads {
        let row = measure(w, runs, &paths)?;
        let base = row.medians[0];
        let cells: Vec<String> = row.medians[1..]
            .iter()
            .map(|m| format!("{:.3}s {:>5.2}x", m, m / base))
            .collect();
        println!(
            "{:<10} {:>8.3}s {:>15} {:>15} {:>15}  {}",
            w.name, base, cells[0], cells[1], cells[2], row.dropped
        );
        results.push(json!({
            "workload": w.name,
            "about": w.about,
            "runs": runs,
            "median_seconds": MODES.iter().zip(&row.medians).map(|(m, s)| (m.to_string(), json!(s))).collect::<serde_json::Map<_, _>>(),
            "ratio": MODES[1..].iter().zip(&row.medians[1..]).map(|(m, s)| (m.to_string(), json!(s / base))).collect::<serde_json::Map<_, _>>(),
            "dropped_events": row.dropped,
            "skipped_stacks": row.skipped,
        }));
    }
    let rates = rate_sweep(&paths)?;
    let best = rates
        .iter()
        .filter(|r| r.1 == 0 && r.2 == 0)
        .map(|r| r.0)
        .max();
    println!();
    for (rate, dropped, skipped) in &rates {
        println!("paced {rate:>7} events/s (dwarf): dropped {dropped}, stacks skipped {skipped}");
    }
    let rss = peak_rss(&paths)?;
    println!(
        "peak RSS with 100,000 live fds (dwarf): {:.1} MB",
        rss as f64 / 1024.0
    );
    let ready = attach_ready(&paths, runs)?;
    println!(
        "attach to ready (median of {runs}): {:.0} ms",
        ready.as_secs_f64() * 1000.0
    );
    let out = json!({
        "workloads": results,
        "rates": rates.iter().map(|(r, d, s)| json!({"events_per_second": r, "dropped_events": d, "skipped_stacks": s})).collect::<Vec<_>>(),
        "max_rate_without_loss": best,
        "peak_rss_kb_100k_fds": rss,
        "attach_ready_ms": ready.as_secs_f64() * 1000.0,
    });
    let path = target_dir().join("bench.json");
    fs::write(&path, serde_json::to_string_pretty(&out)?)
        .with_context(|| format!("write {}", path.display()))?;
    println!("\nwrote {}", path.display());
    Ok(())
}

struct Row {
    medians: Vec<f64>,
    dropped: u64,
    skipped: u64,
}

fn measure(w: &Workload, runs: usize, paths: &Paths) -> Result<Row> {
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let (mut dropped, mut skipped) = (0, 0);
    for _ in 0..runs {
        for (i, mode) in MODES.iter().enumerate() {
            let (seconds, report) = timed(w, mode, paths)?;
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

/// Wall time of one run, and fdtrace's report when traced.
fn timed(w: &Workload, mode: &str, paths: &Paths) -> Result<(f64, Option<Value>)> {
    let mut cmd = traced(mode, &w.command, paths);
    let started = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("run {}", w.name))?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{} ({mode}) failed: {status}", w.name);
    }
    let report = (mode != "untraced")
        .then(|| read_report(&paths.report))
        .transpose()?;
    Ok((seconds, report))
}

fn traced(mode: &str, workload: &[String], paths: &Paths) -> Command {
    if mode == "untraced" {
        let mut cmd = Command::new(&workload[0]);
        cmd.args(&workload[1..]);
        return cmd;
    }
    let mut cmd = Command::new(&paths.fdtrace);
    cmd.args(["run", "--stack", mode, "--format", "json", "-o"])
        .arg(&paths.report)
        .arg("--")
        .args(workload);
    cmd
}

fn read_report(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// (rate, dropped events, skipped stacks) for 2 s of paced open/close.
fn rate_sweep(paths: &Paths) -> Result<Vec<(u64, u64, u64)>> {
    let mut rows = Vec::new();
    for rate in RATES {
        let workload = [
            paths.bench.to_string_lossy().into_owned(),
            "rate".into(),
            rate.to_string(),
            "2".into(),
        ];
        let status = traced("dwarf", &workload, paths)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("paced run at {rate}/s failed: {status}");
        }
        let r = read_report(&paths.report)?;
        rows.push((
            rate,
            r["dropped_events"].as_u64().unwrap_or(0),
            r["skipped_stacks"].as_u64().unwrap_or(0),
        ));
    }
    Ok(rows)
}

/// fdtrace's peak RSS (KiB, from wait4) while the fixture holds 100,000 fds.
fn peak_rss(paths: &Paths) -> Result<u64> {
    let workload = [
        paths.bench.to_string_lossy().into_owned(),
        "hold".into(),
        "100000".into(),
    ];
    let child = traced("dwarf", &workload, paths)
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
fn attach_ready(paths: &Paths, runs: usize) -> Result<Duration> {
    let mut target = Command::new("sleep")
        .arg("60")
        .spawn()
        .context("start sleep")?;
    let mut times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let mut fdtrace = Command::new(&paths.fdtrace)
            .args([
                "attach",
                "--duration",
                "1s",
                "-p",
                &target.id().to_string(),
                "-o",
            ])
            .arg(&paths.report)
            .stderr(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(fdtrace.stderr.take().context("stderr")?).read_line(&mut line)?;
        let elapsed = started.elapsed();
        fdtrace.wait()?;
        if !line.contains("attached") {
            bail!("attach did not report ready: {line}");
        }
        times.push(elapsed.as_secs_f64());
    }
    target.kill()?;
    target.wait()?;
    Ok(Duration::from_secs_f64(median(&mut times)))
}
