//! Helpers for the end-to-end tests: build the real `fdtrace` binary,
//! compile fixture programs, run traces and read their JSON reports.
//!
//! Tests that need BPF call [`bpf_or_skip`] first: it prints
//! `skipping: <why>` when BPF cannot be loaded here, and panics instead
//! when `CI` or `FDTRACE_REQUIRE_BPF` is set, so CI never goes green
//! without having traced anything.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Mutex, OnceLock},
};

use serde_json::Value;

pub mod browser;
pub mod monitor;
pub mod prometheus;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from)
}

/// Builds `fdtrace` once per test binary and returns its path.
pub fn fdtrace() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let status = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--quiet", "--locked", "--package", "fdtrace"])
            .current_dir(workspace())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p fdtrace failed");
        target_dir().join("debug/fdtrace")
    })
}

/// A new empty directory for one test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = fixture_out().join(format!("{name}-{}-{}", std::process::id(), unique()));
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Where compiled fixtures go.
pub fn fixture_out() -> PathBuf {
    let dir = target_dir().join("fixtures");
    fs::create_dir_all(&dir).expect("create fixture dir");
    dir
}

pub fn fixture_source(name: &str) -> PathBuf {
    workspace().join("tests/fixtures").join(name)
}

/// Compiles a C fixture with `cc`; `variant` names the flag set. Each
/// fixture is built once per test binary (tests run in parallel and must not
/// execute a file another test is still writing).
pub fn compile_c(source: &str, variant: &str, flags: &[&str]) -> PathBuf {
    let stem = source.trim_end_matches(".c");
    build_once(&format!("{stem}-{variant}"), |out| {
        let mut cc = Command::new("cc");
        cc.args(flags)
            .arg("-o")
            .arg(out)
            .arg(fixture_source(source))
            .arg("-pthread")
            .arg("-ldl");
        cc
    })
}

/// Runs `command` (which writes the path it is given) once per `name`,
/// writing to a temporary name and renaming, so the result appears whole.
fn build_once(name: &str, command: impl FnOnce(&Path) -> Command) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let out = fixture_out().join(name);
    if built.iter().any(|b| b == name) {
        return out;
    }
    let tmp = fixture_out().join(format!(".{name}.{}", std::process::id()));
    let output = command(&tmp).output().expect("run the fixture compiler");
    assert!(
        output.status.success(),
        "building {name} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    fs::rename(&tmp, &out).expect("move the fixture into place");
    built.push(name.to_owned());
    out
}

/// The usual C fixture build: debug info, no optimisation, frame pointers.
pub fn c_fixture(source: &str) -> PathBuf {
    compile_c(source, "g", &["-g", "-O0", "-fno-omit-frame-pointer"])
}

/// Compiles a Rust fixture with `rustc`, once per test binary.
pub fn rust_fixture(source: &str, variant: &str, flags: &[&str]) -> PathBuf {
    let stem = source.trim_end_matches(".rs");
    build_once(&format!("{stem}-{variant}"), |out| {
        let mut rustc = Command::new(env::var("RUSTC").unwrap_or_else(|_| "rustc".into()));
        rustc
            .args(flags)
            .arg("-o")
            .arg(out)
            .arg(fixture_source(source));
        rustc
    })
}

/// The line of `source` carrying `marker` (1-based).
pub fn marker_line(source: &str, marker: &str) -> u64 {
    let text = fs::read_to_string(fixture_source(source)).expect("read fixture");
    let index = text
        .lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("{marker} not in {source}"));
    u64::try_from(index + 1).expect("line number")
}

/// Whether BPF programs load here; see the module docs.
pub fn bpf_or_skip() -> bool {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = AVAILABLE.get_or_init(|| {
        let output = Command::new(fdtrace())
            .args(["run", "--", "/bin/true"])
            .output()
            .expect("run fdtrace");
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
    });
    match result {
        Ok(()) => true,
        Err(why) => {
            if env::var_os("CI").is_some() || env::var_os("FDTRACE_REQUIRE_BPF").is_some() {
                panic!(
                    "BPF is required (CI or FDTRACE_REQUIRE_BPF is set) but fdtrace cannot trace: {why}"
                );
            }
            eprintln!("skipping: fdtrace cannot trace here: {why}");
            false
        }
    }
}

/// One finished `fdtrace run`.
pub struct Trace {
    pub output: Output,
    pub report: Value,
}

impl Trace {
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn leaks(&self) -> &Vec<Value> {
        self.report["leaks"].as_array().expect("leaks array")
    }

    pub fn exec_leaks(&self) -> &Vec<Value> {
        self.report["exec_leaks"]
            .as_array()
            .expect("exec_leaks array")
    }

