//! Misused descriptors: double closes, uses after close and invalid
//! descriptors, each with the failing call's stack and, but for invalid
//! ones, the stack of the close before it; with and without frame
//! pointers, in threads, in Python, and never in a clean program.

use fdtrace_tests::{
    Trace, bpf_or_skip, compile_c, fixture_source, marker_line, python, python_frame,
    python_frames, trace,
};
use serde_json::Value;

/// (variant, cc flags, --stack modes that must name every function)
const BUILDS: &[(&str, &[&str], &[&str])] = &[
    (
        "g",
        &["-g", "-O0", "-fno-omit-frame-pointer"],
        &["dwarf", "fp"],
    ),
    ("O2", &["-g", "-O2", "-fomit-frame-pointer"], &["dwarf"]),
];

fn misuse_bin(variant: &str, flags: &[&str]) -> String {
    compile_c("misuse.c", variant, flags)
        .to_string_lossy()
        .into_owned()
}

fn misuses(t: &Trace) -> &Vec<Value> {
    t.report["fd_misuse"].as_array().expect("fd_misuse array")
}

/// The fixture's own functions in a stack, innermost first (not libc's).
fn user_functions(t: &Trace, stack_id: &Value) -> Vec<String> {
    t.frames(stack_id)
        .iter()
        .filter(|f| f["module"].as_str().is_some_and(|m| m.contains("misuse")))
        .filter_map(|f| f["function"].as_str().map(str::to_owned))
        .filter(|f| f != "_start")
        .collect()
}

/// What a failing call's stack names of `main -> helper -> libc`: a
/// frame-pointer walk loses the helper, whose return address libc's
/// wrapper (built without frame pointers) never saved in a frame (see the
/// README).
fn expected<'a>(stack: &str, helper: &'a str, outer: &'a str) -> Vec<&'a str> {
    if stack == "fp" {
        vec![outer]
    } else {
        vec![helper, outer]
    }
}

/// (function, line) of the frame calling into libc.
fn call_site(t: &Trace, stack_id: &Value) -> (String, u64) {
    let frames = t.frames(stack_id);
    let f = &frames[1];
    (
        f["function"].as_str().unwrap_or("?").to_owned(),
        f["line"].as_u64().unwrap_or(0),
    )
}

/// One misuse and nothing else, as (type, syscall, fd, count).
fn only_misuse(t: &Trace) -> &Value {
    assert_eq!(misuses(t).len(), 1, "{:#}", t.report["fd_misuse"]);
    assert!(t.leaks().is_empty(), "{:?}", t.leaks());
    &misuses(t)[0]
}

fn summary(m: &Value) -> (String, String, i64, u64, i64) {
    (
        m["type"].as_str().unwrap().to_owned(),
        m["syscall"].as_str().unwrap().to_owned(),
        m["fd"].as_i64().unwrap(),
        m["count"].as_u64().unwrap(),
        m["errno"].as_i64().unwrap(),
    )
}

#[test]
fn a_double_close_names_both_closes() {
    if !bpf_or_skip() {
        return;
    }
    for &(variant, flags, stacks) in BUILDS {
        for stack in stacks {
            let t = trace(
                &["--stack", stack],
                &[&misuse_bin(variant, flags), "double"],
            );
            let m = only_misuse(&t);
            assert_eq!(
                summary(m),
                ("double-close".into(), "close".into(), 3, 1, 9),
                "{variant} {stack}"
            );
            assert_eq!(m["pid"], m["tid"]);
            assert_eq!(
                user_functions(&t, &m["stack_id"]),
                expected(stack, "second_close", "main"),
                "{variant} {stack}"
            );
            // A close's compact sample is unwound with CFI in every mode.
            assert_eq!(
                user_functions(&t, &m["closed_stack_id"]),
                ["first_close", "main"],
                "{variant} {stack}"
            );
            if *stack == "dwarf" {
                let line = |marker| marker_line("misuse.c", marker);
                assert_eq!(
                    call_site(&t, &m["stack_id"]),
                    ("second_close".into(), line("SECOND:close"))
                );
                assert_eq!(
                    call_site(&t, &m["closed_stack_id"]),
                    ("first_close".into(), line("FIRST:close"))
                );
            }
        }
    }
}

