//! The command line: exit codes, output destinations, signals, identity,
//! errors, and the JSON contract.

use std::process::{Command, Stdio};

use fdtrace_tests::{bpf_or_skip, c_fixture, fdtrace, fixture_out, trace, wait_until_ready};
use serde_json::Value;

#[test]
fn exits_with_the_commands_status_and_fails_on_leak_when_asked() {
    if !bpf_or_skip() {
        return;
    }
    let t = trace(&[], &["sh", "-c", "exit 7"]);
    assert_eq!(t.code(), Some(7));
    assert_eq!(t.report["exit_status"], 7);
    let bin = c_fixture("lifetimes.c");
    let leaky = [bin.to_str().unwrap(), "reuse"];
    assert_eq!(trace(&[], &leaky).code(), Some(0));
    assert_eq!(trace(&["--fail-on-leak"], &leaky).code(), Some(3));
    assert_eq!(
        trace(&["--fail-on-leak", "--leak-exit-code", "42"], &leaky).code(),
        Some(42)
    );
    assert_eq!(trace(&["--fail-on-leak"], &["/bin/true"]).code(), Some(0));
}

#[test]
fn text_report_goes_to_stderr_and_keeps_stdout_clean() {
    if !bpf_or_skip() {
        return;
    }
    let bin = c_fixture("lifetimes.c");
    let output = Command::new(fdtrace())
        .args(["run", "--"])
        .arg(&bin)
        .arg("uid")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.starts_with("uid="), "{stdout}");
    assert!(!stdout.contains("fdtrace"), "{stdout}");
    assert!(
        stderr.contains("1 descriptor never closed, from 1 stack, in 1 process."),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 x file, opened by openat in lifetimes-g["),
        "{stderr}"
    );
    assert!(stderr.contains("print_uid"), "{stderr}");
    assert!(stderr.contains("Dropped events: 0."), "{stderr}");
    assert!(stderr.lines().all(|l| l.chars().count() <= 80), "{stderr}");
    assert!(!stderr.contains('\x1b'), "no colour when not a terminal");
}

#[test]
fn under_sudo_the_command_runs_as_the_invoking_user() {
    if !bpf_or_skip() || unsafe_geteuid() != 0 {
        return;
    }
    let bin = c_fixture("lifetimes.c");
    let run = |extra: &[&str]| {
        let output = Command::new(fdtrace())
            .arg("run")
            .args(extra)
            .arg("--")
            .arg(&bin)
            .arg("uid")
            .env("SUDO_UID", "65534")
            .env("SUDO_GID", "65534")
            .env("SUDO_USER", "nobody")
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(run(&[]), "uid=65534 gid=65534\n");
    assert_eq!(run(&["--as-root"]), "uid=0 gid=0\n");
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() }
}

#[test]
fn ctrl_c_is_forwarded_and_the_report_still_printed() {
    if !bpf_or_skip() {
        return;
    }
    let bin = c_fixture("lifetimes.c");
    let report = fixture_out().join(format!("interrupt-{}.json", std::process::id()));
    let mut child = Command::new(fdtrace())
        .args(["run", "--format", "json", "-o"])
        .arg(&report)
        .arg("--")
        .arg(&bin)
        .arg("interrupt")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_ready(&mut child);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "128 + SIGINT");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["exit_status"], 130);
    let leaks = json["leaks"].as_array().unwrap();
    assert_eq!(leaks.len(), 1, "{json}");
    assert_eq!(leaks[0]["target"], "/etc/hostname");
}

#[test]
fn a_missing_command_exits_127_and_a_non_executable_126() {
    let output = Command::new(fdtrace())
        .args(["run", "--", "no-such-command-fdtrace"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(127));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("command not found: no-such-command-fdtrace"),
        "{stderr}"
    );
    let not_exec = fixture_out().join("not-executable.txt");
    std::fs::write(&not_exec, "data").unwrap();
    let output = Command::new(fdtrace())
        .args(["run", "--"])
        .arg(&not_exec)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&output.stderr).contains("permission denied"));
}

