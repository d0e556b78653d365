//! Unit tests of the fd table, with hand-built events.

use fdtrace_common::Syscall;

use super::*;

struct NoProc;
impl Describe for NoProc {
    fn describe(&mut self, _tgid: u32, _fd: Fd) -> Option<(FdKind, String)> {
        None
    }
}

struct FakeProc;
impl Describe for FakeProc {
    fn describe(&mut self, _tgid: u32, fd: Fd) -> Option<(FdKind, String)> {
        Some((FdKind::Pipe, format!("pipe:[{}]", 1000 + fd)))
    }
}

fn ev(tgid: u32, ts_ns: u64, action: Action) -> Event {
    Event {
        ts_ns,
        tgid,
        tid: tgid,
        stopped: false,
        action,
    }
}

fn open(tgid: u32, fd: Fd, path: &str, cloexec: bool) -> Event {
    create(
        tgid,
        Syscall::Openat,
        vec![fd],
        FdKind::File,
        cloexec,
        Some(path),
    )
}

fn create(
    tgid: u32,
    syscall: Syscall,
    fds: Vec<Fd>,
    kind: FdKind,
    cloexec: bool,
    target: Option<&str>,
) -> Event {
    ev(
        tgid,
        10,
        Action::Create(Creation {
            syscall,
            fds,
            kind,
            cloexec,
            like: None,
            target: target.map(str::to_owned),
            socket: None,
            peer: None,
            stack: None,
            in_cleanup: false,
        }),
    )
}

/// A close by the program itself.
fn close(fd: Fd) -> Action {
    Action::Close {
        fd,
        by: Closer::Program,
        stack: None,
    }
}

/// A creation that copies `from` (dup*, F_DUPFD, accept on a listener).
fn copy(tgid: u32, syscall: Syscall, from: Fd, to: Fd, kind: FdKind, cloexec: bool) -> Event {
    let mut event = create(tgid, syscall, vec![to], kind, cloexec, None);
    if let Action::Create(c) = &mut event.action {
        c.like = Some(from);
    }
    event
}

fn table() -> FdTable {
    let mut t = FdTable::default();
    t.add_root(
        100,
        "/bin/app",
        vec![(0, FdKind::File, "/dev/null".into(), false)],
    );
    t
}

fn leaks(t: &FdTable) -> Vec<(u32, Fd, FdKind, String)> {
    t.leaks
        .iter()
        .map(|l| (l.tgid, l.fd, l.kind, l.target.clone()))
        .collect()
}

#[test]
fn open_then_close_is_not_a_leak() {
    let mut t = table();
    t.apply(
        &open(100, 3, "/etc/hosts", false),
        Some(StackRef(1)),
        &mut NoProc,
    );
    let used = t.apply(&ev(100, 20, close(3)), None, &mut NoProc);
    assert_eq!(used.released, vec![StackRef(1)]);
    t.apply(&ev(100, 30, Action::Exit), None, &mut NoProc);
    assert!(t.leaks.is_empty());
}

#[test]
fn fd_open_at_exit_is_a_leak_but_inherited_fds_are_not() {
    let mut t = table();
    t.apply(
        &open(100, 3, "/etc/hosts", false),
        Some(StackRef(7)),
        &mut NoProc,
    );
    t.apply(&ev(100, 30, Action::Exit), None, &mut NoProc);
    assert_eq!(leaks(&t), vec![(100, 3, FdKind::File, "/etc/hosts".into())]);
    assert_eq!(t.leaks[0].stack, Some(StackRef(7)));
    assert_eq!(t.leaks[0].opened_by, "openat");
    assert!(!t.leaks[0].still_running);
}

#[test]
fn fd_number_reuse_tracks_each_lifetime() {
    let mut t = table();
    t.apply(&open(100, 3, "/a", false), Some(StackRef(1)), &mut NoProc);
    t.apply(&ev(100, 11, close(3)), None, &mut NoProc);
    t.apply(&open(100, 3, "/b", false), Some(StackRef(2)), &mut NoProc);
    t.apply(&ev(100, 30, Action::Exit), None, &mut NoProc);
    assert_eq!(leaks(&t), vec![(100, 3, FdKind::File, "/b".into())]);
    assert_eq!(t.leaks[0].stack, Some(StackRef(2)));
}

