//! Real programs nobody wrote for these tests (shells, make, Go, git,
//! pytest, tar, gcc) report nothing with default settings; the same runs
//! with a deliberate leak inside report exactly that leak; and descriptors
//! handed to a program on purpose are told from those leaked into it.

use std::{fs, path::Path, process::Command};

use fdtrace_tests::{Trace, bpf_or_skip, c_fixture, scratch_dir, trace, trace_in};
use serde_json::Value;

/// Every finding of a report, one line each, for assertion messages.
fn findings(t: &Trace) -> String {
    let mut lines = Vec::new();
    for (section, key) in [
        ("leak", "leaks"),
        ("exec-leak", "exec_leaks"),
        ("unknown", "unknown_leaks"),
        ("gc-closed", "gc_closed"),
    ] {
        for f in t.report[key].as_array().into_iter().flatten() {
            lines.push(format!(
                "{section}: pid {} fd {} {} {} by {} {:?}",
                f["pid"],
                f["fd"],
                f["kind"],
                f["target"],
                f["opened_by"],
                t.functions(&f["stack_id"])
            ));
        }
    }
    for m in t.report["fd_misuse"].as_array().into_iter().flatten() {
        lines.push(format!(
            "{}: pid {} {}({}) x{} {:?} closed at {:?}",
            m["type"],
            m["pid"],
            m["syscall"],
            m["fd"],
            m["count"],
            t.functions(&m["stack_id"]),
            t.functions(&m["closed_stack_id"])
        ));
    }
    lines.join("\n")
}

/// No leak, no exec-leak, no misuse, nothing unknown, nothing dropped.
fn assert_clean(what: &str, t: &Trace) {
    assert_eq!(t.report["dropped_events"], 0, "{what}");
    let empty = |key: &str| t.report[key].as_array().is_some_and(Vec::is_empty);
    let clean = t.leaks().is_empty()
        && t.exec_leaks().is_empty()
        && empty("unknown_leaks")
        && empty("gc_closed")
        && empty("fd_misuse")
        && t.report["misuse_withheld"] == 0;
    assert!(
        clean,
        "{what} must report nothing; it reported:\n{}\nstderr: {}",
        findings(t),
        t.stderr()
    );
}

