//! `fdtrace record`, `attach --record` and `fdtrace report`: the report
//! read back from a trace file is the live one, byte for byte; a file cut
//! short still reports what it holds; a bad file is one line and exit 1.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::Duration,
};

use fdtrace_tests::{bpf_or_skip, c_fixture, fdtrace, python, scratch_dir, wait_until_ready};
use serde_json::Value;

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(fdtrace())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run fdtrace")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `fdtrace report TRACE --format FORMAT` into a file; its bytes.
fn report(dir: &Path, trace: &str, format: &str) -> Vec<u8> {
    let out = format!("replayed.{format}");
    let o = run(dir, &["report", trace, "--format", format, "-o", &out]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    fs::read(dir.join(out)).unwrap()
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("report is JSON")
}

#[test]
fn a_recorded_trace_reports_exactly_what_the_live_trace_did() {
    if !bpf_or_skip() {
        return;
    }
    let dir = scratch_dir("record-same");
    // Leaks from two stacks, an EMFILE with its holders (hoard), and a
    // double close with both stacks (misuse).
    for (fixture, args) in [("hoard.c", &[][..]), ("misuse.c", &["double"][..])] {
        let program = c_fixture(fixture);
        for format in ["text", "json", "sarif"] {
            let trace = format!("{format}.fdt");
            let live = format!("live.{format}");
            let mut argv = vec![
                "record", "--force", "-o", &trace, "--report", &live, "--format", format, "--",
            ];
            let program = program.to_str().unwrap();
            argv.push(program);
            argv.extend(args);
            let o = run(&dir, &argv);
            assert!(o.status.code().is_some(), "{}", stderr(&o));
            assert!(
                stderr(&o).contains(&format!("trace written to {trace}")),
                "{}",
                stderr(&o)
            );
            let live = fs::read(dir.join(&live)).unwrap();
            let replayed = report(&dir, &trace, format);
            assert!(
                live == replayed,
                "{fixture} {format}: the report from the file differs:\n--- live\n{}\n--- replayed\n{}",
                String::from_utf8_lossy(&live),
                String::from_utf8_lossy(&replayed)
            );
        }
        let r = json(&report(&dir, "json.fdt", "json"));
        if fixture == "hoard.c" {
            // Judged at report time: the same trace, two policies.
            let o = run(&dir, &["report", "json.fdt", "--fail-on", "leak,emfile"]);
            assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
            let o = run(&dir, &["report", "json.fdt", "--fail-on", "exec-leak"]);
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
            assert_eq!(r["leaks"].as_array().unwrap().len(), 61);
            assert_eq!(r["emfile"][0]["holders"][0]["count"], 60);
            assert_eq!(r["processes"][0]["peak_fds"], 64);
        } else {
            assert_eq!(r["fd_misuse"][0]["type"], "double-close");
        }
        // From standard input too.
        let mut child = Command::new(fdtrace())
            .current_dir(&dir)
            .args(["report", "-", "--format", "json"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&fs::read(dir.join("json.fdt")).unwrap())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0));
        assert_eq!(json(&o.stderr), r);
    }
}

#[test]
fn attach_records_too() {
    if !bpf_or_skip() {
        return;
    }
    let dir = scratch_dir("record-attach");
    let mut child = Command::new(c_fixture("misuse.c"))
        .arg("serve")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_ready(&mut child);
    let pid = child.id().to_string();
    let o = run(
        &dir,
        &[
            "attach",
            "-p",
            &pid,
            "--duration",
            "2s",
            "--interval",
            "500ms",
            "--record",
            "a.fdt",
            "--format",
            "json",
            "-o",
            "live.json",
        ],
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let live = fs::read(dir.join("live.json")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&report(&dir, "a.fdt", "json")),
        String::from_utf8_lossy(&live)
    );
    let r = json(&live);
    assert_eq!(r["mode"], "attach");
    assert!(!r["intervals"].as_array().unwrap().is_empty());
    assert_eq!(r["fd_misuse"][0]["type"], "double-close");
}

/// A Python program that leaks from `hold` and then sleeps.
const HOLDER: &str = "\
import time
def hold():
    return [open('/etc/hostname') for _ in range(7)]
kept = hold()
print('ready', flush=True)
time.sleep(60)
";

