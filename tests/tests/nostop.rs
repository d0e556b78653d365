//! Issue #11: tracing never freezes a traced process. However fdtrace ends
//! (Ctrl-C, SIGTERM, `--duration`, `kill -9`, the command's exit), what it
//! traced keeps running, and nothing it traces (a debugger, a parent waiting
//! with WUNTRACED) ever sees a stop it did not ask for.
//!
//! Every process a test starts belongs to a [`Cleanup`] guard that
//! continues and kills it however the test ends, so a failing test leaves
//! nothing stopped on the machine. Output goes to files, never pipes: a
//! background child that inherits a pipe cannot block a test.

use std::{
    env, fs,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::Once,
    thread,
    time::{Duration, Instant},
};

use fdtrace_tests::{bpf_or_skip, c_fixture, compile_c, fdtrace, scratch_dir};

/// How long anything may take before the test calls it hung.
const DEADLINE: Duration = Duration::from_secs(20);

/// Tries per way of ending fdtrace, each at a different moment.
const TRIES: u64 = 20;

/// Processes a test started (or found running on its behalf), continued,
/// killed and reaped on drop.
struct Cleanup {
    children: Vec<Child>,
    /// Orphans reparented to this test process, not reaped yet.
    orphans: Vec<u32>,
}

impl Cleanup {
    /// Also makes this test process the reaper of the orphans its tests
    /// leave (a command's background child, the command of a killed
    /// fdtrace), so their PIDs stay theirs until [`Cleanup`] reaps them.
    fn new() -> Self {
        static SUBREAPER: Once = Once::new();
        SUBREAPER.call_once(|| {
            // SAFETY: prctl(2) with integer arguments only.
            let ret = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
            assert_eq!(ret, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
        });
        Self {
            children: Vec::new(),
            orphans: Vec::new(),
        }
    }

    fn spawn(&mut self, command: &mut Command) -> u32 {
        let child = command.spawn().expect("spawn");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Takes charge of `pid`, an orphan that is (or will be) this process's child.
    fn adopt(&mut self, pid: u32) {
        self.orphans.push(pid);
    }

    /// Continues, kills and reaps an orphan now.
    fn end(&mut self, pid: u32) {
        self.orphans.retain(|&p| p != pid);
        end_orphan(pid);
    }

    /// Waits for child `pid` to end; fails if it is still running after
    /// [`DEADLINE`] (the guard then kills it).
    fn wait(&mut self, pid: u32, what: &str) -> ExitStatus {
        let child = self
            .children
            .iter_mut()
            .find(|c| c.id() == pid)
            .expect("a child of this test");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait for a child") {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{what}: process {pid} did not end within {DEADLINE:?} (state {:?})",
                state(pid)
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for orphan `pid` to exit and reaps it, failing at once if it
    /// is seen stopped.
    fn wait_orphan(&mut self, pid: u32, what: &str) -> ExitStatus {
        let start = Instant::now();
        loop {
            assert_ne!(
                state(pid),
                Some('T'),
                "{what}: process {pid} was left stopped"
            );
            let mut status = 0;
            // SAFETY: plain waitpid(2) with a valid pointer; never blocks.
            let ret = unsafe { libc::waitpid(as_pid(pid), &raw mut status, libc::WNOHANG) };
            assert!(ret >= 0, "{what}: process {pid} is not this test's to reap");
            if ret > 0 {
                self.orphans.retain(|&p| p != pid);
                return ExitStatus::from_raw(status);
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{what}: process {pid} still runs after {DEADLINE:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in std::mem::take(&mut self.orphans) {
            end_orphan(pid);
        }
        for child in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                send(child.id(), libc::SIGCONT);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn end_orphan(pid: u32) {
    send(pid, libc::SIGCONT);
    send(pid, libc::SIGKILL);
    // SAFETY: plain waitpid(2); the orphan is this process's child, so the
    // wait ends as soon as SIGKILL does (ECHILD if it never got here).
    unsafe { libc::waitpid(as_pid(pid), std::ptr::null_mut(), 0) };
}

fn as_pid(pid: u32) -> libc::pid_t {
    libc::pid_t::try_from(pid).expect("PID")
}

fn send(pid: u32, signal: libc::c_int) {
    // SAFETY: plain kill(2) of a process this test started.
    unsafe { libc::kill(as_pid(pid), signal) };
}

/// The state letter of /proc/PID/stat (field 3), `None` once it is gone.
fn state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// A deterministic xorshift64 sequence, so a failing try can be replayed.
struct Prng(u64);

impl Prng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `program args`, run in `dir` with stdout and stderr going to
/// `dir/NAME.out` and `dir/NAME.err`.
fn command(dir: &Path, name: &str, program: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.join(format!("{name}.out"))).expect("create .out"))
        .stderr(fs::File::create(dir.join(format!("{name}.err"))).expect("create .err"));
    command
}

fn read(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// The shared library the plugins fixture loads.
fn plugin() -> PathBuf {
    compile_c("plugin.c", "so", &["-O2", "-shared", "-fPIC"])
}

/// Args for the plugins fixture: load the plugin, count in `dir`.
fn plugins_args(dir: &Path) -> Vec<String> {
    let service = c_fixture("plugins.c");
    [service, plugin(), dir.to_path_buf()]
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// The plugins fixture's PID, once its first iteration is done.
fn wait_for_service(dir: &Path) -> u32 {
    let start = Instant::now();
    loop {
        if let Ok(pid) = read(dir, "pid").trim().parse() {
            return pid;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the plugins fixture never started: {}",
            read(dir, "fdtrace.err")
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// How many iterations the plugins fixture has done.
fn count(dir: &Path) -> u64 {
    read(dir, "count").trim().parse().unwrap_or(0)
}

/// Fails unless the plugins fixture `pid` (counting in `dir`) is never seen
/// stopped and completes more iterations.
fn assert_keeps_running(pid: u32, dir: &Path, what: &str) {
    let first = count(dir);
    let start = Instant::now();
    loop {
        let state = state(pid);
        assert_ne!(state, Some('T'), "{what}: process {pid} was left stopped");
        assert!(
            state.is_some_and(|s| s != 'Z'),
            "{what}: process {pid} is gone ({state:?})"
        );
        if count(dir) >= first + 3 {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: process {pid} made no progress in {DEADLINE:?} (state {state:?})"
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// Waits for fdtrace `pid` (writing to `dir/fdtrace.err`) to say it has
/// attached.
fn wait_for_attach(cleanup: &mut Cleanup, pid: u32, dir: &Path, what: &str) {
    let start = Instant::now();
    while !read(dir, "fdtrace.err").contains("fdtrace: attached to") {
        let child = cleanup.children.iter_mut().find(|c| c.id() == pid);
        let exited = child.is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
        assert!(
            !exited && start.elapsed() < DEADLINE,
            "{what}: fdtrace never attached: {}",
            read(dir, "fdtrace.err")
        );
        thread::sleep(Duration::from_millis(2));
    }
}

#[derive(Clone, Copy, Debug)]
enum Ending {
    Sigint,
    Sigterm,
    Duration,
    Kill,
}

/// Attaches to a service that maps new code every millisecond and ends
/// fdtrace `TRIES` times by `ending`, at moments drawn from `seed`; after
/// each, the service must not be stopped and must keep counting.
fn attach_and_end_by(ending: Ending, seed: u64) {
    if !bpf_or_skip() {
        return;
    }
    let mut cleanup = Cleanup::new();
    let dir = scratch_dir(&format!("nostop-{ending:?}"));
    let service_args = plugins_args(&dir);
    let (program, args) = service_args.split_first().expect("program");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cleanup.spawn(&mut command(&dir, "service", Path::new(program), &args));
    let pid = wait_for_service(&dir).to_string();
    let report = dir.join("report.json");
    let mut random = Prng(seed);
    for attempt in 0..TRIES {
        let delay = Duration::from_millis(random.below(100));
        let duration = format!("{}ms", 50 + random.below(150));
        let mut args = vec!["attach", "-p", &pid, "--format", "json", "-o"];
        args.push(report.to_str().expect("UTF-8 path"));
        if let Ending::Duration = ending {
            args.extend(["--duration", &duration]);
        }
        let _ = fs::remove_file(&report);
        let tracer = cleanup.spawn(&mut command(&dir, "fdtrace", fdtrace(), &args));
        // Half the kills land while fdtrace is still loading and attaching.
        let early_kill = matches!(ending, Ending::Kill) && attempt % 2 == 1;
        let what = match ending {
            Ending::Duration => format!("try {attempt}: --duration {duration}"),
            _ if early_kill => format!("try {attempt}: SIGKILL {:?} after start", delay * 5),
            _ => format!("try {attempt}: {ending:?} {delay:?} after attaching"),
        };
        if early_kill {
            thread::sleep(delay * 5);
        } else if !matches!(ending, Ending::Duration) {
            wait_for_attach(&mut cleanup, tracer, &dir, &what);
            thread::sleep(delay);
        }
        match ending {
            Ending::Sigint => send(tracer, libc::SIGINT),
            Ending::Sigterm => send(tracer, libc::SIGTERM),
            Ending::Kill => send(tracer, libc::SIGKILL),
            Ending::Duration => {}
        }
        let status = cleanup.wait(tracer, &what);
        if let Ending::Kill = ending {
            assert_eq!(status.signal(), Some(libc::SIGKILL), "{what}");
        } else {
            let stderr = read(&dir, "fdtrace.err");
            assert_eq!(status.code(), Some(0), "{what}: {stderr}");
            let text = fs::read_to_string(&report).expect("the report");
            let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(json["mode"], "attach", "{what}");
        }
        assert_keeps_running(pid.parse().expect("PID"), &dir, &what);
    }
}

#[test]
fn attach_ended_by_sigint_leaves_a_plugin_loading_service_running() {
    attach_and_end_by(Ending::Sigint, 0x5eed_0001);
}

#[test]
fn attach_ended_by_sigterm_leaves_a_plugin_loading_service_running() {
    attach_and_end_by(Ending::Sigterm, 0x5eed_0002);
}

#[test]
fn attach_ended_by_duration_leaves_a_plugin_loading_service_running() {
    attach_and_end_by(Ending::Duration, 0x5eed_0003);
}

#[test]
fn attach_killed_by_sigkill_leaves_a_plugin_loading_service_running() {
    attach_and_end_by(Ending::Kill, 0x5eed_0004);
}

#[test]
fn run_killed_by_sigkill_leaves_its_command_running() {
    if !bpf_or_skip() {
        return;
    }
    let mut cleanup = Cleanup::new();
    let mut random = Prng(0x5eed_0005);
    for attempt in 0..TRIES {
        let dir = scratch_dir("nostop-run-kill");
        let mut args = vec!["run".to_owned(), "--format".into(), "json".into()];
        args.extend(["-o".into(), "report.json".into(), "--".into()]);
        args.extend(plugins_args(&dir));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let tracer = cleanup.spawn(&mut command(&dir, "fdtrace", fdtrace(), &args));
        let service = wait_for_service(&dir);
        cleanup.adopt(service);
        let delay = Duration::from_millis(random.below(100));
        let what = format!("try {attempt}: SIGKILL {delay:?} after the command started");
        thread::sleep(delay);
        send(tracer, libc::SIGKILL);
        let status = cleanup.wait(tracer, &what);
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{what}");
        assert_keeps_running(service, &dir, &what);
        cleanup.end(service);
    }
}

#[test]
fn run_leaves_a_background_child_running_after_the_command_exits() {
    if !bpf_or_skip() {
        return;
    }
    let mut cleanup = Cleanup::new();
    // A C child that maps new code and opens a file every millisecond for
    // two seconds, outliving the command fdtrace runs.
    let dir = scratch_dir("nostop-background");
    let mut args = vec!["run".to_owned(), "-o".into(), "report.txt".into()];
    args.push("--".into());
    args.extend(plugins_args(&dir));
    args.extend(["--background".into(), "2000".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tracer = cleanup.spawn(&mut command(&dir, "fdtrace", fdtrace(), &args));
    let child = wait_for_service(&dir);
    cleanup.adopt(child);
    let status = cleanup.wait(tracer, "fdtrace run");
    assert_eq!(status.code(), Some(0), "{}", read(&dir, "fdtrace.err"));
    let what = "the background child after fdtrace exited";
    assert_keeps_running(child, &dir, what);
    assert_eq!(cleanup.wait_orphan(child, what).code(), Some(0), "{what}");
    assert_eq!(read(&dir, "done"), "done\n", "{what} finished its loop");

    // A shell's background job.
    let dir = scratch_dir("nostop-background-sh");
    let args = ["run", "-o", "report.txt", "--", "sh", "-c"];
    let script = "sleep 2 >/dev/null 2>&1 & echo $!";
    let tracer = cleanup.spawn(&mut command(
        &dir,
        "fdtrace",
        fdtrace(),
        &[&args[..], &[script]].concat(),
    ));
    let status = cleanup.wait(tracer, "fdtrace run sh");
    let sleep: u32 = read(&dir, "fdtrace.out").trim().parse().expect("the PID");
    cleanup.adopt(sleep);
    assert_eq!(status.code(), Some(0), "{}", read(&dir, "fdtrace.err"));
    let what = "sh's background sleep after fdtrace exited";
    assert_eq!(cleanup.wait_orphan(sleep, what).code(), Some(0), "{what}");
}

#[test]
fn a_parent_waiting_with_wuntraced_never_sees_a_child_stop() {
    if !bpf_or_skip() {
        return;
    }
    let mut cleanup = Cleanup::new();
    let dir = scratch_dir("nostop-untraced");
    let parent = c_fixture("untraced.c");
    let args = [
        "run",
        "-o",
        "report.txt",
        "--",
        parent.to_str().expect("path"),
    ];
    let tracer = cleanup.spawn(&mut command(&dir, "fdtrace", fdtrace(), &args));
    let status = cleanup.wait(tracer, "fdtrace run untraced");
    assert_eq!(read(&dir, "fdtrace.out"), "children 20 stopped 0\n");
    assert_eq!(status.code(), Some(0), "{}", read(&dir, "fdtrace.err"));
}

/// Whether `tool` is installed; like `bpf_or_skip`, missing it fails in CI.
fn tool_or_skip(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            env::var_os("CI").is_none() && env::var_os("FDTRACE_REQUIRE_BPF").is_none(),
            "{tool} is required (CI or FDTRACE_REQUIRE_BPF is set) but not installed"
        );
        eprintln!("skipping: {tool} is not installed");
    }
    found
}

#[test]
fn gdb_under_fdtrace_runs_its_program_without_a_sigstop() {
    if !bpf_or_skip() || !tool_or_skip("gdb") {
        return;
    }
    let mut cleanup = Cleanup::new();
    let dir = scratch_dir("nostop-gdb");
    let greet = c_fixture("greet.c");
    let mut args = vec!["run", "-o", "report.txt", "--", "gdb", "-nx", "-batch"];
    args.extend(["-iex", "set debuginfod enabled off", "-ex", "run", "--args"]);
    args.push(greet.to_str().expect("path"));
    let tracer = cleanup.spawn(&mut command(&dir, "fdtrace", fdtrace(), &args));
    let status = cleanup.wait(tracer, "fdtrace run gdb");
    let output = read(&dir, "fdtrace.out") + &read(&dir, "fdtrace.err");
    assert!(
        !output.contains("Program received signal"),
        "gdb saw a signal: {output}"
    );
    assert!(output.contains("greet: main reached\n"), "{output}");
    assert!(output.contains("exited normally]"), "{output}");
    assert_eq!(status.code(), Some(0), "{output}");
}

#[test]
fn strace_under_fdtrace_sees_no_sigstop_or_sigcont() {
    if !bpf_or_skip() || !tool_or_skip("strace") {
        return;
    }
    let mut cleanup = Cleanup::new();
    let dir = scratch_dir("nostop-strace");
    let greet = c_fixture("greet.c");
    let args = [
        "run",
        "-o",
        "report.txt",
        "--",
        "strace",
        "-f",
        "-o",
        "strace.log",
    ];
    let args = [&args[..], &[greet.to_str().expect("path")]].concat();
    let tracer = cleanup.spawn(&mut command(&dir, "fdtrace", fdtrace(), &args));
    let status = cleanup.wait(tracer, "fdtrace run strace");
    assert_eq!(read(&dir, "fdtrace.out"), "greet: main reached\n");
    assert_eq!(status.code(), Some(0), "{}", read(&dir, "fdtrace.err"));
    let log = read(&dir, "strace.log");
    assert!(log.contains("+++ exited with 0 +++"), "{log}");
    let signals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("SIGSTOP") || l.contains("SIGCONT"))
        .collect();
    assert!(signals.is_empty(), "{signals:#?}");
}

#[test]
fn attach_to_itself_through_exec_is_refused() {
    if !bpf_or_skip() {
        return;
    }
    let mut cleanup = Cleanup::new();
    let dir = scratch_dir("nostop-self");
    // After exec, $$ is fdtrace's own PID.
    let script = r#"exec "$0" attach -p $$ --duration 1"#;
    let args = ["-c", script, fdtrace().to_str().expect("path")];
    let bash = cleanup.spawn(&mut command(&dir, "bash", Path::new("bash"), &args));
    let status = cleanup.wait(bash, "bash -c 'exec fdtrace attach -p $$'");
    let stderr = read(&dir, "bash.err");
    assert!(stderr.contains("itself"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(status.code().is_some_and(|c| c != 0), "{status}: {stderr}");
}

#[test]
fn attach_to_the_parent_shell_ends() {
    if !bpf_or_skip() {
        return;
    }
    let mut cleanup = Cleanup::new();
    let dir = scratch_dir("nostop-parent-shell");
    let script = r#""$0" attach -p $$ --duration 1; echo done"#;
    let args = ["-c", script, fdtrace().to_str().expect("path")];
    let bash = cleanup.spawn(&mut command(&dir, "bash", Path::new("bash"), &args));
    let status = cleanup.wait(bash, "bash -c 'fdtrace attach -p $$; echo done'");
    assert_eq!(read(&dir, "bash.out"), "done\n");
    assert_eq!(status.code(), Some(0), "{}", read(&dir, "bash.err"));
}