#[test]
fn dup2_onto_open_fd_closes_it_and_copies_the_source() {
    let mut t = table();
    t.apply(&open(100, 3, "/a", false), Some(StackRef(1)), &mut NoProc);
    t.apply(&open(100, 4, "/b", false), Some(StackRef(2)), &mut NoProc);
    let dup = copy(100, Syscall::Dup2, 3, 4, FdKind::Unknown, false);
    let used = t.apply(&dup, Some(StackRef(3)), &mut NoProc);
    assert_eq!(used.released, vec![StackRef(2)]);
    t.apply(&ev(100, 30, Action::Exit), None, &mut NoProc);
    assert_eq!(
        leaks(&t),
        vec![
            (100, 3, FdKind::File, "/a".into()),
            (100, 4, FdKind::File, "/a".into())
        ]
    );
    assert_eq!(t.leaks[1].opened_by, "dup2");
}

#[test]
fn close_range_closes_or_marks() {
    let mut t = table();
    for fd in 3..8 {
        t.apply(&open(100, fd, "/x", false), None, &mut NoProc);
    }
    t.apply(
        &ev(
            100,
            12,
            Action::CloseRange {
                first: 3,
                last: 5,
                cloexec_only: false,
                stack: None,
            },
        ),
        None,
        &mut NoProc,
    );
    t.apply(
        &ev(
            100,
            12,
            Action::CloseRange {
                first: 6,
                last: u32::MAX,
                cloexec_only: true,
                stack: None,
            },
        ),
        None,
        &mut NoProc,
    );
    let p = &t.processes[&100];
    let mut open: Vec<Fd> = p.fds.keys().copied().collect();
    open.sort_unstable();
    assert_eq!(open, vec![0, 6, 7]);
    assert!(p.fds[&6].cloexec && p.fds[&7].cloexec && !p.fds[&0].cloexec);
}

#[test]
fn exec_closes_cloexec_fds_and_reports_the_others() {
    let mut t = table();
    t.apply(
        &open(100, 3, "/kept", false),
        Some(StackRef(1)),
        &mut NoProc,
    );
    t.apply(
        &open(100, 4, "/closed", true),
        Some(StackRef(2)),
        &mut NoProc,
    );
    t.apply(
        &open(100, 5, "/marked", false),
        Some(StackRef(3)),
        &mut NoProc,
    );
    t.apply(
        &ev(100, 11, Action::SetCloexec { fd: 5, on: true }),
        None,
        &mut NoProc,
    );
    let used = t.apply(
        &ev(
            100,
            12,
            Action::Exec {
                filename: "/bin/child".into(),
            },
        ),
        None,
        &mut NoProc,
    );
    assert_eq!(used.released.len(), 2);
    // Decided at exit: the new program might still use it.
    assert!(t.exec_leaks.is_empty());
    assert_eq!(t.processes[&100].comm, "child");
    t.apply(&ev(100, 30, Action::Exit), None, &mut NoProc);
    t.finish(40);
    assert_eq!(t.exec_leaks.len(), 1);
    let e = &t.exec_leaks[0];
    assert_eq!(
        (e.fd, e.target.as_str(), e.exec.as_str(), e.stack),
        (3, "/kept", "/bin/child", Some(StackRef(1)))
    );
}

/// Forks 100 into 101, which execs /bin/child with fds 3 and 4 open.
fn handed_over() -> FdTable {
    let mut t = table();
    t.apply(&open(100, 3, "/used", false), None, &mut NoProc);
    t.apply(&open(100, 4, "/unused", false), None, &mut NoProc);
    t.apply(&ev(100, 11, Action::Fork { child: 101 }), None, &mut NoProc);
    let exec = Action::Exec {
        filename: "/bin/child".into(),
    };
    t.apply(&ev(101, 12, exec), None, &mut NoProc);
    t
}