/// How many descriptors built-in rules took, by rule reason.
fn built_in_matches(t: &Trace) -> Vec<(String, u64)> {
    t.report["suppressions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["built_in"] == true)
        .map(|s| {
            (
                s["reason"].as_str().unwrap().to_owned(),
                s["matched"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).unwrap();
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn shell_redirections_and_pipelines_report_nothing() {
    if !bpf_or_skip() {
        return;
    }
    for shell in ["/bin/dash", "/bin/bash"] {
        for script in [
            "/bin/true >/dev/null",
            "true >/dev/null 2>&1",
            "ls / | wc -l >/dev/null",
            "cat </etc/hostname | wc -c >/dev/null; x=$(cat /etc/hostname); echo \"$x\" >/dev/null",
            "exec 3</etc/hostname; cat <&3 >/dev/null; exec 3<&-",
        ] {
            let t = trace(&[], &[shell, "-c", script]);
            assert_eq!(t.code(), Some(0), "{shell} -c '{script}': {}", t.stderr());
            assert_clean(&format!("{shell} -c '{script}'"), &t);
        }
    }
    // Both shells misuse descriptors in every pipeline, harmlessly: the
    // built-in rules say so, and they are what takes those findings.
    for (shell, rule) in [
        (
            "/bin/dash",
            "dash (Debian's /bin/sh) closes the unused pipe end",
        ),
        (
            "/bin/bash",
            "bash closes the pipe ends of a pipeline's command twice",
        ),
    ] {
        let t = trace(
            &["--no-default-suppressions"],
            &[shell, "-c", "ls / | wc -l >/dev/null"],
        );
        assert!(
            !t.report["fd_misuse"].as_array().unwrap().is_empty(),
            "{shell}"
        );
        let t = trace(&[], &[shell, "-c", "ls / | wc -l >/dev/null"]);
        assert!(
            built_in_matches(&t)
                .iter()
                .any(|(reason, n)| reason.starts_with(rule) && *n > 0),
            "{shell}: {:?}",
            built_in_matches(&t)
        );
    }
}

#[test]
fn a_bash_script_run_by_path_and_a_pyenv_style_shim_report_nothing() {
    if !bpf_or_skip() {
        return;
    }
    let dir = scratch_dir("scripts");
    write(
        &dir,
        "script.sh",
        "#!/bin/bash\necho hi >/dev/null\nls / | wc -l >/dev/null\nx=$(cat /etc/hostname)\nwhile read -r line; do :; done </etc/hostname\ntrue\n",
    );
    let script = dir.join("script.sh");
    make_executable(&script);
    let t = trace(&[], &[script.to_str().unwrap()]);
    assert_clean("a bash script", &t);
    // bash keeps the script open on fd 255: a built-in rule says so.
    let taken = built_in_matches(&t);
    assert!(
        taken
            .iter()
            .any(|(r, n)| r.starts_with("bash keeps the script") && *n == 1),
        "{taken:?}"
    );
    // Without the built-in rules it is a leak from move_to_high_fd.
    let t = trace(&["--no-default-suppressions"], &[script.to_str().unwrap()]);
    let leaks: Vec<(i64, Vec<String>)> = t
        .leaks()
        .iter()
        .map(|l| (l["fd"].as_i64().unwrap(), t.functions(&l["stack_id"])))
        .collect();
    assert_eq!(leaks.len(), 1, "{}", findings(&t));
    assert_eq!(leaks[0].0, 255);
    assert!(
        leaks[0].1.iter().any(|f| f == "move_to_high_fd"),
        "{leaks:?}"
    );

    // Debian's /bin/sh (dash) keeps its script open too, above fd 10.
    write(
        &dir,
        "script-sh.sh",
        "#!/bin/sh\necho hi >/dev/null\nx=$(cat /etc/hostname)\ntrue\n",
    );
    let sh_script = dir.join("script-sh.sh");
    make_executable(&sh_script);
    let t = trace(&[], &[sh_script.to_str().unwrap()]);
    assert_clean("a /bin/sh script", &t);

    // A shim like pyenv's: a bash script that execs Python, which runs a
    // child with redirected output.
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let python = fdtrace_tests::python();
    write(
        &bin,
        "python3",
        &format!("#!/bin/bash\nversion=$(cat /etc/hostname)\nexec {python} \"$@\"\n"),
    );
    make_executable(&bin.join("python3"));
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let t = trace_in(
        &dir,
        &[("PATH", &path)],
        &[],
        &[
            "python3",
            "-c",
            "import subprocess; subprocess.run(['true'], stdout=subprocess.DEVNULL, check=True)",
        ],
    );
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    assert_clean("a pyenv-style shim", &t);
}

/// A small C project: 7 objects at the top, a recursive sub-make below.
fn c_project() -> std::path::PathBuf {
    let dir = scratch_dir("cproject");
    let sub = dir.join("sub");
    fs::create_dir_all(&sub).unwrap();
    let mut objects = Vec::new();
    for i in 1..=7 {
        write(
            &dir,
            &format!("f{i}.c"),
            &format!("int f{i}(int x) {{ return x * {i}; }}\n"),
        );
        objects.push(format!("f{i}.o"));
    }
    write(
        &dir,
        "main.c",
        "int f1(int);\nint main(void) { return f1(0); }\n",
    );
    write(
        &dir,
        "Makefile",
        &format!(
            "OBJS = main.o {}\nall: prog\n\t$(MAKE) -C sub\nprog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n",
            objects.join(" ")
        ),
    );
    write(&sub, "lib.c", "int lib(void) { return 1; }\n");
    write(&sub, "Makefile", "lib.o: lib.c\n\t$(CC) -c -o $@ $<\n");
    dir
}

#[test]
fn make_j2_of_a_c_project_reports_nothing() {
    if !bpf_or_skip() {
        return;
    }
    let dir = c_project();
    let t = trace(&[], &["make", "-j2", "-C", dir.to_str().unwrap()]);
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    assert!(dir.join("prog").exists() && dir.join("sub/lib.o").exists());
    assert_clean("make -j2", &t);
    // The sub-make used the jobserver it inherited: not an exec-leak, and
    // no rule was needed for it.
    let processes = t.report["processes"].as_array().unwrap();
    assert!(processes.iter().filter(|p| p["comm"] == "make").count() >= 2);
}

#[test]
fn a_go_program_reports_only_its_own_leak() {
    if !bpf_or_skip() {
        return;
    }
    let dir = scratch_dir("goprog");
    write(&dir, "go.mod", "module goprog\n\ngo 1.19\n");
    write(
        &dir,
        "main.go",
        r#"package main

import (
	"net"
	"os"
)

func main() {
	for i := 0; i < 20; i++ {
		f, err := os.Open("/etc/hostname")
		if err != nil {
			panic(err)
		}
		f.Close()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		panic(err)
	}
	s, _ := l.Accept()
	s.Close()
	c.Close()
	l.Close()
	if len(os.Args) > 1 {
		kept, _ := os.Open("/etc/passwd") // leaked on purpose
		_ = kept
	}
}
"#,
    );
    let cache = dir.join("cache");
    let out = dir.join("goprog");
    let built = Command::new("go")
        .current_dir(&dir)
        .env("GOCACHE", &cache)
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .output()
        .expect("run go (cargo xtask setup installs golang-go)");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let t = trace(&[], &[out.to_str().unwrap()]);
    assert_clean("a Go program", &t);
    let taken = built_in_matches(&t);
    assert!(
        taken
            .iter()
            .any(|(r, n)| r.contains("Go runtime") && *n >= 2),
        "the netpoller's epoll and wakeup pipe: {taken:?}"
    );
    let t = trace(&[], &[out.to_str().unwrap(), "leak"]);
    assert_eq!(t.leaks().len(), 1, "{}", findings(&t));
    assert_eq!(t.leaks()[0]["target"], "/etc/passwd");
    assert!(
        t.functions(&t.leaks()[0]["stack_id"])
            .contains(&"main.main".to_owned())
    );
}

#[test]
fn git_tar_and_gcc_report_nothing() {
    if !bpf_or_skip() {
        return;
    }
    let dir = scratch_dir("repo");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .current_dir(&dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    write(&dir, "a.c", "int a(void) { return 0; }\n");
    git(&["add", "a.c"]);
    git(&["commit", "-qm", "a"]);
    write(&dir, "b.txt", "untracked\n");
    let t = trace_in(&dir, &[], &[], &["git", "status"]);
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    assert_clean("git status", &t);

    let tree = fdtrace_tests::workspace().join("fdtrace/src");
    let t = trace(
        &[],
        &["tar", "-C", tree.to_str().unwrap(), "-cf", "/dev/null", "."],
    );
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    assert_clean("tar -C", &t);
    let taken = built_in_matches(&t);
    assert!(
        taken.iter().any(|(r, _)| r.contains("GNU tar")),
        "{taken:?}"
    );

    let object = dir.join("a.o");
    let t = trace(
        &[],
        &[
            "gcc",
            "-O2",
            "-c",
            "-o",
            object.to_str().unwrap(),
            dir.join("a.c").to_str().unwrap(),
        ],
    );
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    assert_clean("gcc -c", &t);
}

/// A small pytest suite; with `leaky`, one test opens a descriptor with
/// `os.open` and never closes it.
fn pytest_suite(leaky: bool) -> std::path::PathBuf {
    let dir = scratch_dir("pytest");
    write(
        &dir,
        "test_clean.py",
        "import os, socket, subprocess\n\n\
         def test_file(tmp_path):\n    with open(tmp_path / 'x', 'w') as f:\n        f.write('x')\n\n\
         def test_socket():\n    with socket.socket() as s:\n        s.bind(('127.0.0.1', 0))\n\n\
         def test_subprocess():\n    subprocess.run(['true'], check=True, stdout=subprocess.DEVNULL)\n\n\
         def test_os_fd():\n    fd = os.open('/etc/hostname', os.O_RDONLY)\n    os.close(fd)\n",
    );
    if leaky {
        write(
            &dir,
            "test_leaky.py",
            "import os\n\nkept = []\n\n\
             def test_keeps_a_descriptor():\n    kept.append(os.open('/etc/hostname', os.O_RDONLY))\n",
        );
    }
    dir
}

#[test]
fn pytest_on_a_clean_suite_reports_nothing_and_finds_the_one_leaking_test() {
    if !bpf_or_skip() {
        return;
    }
    // `python3` as the user has it (through pyenv's shim, if that is how).
    let cmd = ["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider"];
    let dir = pytest_suite(false);
    let t = trace_in(&dir, &[], &[], &cmd);
    assert_eq!(t.code(), Some(0), "{}{}", t.stdout(), t.stderr());
    assert_clean("pytest", &t);

    let dir = pytest_suite(true);
    let t = trace_in(&dir, &[], &[], &cmd);
    assert_eq!(t.code(), Some(0), "{}{}", t.stdout(), t.stderr());
    assert!(t.exec_leaks().is_empty(), "{}", findings(&t));
    assert_eq!(t.leaks().len(), 1, "{}", findings(&t));
    let leak = &t.leaks()[0];
    assert_eq!(leak["target"], "/etc/hostname");
    assert!(
        t.functions(&leak["stack_id"])
            .contains(&"test_keeps_a_descriptor".to_owned()),
        "{:?}",
        t.functions(&leak["stack_id"])
    );
}

#[test]
fn multiprocessing_pools_of_every_start_method_report_nothing_in_every_version() {
    if !bpf_or_skip() {
        return;
    }
    let dir = scratch_dir("multiprocessing");
    write(
        &dir,
        "pools.py",
        "import multiprocessing\n\n\
         def run(method):\n    ctx = multiprocessing.get_context(method)\n    with ctx.Pool(2) as pool:\n        assert pool.map(abs, [1, -2]) == [1, 2]\n        pool.close()\n        pool.join()\n\n\
         if __name__ == '__main__':\n    for method in ('fork', 'spawn', 'forkserver'):\n        run(method)\n",
    );
    let script = dir.join("pools.py");
    for (interpreter, (major, minor)) in fdtrace_tests::supported_pythons() {
        let version = format!("{major}.{minor} ({interpreter})");
        let t = trace(&[], &[&interpreter, script.to_str().unwrap()]);
        assert_eq!(t.code(), Some(0), "{version}: {}", t.stderr());
        assert_clean(&format!("multiprocessing pools under {version}"), &t);
        // What the pools keep for life on purpose, each by its built-in rule:
        // workers' /dev/null stdin, the resource tracker's and fork server's
        // pipes to their parent, spawned and fork-server children's copies
        // of theirs, the fork server's wakeup pipe.
        let taken = built_in_matches(&t);
        for rule in [
            "a multiprocessing child",
            "multiprocessing's resource tracker",
            "a multiprocessing spawn child",
            "a multiprocessing fork-server child",
            "multiprocessing's fork server keeps",
        ] {
            assert!(
                taken.iter().any(|(r, n)| r.starts_with(rule) && *n > 0),
                "{version}: {rule}: {taken:?}"
            );
        }
    }
}

#[test]
fn a_descriptor_the_new_program_uses_was_handed_over_one_it_never_touches_leaked() {
    if !bpf_or_skip() {
        return;
    }
    let bin = c_fixture("handover.c");
    let log = scratch_dir("handover").join("server.log");
    let t = trace(&[], &[bin.to_str().unwrap(), log.to_str().unwrap()]);
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    let comm_of = |pid: &Value| {
        t.report["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| &p["pid"] == pid)
            .map(|p| p["exe"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let mut crossed: Vec<(String, i64, String)> = t
        .exec_leaks()
        .iter()
        .map(|e| {
            let exe = comm_of(&e["pid"]);
            let name = exe.rsplit('/').next().unwrap().to_owned();
            (
                name,
                e["fd"].as_i64().unwrap(),
                e["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    crossed.sort();
    let fixture = bin.file_name().unwrap().to_str().unwrap().to_owned();
    // The socket-activated child used its listener (fd 3) but not the log;
    // /bin/true used neither: the classic bug, both ways.
    assert_eq!(
        crossed,
        vec![
            (fixture, 4, "file".to_owned()),
            ("true".to_owned(), 3, "socket".to_owned()),
            ("true".to_owned(), 4, "file".to_owned()),
        ],
        "{}",
        findings(&t)
    );
    assert!(t.leaks().is_empty(), "{}", findings(&t));
}

#[test]
fn sixty_four_threads_churning_ten_thousand_files_each_lose_nothing() {
    if !bpf_or_skip() {
        return;
    }
    let bin = c_fixture("churn.c");
    let t = trace(&[], &[bin.to_str().unwrap(), "64", "10000"]);
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    assert_clean("64 x 10k open/close", &t);
    // With one real leak per thread, exactly those.
    let t = trace(&[], &[bin.to_str().unwrap(), "64", "10000", "leak"]);
    assert_eq!(t.report["dropped_events"], 0);
    assert!(t.report["unknown_leaks"].as_array().unwrap().is_empty());
    assert!(t.exec_leaks().is_empty());
    let targets: Vec<&str> = t
        .leaks()
        .iter()
        .map(|l| l["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, vec!["/etc/hostname"; 64], "{}", findings(&t));
}
