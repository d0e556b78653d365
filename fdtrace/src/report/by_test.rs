//! Leaks by test: the pytest or unittest test a leak's Python stack passed
//! through, named the way pytest names it (`path::Class::test_name`), so a
//! suite's report says which test to fix.
//!
//! A test is a function or method whose name starts with `test`, in a file
//! named `test_*.py` or `*_test.py` (pytest's and unittest's defaults). Its
//! class comes from the frame's qualified name (CPython 3.11+) or, before
//! that, from the `class` lines enclosing its `def` in the source.

use std::{
    fs,
    io::Read,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{FrameEntry, KindCount, Report};

/// The leaks of one test.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TestLeaks {
    /// `path::Class::test_name`; the path is relative to fdtrace's working
    /// directory when the file is under it.
    pub test: String,
    pub file: String,
    /// The test's line the first leaking call came from.
    pub line: Option<u32>,
    pub count: usize,
    pub kinds: Vec<KindCount>,
    /// The stacks these leaks were opened by.
    pub stack_ids: Vec<u32>,
}

/// The innermost frame of `stack` that is a test function.
pub fn test_frame(stack: &[FrameEntry]) -> Option<&FrameEntry> {
    stack.iter().find(|f| {
        f.lang == "python"
            && f.file.as_deref().is_some_and(is_test_file)
            && f.function.as_deref().is_some_and(|name| {
                name.rsplit('.')
                    .next()
                    .is_some_and(|last| last.starts_with("test"))
            })
    })
}

fn is_test_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.strip_suffix(".py")
        .is_some_and(|stem| stem.starts_with("test_") || stem.ends_with("_test"))
}

/// Leaks grouped by the test they came from, most first. `cwd` makes the
/// paths relative; `source` reads a test file (for the class of a method
/// on interpreters without qualified names).
pub fn leaks_by_test(
    report: &Report,
    cwd: Option<&Path>,
    source: &mut dyn FnMut(&str) -> Option<String>,
) -> Vec<TestLeaks> {
    let mut out: Vec<TestLeaks> = Vec::new();
    for leak in &report.leaks {
        let Some(id) = leak.stack_id else { continue };
        let Some(frame) = report.group(id).and_then(|g| test_frame(&g.stack)) else {
            continue;
        };
        let file = frame.file.clone().unwrap_or_default();
        let function = frame.function.as_deref().unwrap_or_default();
        let test = node_id(&file, function, frame.line, cwd, source);
        let entry = match out.iter_mut().position(|t| t.test == test) {
            Some(i) => &mut out[i],
            None => {
                out.push(TestLeaks {
                    test,
                    file,
                    line: frame.line,
                    count: 0,
                    kinds: Vec::new(),
                    stack_ids: Vec::new(),
                });
                out.last_mut().expect("just pushed")
            }
        };
        entry.count += 1;
        match entry.kinds.iter_mut().find(|k| k.kind == leak.kind) {
            Some(k) => k.count += 1,
            None => entry.kinds.push(KindCount {
                kind: leak.kind,
                count: 1,
            }),
        }
        if !entry.stack_ids.contains(&id) {
            entry.stack_ids.push(id);
        }
    }
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.test.cmp(&b.test)));
    out
}

/// pytest's name for the test `function` (a qualified name, or a bare
/// name whose classes the source supplies) in `file`.
fn node_id(
    file: &str,
    function: &str,
    line: Option<u32>,
    cwd: Option<&Path>,
    source: &mut dyn FnMut(&str) -> Option<String>,
) -> String {
    let path = cwd
        .and_then(|cwd| Path::new(file).strip_prefix(cwd).ok())
        .map_or_else(|| PathBuf::from(file), Path::to_path_buf);
    let mut parts: Vec<String> = Vec::new();
    if function.contains('.') {
        parts.extend(
            function
                .split('.')
                .filter(|p| *p != "<locals>")
                .map(str::to_owned),
        );
    } else {
        if let Some(text) = line.and_then(|line| source(file).map(|text| (text, line))) {
            parts.extend(enclosing_classes(&text.0, text.1, function));
        }
        parts.push(function.to_owned());
    }
    format!("{}::{}", path.display(), parts.join("::"))
}

/// The classes around `def name` that encloses line `line` (1-based),
/// outermost first: empty for a module-level function or when the
/// source does not say.
fn enclosing_classes(text: &str, line: u32, name: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let at = usize::try_from(line)
        .unwrap_or(0)
        .min(lines.len())
        .saturating_sub(1);
    let indent = |l: &str| l.len() - l.trim_start().len();
    let def_of = |l: &str| {
        let t = l.trim_start();
        let t = t.strip_prefix("async ").unwrap_or(t).trim_start();
        t.strip_prefix("def ").map(|rest| {
            rest.trim_start()
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .next()
                .unwrap_or("")
                .to_owned()
        })
    };
    let Some(def) = (0..=at)
        .rev()
        .find(|&i| def_of(lines[i]).as_deref() == Some(name))
    else {
        return Vec::new();
    };
    let mut classes = Vec::new();
    let mut level = indent(lines[def]);
    for l in lines[..def].iter().rev() {
        if level == 0 {
            break;
        }
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') || indent(l) >= level {
            continue;
        }
        level = indent(l);
        match t.strip_prefix("class ") {
            Some(rest) => classes.push(
                rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            ),
            // Inside another function or a block: not a test method
            // pytest would name by class.
            None if def_of(l).is_some() => return Vec::new(),
            None => {}
        }
    }
    classes.reverse();
    classes
}