    /// The symbolized frames of a stack id.
    pub fn frames(&self, stack_id: &Value) -> Vec<Value> {
        let groups = self.report["groups"].as_array().expect("groups array");
        groups
            .iter()
            .find(|g| &g["stack_id"] == stack_id)
            .and_then(|g| g["stack"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Function names of a stack id, innermost first.
    pub fn functions(&self, stack_id: &Value) -> Vec<String> {
        self.frames(stack_id)
            .iter()
            .filter_map(|f| f["function"].as_str().map(str::to_owned))
            .collect()
    }

    /// Leaks whose stack contains `function`.
    pub fn leaks_from(&self, function: &str) -> Vec<&Value> {
        self.leaks()
            .iter()
            .filter(|l| self.functions(&l["stack_id"]).iter().any(|f| f == function))
            .collect()
    }
}

/// Runs `fdtrace run --format json -o FILE ARGS -- CMD` and parses the report.
pub fn trace(args: &[&str], cmd: &[&str]) -> Trace {
    trace_in(
        &env::current_dir().expect("working directory"),
        &[],
        args,
        cmd,
    )
}

/// [`trace`] in working directory `dir`, with `env` added to the environment.
pub fn trace_in(dir: &Path, env: &[(&str, &str)], args: &[&str], cmd: &[&str]) -> Trace {
    let report_path =
        fixture_out().join(format!("report-{}-{}.json", std::process::id(), unique()));
    let output = Command::new(fdtrace())
        .current_dir(dir)
        .envs(env.iter().copied())
        .arg("run")
        .args(["--format", "json", "-o"])
        .arg(&report_path)
        .args(args)
        .arg("--")
        .args(cmd)
        .output()
        .expect("run fdtrace");
    let text = fs::read_to_string(&report_path).unwrap_or_else(|e| {
        panic!(
            "no report at {} ({e}); stderr: {}",
            report_path.display(),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let _ = fs::remove_file(&report_path);
    let report = serde_json::from_str(&text).expect("report is JSON");
    Trace { output, report }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The Python interpreter to run Python fixtures with: the real binary, not
/// a shell shim (pyenv), so the traced process is Python itself.
pub fn python() -> String {
    let output = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("run python3");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Every CPython interpreter on the machine (`python3.N` in /usr/bin,
/// /usr/local/bin and pyenv's versions), by real path, with its version.
pub fn interpreters() -> Vec<(PathBuf, (u32, u32))> {
    let mut dirs = vec![PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")];
    let pyenv = env::var_os("PYENV_ROOT").map_or_else(
        || PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".pyenv"),
        PathBuf::from,
    );
    if let Ok(versions) = fs::read_dir(pyenv.join("versions")) {
        dirs.extend(versions.flatten().map(|v| v.path().join("bin")));
    }
    let mut found: Vec<(PathBuf, (u32, u32))> = Vec::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(minor) = name.strip_prefix("python3.") else {
                continue;
            };
            if minor.parse::<u32>().is_err() {
                continue;
            }
            let Ok(path) = fs::canonicalize(entry.path()) else {
                continue;
            };
            if found.iter().any(|(p, _)| *p == path) {
                continue;
            }
            let Ok(out) = Command::new(&path)
                .args(["-c", "import sys; print(*sys.version_info[:2])"])
                .output()
            else {
                continue;
            };
            let text = String::from_utf8_lossy(&out.stdout);
            let mut parts = text.split_whitespace().map(str::parse::<u32>);
            if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
                found.push((path, (major, minor)));
            }
        }
    }
    found.sort_by_key(|(_, v)| *v);
    found
}

/// The interpreters fdtrace walks (3.8 to 3.14) among [`interpreters`], as
/// (path, version); at least one, or the test fails.
pub fn supported_pythons() -> Vec<(String, (u32, u32))> {
    let found: Vec<(String, (u32, u32))> = interpreters()
        .into_iter()
        .filter(|(_, v)| (3, 8) <= *v && *v <= (3, 14))
        .map(|(p, v)| (p.to_string_lossy().into_owned(), v))
        .collect();
    assert!(
        !found.is_empty(),
        "no CPython 3.8-3.14 found (python3 is needed for the Python tests)"
    );
    found
}

/// (function, file name, line) of a stack's Python frames, innermost first.
pub fn python_frames(t: &Trace, stack_id: &Value) -> Vec<(String, String, u64)> {
    t.frames(stack_id)
        .iter()
        .filter(|f| f["lang"] == "python")
        .map(|f| {
            let file = f["file"].as_str().unwrap_or("?");
            (
                f["function"].as_str().unwrap_or("?").to_owned(),
                file.rsplit('/').next().unwrap_or(file).to_owned(),
                f["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The Python frame expected at `marker`'s line in fixture `file`.
pub fn python_frame(function: &str, file: &str, marker: &str) -> (String, String, u64) {
    (function.into(), file.into(), marker_line(file, marker))
}

/// Waits for a fixture that prints "ready" once it is running.
pub fn wait_until_ready(child: &mut std::process::Child) {
    use std::io::BufRead as _;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the fixture");
    assert_eq!(line, "ready\n");
}

/// Installs Debian's `package` with apt-get (as root; otherwise fails
/// saying what to run), with its recommended packages or not, for tests
/// that need a real program: `needed_for` says which (e.g. "the HTML
/// report tests need a browser").
pub fn apt_install(package: &str, recommends: bool, needed_for: &str) {
    use std::os::unix::fs::MetadataExt as _;
    let root = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let lean = if recommends {
        ""
    } else {
        "--no-install-recommends"
    };
    assert!(
        root,
        "{package} is not installed and we are not root: run `sudo apt-get install -y {lean} \
         {package}` ({needed_for})"
    );
    for args in [&["update"][..], &["install", "-y", lean, package]] {
        let args: Vec<&str> = args.iter().copied().filter(|a| !a.is_empty()).collect();
        let status = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .unwrap_or_else(|e| panic!("run apt-get {}: {e}", args.join(" ")));
        assert!(
            status.success(),
            "apt-get {} failed: install {package} by hand ({needed_for})",
            args.join(" ")
        );
    }
}
