//! `cargo xtask vm-test`: the end-to-end smoke set (xtask/vm/smoke.sh) on
//! every kernel users have, each booted under qemu with virtme-ng, plus the
//! host kernel. Prints a matrix (kernel, seconds, a column per check), writes
//! it to `target/vm/results.json`, and fails if any kernel failed.
//!
//! Orchestration only: fixtures are compiled on the host, the fdtrace binary
//! is the host's, and guests share the host's root filesystem read-only.

mod guest;
mod kernels;
mod tools;

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::process::{self, command, target_dir, workspace_root};
use guest::{Outcome, Smoke};

/// The checks smoke.sh reports, in the order it runs them.
const CHECKS: &[&str] = &[
    "load",
    "c-leak",
    "stack-fp",
    "stack-none",
    "emfile",
    "attach-growth",
    "monitor",
    "python-line",
    "python-shutdown",
    "scm-rights",
    "exec-leak",
    "handover",
    "churn",
    "misuse",
    "no-stopped",
];

/// C fixtures compiled for the smoke set: (output, source, flags).
const FIXTURES: &[(&str, &str, &[&str])] = &[
    ("lifetimes", "tests/fixtures/lifetimes.c", FP),
    ("hoard", "tests/fixtures/hoard.c", FP),
    ("service", "tests/fixtures/service.c", FP),
    ("families", "tests/fixtures/families.c", FP),
    ("leaky", "examples/leaky.c", FP),
    ("churn", "tests/fixtures/churn.c", FP),
    (
        "nofp",
        "tests/fixtures/nofp.c",
        &["-g", "-O2", "-fomit-frame-pointer"],
    ),
    (
        "misuse",
        "tests/fixtures/misuse.c",
        &["-g", "-O2", "-fomit-frame-pointer"],
    ),
];
/// The end-to-end tests' usual C build (tests/src/lib.rs `c_fixture`).
const FP: &[&str] = &["-g", "-O0", "-fno-omit-frame-pointer"];

/// The row name of the host kernel in `--kernels`.
const HOST: &str = "host";

/// Hard limit per kernel, boot included: a hang is a failure, not a stall.
const DEADLINE: Duration = Duration::from_secs(15 * 60);

/// Options of `cargo xtask vm-test`.
pub struct Options {
    /// Series names (see `kernels::SERIES`) and/or "host".
    pub kernels: Vec<String>,
    /// The fdtrace binary to test; built from this workspace when `None`.
    pub binary: Option<PathBuf>,
    /// Keep every guest's logs under target/vm/logs (failed ones are kept anyway).
    pub keep: bool,
}

