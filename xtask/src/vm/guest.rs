//! Running the smoke set (xtask/vm/smoke.sh): in a virtme-ng guest booted
//! on a downloaded kernel, sharing the host's root filesystem read-only and
//! one writable output directory, or directly on the host. Either way the
//! result is read from files the script wrote, never from the console, and
//! a guest that outlives its deadline is killed and reported, never waited on.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::process::{command, describe};
use crate::vm::kernels::Kernel;

/// What the smoke script runs and where it finds it.
pub struct Smoke {
    pub script: PathBuf,
    pub fdtrace: PathBuf,
    pub fixtures: PathBuf,
    pub sources: PathBuf,
}

/// One row of the matrix: how long it took and what each check said.
pub struct Outcome {
    pub seconds: f64,
    /// check name -> `None` for PASS, `Some(reason)` for FAIL.
    pub checks: BTreeMap<String, Option<String>>,
    /// `INFO key value` lines: kernel, btf, load_seconds.
    pub info: BTreeMap<String, String>,
    /// Why the run did not finish (timeout, boot failure), if it did not.
    pub error: Option<String>,
}

/// Runs the smoke set on the host kernel, writing into `out`.
pub fn run_host(smoke: &Smoke, out: &Path, deadline: Duration) -> Result<Outcome> {
    prepare(out)?;
    let started = Instant::now();
    let log = File::create(out.join("smoke.log"))
        .with_context(|| format!("create {}", out.join("smoke.log").display()))?;
    let mut cmd = command("sh");
    cmd.arg(&smoke.script)
        .args([&smoke.fdtrace, &smoke.fixtures, &smoke.sources])
        .arg(out)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicate the smoke log handle")?)
        .stderr(log);
    let waited = wait_with_deadline(
        cmd.process_group(0).spawn().context("start sh smoke.sh")?,
        deadline,
    )?;
    if let Some(code) = &waited {
        fs::write(out.join("status"), format!("{code}\n")).context("write the smoke status")?;
    }
    Ok(collect(out, started, waited, deadline))
}

/// Boots `kernel` with `vng` and runs the smoke set inside, writing into `out`.
pub fn run_guest(
    vng: &Path,
    kernel: &Kernel,
    smoke: &Smoke,
    out: &Path,
    deadline: Duration,
) -> Result<Outcome> {
    prepare(out)?;
    // The guest's whole job, as one shell command: its exit status goes to
    // a file because vng's own status does not carry it reliably.
    let inner = [
        "sh".as_ref(),
        smoke.script.as_os_str(),
        smoke.fdtrace.as_os_str(),
        smoke.fixtures.as_os_str(),
        smoke.sources.as_os_str(),
        out.as_os_str(),
    ]
    .map(|word| shell_quote(&word.to_string_lossy()))
    .join(" ");
    let out_q = shell_quote(&out.to_string_lossy());
    let script =
        format!("SMOKE_GUEST=1 {inner} > {out_q}/smoke.log 2>&1; echo $? > {out_q}/status");

    let console = File::create(out.join("console.log"))
        .with_context(|| format!("create {}", out.join("console.log").display()))?;
    let mut cmd = command(vng);
    cmd.arg("--run")
        .arg(&kernel.vmlinuz)
        .args([
            "--user",
            "root",
            "--memory",
            "2G",
            "--cpus",
            "1",
            "--verbose",
        ])
        .arg(format!("--rwdir={}", out.display()));
    if !kvm_usable() {
        cmd.arg("--disable-kvm");
    }
    cmd.arg("--")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(
            console
                .try_clone()
                .context("duplicate the console log handle")?,
        )
        .stderr(console);
    let started = Instant::now();
    let child = cmd
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {}", vng.display()))?;
    let waited = wait_with_deadline(child, deadline)?;
    let mut outcome = collect(out, started, waited, deadline);
    if outcome.error.is_some() {
        let tail = last_lines(&out.join("console.log"), 5);
        outcome.error = outcome.error.map(|e| format!("{e}; console: {tail}"));
    }
    Ok(outcome)
}

/// KVM only when the CPU has VMX/SVM and /dev/kvm opens; else qemu's TCG.
fn kvm_usable() -> bool {
    let cpu_has_it = fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
    });
    cpu_has_it
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

fn prepare(out: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(out);
    fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))
}

/// Waits for `child` until `deadline`; on timeout kills its whole process
/// group (vng, qemu and helpers) and returns `None`.
fn wait_with_deadline(mut child: Child, deadline: Duration) -> Result<Option<String>> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("wait for the smoke run")? {
            return Ok(Some(describe(status)));
        }
        if started.elapsed() > deadline {
            let group = i32::try_from(child.id()).context("process id out of range")?;
            // SAFETY: kill has no memory preconditions; the negative id names
            // the process group this child leads (it was spawned with
            // process_group(0)), so only processes it started are signalled.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// Reads what the smoke script wrote to `out`.
fn collect(out: &Path, started: Instant, waited: Option<String>, deadline: Duration) -> Outcome {
    let seconds = started.elapsed().as_secs_f64();
    let mut checks = BTreeMap::new();
    let mut info = BTreeMap::new();
    let log = fs::read_to_string(out.join("smoke.log")).unwrap_or_default();
    for line in log.lines() {
        if let Some(name) = line.strip_prefix("PASS ") {
            checks.insert(name.trim().to_owned(), None);
        } else if let Some(rest) = line.strip_prefix("FAIL ") {
            let (name, reason) = rest.split_once(": ").unwrap_or((rest, "failed"));
            checks.insert(name.trim().to_owned(), Some(reason.trim().to_owned()));
        } else if let Some(rest) = line.strip_prefix("INFO ") {
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            info.insert(key.to_owned(), value.trim().to_owned());
        }
    }
    let finished = out.join("status").is_file();
    let error = match (&waited, finished) {
        (None, _) => Some(format!(
            "timed out after {} s and was killed",
            deadline.as_secs()
        )),
        (Some(status), false) => Some(format!(
            "the smoke script never finished ({status}); last output: {}",
            last_lines(&out.join("smoke.log"), 3)
        )),
        (Some(_), true) => None,
    };
    Outcome {
        seconds,
        checks,
        info,
        error,
    }
}

fn last_lines(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Quotes `word` for sh: inside single quotes, with `'` spelled `'\''`.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}