/// Reads a test file named by a traced program's code object. fdtrace
/// runs as root and the name is the traced program's to choose, so: only
/// an absolute path whose last component is not a symlink, opened first
/// with `O_PATH` (which runs no device's open), only a regular file of at
/// most 4 MiB on a real filesystem (not procfs, sysfs and the like), then
/// reopened through that descriptor to read, never blocking.
pub fn read_source(path: &str) -> Option<String> {
    const MAX: u64 = 4 << 20;
    /// `statfs.f_type` of filesystems whose regular files are not files
    /// (include/uapi/linux/magic.h): proc, sysfs, debugfs, tracefs,
    /// securityfs, cgroup2, bpffs, configfs, efivarfs.
    const PSEUDO: [i128; 9] = [
        0x9fa0,
        0x6265_6572,
        0x6462_6720,
        0x7472_6163,
        0x7363_6673,
        0x6367_7270,
        0xcafe_4a11,
        0x6265_6570,
        0xde5e_81e4,
    ];
    if !path.starts_with('/') {
        return None;
    }
    let handle = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let meta = handle.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX {
        return None;
    }
    // SAFETY: an all-zero statfs is a valid value for the call to fill.
    let mut fs_info: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a pointer to a statfs we own.
    if unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(&handle), &raw mut fs_info) } != 0
        // `f_type` is signed in glibc's statfs, unsigned in musl's.
        || PSEUDO.contains(&i128::from(fs_info.f_type))
    {
        return None;
    }
    let reopen = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle));
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(reopen)
        .ok()?;
    let mut text = String::new();
    file.take(MAX).read_to_string(&mut text).ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{
        Group, LeakEntry,
        tests::{py_frame as py, sample_report},
    };

    fn report_with(stacks: Vec<Vec<FrameEntry>>, kinds: &[(&'static str, u32)]) -> Report {
        let mut r = sample_report();
        r.groups = stacks
            .into_iter()
            .enumerate()
            .map(|(i, stack)| Group {
                stack_id: u32::try_from(i).unwrap() + 1,
                count: 0,
                truncated: false,
                stack,
            })
            .collect();
        r.leaks = kinds
            .iter()
            .enumerate()
            .map(|(i, &(kind, stack))| LeakEntry {
                fd: i32::try_from(i).unwrap() + 3,
                kind,
                stack_id: Some(stack),
                ..r.leaks[0].clone()
            })
            .collect();
        r
    }

    #[test]
    fn names_tests_the_way_pytest_does() {
        let r = report_with(
            vec![
                vec![
                    py("keep", "/src/app/cache.py", 4),
                    py("test_leaky_cache", "/src/app/tests/test_cache.py", 10),
                    py(
                        "pytest_pyfunc_call",
                        "/usr/lib/python3/_pytest/python.py",
                        1,
                    ),
                ],
                vec![py(
                    "TestSockets.test_socket_leak",
                    "/src/app/tests/test_cache.py",
                    20,
                )],
                // A helper named test* outside a test file is not a test.
                vec![py("test_helper", "/src/app/helpers.py", 3)],
            ],
            &[("file", 1), ("file", 1), ("socket", 2), ("file", 3)],
        );
        let tests = leaks_by_test(&r, Some(Path::new("/src/app")), &mut |_| None);
        let summary: Vec<_> = tests
            .iter()
            .map(|t| (t.test.as_str(), t.line, t.count, t.kinds.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "tests/test_cache.py::test_leaky_cache",
                    Some(10),
                    2,
                    vec![KindCount {
                        kind: "file",
                        count: 2
                    }]
                ),
                (
                    "tests/test_cache.py::TestSockets::test_socket_leak",
                    Some(20),
                    1,
                    vec![KindCount {
                        kind: "socket",
                        count: 1
                    }]
                ),
            ]
        );
    }

    #[test]
    fn a_bare_method_name_gets_its_classes_from_the_source() {
        let source = "import os\n\
                      class TestOuter:\n\
                      \x20   class TestInner:\n\
                      \x20       # a comment\n\
                      \x20       def test_it(self):\n\
                      \x20           keep.append(open('x'))\n\
                      def test_top():\n\
                      \x20   pass\n";
        assert_eq!(
            enclosing_classes(source, 6, "test_it"),
            ["TestOuter", "TestInner"]
        );
        assert!(enclosing_classes(source, 8, "test_top").is_empty());
        // Not found: no classes rather than a guess.
        assert!(enclosing_classes(source, 8, "test_gone").is_empty());
        let r = report_with(
            vec![vec![py("test_it", "/t/test_nested.py", 6)]],
            &[("file", 1)],
        );
        let tests = leaks_by_test(&r, None, &mut |_| Some(source.to_owned()));
        assert_eq!(
            tests[0].test,
            "/t/test_nested.py::TestOuter::TestInner::test_it"
        );
    }

    #[test]
    fn only_a_real_file_named_by_its_own_path_is_read() {
        let dir = std::env::temp_dir().join(format!("fdtrace-bytest-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("test_file.py");
        fs::write(&file, "def test_x():\n    pass\n").unwrap();
        assert!(read_source(file.to_str().unwrap()).is_some());
        // A FIFO would block; a link could point anywhere; a device's open
        // has effects; procfs files are not files.
        let fifo = dir.join("test_fifo.py");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let link = dir.join("test_link.py");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let proc_link = dir.join("test_proc.py");
        std::os::unix::fs::symlink("/proc/self/environ", &proc_link).unwrap();
        for refused in [&fifo, &link, &proc_link] {
            assert_eq!(read_source(refused.to_str().unwrap()), None, "{refused:?}");
        }
        for refused in ["/dev/null", "/proc/self/status", "test_file.py"] {
            assert_eq!(read_source(refused), None, "{refused}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
