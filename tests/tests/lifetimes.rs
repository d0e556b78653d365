//! Descriptor lifetimes: implicit closes, exec, fork, threads, fd reuse,
//! and the symbolized stack that names the leaking line.

use fdtrace_tests::{bpf_or_skip, c_fixture, marker_line, python, rust_fixture, trace};
use serde_json::{Value, json};

fn lifetimes(mode: &str) -> fdtrace_tests::Trace {
    let bin = c_fixture("lifetimes.c");
    let t = trace(&[], &[bin.to_str().unwrap(), mode]);
    assert_eq!(t.report["dropped_events"], 0, "{mode}");
    t
}

/// (fd, function) of every leak.
fn fds_and_functions(t: &fdtrace_tests::Trace, function: &str) -> Vec<(i64, String)> {
    t.leaks()
        .iter()
        .map(|l| {
            let named = t
                .functions(&l["stack_id"])
                .into_iter()
                .find(|f| f == function)
                .unwrap_or_default();
            (l["fd"].as_i64().unwrap(), named)
        })
        .collect()
}

#[test]
fn dup2_onto_an_open_fd_closes_what_was_there() {
    if !bpf_or_skip() {
        return;
    }
    let t = lifetimes("dup2");
    // fd 3 was closed, fd 4 (/etc/passwd) was replaced by a copy of 3.
    assert_eq!(t.leaks().len(), 1, "{:?}", t.leaks());
    let leak = &t.leaks()[0];
    assert_eq!(
        (leak["fd"].clone(), leak["opened_by"].clone()),
        (json!(4), json!("dup2"))
    );
    assert_eq!(leak["target"], "/etc/hostname");
}

#[test]
fn close_range_closes_the_range() {
    if !bpf_or_skip() {
        return;
    }
    let t = lifetimes("close_range");
    assert_eq!(
        fds_and_functions(&t, "close_range_all"),
        vec![(8, "close_range_all".to_owned())]
    );
    assert_eq!(t.leaks()[0]["target"], "/etc/passwd");
}

#[test]
fn only_descriptors_without_cloexec_cross_exec() {
    if !bpf_or_skip() {
        return;
    }
    let t = lifetimes("exec");
    let crossed = t.exec_leaks();
    assert_eq!(crossed.len(), 1, "{crossed:?}");
    assert_eq!(crossed[0]["fd"], 3);
    assert_eq!(crossed[0]["target"], "/etc/hostname");
    assert_eq!(crossed[0]["exec"], "/bin/true");
    assert!(
        t.functions(&crossed[0]["stack_id"])
            .contains(&"exec_child".to_owned())
    );
    // The exec'd program held it to the end, so it is also a leak of that process.
    assert_eq!(t.leaks().len(), 1);
    let pid = &t.leaks()[0]["pid"];
    let process = t.report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| &p["pid"] == pid)
        .unwrap();
    assert_eq!(process["comm"], "true");
}

#[test]
fn a_child_leak_is_the_childs_and_the_parent_is_clean() {
    if !bpf_or_skip() {
        return;
    }
    let t = lifetimes("fork");
    let processes = t.report["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 2);
    let (parent, child) = (&processes[0], &processes[1]);
    assert_eq!(child["ppid"], parent["pid"]);
    assert_eq!(t.leaks().len(), 1);
    assert_eq!(t.leaks()[0]["pid"], child["pid"]);
    assert!(
        t.functions(&t.leaks()[0]["stack_id"])
            .contains(&"child_leaks".to_owned())
    );
}

#[test]
fn four_threads_leak_into_one_table() {
    if !bpf_or_skip() {
        return;
    }
    let t = lifetimes("threads");
    assert_eq!(t.leaks().len(), 20);
    assert_eq!(t.leaks_from("thread_leaks").len(), 20);
    let pids: Vec<&Value> = t.leaks().iter().map(|l| &l["pid"]).collect();
    assert!(pids.iter().all(|p| *p == pids[0]));
    let groups: Vec<&Value> = t.report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["count"] != 0)
        .collect();
    assert_eq!(groups.len(), 1, "one stack for all threads");
    assert_eq!(groups[0]["count"], 20);
}

#[test]
fn a_reused_fd_number_is_attributed_to_its_last_opener() {
    if !bpf_or_skip() {
        return;
    }
    let t = lifetimes("reuse");
    assert_eq!(
        fds_and_functions(&t, "second_use"),
        vec![(3, "second_use".to_owned())]
    );
    assert!(
        !t.functions(&t.leaks()[0]["stack_id"])
            .contains(&"first_use".to_owned())
    );
}

#[test]
fn thousands_of_closed_descriptors_are_not_leaks() {
    if !bpf_or_skip() {
        return;
    }
    let t = lifetimes("churn");
    assert_eq!(t.code(), Some(0));
    assert_eq!(t.leaks(), &Vec::<Value>::new());
    // At most two open at once on top of what the process inherited.
    let inherited = trace(&[], &["/bin/true"]).report["processes"][0]["peak_fds"]
        .as_u64()
        .unwrap();
    let peak = t.report["processes"][0]["peak_fds"].as_u64().unwrap();
    assert!(peak <= inherited + 2, "peak {peak}, inherited {inherited}");
}