#[test]
fn a_use_after_close_names_the_call_and_the_close() {
    if !bpf_or_skip() {
        return;
    }
    for &(variant, flags, stacks) in BUILDS {
        for stack in stacks {
            let t = trace(&["--stack", stack], &[&misuse_bin(variant, flags), "after"]);
            let m = only_misuse(&t);
            assert_eq!(
                summary(m),
                ("use-after-close".into(), "read".into(), 3, 1, 9),
                "{variant} {stack}"
            );
            assert_eq!(
                user_functions(&t, &m["stack_id"]),
                expected(stack, "read_after", "main")
            );
            assert_eq!(
                user_functions(&t, &m["closed_stack_id"]),
                ["first_close", "main"]
            );
        }
    }
}

#[test]
fn close_range_of_a_closed_number_is_a_double_close_though_it_does_not_fail() {
    if !bpf_or_skip() {
        return;
    }
    for &(variant, flags, _) in BUILDS {
        let t = trace(&[], &[&misuse_bin(variant, flags), "range"]);
        let m = only_misuse(&t);
        assert_eq!(
            summary(m),
            ("double-close".into(), "close_range".into(), 3, 1, 0),
            "{variant}"
        );
        assert_eq!(user_functions(&t, &m["stack_id"]), ["range_close", "main"]);
        assert_eq!(
            user_functions(&t, &m["closed_stack_id"]),
            ["first_close", "main"]
        );
    }
}

#[test]
fn invalid_descriptors_like_valgrinds_fdbaduse_are_found() {
    if !bpf_or_skip() {
        return;
    }
    for &(variant, flags, _) in BUILDS {
        let t = trace(&[], &[&misuse_bin(variant, flags), "invalid"]);
        let got: Vec<_> = misuses(&t).iter().map(summary).collect();
        assert_eq!(
            got,
            [
                ("invalid-fd".into(), "close".into(), -1, 1, 9),
                ("invalid-fd".into(), "close".into(), 1000, 1, 9),
            ],
            "{variant}"
        );
        for (m, marker) in misuses(&t).iter().zip(["BOGUS:minus", "BOGUS:big"]) {
            assert!(m["closed_stack_id"].is_null());
            assert_eq!(user_functions(&t, &m["stack_id"]), ["close_bogus", "main"]);
            assert_eq!(
                call_site(&t, &m["stack_id"]),
                ("close_bogus".into(), marker_line("misuse.c", marker))
            );
        }
    }
}

#[test]
fn a_close_of_another_threads_descriptor_is_caught_at_its_next_use() {
    if !bpf_or_skip() {
        return;
    }
    for &(variant, flags, _) in BUILDS {
        let t = trace(&[], &[&misuse_bin(variant, flags), "threads"]);
        assert_eq!(t.code(), Some(0), "{}", t.stderr());
        let m = only_misuse(&t);
        assert_eq!(
            summary(m),
            ("use-after-close".into(), "read".into(), 3, 1, 9),
            "{variant}"
        );
        // B's read failed because A closed B's descriptor, thinking it
        // was its own: both threads are named.
        assert_ne!(m["tid"], m["pid"]);
        assert_ne!(m["closed_tid"], m["tid"]);
        assert_eq!(user_functions(&t, &m["stack_id"]), ["b_read", "thread_b"]);
        assert_eq!(
            user_functions(&t, &m["closed_stack_id"]),
            ["a_second_close", "thread_a"]
        );
    }
}

#[test]
fn a_clean_program_and_ebadf_that_is_no_misuse_report_nothing() {
    if !bpf_or_skip() {
        return;
    }
    for &(variant, flags, _) in BUILDS {
        let bin = misuse_bin(variant, flags);
        let t = trace(&["--fail-on", "misuse,leak"], &[&bin, "clean", "20000"]);
        assert_eq!(t.code(), Some(0), "{}", t.stderr());
        assert!(misuses(&t).is_empty(), "{:#}", t.report["fd_misuse"]);
        assert!(t.leaks().is_empty());
        assert_eq!(t.report["dropped_events"], 0);
        // fcntl(99, F_GETFD) asks whether 99 is open; write() on a
        // read-only descriptor fails for its mode, not its number.
        let t = trace(&["--fail-on", "misuse"], &[&bin, "quiet"]);
        assert_eq!(t.code(), Some(0), "{}", t.stderr());
        assert!(misuses(&t).is_empty(), "{:#}", t.report["fd_misuse"]);
    }
}