/// Exec-leaks once tracing ended.
fn exec_leaked(t: &mut FdTable) -> Vec<(u32, Fd, &str)> {
    t.finish(1000);
    let mut v: Vec<_> = t
        .exec_leaks
        .iter()
        .map(|e| (e.tgid, e.fd, e.exec.as_str()))
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn an_inherited_fd_the_new_program_uses_was_handed_over() {
    let mut t = handed_over();
    t.apply(&ev(101, 13, Action::Use { fd: 3 }), None, &mut NoProc);
    t.apply(&ev(101, 20, Action::Exit), None, &mut NoProc);
    assert_eq!(exec_leaked(&mut t), vec![(101, 4, "/bin/child")]);
}

#[test]
fn an_inherited_fd_closed_by_the_new_program_is_not_an_exec_leak() {
    let mut t = handed_over();
    t.apply(&ev(101, 13, close(4)), None, &mut NoProc);
    t.apply(&ev(101, 20, Action::Exit), None, &mut NoProc);
    assert_eq!(exec_leaked(&mut t), vec![(101, 3, "/bin/child")]);
}

#[test]
fn a_use_in_a_forked_child_counts_for_the_program_that_forked_it() {
    let mut t = handed_over();
    // /bin/child forks a helper (no exec) that uses fd 3.
    t.apply(&ev(101, 13, Action::Fork { child: 102 }), None, &mut NoProc);
    t.apply(&ev(102, 14, Action::Use { fd: 3 }), None, &mut NoProc);
    t.apply(&ev(102, 15, Action::Exit), None, &mut NoProc);
    t.apply(&ev(101, 20, Action::Exit), None, &mut NoProc);
    // The helper is the same program: it reports nothing of its own.
    assert_eq!(exec_leaked(&mut t), vec![(101, 4, "/bin/child")]);
}

#[test]
fn a_use_by_a_child_after_its_parent_exited_still_counts() {
    // `sh -c 'server --fd 3 &'`: sh exits first, its child uses fd 3.
    let mut t = handed_over();
    t.apply(&ev(101, 13, Action::Fork { child: 102 }), None, &mut NoProc);
    t.apply(&ev(101, 14, Action::Exit), None, &mut NoProc);
    t.apply(&ev(102, 15, Action::Use { fd: 3 }), None, &mut NoProc);
    t.apply(&ev(102, 20, Action::Exit), None, &mut NoProc);
    assert_eq!(exec_leaked(&mut t), vec![(101, 4, "/bin/child")]);
}

#[test]
fn the_parents_own_use_does_not_excuse_the_child() {
    // The classic bug: a server uses its listening socket; the
    // program each child execs never touches the copy it inherited.
    let mut t = handed_over();
    t.apply(&ev(100, 13, Action::Use { fd: 3 }), None, &mut NoProc);
    t.apply(&ev(101, 20, Action::Exit), None, &mut NoProc);
    assert_eq!(
        exec_leaked(&mut t),
        vec![(101, 3, "/bin/child"), (101, 4, "/bin/child")]
    );
}

#[test]
fn a_use_after_the_fd_number_was_reused_excuses_nothing() {
    let mut t = handed_over();
    t.apply(&ev(101, 13, Action::Fork { child: 102 }), None, &mut NoProc);
    // The parent closes its fd 3 and opens a new one under the number;
    // the child's use is of the old one, the parent's new one crossed
    // nothing.
    t.apply(&ev(101, 14, close(3)), None, &mut NoProc);
    t.apply(&open(101, 3, "/new", false), None, &mut NoProc);
    t.apply(&ev(102, 15, Action::Use { fd: 3 }), None, &mut NoProc);
    t.apply(&ev(101, 20, Action::Exit), None, &mut NoProc);
    assert_eq!(exec_leaked(&mut t), vec![(101, 4, "/bin/child")]);
}

#[test]
fn a_descriptor_a_forked_child_redirects_before_exec_was_handed_over() {
    // A shell's `exec 3<file; cat <&3`: the child dup2s 3 onto 0, then
    // execs cat with 3 still open. The child handled it on purpose.
    let mut t = table();
    t.apply(&open(100, 3, "/etc/hostname", false), None, &mut NoProc);
    t.apply(&ev(100, 11, Action::Fork { child: 101 }), None, &mut NoProc);
    let dup2 = copy(101, Syscall::Dup2, 3, 0, FdKind::Unknown, false);
    t.apply(&dup2, None, &mut NoProc);
    let exec = Action::Exec {
        filename: "/bin/cat".into(),
    };
    t.apply(&ev(101, 12, exec), None, &mut NoProc);
    // dash redirects in the parent, then forks: the same.
    let dup2 = copy(100, Syscall::Dup2, 3, 0, FdKind::Unknown, false);
    t.apply(&ev(100, 12, Action::Fork { child: 103 }), None, &mut NoProc);
    t.apply(&dup2, None, &mut NoProc);
    t.apply(&ev(100, 12, Action::Fork { child: 104 }), None, &mut NoProc);
    let exec = Action::Exec {
        filename: "/bin/cat".into(),
    };
    t.apply(&ev(104, 12, exec.clone()), None, &mut NoProc);
    t.apply(&ev(104, 20, Action::Exit), None, &mut NoProc);
    // A fork from before the dup, and exec, is a leak.
    t.apply(&ev(103, 13, exec), None, &mut NoProc);
    t.apply(&ev(103, 20, Action::Exit), None, &mut NoProc);
    t.apply(&ev(100, 13, Action::Fork { child: 102 }), None, &mut NoProc);
    let exec = Action::Exec {
        filename: "/bin/true".into(),
    };
    t.apply(&ev(102, 14, exec), None, &mut NoProc);
    t.apply(&ev(101, 20, Action::Exit), None, &mut NoProc);
    t.apply(&ev(102, 20, Action::Exit), None, &mut NoProc);
    // 102 was forked while the parent's stdin was a copy of 3: handed
    // over too. Only 103, forked before, was not.
    assert_eq!(exec_leaked(&mut t), vec![(103, 3, "/bin/cat")]);
}

#[test]
fn a_server_that_once_duplicated_its_socket_still_leaks_it_into_helpers() {
    let mut t = table();
    t.apply(&open(100, 3, "socket", false), None, &mut NoProc);
    let dup = copy(100, Syscall::Fcntl, 3, 9, FdKind::Unknown, true);
    t.apply(&dup, None, &mut NoProc);
    t.apply(&ev(100, 11, Action::Fork { child: 101 }), None, &mut NoProc);
    let exec = Action::Exec {
        filename: "/usr/bin/helper".into(),
    };
    t.apply(&ev(101, 12, exec), None, &mut NoProc);
    t.apply(&ev(101, 20, Action::Exit), None, &mut NoProc);
    assert_eq!(exec_leaked(&mut t), vec![(101, 3, "/usr/bin/helper")]);
}

#[test]
fn standard_streams_are_never_leaks_or_exec_leaks() {
    let mut t = table();
    // A shell's `cmd >/dev/null`: open, dup2 onto 1, close, exec.
    t.apply(&open(100, 3, "/dev/null", false), None, &mut NoProc);
    let dup2 = copy(100, Syscall::Dup2, 3, 1, FdKind::File, false);
    t.apply(&dup2, None, &mut NoProc);
    t.apply(&ev(100, 12, close(3)), None, &mut NoProc);
    t.apply(&open(100, 2, "/tmp/err", false), None, &mut NoProc);
    let exec = Action::Exec {
        filename: "/bin/true".into(),
    };
    t.apply(&ev(100, 13, exec), None, &mut NoProc);
    t.apply(&ev(100, 20, Action::Exit), None, &mut NoProc);
    assert!(t.leaks.is_empty() && t.exec_leaks.is_empty());
    // They were held all the same (with the inherited fd 0).
    assert_eq!(t.processes[&100].peak_fds, 3);
}

#[test]
fn a_child_leaks_only_what_it_created() {
    let mut t = table();
    t.apply(&open(100, 3, "/parent", false), None, &mut NoProc);
    t.apply(&ev(100, 11, Action::Fork { child: 101 }), None, &mut NoProc);
    t.apply(&open(101, 4, "/child", false), None, &mut NoProc);
    t.apply(&ev(101, 20, Action::Exit), None, &mut NoProc);
    assert_eq!(leaks(&t), vec![(101, 4, FdKind::File, "/child".into())]);
    t.apply(&ev(100, 30, close(3)), None, &mut NoProc);
    t.apply(&ev(100, 31, Action::Exit), None, &mut NoProc);
    assert_eq!(t.leaks.len(), 1);
    assert_eq!(t.processes[&101].ppid, Some(100));
}

#[test]
fn a_forked_copy_holds_its_stack_until_it_goes() {
    let mut t = table();
    t.apply(&open(100, 3, "/a", false), Some(StackRef(4)), &mut NoProc);
    let used = t.apply(&ev(100, 11, Action::Fork { child: 101 }), None, &mut NoProc);
    assert_eq!(used.held, vec![StackRef(4)]);
    let used = t.apply(&ev(101, 12, Action::Exit), None, &mut NoProc);
    assert_eq!(used.released, vec![StackRef(4)]);
}

#[test]
fn pipe_creates_two_fds_described_by_proc() {
    let mut t = table();
    let used = t.apply(
        &create(100, Syscall::Pipe2, vec![3, 4], FdKind::Pipe, true, None),
        Some(StackRef(5)),
        &mut FakeProc,
    );
    assert_eq!(used.held, vec![StackRef(5), StackRef(5)]);
    t.apply(&ev(100, 30, Action::Exit), None, &mut NoProc);
    assert_eq!(
        leaks(&t),
        vec![
            (100, 3, FdKind::Pipe, "pipe:[1003]".into()),
            (100, 4, FdKind::Pipe, "pipe:[1004]".into())
        ]
    );
    assert!(t.leaks[0].cloexec);
}

#[test]
fn accepted_socket_gets_listener_address_and_peer() {
    let mut t = table();
    let mut sock = create(100, Syscall::Socket, vec![3], FdKind::Socket, false, None);
    if let Action::Create(c) = &mut sock.action {
        c.socket = Some((2, 1));
    }
    t.apply(&sock, None, &mut NoProc);
    t.apply(
        &ev(
            100,
            11,
            Action::Address {
                fd: 3,
                side: Side::Local,
                address: "127.0.0.1:80".into(),
            },
        ),
        None,
        &mut NoProc,
    );
    let mut acc = create(100, Syscall::Accept4, vec![4], FdKind::Socket, false, None);
    if let Action::Create(c) = &mut acc.action {
        c.like = Some(3);
        c.peer = Some("127.0.0.1:5555".into());
    }
    t.apply(&acc, None, &mut NoProc);
    t.apply(&ev(100, 11, close(3)), None, &mut NoProc);
    t.apply(&ev(100, 30, Action::Exit), None, &mut NoProc);
    assert_eq!(
        leaks(&t),
        vec![(
            100,
            4,
            FdKind::Socket,
            "inet tcp 127.0.0.1:80 -> 127.0.0.1:5555".into()
        )]
    );
}

#[test]
fn emfile_is_recorded_with_the_table_size() {
    let mut t = table();
    t.apply(&open(100, 3, "/a", false), None, &mut NoProc);
    let e = ev(
        100,
        40,
        Action::Exhausted {
            syscall: Syscall::Openat,
            errno: 24,
            argument: Some("/b".into()),
            limit: Some((64, 4096)),
            stack: None,
        },
    );
    let used = t.apply(&e, Some(StackRef(9)), &mut NoProc);
    assert_eq!(used.held, vec![StackRef(9)]);
    assert_eq!(t.exhaustions.len(), 1);
    assert_eq!(
        (t.exhaustions[0].open_fds, t.exhaustions[0].syscall),
        (2, "openat")
    );
    // The limit the kernel read at the failure, not a later /proc read.
    assert_eq!(t.exhaustions[0].rlimit, Some((64, 4096)));
}

#[test]
fn a_received_descriptor_takes_what_the_kernel_saw() {
    let mut t = table();
    let recv = create(100, Syscall::Recvmsg, vec![5], FdKind::Unknown, false, None);
    t.apply(&recv, None, &mut NoProc);
    let seen = ev(
        100,
        11,
        Action::Received {
            fd: 5,
            kind: FdKind::File,
            target: "/etc/hosts".into(),
        },
    );
    t.apply(&seen, None, &mut NoProc);
    let f = &t.processes[&100].fds[&5];
    assert_eq!((f.kind, f.target.as_str()), (FdKind::File, "/etc/hosts"));
}

#[test]
fn finish_reports_live_processes_as_still_running() {
    let mut t = table();
    t.apply(&open(100, 3, "/a", false), None, &mut NoProc);
    t.finish(99);
    assert_eq!(t.leaks.len(), 1);
    assert!(t.leaks[0].still_running);
    assert_eq!(t.leaks[0].seen_ns, 99);
}

fn closed_by(fd: Fd, by: Closer) -> Action {
    Action::Close {
        fd,
        by,
        stack: None,
    }
}

#[test]
fn a_close_by_interpreter_shutdown_is_a_leak_with_its_own_stack() {
    let mut t = FdTable::default();
    t.add_root(100, "/usr/bin/python3", vec![]);
    t.apply(
        &open(100, 3, "/etc/hostname", true),
        Some(StackRef(1)),
        &mut NoProc,
    );
    t.apply(
        &open(100, 4, "/etc/passwd", true),
        Some(StackRef(2)),
        &mut NoProc,
    );
    // fd 3 closed by the program, then fd 3 again (a new file) left to
    // shutdown, as is fd 4.
    let used = t.apply(&ev(100, 20, close(3)), None, &mut NoProc);
    assert_eq!(used.released, vec![StackRef(1)]);
    t.apply(
        &open(100, 3, "/etc/group", true),
        Some(StackRef(3)),
        &mut NoProc,
    );
    for fd in [3, 4] {
        let used = t.apply(
            &ev(100, 50, closed_by(fd, Closer::InterpreterShutdown)),
            None,
            &mut NoProc,
        );
        // The leak keeps the fd's reference to its stack.
        assert!(used.released.is_empty());
    }
    t.apply(&ev(100, 60, Action::Exit), None, &mut NoProc);
    let leaks: Vec<_> = t
        .leaks
        .iter()
        .map(|l| {
            (
                l.fd,
                l.target.as_str(),
                l.stack,
                l.seen_ns,
                l.closed_at_shutdown,
            )
        })
        .collect();
    assert_eq!(
        leaks,
        [
            (3, "/etc/group", Some(StackRef(3)), 50, true),
            (4, "/etc/passwd", Some(StackRef(2)), 50, true),
        ]
    );
}

#[test]
fn shutdown_closes_of_its_own_opens_stdio_and_inherited_fds_are_not_leaks() {
    let mut t = FdTable::default();
    t.add_root(
        100,
        "/usr/bin/python3",
        vec![(5, FdKind::Pipe, "pipe:[1]".into(), false)],
    );
    // Opened by a finalizer during shutdown, closed by it.
    let mut late = open(100, 3, "/var/log/last-word", true);
    if let Action::Create(c) = &mut late.action {
        c.in_cleanup = true;
    }
    t.apply(&late, Some(StackRef(1)), &mut NoProc);
    // stdout reopened by the program (pytest's capture does this).
    t.apply(
        &open(100, 1, "/tmp/capture", false),
        Some(StackRef(2)),
        &mut NoProc,
    );
    let mut released = Vec::new();
    for fd in [3, 1, 5] {
        let used = t.apply(
            &ev(100, 50, closed_by(fd, Closer::InterpreterShutdown)),
            None,
            &mut NoProc,
        );
        released.extend(used.released);
    }
    t.apply(&ev(100, 60, Action::Exit), None, &mut NoProc);
    assert!(t.leaks.is_empty(), "{:?}", t.leaks);
    assert_eq!(released, [StackRef(1), StackRef(2)]);
}

#[test]
fn a_close_by_the_garbage_collector_is_its_own_finding() {
    let mut t = FdTable::default();
    t.add_root(100, "/usr/bin/python3", vec![]);
    t.apply(
        &create(100, Syscall::Socket, vec![3], FdKind::Socket, true, None),
        Some(StackRef(7)),
        &mut NoProc,
    );
    let used = t.apply(
        &ev(100, 2_000_010, closed_by(3, Closer::GarbageCollector)),
        None,
        &mut NoProc,
    );
    assert!(used.released.is_empty());
    t.apply(&ev(100, 3_000_000, Action::Exit), None, &mut NoProc);
    assert!(t.leaks.is_empty());
    let gc: Vec<_> = t
        .gc_closed
        .iter()
        .map(|g| (g.fd, g.kind, g.stack, g.opened_ns, g.closed_ns))
        .collect();
    assert_eq!(gc, [(3, FdKind::Socket, Some(StackRef(7)), 10, 2_000_010)]);
}

#[test]
fn a_forked_childs_shutdown_closing_its_parents_descriptor_is_not_its_leak() {
    let mut t = FdTable::default();
    t.add_root(100, "/usr/bin/python3", vec![]);
    t.apply(
        &open(100, 3, "/etc/hostname", true),
        Some(StackRef(1)),
        &mut NoProc,
    );
    t.apply(&ev(100, 11, Action::Fork { child: 101 }), None, &mut NoProc);
    t.apply(
        &ev(101, 12, closed_by(3, Closer::InterpreterShutdown)),
        None,
        &mut NoProc,
    );
    t.apply(&ev(101, 13, Action::Exit), None, &mut NoProc);
    assert!(t.leaks.is_empty());
    // The parent's own copy is still its to close.
    t.apply(&ev(100, 14, close(3)), None, &mut NoProc);
    t.apply(&ev(100, 15, Action::Exit), None, &mut NoProc);
    assert!(t.leaks.is_empty());
}

#[test]
fn a_descriptor_whose_cloexec_was_cleared_on_purpose_is_passed_not_leaked() {
    let mut t = FdTable::default();
    t.add_root(100, "/usr/bin/python3", vec![]);
    // pass_fds: opened with O_CLOEXEC, cleared in the child before exec.
    t.apply(
        &open(100, 3, "/etc/hostname", true),
        Some(StackRef(1)),
        &mut NoProc,
    );
    t.apply(
        &open(100, 4, "/etc/passwd", false),
        Some(StackRef(2)),
        &mut NoProc,
    );
    t.apply(&ev(100, 11, Action::Fork { child: 101 }), None, &mut NoProc);
    t.apply(
        &ev(101, 12, Action::SetCloexec { fd: 3, on: false }),
        None,
        &mut NoProc,
    );
    t.apply(
        &ev(
            101,
            13,
            Action::Exec {
                filename: "/usr/bin/worker".into(),
            },
        ),
        None,
        &mut NoProc,
    );
    t.apply(&ev(101, 14, Action::Exit), None, &mut NoProc);
    t.finish(20);
    // fd 4 was never meant to cross (no CLOEXEC from the start).
    let crossed: Vec<_> = t.exec_leaks.iter().map(|e| (e.tgid, e.fd)).collect();
    assert_eq!(crossed, [(101, 4)]);
}

fn bad(tgid: u32, ts_ns: u64, syscall: &'static str, fds: Vec<Fd>) -> Event {
    ev(
        tgid,
        ts_ns,
        Action::BadFd {
            syscall,
            fds,
            stack: None,
        },
    )
}

/// (process, type, fd, stack, the earlier close's stack).
type Seen = (u32, &'static str, Fd, Option<StackRef>, Option<StackRef>);

fn misuses(t: &FdTable) -> Vec<Seen> {
    t.misuses
        .iter()
        .map(|m| {
            (
                m.tgid,
                m.kind.name(),
                m.fd,
                m.stack,
                m.closed.and_then(|c| c.stack),
            )
        })
        .collect()
}

#[test]
fn a_second_close_is_a_double_close_blamed_on_the_first_that_worked() {
    let mut t = table();
    t.apply(
        &open(100, 3, "/etc/hostname", true),
        Some(StackRef(1)),
        &mut NoProc,
    );
    let used = t.apply(&ev(100, 20, close(3)), Some(StackRef(2)), &mut NoProc);
    // The creation's stack goes, the close's stays while 3 is closed.
    assert_eq!(
        (used.released, used.held),
        (vec![StackRef(1)], vec![StackRef(2)])
    );
    // The failing close's own record: 3 is not open, so it is not
    // where 3 was closed.
    let used = t.apply(&ev(100, 30, close(3)), Some(StackRef(3)), &mut NoProc);
    assert!(used.held.is_empty() && used.released.is_empty());
    let used = t.apply(
        &bad(100, 31, "close", vec![3]),
        Some(StackRef(4)),
        &mut NoProc,
    );
    assert_eq!(used.held, vec![StackRef(4), StackRef(2)]);
    assert_eq!(
        misuses(&t),
        [(100, "double-close", 3, Some(StackRef(4)), Some(StackRef(2)))]
    );
    let m = &t.misuses[0];
    assert_eq!(
        (m.syscall, m.errno, m.closed.map(|c| c.ts_ns)),
        ("close", 9, Some(20))
    );
}

#[test]
fn a_use_after_close_needs_the_number_still_closed() {
    let mut t = table();
    t.apply(&open(100, 3, "/etc/hostname", true), None, &mut NoProc);
    t.apply(&ev(100, 20, close(3)), Some(StackRef(2)), &mut NoProc);
    t.apply(
        &bad(100, 30, "read", vec![3]),
        Some(StackRef(5)),
        &mut NoProc,
    );
    // Reopened: the earlier close is forgotten; EBADF on it now is a
    // wrong mode (a write to a read-only file), no misuse.
    let used = t.apply(&open(100, 3, "/etc/passwd", true), None, &mut NoProc);
    assert_eq!(used.released, vec![StackRef(2)]);
    t.apply(
        &bad(100, 40, "write", vec![3]),
        Some(StackRef(6)),
        &mut NoProc,
    );
    assert_eq!(
        misuses(&t),
        [(
            100,
            "use-after-close",
            3,
            Some(StackRef(5)),
            Some(StackRef(2))
        )]
    );
}

#[test]
fn a_number_never_open_is_invalid_and_so_is_one_the_old_program_closed() {
    let mut t = table();
    t.apply(&bad(100, 10, "close", vec![-1]), None, &mut NoProc);
    t.apply(&open(100, 3, "/etc/hostname", false), None, &mut NoProc);
    t.apply(&ev(100, 20, close(3)), Some(StackRef(2)), &mut NoProc);
    let used = t.apply(
        &ev(
            100,
            30,
            Action::Exec {
                filename: "/bin/new".into(),
            },
        ),
        None,
        &mut NoProc,
    );
    assert_eq!(used.released, vec![StackRef(2)]);
    t.apply(&bad(100, 40, "fstat", vec![3]), None, &mut NoProc);
    // An inherited descriptor is open: EBADF on it is no misuse.
    t.apply(&bad(100, 50, "write", vec![0]), None, &mut NoProc);
    assert_eq!(
        misuses(&t),
        [
            (100, "invalid-fd", -1, None, None),
            (100, "invalid-fd", 3, None, None)
        ]
    );
}

#[test]
fn a_forked_child_inherits_what_its_parent_closed() {
    let mut t = table();
    t.apply(&open(100, 3, "/etc/hostname", true), None, &mut NoProc);
    t.apply(&ev(100, 20, close(3)), Some(StackRef(2)), &mut NoProc);
    let used = t.apply(&ev(100, 30, Action::Fork { child: 101 }), None, &mut NoProc);
    assert_eq!(used.held, vec![StackRef(2)]);
    t.apply(&bad(101, 40, "close", vec![3]), None, &mut NoProc);
    assert_eq!(
        misuses(&t),
        [(101, "double-close", 3, None, Some(StackRef(2)))]
    );
    // Each copy of the close goes with its process.
    let used = t.apply(&ev(101, 50, Action::Exit), None, &mut NoProc);
    assert_eq!(used.released, vec![StackRef(2)]);
}

fn close_range(first: u32, last: u32) -> Action {
    Action::CloseRange {
        first,
        last,
        cloexec_only: false,
        stack: None,
    }
}

#[test]
fn a_number_close_range_closed_was_closed() {
    let mut t = table();
    t.apply(&open(100, 5, "/etc/hostname", true), None, &mut NoProc);
    t.apply(&open(100, 6, "/etc/hostname", true), None, &mut NoProc);
    t.apply(&ev(100, 20, close_range(3, u32::MAX)), None, &mut NoProc);
    t.apply(&bad(100, 30, "read", vec![5]), None, &mut NoProc);
    assert_eq!(misuses(&t), [(100, "use-after-close", 5, None, None)]);
    assert!(t.misuses[0].closed.is_some());
    // One descriptor: the kernel sent its stack, which each closed
    // number holds.
    t.apply(&open(100, 7, "/etc/hostname", true), None, &mut NoProc);
    let used = t.apply(
        &ev(100, 40, close_range(7, 7)),
        Some(StackRef(4)),
        &mut NoProc,
    );
    assert_eq!(used.held, vec![StackRef(4)]);
    t.apply(&bad(100, 50, "read", vec![7]), None, &mut NoProc);
    assert_eq!(t.misuses[1].closed.and_then(|c| c.stack), Some(StackRef(4)));
}

#[test]
fn close_range_of_one_number_closed_before_is_a_double_close_without_a_failure() {
    let mut t = table();
    t.apply(&open(100, 5, "/etc/hostname", true), None, &mut NoProc);
    t.apply(&ev(100, 20, close(5)), Some(StackRef(2)), &mut NoProc);
    let used = t.apply(
        &ev(100, 30, close_range(5, 5)),
        Some(StackRef(3)),
        &mut NoProc,
    );
    assert_eq!(used.held, vec![StackRef(3), StackRef(2)]);
    assert_eq!(
        misuses(&t),
        [(100, "double-close", 5, Some(StackRef(3)), Some(StackRef(2)))]
    );
    assert_eq!(
        (t.misuses[0].syscall, t.misuses[0].errno),
        ("close_range", 0)
    );
    // A wider range over a closed number is no misuse: it closes
    // whatever is open there.
    t.apply(&ev(100, 40, close_range(4, 6)), None, &mut NoProc);
    assert_eq!(t.misuses.len(), 1);
}

#[test]
fn a_monitor_forgets_exited_processes_and_takes_its_findings() {
    let mut t = FdTable::default();
    t.add_root(100, "/bin/svc", vec![]);
    let mut leak = open(100, 3, "/etc/a", false);
    if let Action::Create(c) = &mut leak.action {
        c.stack = None;
    }
    let held = t.apply(&leak, Some(StackRef(1)), &mut NoProc).held;
    assert_eq!(held, vec![StackRef(1)]);
    t.apply(&ev(100, 11, Action::Fork { child: 101 }), None, &mut NoProc);
    t.apply(&ev(101, 12, close(3)), Some(StackRef(2)), &mut NoProc);
    // A double close in the child, then it exits holding nothing.
    t.apply(
        &bad(101, 13, "close", vec![3]),
        Some(StackRef(3)),
        &mut NoProc,
    );
    t.apply(&ev(101, 14, Action::Exit), None, &mut NoProc);
    // The parent exits holding fd 3: a leak, dropped by the monitor.
    t.apply(&ev(100, 15, Action::Exit), None, &mut NoProc);
    let found = t.take_findings();
    t.forget_exited();
    assert_eq!(found.misuses.len(), 1);
    assert_eq!(found.misuses[0].tgid, 101);
    assert!(found.exhaustions.is_empty());
    let mut released = found.released;
    released.sort_unstable();
    // The leak's stack, and the misuse's own and its earlier close's.
    assert_eq!(released, vec![StackRef(1), StackRef(2), StackRef(3)]);
    assert!(t.processes.is_empty() && t.order.is_empty());
    assert!(t.leaks.is_empty() && t.misuses.is_empty());
}

#[test]
fn a_dropped_process_releases_every_stack_it_held() {
    let mut t = FdTable::default();
    t.add_root(
        100,
        "/bin/svc",
        vec![(0, FdKind::Pipe, "pipe:[1]".into(), false)],
    );
    t.apply(
        &open(100, 3, "/etc/a", false),
        Some(StackRef(1)),
        &mut NoProc,
    );
    t.apply(
        &open(100, 4, "/etc/b", false),
        Some(StackRef(2)),
        &mut NoProc,
    );
    t.apply(&ev(100, 12, close(4)), Some(StackRef(3)), &mut NoProc);
    let mut used = t.drop_process(100);
    used.released.sort_unstable();
    assert_eq!(used.released, vec![StackRef(1), StackRef(3)]);
    assert!(t.processes.is_empty() && t.order.is_empty());
    assert!(t.drop_process(100).released.is_empty());
}
