//! What recording costs (`fdtrace record` against `fdtrace run` on the
//! open/close loop), how big a trace is per event, and the HTML report of
//! a 1M-event trace: its size, and how long Chromium takes to make it
//! usable (the page times itself: `data-ready-ms`).

use std::{fs, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{Figure, measure::Paths, measure::median};
use crate::setup;

/// What this part adds to the benchmark.
pub struct Recorded {
    pub figures: Vec<Figure>,
    pub json: Value,
}

fn fdtrace(paths: &Paths, args: &[&str]) -> Result<()> {
    let out = Command::new(&paths.fdtrace)
        .args(args)
        .output()
        .context("run fdtrace")?;
    if !out.status.success() {
        bail!(
            "fdtrace {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `fdtrace record` of `cmd` into `trace`, the report thrown away.
fn record(paths: &Paths, trace: &str, cmd: &[&str]) -> Result<()> {
    let mut args = vec![
        "record",
        "--force",
        "-o",
        trace,
        "--report",
        "/dev/null",
        "--",
    ];
    args.extend(cmd);
    fdtrace(paths, &args)
}

pub fn measure(paths: &Paths, runs: usize) -> Result<Recorded> {
    setup::system_tool("chromium", "chromium")?;
    let dir = paths.report.parent().context("bench dir")?.to_path_buf();
    let bench = paths.bench.to_string_lossy().into_owned();
    let trace = dir.join("loop.fdt");
    let trace_s = trace.to_string_lossy().into_owned();
    let (mut run_s, mut record_s) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let started = std::time::Instant::now();
        fdtrace(
            paths,
            &[
                "run",
                "-o",
                "/dev/null",
                "--",
                &bench,
                "openclose",
                "200000",
            ],
        )?;
        run_s.push(started.elapsed().as_secs_f64());
        let started = std::time::Instant::now();
        record(paths, &trace_s, &[&bench, "openclose", "200000"])?;
        record_s.push(started.elapsed().as_secs_f64());
    }
    let (run_s, record_s) = (median(&mut run_s), median(&mut record_s));
    let bytes = fs::metadata(&trace)?.len();
    // 200,000 opens and as many closes.
    let per_event = bytes as f64 / 400_000.0;
    println!(
        "\nrecord vs run, 200k open/close (median of {runs}): {record_s:.3}s vs {run_s:.3}s ({:.2}x); \
         trace {:.1} MB, {per_event:.1} bytes an event",
        record_s / run_s,
        bytes as f64 / 1e6
    );

    // A million events: 500,000 open/close pairs, one descriptor in 64
    // leaked (7,813 leaks).
    record(paths, &trace_s, &[&bench, "leaky", "500000"])?;
    let html = dir.join("loop.html");
    let html_s = html.to_string_lossy().into_owned();
    let started = std::time::Instant::now();
    fdtrace(
        paths,
        &["report", &trace_s, "--format", "html", "-o", &html_s],
    )?;
    let report_s = started.elapsed().as_secs_f64();
    let html_bytes = fs::metadata(&html)?.len();
    let profile = tempdir(&dir)?;
    let dom = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{html_s}"))
        .output()
        .context("run chromium")?;
    let _ = fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&dom.stdout);
    let ready_ms: f64 = dom
        .split("data-ready-ms=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|s| s.parse().ok())
        .context("the page did not say when it was ready")?;
    println!(
        "1M-event trace, 7,813 leaks: report --format html {report_s:.2}s, page {:.2} MB, usable in Chromium after {ready_ms:.0} ms",
        html_bytes as f64 / 1e6
    );
    let _ = fs::remove_file(&trace);
    let figures = vec![
        Figure {
            name: "trace bytes per event (200k open/close)".into(),
            value: format!("{per_event:.1}"),
            target: "<= 40".into(),
            met: per_event <= 40.0,
        },
        Figure {
            name: "HTML of a 1M-event trace: size".into(),
            value: format!("{:.2} MB", html_bytes as f64 / 1e6),
            target: "<= 5 MB".into(),
            met: html_bytes <= 5_000_000,
        },
        Figure {
            name: "HTML of a 1M-event trace: usable after".into(),
            value: format!("{ready_ms:.0} ms"),
            target: "< 2000 ms".into(),
            met: ready_ms < 2000.0,
        },
    ];
    Ok(Recorded {
        figures,
        json: json!({
            "run_seconds": run_s,
            "record_seconds": record_s,
            "trace_bytes_200k_loop": bytes,
            "bytes_per_event": per_event,
            "report_html_seconds_1m_events": report_s,
            "html_bytes_1m_events": html_bytes,
            "html_ready_ms": ready_ms,
        }),
    })
}

/// A fresh browser profile directory under `dir`.
fn tempdir(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let path = dir.join(format!("chromium-{}", std::process::id()));
    let _ = fs::remove_dir_all(&path);
    fs::create_dir_all(&path)?;
    Ok(path)
}