#[test]
fn the_stack_names_the_leaking_function_file_and_line() {
    if !bpf_or_skip() {
        return;
    }
    let t = lifetimes("reuse");
    let frames = t.frames(&t.leaks()[0]["stack_id"]);
    let frame = frames
        .iter()
        .find(|f| f["function"] == "second_use")
        .expect("second_use frame");
    assert_eq!(frame["line"], marker_line("lifetimes.c", "LEAK:reuse"));
    assert!(frame["file"].as_str().unwrap().ends_with("lifetimes.c"));
    assert_eq!(frame["inlined"], false);
    // Innermost first: libc's open wrapper, then the leaking function, then main.
    let functions = t.functions(&t.leaks()[0]["stack_id"]);
    let at = |name: &str| {
        functions
            .iter()
            .position(|f| f == name)
            .unwrap_or_else(|| panic!("{name} in {functions:?}"))
    };
    assert!(at("second_use") < at("main"));
    assert_eq!(at("second_use"), 1, "{functions:?}");
}

#[test]
fn a_rust_program_leak_is_traced_through_std() {
    if !bpf_or_skip() {
        return;
    }
    let bin = rust_fixture("leaky.rs", "debug", &["-g"]);
    let t = trace(&[], &[bin.to_str().unwrap()]);
    let leaks = t.leaks_from("leaky::open_and_forget");
    assert_eq!(leaks.len(), 2, "{:?}", t.report);
    let frames = t.frames(&leaks[0]["stack_id"]);
    let frame = frames
        .iter()
        .find(|f| f["function"] == "leaky::open_and_forget")
        .unwrap();
    assert_eq!(frame["line"], marker_line("leaky.rs", "LEAK:rust"));
    assert_eq!(t.leaks().len(), 2);
}

#[test]
fn a_python_program_leak_is_counted_by_kind() {
    if !bpf_or_skip() {
        return;
    }
    let script = fdtrace_tests::fixture_source("leak.py");
    let t = trace(&[], &[&python(), script.to_str().unwrap()]);
    let mut kinds: Vec<&str> = t
        .leaks()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["file", "file", "file", "socket"], "{:?}", t.leaks());
    assert!(
        t.leaks()
            .iter()
            .filter(|l| l["kind"] == "file")
            .all(|l| l["target"] == "/etc/hostname")
    );
    // The Python functions take the place of the evaluation loop's frames
    // (tests/python.rs has the details).
    let functions = t.functions(&t.leaks()[0]["stack_id"]);
    let python: Vec<&str> = functions
        .iter()
        .map(String::as_str)
        .filter(|f| ["hoard", "<module>", "_PyEval_EvalFrameDefault"].contains(f))
        .collect();
    assert_eq!(python, ["hoard", "<module>"], "{functions:?}");
}

#[test]
fn a_call_failing_with_emfile_is_recorded_with_its_stack() {
    if !bpf_or_skip() {
        return;
    }
    let t = lifetimes("emfile");
    let emfile = t.report["emfile"].as_array().unwrap();
    assert_eq!(emfile.len(), 1, "{emfile:?}");
    let e = &emfile[0];
    assert_eq!(
        (
            e["syscall"].as_str(),
            e["errno"].as_i64(),
            e["error"].as_str()
        ),
        (Some("openat"), Some(24), Some("EMFILE"))
    );
    assert_eq!(e["argument"], "/etc/hostname");
    // The model's table is exactly as full as the kernel's: stdio plus 3..=15.
    assert_eq!(e["open_fds"], 16);
    let fds: Vec<i64> = t
        .leaks()
        .iter()
        .map(|l| l["fd"].as_i64().unwrap())
        .collect();
    assert_eq!(fds, (3..16).collect::<Vec<i64>>());
    let frames = t.frames(&e["stack_id"]);
    let frame = frames
        .iter()
        .find(|f| f["function"] == "exhaust")
        .expect("exhaust frame");
    assert_eq!(frame["line"], marker_line("lifetimes.c", "LEAK:emfile"));
}

#[test]
fn a_burst_of_descriptors_loses_no_event() {
    if !bpf_or_skip() {
        return;
    }
    // Faster than userspace can take stacks: the kernel side keeps every
    // event and records stacks only while the ring is less than half full;
    // past that it keeps creations in its own map (no stack) or, for the
    // rest, writes them without one. (15000 events fit the 16 MiB ring
    // even if userspace read none.)
    let bin = fdtrace_tests::compile_c("bench.c", "O2", &["-O2"]);
    let t = trace(&[], &[bin.to_str().unwrap(), "hold", "15000"]);
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    assert_eq!(t.report["dropped_events"], 0);
    let held = t
        .leaks()
        .iter()
        .filter(|l| l["target"] == "/etc/hostname")
        .count();
    assert_eq!(held, 15_000);
    let with_stack = t.leaks().iter().filter(|l| l["stack_id"].is_u64()).count() as u64;
    let skipped = t.report["skipped_stacks"].as_u64().unwrap();
    let kept = t.report["kept_in_kernel"].as_u64().unwrap();
    assert_eq!(
        with_stack + skipped + kept,
        15_001,
        "every creation has a stack or is counted as skipped or kept"
    );
}
