//! What the benchmark runs: the workloads, each with the target it is held
//! to, and the small C project and pytest suite it generates for them.

use std::{fs, path::Path};

use anyhow::{Context as _, Result};

/// The ratio (traced / untraced) a workload must stay under, in dwarf mode
/// unless `fast` says otherwise for `--stack none|fp`.
#[derive(Clone, Copy)]
pub struct Target {
    pub dwarf: Option<f64>,
    pub fast: Option<f64>,
}

pub struct Workload {
    pub name: &'static str,
    pub about: &'static str,
    pub command: Vec<String>,
    pub target: Target,
    /// Also run under the bpftrace script and valgrind.
    pub peers: bool,
}

fn strings(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// Every workload, with `bench` the compiled tests/fixtures/bench.c and
/// `dir` a scratch directory for their files.
pub fn all(bench: &str, dir: &Path) -> Result<Vec<Workload>> {
    let make_dir = make_project(dir)?;
    let suite = pytest_suite(dir)?;
    let tar_out = dir.join("tree.tar").to_string_lossy().into_owned();
    let none = Target {
        dwarf: None,
        fast: None,
    };
    let real = Target {
        dwarf: Some(1.05),
        fast: Some(1.05),
    };
    Ok(vec![
        Workload {
            name: "openclose",
            about: "C loop, 200,000 open/close pairs",
            command: strings(&[bench, "openclose", "200000"]),
            target: Target {
                dwarf: Some(1.3),
                fast: Some(1.15),
            },
            peers: true,
        },
        Workload {
            name: "churn",
            about: "sh: for i in $(seq 3000); do /bin/true; done",
            command: strings(&["sh", "-c", "for i in $(seq 3000); do /bin/true; done"]),
            target: Target {
                dwarf: Some(1.3),
                fast: Some(1.3),
            },
            peers: false,
        },
        Workload {
            name: "xargs",
            about: "seq 3000 | xargs -P 4 -n 1 /bin/true",
            command: strings(&["sh", "-c", "seq 3000 | xargs -P 4 -n 1 /bin/true"]),
            target: Target {
                dwarf: Some(1.3),
                fast: Some(1.3),
            },
            peers: false,
        },
        Workload {
            name: "tar",
            about: "tar of /usr/include + /usr/lib/python3.11 (~9,000 files)",
            command: strings(&[
                "tar",
                "-cf",
                &tar_out,
                "-C",
                "/usr",
                "include",
                "lib/python3.11",
            ]),
            target: real,
            peers: false,
        },
        Workload {
            name: "make",
            about: "make -B -j2 of a generated 24-file C project",
            command: strings(&["make", "-s", "-B", "-j2", "-C", &make_dir]),
            target: real,
            peers: false,
        },
        Workload {
            name: "pytest",
            about: "pytest of a generated 40-test suite (python3 -m pytest -q)",
            command: strings(&[
                "/usr/bin/python3",
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                &suite,
            ]),
            target: real,
            peers: false,
        },
        Workload {
            name: "tcp",
            about: "loopback TCP connect/accept/close x 20,000",
            command: strings(&[bench, "tcp", "20000"]),
            target: none,
            peers: false,
        },
        Workload {
            name: "python",
            about: "CPython 3.11 loop, 50,000 open/close pairs (Python frames walked)",
            command: strings(&[
                "/usr/bin/python3",
                "-c",
                "for _ in range(50000): open('/etc/hostname').close()",
            ]),
            target: none,
            peers: false,
        },
    ])
}

/// A C project of 24 small files and a Makefile; returns its directory.
fn make_project(dir: &Path) -> Result<String> {
    let project = dir.join("make-project");
    fs::create_dir_all(&project).with_context(|| format!("create {}", project.display()))?;
    let mut objects = Vec::new();
    for i in 0..24 {
        let source = format!(
            "#include <stdio.h>\n#include <string.h>\n\
             int f{i}(const char *s) {{ char b[64]; snprintf(b, sizeof b, \"%s-{i}\", s); return (int)strlen(b); }}\n"
        );
        fs::write(project.join(format!("f{i}.c")), source)?;
        objects.push(format!("f{i}.o"));
    }
    let mut main = String::from("#include <stdio.h>\n");
    for i in 0..24 {
        main.push_str(&format!("int f{i}(const char *);\n"));
    }
    main.push_str("int main(void) { int n = 0;\n");
    for i in 0..24 {
        main.push_str(&format!("n += f{i}(\"x\");\n"));
    }
    main.push_str("printf(\"%d\\n\", n); return 0; }\n");
    fs::write(project.join("main.c"), main)?;
    let makefile = format!(
        "OBJS = main.o {}\nprog: $(OBJS)\n\tcc -o $@ $(OBJS)\n%.o: %.c\n\tcc -O1 -c -o $@ $<\n",
        objects.join(" ")
    );
    fs::write(project.join("Makefile"), makefile)?;
    Ok(project.to_string_lossy().into_owned())
}

/// A pytest file of 40 tests that each write and read a file; returns it.
fn pytest_suite(dir: &Path) -> Result<String> {
    let suite = dir.join("pytest-suite");
    fs::create_dir_all(&suite).with_context(|| format!("create {}", suite.display()))?;
    let mut text = String::from("import json\nimport pytest\n\n");
    text.push_str(
        "@pytest.mark.parametrize('n', range(40))\n\
         def test_round_trip(tmp_path, n):\n\
         \x20   path = tmp_path / f'data{n}.json'\n\
         \x20   with open(path, 'w') as f:\n\
         \x20       json.dump({'n': n, 'items': list(range(n))}, f)\n\
         \x20   with open(path) as f:\n\
         \x20       assert json.load(f)['n'] == n\n",
    );
    let file = suite.join("test_bench.py");
    fs::write(&file, text).with_context(|| format!("write {}", file.display()))?;
    Ok(suite.to_string_lossy().into_owned())
}
