//! Every descriptor-creating syscall family, leaking and not leaking.

use fdtrace_tests::{bpf_or_skip, c_fixture, trace};
use serde_json::Value;

/// (function, syscall, kind, descriptors it creates, close-on-exec)
const FAMILIES: &[(&str, &str, &str, usize, bool)] = &[
    ("make_open", "open", "file", 1, false),
    ("make_openat", "openat", "file", 1, false),
    ("make_openat2", "openat2", "file", 1, false),
    ("make_creat", "creat", "file", 1, false),
    (
        "make_open_by_handle_at",
        "open_by_handle_at",
        "file",
        1,
        false,
    ),
    ("make_socket", "socket", "socket", 1, false),
    ("make_socketpair", "socketpair", "socket", 2, false),
    ("make_accept", "accept", "socket", 1, false),
    ("make_accept4", "accept4", "socket", 1, true),
    ("make_pipe", "pipe", "pipe", 2, false),
    ("make_pipe2", "pipe2", "pipe", 2, true),
    ("make_dup", "dup", "file", 1, false),
    ("make_dup2", "dup2", "file", 1, false),
    ("make_dup3", "dup3", "file", 1, true),
    ("make_eventfd", "eventfd", "eventfd", 1, false),
    ("make_eventfd2", "eventfd2", "eventfd", 1, true),
    ("make_epoll_create", "epoll_create", "epoll", 1, false),
    ("make_epoll_create1", "epoll_create1", "epoll", 1, true),
    ("make_timerfd_create", "timerfd_create", "timerfd", 1, false),
    ("make_signalfd", "signalfd", "signalfd", 1, false),
    ("make_signalfd4", "signalfd4", "signalfd", 1, true),
    ("make_inotify_init", "inotify_init", "inotify", 1, false),
    ("make_inotify_init1", "inotify_init1", "inotify", 1, true),
    ("make_fanotify_init", "fanotify_init", "fanotify", 1, false),
    ("make_memfd_create", "memfd_create", "memfd", 1, true),
    ("make_pidfd_open", "pidfd_open", "pidfd", 1, true),
    ("make_pidfd_getfd", "pidfd_getfd", "file", 1, true),
    ("make_userfaultfd", "userfaultfd", "userfaultfd", 1, true),
    ("make_perf_event_open", "perf_event_open", "perf", 1, true),
    ("make_io_uring_setup", "io_uring_setup", "io_uring", 1, true),
    ("make_recvmsg", "recvmsg", "file", 1, false),
    ("make_recvmmsg", "recvmmsg", "file", 1, false),
];

#[test]
fn each_family_leak_is_reported_with_its_kind_syscall_and_function() {
    if !bpf_or_skip() {
        return;
    }
    let bin = c_fixture("families.c");
    let t = trace(&[], &[bin.to_str().unwrap(), "leak"]);
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    assert_eq!(t.report["dropped_events"], 0);
    for &(function, syscall, kind, count, cloexec) in FAMILIES {
        let leaks = t.leaks_from(function);
        assert_eq!(leaks.len(), count, "{function}: {leaks:?}");
        for leak in leaks {
            assert_eq!(leak["opened_by"], syscall, "{function}");
            assert_eq!(leak["kind"], kind, "{function}");
            assert_eq!(leak["cloexec"], cloexec, "{function}");
        }
    }
    // fcntl makes two: F_DUPFD and F_DUPFD_CLOEXEC.
    let fcntl = t.leaks_from("make_fcntl");
    let flags: Vec<&Value> = fcntl.iter().map(|l| &l["cloexec"]).collect();
    assert_eq!(flags, [&Value::Bool(false), &Value::Bool(true)]);
    assert!(
        fcntl
            .iter()
            .all(|l| l["opened_by"] == "fcntl" && l["target"] == "/etc/hostname")
    );
    // Nothing else leaked: the helpers' descriptors were all closed.
    let expected: usize = FAMILIES.iter().map(|f| f.3).sum::<usize>() + 2;
    assert_eq!(t.leaks().len(), expected);
}

#[test]
fn targets_name_what_each_descriptor_refers_to() {
    if !bpf_or_skip() {
        return;
    }
    let bin = c_fixture("families.c");
    let t = trace(&[], &[bin.to_str().unwrap(), "leak"]);
    let target = |function: &str| {
        t.leaks_from(function)[0]["target"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(target("make_openat"), "/etc/hostname");
    assert_eq!(target("make_dup2"), "/etc/hostname");
    assert_eq!(target("make_recvmsg"), "/etc/hostname");
    assert_eq!(target("make_memfd_create"), "memfd:fixture");
    assert!(
        target("make_pipe").starts_with("pipe:["),
        "{}",
        target("make_pipe")
    );
    assert_eq!(target("make_socket"), "inet tcp");
    assert_eq!(target("make_socketpair"), "unix stream");
    assert!(
        target("make_accept").starts_with("inet tcp 127.0.0.1:"),
        "{}",
        target("make_accept")
    );
    assert!(
        target("make_accept").contains(" -> 127.0.0.1:"),
        "{}",
        target("make_accept")
    );
}

#[test]
fn no_family_leaks_when_everything_is_closed() {
    if !bpf_or_skip() {
        return;
    }
    let bin = c_fixture("families.c");
    let t = trace(&[], &[bin.to_str().unwrap(), "clean"]);
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    assert_eq!(t.leaks(), &Vec::<Value>::new());
    assert_eq!(t.report["dropped_events"], 0);
}