#[test]
fn fail_on_misuse_sarif_and_suppressions() {
    if !bpf_or_skip() {
        return;
    }
    let bin = misuse_bin("g", BUILDS[0].1);
    let t = trace(&["--fail-on", "misuse"], &[&bin, "double"]);
    assert_eq!(t.code(), Some(3), "{}", t.stderr());
    // A leak gate does not fail on a misuse.
    let t = trace(&["--fail-on", "leak"], &[&bin, "double"]);
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    // A rule with the type takes it; the same rule without one does not.
    let dir = fdtrace_tests::scratch_dir("misuse-suppress");
    let rules = dir.join("rules.toml");
    let rule = |extra: &str| {
        std::fs::write(
            &rules,
            format!("[[suppress]]\nreason = \"known\"\nfunction = \"first_close\"\n{extra}"),
        )
        .unwrap();
        let rules = rules.to_string_lossy().into_owned();
        trace(
            &["--fail-on", "misuse", "--suppressions", &rules],
            &[&bin, "double"],
        )
    };
    let t = rule("type = \"double-close\"");
    assert_eq!(
        (t.code(), misuses(&t).len()),
        (Some(0), 0),
        "{}",
        t.stderr()
    );
    assert_eq!(t.report["suppressed"], 1);
    let t = rule("");
    assert_eq!((t.code(), misuses(&t).len()), (Some(3), 1));
    // SARIF: the rule, the failing close as location, the first close as
    // related location.
    let sarif_path = dir.join("out.sarif");
    let out = std::process::Command::new(fdtrace_tests::fdtrace())
        .args(["run", "--format", "sarif", "-o"])
        .arg(&sarif_path)
        .args(["--", &bin, "after"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sarif: Value =
        serde_json::from_str(&std::fs::read_to_string(&sarif_path).unwrap()).unwrap();
    let run = &sarif["runs"][0];
    let ids: Vec<&str> = run["tool"]["driver"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    for id in ["fd-double-close", "fd-use-after-close", "fd-invalid"] {
        assert!(ids.contains(&id), "{ids:?}");
    }
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{results:#?}");
    let r = &results[0];
    assert_eq!(r["ruleId"], "fd-use-after-close");
    let line = |v: &Value| {
        v["physicalLocation"]["region"]["startLine"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        line(&r["locations"][0]),
        marker_line("misuse.c", "AFTER:read")
    );
    assert_eq!(
        line(&r["relatedLocations"][0]),
        marker_line("misuse.c", "FIRST:close")
    );
}

#[test]
fn python_names_the_lines_of_both_closes() {
    if !bpf_or_skip() {
        return;
    }
    let script = fixture_source("pymisuse.py");
    let t = trace(&[], &[&python(), &script.to_string_lossy()]);
    let got: Vec<_> = misuses(&t).iter().map(summary).collect();
    let fd = misuses(&t)
        .first()
        .map_or(-1, |m| m["fd"].as_i64().unwrap());
    assert_eq!(
        got,
        [
            ("double-close".into(), "close".into(), fd, 1, 9),
            ("use-after-close".into(), "read".into(), fd, 1, 9),
        ],
        "{:#}",
        t.report["fd_misuse"]
    );
    let top = |stack_id: &Value| python_frames(&t, stack_id).into_iter().next();
    let double = &misuses(&t)[0];
    assert_eq!(
        top(&double["stack_id"]),
        Some(python_frame(
            "close_the_object",
            "pymisuse.py",
            "PY:f_close"
        ))
    );
    assert_eq!(
        top(&double["closed_stack_id"]),
        Some(python_frame(
            "close_behind_its_back",
            "pymisuse.py",
            "PY:os_close"
        ))
    );
    let after = &misuses(&t)[1];
    assert_eq!(
        top(&after["stack_id"]),
        Some(python_frame("read_it_again", "pymisuse.py", "PY:read"))
    );
    assert_eq!(
        top(&after["closed_stack_id"]),
        Some(python_frame(
            "close_behind_its_back",
            "pymisuse.py",
            "PY:os_close"
        ))
    );
}