#[test]
fn without_privileges_it_says_to_use_sudo() {
    if unsafe_geteuid() != 0 {
        return;
    }
    // Drop to nobody with no capabilities.
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(fdtrace())
        .args(["run", "--", "/bin/true"])
        .output()
        .expect("run setpriv (util-linux)");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("CAP_BPF and CAP_PERFMON"), "{stderr}");
    assert!(stderr.contains("sudo"), "{stderr}");
}

#[test]
fn bad_flags_are_rejected_with_a_clear_message() {
    let output = Command::new(fdtrace())
        .args(["run", "--stack-bytes", "99", "--", "true"])
        .output()
        .unwrap();
    // Argument errors exit 2, like clap's own (README, "Exit codes").
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("--stack-bytes must be between 512 and 32768")
    );
    let output = Command::new(fdtrace())
        .args(["run", "--format", "xml", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn tracefs_is_mounted_when_missing() {
    if !bpf_or_skip() {
        return;
    }
    // In a private mount namespace, so the host keeps its tracefs.
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
         test ! -d /sys/kernel/tracing/events || exit 99; {} run -- /bin/true && test -d /sys/kernel/tracing/events",
        fdtrace().display()
    );
    let status = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn json_report_follows_the_documented_contract() {
    if !bpf_or_skip() {
        return;
    }
    let bin = c_fixture("lifetimes.c");
    let t = trace(&[], &[bin.to_str().unwrap(), "exec"]);
    let r = &t.report;
    assert_eq!(r["version"], 1);
    assert_eq!(r["mode"], "run");
    assert_eq!(r["fd_set_overflows"], serde_json::json!([]));
    assert_eq!(r["intervals"], serde_json::json!([]));
    assert_eq!(
        r["command"],
        serde_json::json!([bin.to_str().unwrap(), "exec"])
    );
    assert!(r["exit_status"].is_i64());
    assert!(r["dropped_events"].is_u64());
    assert!(r["incomplete"].is_boolean());
    for p in r["processes"].as_array().unwrap() {
        assert!(
            p["pid"].is_u64() && p["comm"].is_string() && p["exe"].is_string(),
            "{p}"
        );
        assert!(
            p.get("ppid").is_some() && p.get("exit_status").is_some(),
            "{p}"
        );
    }
    for l in t.leaks() {
        for key in ["pid", "fd", "age_ms"] {
            assert!(l[key].is_u64(), "{key} in {l}");
        }
        for key in ["kind", "target", "opened_by"] {
            assert!(l[key].is_string(), "{key} in {l}");
        }
        assert!(l["cloexec"].is_boolean() && l["stack_id"].is_u64(), "{l}");
    }
    for e in t.exec_leaks() {
        assert!(
            e["pid"].is_u64() && e["fd"].is_u64() && e["stack_id"].is_u64(),
            "{e}"
        );
        assert!(
            e["kind"].is_string() && e["target"].is_string() && e["exec"].is_string(),
            "{e}"
        );
    }
    assert!(r["emfile"].is_array());
    let groups = r["groups"].as_array().unwrap();
    assert!(!groups.is_empty());
    for g in groups {
        assert!(g["stack_id"].is_u64() && g["count"].is_u64(), "{g}");
        for f in g["stack"].as_array().unwrap() {
            assert!(f["address"].as_str().unwrap().starts_with("0x"), "{f}");
            for key in ["function", "file", "line", "module"] {
                assert!(f.get(key).is_some(), "{key} in {f}");
            }
            assert!(f["inlined"].is_boolean(), "{f}");
        }
    }
}

/// Runs `fdtrace run --as-root -o REPORT -- touch MARKER` with `env`;
/// (exit code, stderr, whether the command ran).
fn run_with_output(report: &std::path::Path, env: &[(&str, &str)]) -> (Option<i32>, String, bool) {
    let marker = fixture_out().join(format!("ran-{}-{}", std::process::id(), rand_suffix()));
    let output = Command::new(fdtrace())
        .args(["run", "--as-root", "--format", "json", "-o"])
        .arg(report)
        .arg("--")
        .arg("touch")
        .arg(&marker)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let ran = marker.exists();
    let _ = std::fs::remove_file(&marker);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        ran,
    )
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn an_unwritable_report_file_is_an_error_before_the_command_runs() {
    if !bpf_or_skip() {
        return;
    }
    let (code, stderr, ran) = run_with_output(std::path::Path::new("/nonexistent/dir/r.json"), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(!ran, "the command must not run");
    assert!(
        stderr.contains("/nonexistent/dir") && stderr.lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn a_report_file_planted_by_another_user_is_never_followed_or_replaced() {
    if !bpf_or_skip() || unsafe_geteuid() != 0 {
        return;
    }
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    // A world-writable sticky directory, like /tmp, and a root-owned file.
    let dir = fdtrace_tests::scratch_dir("planted");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = dir.join("root-owned");
    std::fs::write(&victim, "precious\n").unwrap();
    let report = dir.join("r.json");
    // `nobody` (a throwaway user) plants a symlink where the report goes.
    let planted = Command::new("runuser")
        .args(["-u", "nobody", "--", "ln", "-s"])
        .arg(&victim)
        .arg(&report)
        .status()
        .unwrap();
    assert!(planted.success());
    let (code, stderr, ran) = run_with_output(&report, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(!ran && stderr.contains("uid 65534"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(
        std::fs::symlink_metadata(&report)
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // A hard link to the root-owned file is replaced, never written through.
    std::fs::remove_file(&report).unwrap();
    std::fs::hard_link(&victim, &report).unwrap();
    let (code, stderr, ran) = run_with_output(&report, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(ran);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["mode"], "run");

    // Under umask 000 the report is still 0644; under sudo it is the
    // invoking user's.
    std::fs::remove_file(&report).unwrap();
    // SAFETY: umask(2) has no preconditions; restored below.
    let old = unsafe { libc::umask(0) };
    let (code, stderr, _) =
        run_with_output(&report, &[("SUDO_UID", "65534"), ("SUDO_GID", "65534")]);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    assert_eq!(code, Some(0), "{stderr}");
    let meta = std::fs::metadata(&report).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.uid(), meta.gid()),
        (0o644, 65534, 65534)
    );
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".fdtrace-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn attach_started_with_sigint_ignored_still_stops_on_it_and_a_signal_at_start_up_is_kept() {
    if !bpf_or_skip() {
        return;
    }
    use std::os::unix::process::CommandExt as _;
    let mut target = Command::new("sleep").arg("60").spawn().unwrap();
    let report = fixture_out().join(format!("ignored-{}.json", std::process::id()));
    // Like a background job of a non-interactive shell: SIGINT ignored.
    let mut command = Command::new(fdtrace());
    command
        .args([
            "attach",
            "-p",
            &target.id().to_string(),
            "--format",
            "json",
            "-o",
        ])
        .arg(&report)
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe signal(2) between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    // Wait until it is attached ("attached to ..." on stderr).
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    while !seen.contains("attached to") {
        let mut buf = [0u8; 256];
        let n = std::io::Read::read(&mut stderr, &mut buf).unwrap();
        assert!(n > 0, "fdtrace ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["mode"], "attach");
    std::fs::remove_file(&report).unwrap();

    // SIGTERM while the probes are still loading ends it with a report,
    // instead of being lost or killing it without one.
    let mut child = Command::new(fdtrace())
        .args([
            "attach",
            "-p",
            &target.id().to_string(),
            "--format",
            "json",
            "-o",
        ])
        .arg(&report)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    // SAFETY: as above.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(report.exists(), "a report, even for a signal at start-up");
    std::fs::remove_file(&report).unwrap();
    target.kill().unwrap();
    target.wait().unwrap();
}
