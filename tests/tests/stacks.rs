//! Complete stacks for code built without frame pointers: C at -O2, a Rust
//! release build, a dlopen'd library, a process gone long before the report.

use fdtrace_tests::{Trace, bpf_or_skip, compile_c, marker_line, rust_fixture, trace};
use serde_json::Value;

const NO_FP: &[&str] = &["-g", "-O2", "-fomit-frame-pointer"];

fn nofp() -> String {
    compile_c("nofp.c", "O2", NO_FP)
        .to_string_lossy()
        .into_owned()
}

/// (function, file name, line) of the frames, innermost first.
fn frames(t: &Trace, leak: &Value) -> Vec<(String, String, u64)> {
    t.frames(&leak["stack_id"])
        .iter()
        .map(|f| {
            let file = f["file"]
                .as_str()
                .unwrap_or("")
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_owned();
            (
                f["function"].as_str().unwrap_or("").to_owned(),
                file,
                f["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Asserts the frames right after libc's wrapper are exactly `expected`.
fn assert_user_frames(t: &Trace, leak: &Value, expected: &[(&str, &str, u64)]) {
    let got = frames(t, leak);
    assert!(
        got[0].0.contains("open"),
        "innermost is libc's wrapper: {got:?}"
    );
    let user: Vec<(&str, &str, u64)> = got[1..=expected.len()]
        .iter()
        .map(|(f, file, l)| (f.as_str(), file.as_str(), *l))
        .collect();
    assert_eq!(user, expected, "{got:?}");
}

#[test]
fn optimised_c_without_frame_pointers_gets_the_whole_stack() {
    if !bpf_or_skip() {
        return;
    }
    let t = trace(&[], &[&nofp(), "direct"]);
    assert_eq!(t.leaks().len(), 1);
    assert_user_frames(
        &t,
        &t.leaks()[0],
        &[
            ("leaf", "nofp.c", marker_line("nofp.c", "LEAK:leaf")),
            ("middle", "nofp.c", marker_line("nofp.c", "CALL:middle")),
            ("main", "nofp.c", marker_line("nofp.c", "CALL:main")),
        ],
    );
    assert_eq!(t.report["groups"][0]["truncated"], false);
}

#[test]
fn a_child_that_exited_long_before_the_report_still_resolves() {
    if !bpf_or_skip() {
        return;
    }
    let t = trace(&[], &[&nofp(), "child"]);
    assert_eq!(t.leaks().len(), 1);
    let leak = &t.leaks()[0];
    let parent = &t.report["processes"][0]["pid"];
    assert_ne!(&leak["pid"], parent, "the child leaked");
    assert_user_frames(
        &t,
        leak,
        &[
            ("leaf", "nofp.c", marker_line("nofp.c", "LEAK:leaf")),
            ("middle", "nofp.c", marker_line("nofp.c", "CALL:middle")),
            ("main", "nofp.c", marker_line("nofp.c", "CALL:child")),
        ],
    );
}

#[test]
fn a_leak_inside_a_dlopened_library_is_symbolized() {
    if !bpf_or_skip() {
        return;
    }
    let mut flags = NO_FP.to_vec();
    flags.extend(["-shared", "-fPIC"]);
    let plugin = compile_c("plugin.c", "O2.so", &flags);
    let t = trace(&[], &[&nofp(), "dlopen", plugin.to_str().unwrap()]);
    assert_eq!(t.leaks().len(), 1, "{:?}", t.report);
    assert_eq!(t.leaks()[0]["target"], "/etc/passwd");
    assert_user_frames(
        &t,
        &t.leaks()[0],
        &[
            (
                "plugin_leak",
                "plugin.c",
                marker_line("plugin.c", "LEAK:plugin"),
            ),
            (
                "load_plugin",
                "nofp.c",
                marker_line("nofp.c", "CALL:plugin"),
            ),
            ("main", "nofp.c", marker_line("nofp.c", "CALL:dlopen")),
        ],
    );
    let module = t.frames(&t.leaks()[0]["stack_id"])[1]["module"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(module.ends_with("plugin-O2.so"), "{module}");
}

#[test]
fn a_rust_release_build_names_the_leaking_function_and_main() {
    if !bpf_or_skip() {
        return;
    }
    let bin = rust_fixture(
        "leaky.rs",
        "release",
        &["-C", "opt-level=3", "-C", "debuginfo=2"],
    );
    let t = trace(&[], &[bin.to_str().unwrap()]);
    assert_eq!(t.leaks().len(), 2, "{:?}", t.report);
    for leak in t.leaks() {
        let got = frames(&t, leak);
        let at = |name: &str| {
            got.iter()
                .position(|(f, ..)| f == name)
                .unwrap_or_else(|| panic!("{name}: {got:?}"))
        };
        assert!(at("leaky::open_and_forget") < at("leaky::main"), "{got:?}");
        assert_eq!(
            got[at("leaky::open_and_forget")].2,
            marker_line("leaky.rs", "LEAK:rust")
        );
    }
}

#[test]
fn a_short_stack_copy_marks_deep_stacks_truncated() {
    if !bpf_or_skip() {
        return;
    }
    // 201 frames of 80 bytes: more than the default copy (8-12 KiB above
    // sp: whole pages from the one holding sp), less than 32 KiB.
    let default = trace(&[], &[&nofp(), "deep"]);
    assert_eq!(default.report["groups"][0]["truncated"], true);
    let full = trace(&["--stack-bytes", "32768"], &[&nofp(), "deep"]);
    let group = &full.report["groups"][0];
    assert_eq!(group["truncated"], false);
    let recursions = group["stack"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["function"] == "recurse")
        .count();
    assert_eq!(recursions, 201);
    let short = trace(&["--stack-bytes", "1024"], &[&nofp(), "deep"]);
    assert_eq!(short.report["groups"][0]["truncated"], true);
    assert!(short.leaks()[0]["stack_id"].is_u64());
}

#[test]
fn stack_modes_fp_and_none() {
    if !bpf_or_skip() {
        return;
    }
    let none = trace(&["--stack", "none"], &[&nofp(), "direct"]);
    assert_eq!(none.leaks().len(), 1);
    assert!(none.leaks()[0]["stack_id"].is_null());
    assert_eq!(none.report["groups"], serde_json::json!([]));
    // Frame pointers alone stop at libc's wrapper, which has none.
    let fp = trace(&["--stack", "fp"], &[&nofp(), "direct"]);
    let functions = fp.functions(&fp.leaks()[0]["stack_id"]);
    assert!(functions[0].contains("open"), "{functions:?}");
}
