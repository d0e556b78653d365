//! `cargo xtask bench`: fdtrace against the same workloads run untraced,
//! and against its peers (a bpftrace script, valgrind) where they apply.
//!
//! Prints each workload's median times and ratios, then every figure of
//! issue #14 with its target and whether it holds; writes it all to
//! `target/bench.json`. Targets live here, never in pass/fail tests.

mod measure;
mod monitor;
mod record;
mod workloads;

use std::{env, fs};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{
    process::{command, run, succeeds, target_dir, workspace_root},
    setup,
};
use measure::{Mode, Paths};

/// Paced rates tried, in events per second (an open/close pair is two).
const RATES: [u64; 5] = [25_000, 50_000, 100_000, 200_000, 400_000];

/// Set to `monitor` to run only that part (the whole takes many minutes).
const ONLY: &str = "FDTRACE_BENCH_ONLY";

/// One figure of the issue: what was measured, the target, and whether it
/// holds.
struct Figure {
    name: String,
    value: String,
    target: String,
    met: bool,
}

impl Figure {
    fn ratio(name: String, value: f64, target: f64) -> Figure {
        Figure {
            name,
            value: format!("{value:.2}x"),
            target: format!("<= {target:.2}x"),
            met: value <= target,
        }
    }
}

pub fn bench(runs: usize) -> Result<()> {
    if runs < 1 {
        bail!("--runs must be at least 1");
    }
    let only = env::var(ONLY).unwrap_or_default();
    if !["", "monitor"].contains(&only.as_str()) {
        bail!("{ONLY}={only}: the part that runs alone is `monitor`; unset it to run them all");
    }
    setup::run()?;
    if !setup::is_root() {
        bail!("the benchmark loads BPF programs: run it as root (sudo -E cargo xtask bench)");
    }
    // The peers, measured in the same run.
    setup::system_tool("bpftrace", "bpftrace")?;
    setup::system_tool("valgrind", "valgrind")?;
    setup::system_tool("make", "make")?;
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
        elapsed: dir.join("elapsed"),
    };
    let source = workspace_root().join("tests/fixtures/bench.c");
    run(
        "cc",
        command("cc")
            .args(["-O2", "-pthread", "-o"])
            .arg(&paths.bench)
            .arg(&source),
    )?;
    if only == "monitor" {
        let monitored = monitor::measure(&paths)?;
        return finish(&monitored.figures, json!({"monitor": monitored.json}));
    }
    let bench = paths.bench.to_string_lossy().into_owned();
    let bpftrace = succeeds(command("bpftrace").arg("--version"));
    let mut figures = Vec::new();
    let mut rows = Vec::new();

    let (plain, traced) = measure::startup(runs, &paths)?;
    let extra_ms = (traced - plain) * 1000.0;
    println!("\nfixed cost: /bin/true {plain:.3}s, under fdtrace {traced:.3}s (+{extra_ms:.0} ms)");
    figures.push(Figure {
        name: "fixed cost: fdtrace run -- /bin/true".into(),
        value: format!("+{extra_ms:.0} ms"),
        target: "<= +50 ms".into(),
        met: extra_ms <= 50.0,
    });

    println!("\nthe command's own time, median of {runs}; ratio to untraced:");
    println!(
        "{:<10} {:>9} {:>15} {:>15} {:>15}  dropped",
        "workload", "untraced", "none", "fp", "dwarf"
    );
    for w in workloads::all(&bench, &dir)? {
        let mut modes = vec![
            Mode::Untraced,
            Mode::Fdtrace("none"),
            Mode::Fdtrace("fp"),
            Mode::Fdtrace("dwarf"),
        ];
        if w.peers {
            if bpftrace {
                modes.push(Mode::Bpftrace);
            }
            modes.push(Mode::Valgrind);
        }
        let row = measure::workload(&w, &modes, runs, &paths)?;
        let base = row.medians[0];
        let ratio = |i: usize| row.medians[i] / base;
        let cells: Vec<String> = (1..4)
            .map(|i| format!("{:.3}s {:>5.2}x", row.medians[i], ratio(i)))
            .collect();
        println!(
            "{:<10} {:>8.3}s {:>15} {:>15} {:>15}  {}",
            w.name, base, cells[0], cells[1], cells[2], row.dropped
        );
        for (i, mode) in modes.iter().enumerate().skip(4) {
            println!(
                "{:<10} {:>9} {:>15}",
                "",
                mode.label(),
                format!("{:.3}s {:>5.2}x", row.medians[i], ratio(i))
            );
        }
        if let Some(t) = w.target.fast {
            figures.push(Figure::ratio(
                format!("{} --stack none", w.name),
                ratio(1),
                t,
            ));
            figures.push(Figure::ratio(format!("{} --stack fp", w.name), ratio(2), t));
        }
        if let Some(t) = w.target.dwarf {
            figures.push(Figure::ratio(
                format!("{} (default dwarf)", w.name),
                ratio(3),
                t,
            ));
        }
        if let Some(i) = modes.iter().position(|m| *m == Mode::Bpftrace) {
            figures.push(Figure {
                name: format!("{} dwarf below the bpftrace script", w.name),
                value: format!("{:.2}x vs {:.2}x", ratio(3), ratio(i)),
                target: "below".into(),
                met: ratio(3) < ratio(i),
            });
        }
        rows.push(json!({
            "workload": w.name,
            "about": w.about,
            "runs": runs,
            "median_seconds": modes.iter().zip(&row.medians).map(|(m, s)| (m.label().to_string(), json!(s))).collect::<serde_json::Map<_, _>>(),
            "ratio": modes.iter().enumerate().skip(1).map(|(i, m)| (m.label().to_string(), json!(ratio(i)))).collect::<serde_json::Map<_, _>>(),
            "dropped_events": row.dropped,
            "skipped_stacks": row.skipped,
        }));
    }
    if !bpftrace {
        println!("(bpftrace is not installed: its row is missing)");
    }

    println!("\nuntraced processes while fdtrace traces another (median of {runs}):");
    let mut tax = Vec::new();
    for (name, workload) in [
        (
            "getppid",
            vec![bench.clone(), "getppid".into(), "3000000".into()],
        ),
        (
            "openclose",
            vec![bench.clone(), "openclose".into(), "200000".into()],
        ),
    ] {
        let (alone, beside) = measure::untraced_tax(&workload, runs, &paths)?;
        let ratio = beside / alone;
        println!("{name:<10} alone {alone:.3}s, beside fdtrace {beside:.3}s: {ratio:.2}x");
        figures.push(Figure::ratio(
            format!("tax on an untraced {name} loop"),
            ratio,
            1.03,
        ));
        tax.push(json!({"workload": name, "alone_seconds": alone, "beside_seconds": beside, "ratio": ratio}));
    }

    let threads = vec![bench.clone(), "threads".into(), "64".into(), "10000".into()];
    let (dropped, skipped, kept) = measure::losses(&threads, &paths)?;
    println!(
        "\n64 threads x 10,000 open/close (dwarf): dropped {dropped}, stacks skipped {skipped}, kept in kernel {kept}"
    );
    figures.push(Figure {
        name: "64 threads x 10k open/close: dropped events".into(),
        value: dropped.to_string(),
        target: "0".into(),
        met: dropped == 0,
    });

    let mut rates = Vec::new();
    for rate in RATES {
        let workload = vec![bench.clone(), "rate".into(), rate.to_string(), "2".into()];
        let (dropped, skipped, _) = measure::losses(&workload, &paths)?;
        println!("paced {rate:>7} events/s (dwarf): dropped {dropped}, stacks skipped {skipped}");
        rates.push((rate, dropped, skipped));
    }
    let clean_at_400k = rates.iter().all(|r| r.1 == 0 && r.2 == 0);
    figures.push(Figure {
        name: "paced up to 400k events/s: dropped + skipped".into(),
        value: rates.iter().map(|r| r.1 + r.2).sum::<u64>().to_string(),
        target: "0".into(),
        met: clean_at_400k,
    });

    let rss = measure::peak_rss(&paths)?;
    let rss_mb = rss as f64 / 1024.0;
    println!("peak RSS with 100,000 live fds (dwarf): {rss_mb:.1} MB");
    figures.push(Figure {
        name: "peak RSS at 100,000 live fds".into(),
        value: format!("{rss_mb:.0} MB"),
        target: "<= 100 MB".into(),
        met: rss_mb <= 100.0,
    });
    let ready = measure::attach_ready(&paths, runs)?;
    let ready_ms = ready.as_secs_f64() * 1000.0;
    println!("attach to ready (median of {runs}): {ready_ms:.0} ms");
    figures.push(Figure {
        name: "attach to ready".into(),
        value: format!("{ready_ms:.0} ms"),
        target: "< 1000 ms".into(),
        met: ready_ms < 1000.0,
    });

    let recorded = record::measure(&paths, runs)?;
    figures.extend(recorded.figures);
    let monitored = monitor::measure(&paths)?;
    figures.extend(monitored.figures);

    let out = json!({
        "workloads": rows,
        "fixed_cost": {"untraced_seconds": plain, "traced_seconds": traced},
        "untraced_tax": tax,
        "threads_64x10k": {"dropped_events": dropped, "skipped_stacks": skipped, "kept_in_kernel": kept},
        "rates": rates.iter().map(|(r, d, s)| json!({"events_per_second": r, "dropped_events": d, "skipped_stacks": s})).collect::<Vec<_>>(),
        "peak_rss_kb_100k_fds": rss,
        "attach_ready_ms": ready_ms,
        "record": recorded.json,
        "monitor": monitored.json,
    });
    finish(&figures, out)
}

/// Prints every figure against its target and writes `out`, the targets
/// added, to target/bench.json.
fn finish(figures: &[Figure], mut out: Value) -> Result<()> {
    println!("\ntargets (issues #14, #16, #17):");
    for f in figures {
        let mark = if f.met { "ok  " } else { "MISS" };
        println!("  {mark} {:<48} {:>18}  {}", f.name, f.value, f.target);
    }
    out["targets"] = figures
        .iter()
        .map(|f| json!({"figure": f.name, "value": f.value, "target": f.target, "met": f.met}))
        .collect::<Vec<Value>>()
        .into();
    let path = target_dir().join("bench.json");
    fs::write(&path, serde_json::to_string_pretty(&out)?)
        .with_context(|| format!("write {}", path.display()))?;
    println!("\nwrote {}", path.display());
    Ok(())
}