#[test]
fn a_trace_cut_short_reports_everything_before_the_cut() {
    if !bpf_or_skip() {
        return;
    }
    let dir = scratch_dir("record-cut");
    fs::write(dir.join("holder.py"), HOLDER).unwrap();
    let mut tracer = Command::new(fdtrace())
        .current_dir(&dir)
        .args(["record", "-o", "cut.fdt", "--", &python(), "holder.py"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until_ready(&mut tracer);
    // Long enough for the stacks to be unwound and written (200 ms) and
    // flushed (every 10 ms).
    thread::sleep(Duration::from_millis(1500));
    // SIGKILL: no chance to finish the file.
    tracer.kill().unwrap();
    tracer.wait().unwrap();
    let _ = Command::new("pkill").args(["-f", "holder.py"]).status();
    let r = json(&report(&dir, "cut.fdt", "json"));
    let notes = r["notes"].to_string();
    assert!(notes.contains("cut short at byte"), "{notes}");
    let hostname: Vec<&Value> = r["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["target"] == "/etc/hostname")
        .collect();
    assert_eq!(hostname.len(), 7, "{r:#}");
    let id = &hostname[0]["stack_id"];
    let group = r["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| &g["stack_id"] == id)
        .expect("the leak's stack is in the file");
    assert!(
        group["stack"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["function"] == "hold" && f["lang"] == "python"),
        "{group:#}"
    );
}

#[test]
fn bad_trace_files_are_one_line_with_the_offset() {
    let dir = scratch_dir("record-bad");
    fs::write(dir.join("text.fdt"), "not a trace at all\n").unwrap();
    let mut newer = b"FDTRACE\n".to_vec();
    newer.extend_from_slice(&999u16.to_le_bytes());
    fs::write(dir.join("newer.fdt"), &newer).unwrap();
    // A valid header, then a record whose length runs past any sane size.
    let mut corrupt = b"FDTRACE\n\x01\x00".to_vec();
    corrupt.extend_from_slice(&[0x0e, 0x05]);
    corrupt.extend_from_slice(b"0.1.0");
    corrupt.extend_from_slice(&[0x03]);
    corrupt.extend_from_slice(b"run");
    corrupt.extend_from_slice(&[0x00, 0x00, 0x00, 0x00]);
    corrupt.extend_from_slice(&[0x01, 0xff]);
    fs::write(dir.join("corrupt.fdt"), &corrupt).unwrap();
    for (file, says) in [
        ("text.fdt", "text.fdt: not an fdtrace trace (byte 0)"),
        (
            "newer.fdt",
            "newer.fdt: trace format version 999 (byte 8) is newer",
        ),
        ("corrupt.fdt", "corrupt.fdt: corrupt record at byte 25"),
        ("missing.fdt", "missing.fdt: cannot read it"),
    ] {
        let o = run(&dir, &["report", file]);
        assert_eq!(o.status.code(), Some(1), "{file}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(says), "{file}: {err}");
    }
}

#[test]
fn record_never_writes_over_a_file_unless_forced_and_never_through_a_link() {
    if !bpf_or_skip() {
        return;
    }
    let dir = scratch_dir("record-force");
    fs::write(dir.join("old.fdt"), "precious").unwrap();
    let o = run(&dir, &["record", "-o", "old.fdt", "--", "/bin/true"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(fs::read_to_string(dir.join("old.fdt")).unwrap(), "precious");
    // A link someone left where the trace goes: replaced itself, never
    // written through.
    let victim: PathBuf = dir.join("victim");
    fs::write(&victim, "keep me").unwrap();
    symlink(&victim, dir.join("link.fdt")).unwrap();
    let o = run(&dir, &["record", "-o", "link.fdt", "--", "/bin/true"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = run(
        &dir,
        &["record", "--force", "-o", "link.fdt", "--", "/bin/true"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep me");
    assert!(
        fs::symlink_metadata(dir.join("link.fdt"))
            .unwrap()
            .is_file()
    );
    let o = run(&dir, &["report", "link.fdt"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn a_trace_costs_at_most_40_bytes_an_event() {
    if !bpf_or_skip() {
        return;
    }
    let dir = scratch_dir("record-size");
    let bench = c_fixture("bench.c");
    let o = run(
        &dir,
        &[
            "record",
            "-o",
            "loop.fdt",
            "--",
            bench.to_str().unwrap(),
            "openclose",
            "200000",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // 200,000 opens and as many closes (the stacks: a handful, once each).
    let size = fs::metadata(dir.join("loop.fdt")).unwrap().len();
    let per_event = size / 400_000;
    eprintln!("200k open/close loop: {size} bytes, {per_event} bytes an event");
    assert!(per_event <= 40, "{size} bytes for 400,000 events");
    let _ = fs::remove_file(dir.join("loop.fdt"));
}

#[test]
fn real_programs_report_the_same_from_their_trace() {
    if !bpf_or_skip() {
        return;
    }
    let dir = scratch_dir("record-real");
    fs::write(
        dir.join("test_mixed.py"),
        "import os, subprocess\n\nkept = []\n\n\
         def test_clean():\n    with open('/etc/hostname') as f:\n        f.read()\n\n\
         def test_subprocess():\n    subprocess.run(['true'], check=True)\n\n\
         def test_keeps_a_descriptor():\n    kept.append(os.open('/etc/hostname', os.O_RDONLY))\n",
    )
    .unwrap();
    fs::write(
        dir.join("Makefile"),
        "all: a b\na:\n\techo a > a\nb:\n\tsh -c 'cat a > b'\n",
    )
    .unwrap();
    let programs: [&[&str]; 3] = [
        &["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        &["make", "-j2"],
        &["git", "--version"],
    ];
    for (i, cmd) in programs.iter().enumerate() {
        for format in ["text", "json"] {
            let trace = format!("real{i}-{format}.fdt");
            let live = format!("real{i}.{format}");
            let mut argv = vec![
                "record", "-o", &trace, "--report", &live, "--format", format, "--",
            ];
            argv.extend(*cmd);
            let o = run(&dir, &argv);
            assert_eq!(o.status.code(), Some(0), "{cmd:?}: {}", stderr(&o));
            let live = fs::read(dir.join(&live)).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&report(&dir, &trace, format)),
                String::from_utf8_lossy(&live),
                "{cmd:?}"
            );
        }
    }
    let r = json(&fs::read(dir.join("real0.json")).unwrap());
    assert_eq!(r["leaks"].as_array().unwrap().len(), 1, "{r:#}");
    assert_eq!(
        r["leaks_by_test"][0]["test"], "test_mixed.py::test_keeps_a_descriptor",
        "{r:#}"
    );
}