/// Runs the whole matrix; the exit code is 1 when any kernel failed.
pub fn vm_test(options: &Options) -> Result<ExitCode> {
    let wanted = options
        .kernels
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>();
    let series: Vec<&kernels::Series> = kernels::SERIES
        .iter()
        .filter(|s| wanted.contains(&s.name))
        .collect();
    if let Some(unknown) = wanted
        .iter()
        .find(|k| **k != HOST && !kernels::SERIES.iter().any(|s| s.name == **k))
    {
        let known: Vec<&str> = kernels::SERIES.iter().map(|s| s.name).collect();
        bail!(
            "unknown kernel {unknown:?} in --kernels: use any of {}, {HOST}",
            known.join(", ")
        );
    }

    let vng = if series.is_empty() {
        None
    } else {
        Some(tools::ensure()?)
    };
    let smoke = prepare_smoke(options.binary.as_deref())?;
    let guests = kernels::ensure(&series)?;

    let logs = target_dir().join("vm/logs");
    let mut rows: Vec<(String, Outcome)> = Vec::new();
    for (series, kernel) in series.iter().zip(&guests) {
        println!(
            "step: boot {} ({}) and run the smoke set",
            series.name, kernel.release
        );
        let vng = vng
            .as_deref()
            .context("vng is set up whenever a guest runs")?;
        let outcome = guest::run_guest(vng, kernel, &smoke, &logs.join(series.name), DEADLINE)?;
        report_row(series.name, &outcome);
        rows.push((series.name.to_owned(), outcome));
    }
    if wanted.contains(&HOST) {
        println!("step: run the smoke set on the host kernel");
        let outcome = guest::run_host(&smoke, &logs.join(HOST), DEADLINE)?;
        report_row(HOST, &outcome);
        rows.push((HOST.to_owned(), outcome));
    }

    print_matrix(&rows);
    write_results(&rows)?;
    let mut all_passed = true;
    for (name, outcome) in &rows {
        if passed(outcome) {
            if !options.keep {
                let _ = fs::remove_dir_all(logs.join(name));
            }
        } else {
            all_passed = false;
        }
    }
    if all_passed {
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "some kernels failed: logs (smoke.log, console.log, each run's stderr) are in {}",
            logs.display()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// Builds fdtrace (unless `--binary`) and the C fixtures the smoke set runs.
fn prepare_smoke(binary: Option<&std::path::Path>) -> Result<Smoke> {
    let fdtrace = match binary {
        Some(path) => fs::canonicalize(path)
            .with_context(|| format!("find --binary {}: pass an existing file", path.display()))?,
        // The release build, as users run it: under TCG a debug build's
        // symbolization alone takes seconds.
        None => {
            println!("step: cargo build --release -p fdtrace");
            process::run(
                "cargo build --release -p fdtrace",
                command("cargo").args(["build", "--release", "-p", "fdtrace", "--locked"]),
            )?;
            target_dir().join("release/fdtrace")
        }
    };
    let fixtures = target_dir().join("vm/fixtures");
    fs::create_dir_all(&fixtures).with_context(|| format!("create {}", fixtures.display()))?;
    for (name, source, flags) in FIXTURES {
        process::run(
            &format!("cc {source}"),
            command("cc")
                .args(*flags)
                .arg("-o")
                .arg(fixtures.join(name))
                .arg(workspace_root().join(source))
                .args(["-pthread", "-ldl"]),
        )
        .with_context(|| format!("compile the fixture {source}"))?;
    }
    // Guests see the host's filesystem at the same paths, so absolute
    // host paths work on both sides.
    let fixtures = fs::canonicalize(&fixtures).context("resolve the fixture directory")?;
    Ok(Smoke {
        script: workspace_root().join("xtask/vm/smoke.sh"),
        fdtrace,
        fixtures,
        sources: workspace_root().join("tests/fixtures"),
    })
}

/// A kernel passed when its run finished, every check passed and nothing
/// else failed (a check smoke.sh runs but `CHECKS` forgot still counts).
fn passed(outcome: &Outcome) -> bool {
    outcome.error.is_none()
        && CHECKS
            .iter()
            .all(|check| matches!(outcome.checks.get(*check), Some(None)))
        && outcome.checks.values().all(Option::is_none)
}

/// The verdict of `check` in `outcome`: "pass", "FAIL", or "-" if not run.
fn cell(outcome: &Outcome, check: &str) -> &'static str {
    match outcome.checks.get(check) {
        Some(None) => "pass",
        Some(Some(_)) => "FAIL",
        None => "-",
    }
}

/// Failures of one kernel, printed as soon as it is done.
fn report_row(name: &str, outcome: &Outcome) {
    let verdict = if passed(outcome) { "passed" } else { "FAILED" };
    println!("{name}: {verdict} in {:.0} s", outcome.seconds);
    if let Some(error) = &outcome.error {
        println!("  {name}: {error}");
    }
    for (check, reason) in &outcome.checks {
        if let Some(reason) = reason {
            println!("  FAIL {check}: {reason}");
        }
    }
}

fn print_matrix(rows: &[(String, Outcome)]) {
    println!();
    let header: Vec<String> = ["kernel", "release", "secs", "load_s"]
        .iter()
        .map(|h| (*h).to_owned())
        .chain(CHECKS.iter().map(|c| (*c).to_owned()))
        .collect();
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|(name, o)| {
            let release = o.info.get("kernel").cloned().unwrap_or_else(|| "?".into());
            let load = o
                .info
                .get("load_seconds")
                .map_or_else(|| "-".into(), |s| format!("{s}s"));
            [name.clone(), release, format!("{:.0}", o.seconds), load]
                .into_iter()
                .chain(CHECKS.iter().map(|c| cell(o, c).to_owned()))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            body.iter()
                .map(|row| row[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&body) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

fn write_results(rows: &[(String, Outcome)]) -> Result<()> {
    let kernels: Vec<serde_json::Value> = rows
        .iter()
        .map(|(name, o)| {
            let checks: serde_json::Map<String, serde_json::Value> = CHECKS
                .iter()
                .map(|check| {
                    let value = match o.checks.get(*check) {
                        Some(None) => json!({"pass": true}),
                        Some(Some(reason)) => json!({"pass": false, "reason": reason}),
                        None => json!({"pass": false, "reason": "not run"}),
                    };
                    ((*check).to_owned(), value)
                })
                .collect();
            json!({
                "kernel": name,
                "release": o.info.get("kernel"),
                "btf": o.info.get("btf"),
                "seconds": (o.seconds * 10.0).round() / 10.0,
                "load_seconds": o.info.get("load_seconds").and_then(|s| s.parse::<f64>().ok()),
                // Instructions the verifier processed, per program (5.16+).
                "verified": o.info.get("verified"),
                "passed": passed(o),
                "error": o.error,
                "checks": checks,
            })
        })
        .collect();
    let path = target_dir().join("vm/results.json");
    let text = serde_json::to_string_pretty(&json!({ "kernels": kernels }))
        .context("encode the results as JSON")?;
    fs::write(&path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    println!("results: {}", path.display());
    Ok(())
}
