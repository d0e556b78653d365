//! A made-up but realistic report and timeline for the HTML renderer's
//! tests.

use crate::report::{
    EmfileEntry, ExecLeakEntry, Group, HolderEntry, LeakEntry, Report,
    misuse::MisuseEntry,
    tests::{frame as native, py_frame as python, sample_report},
    timeline::{Mark, MarkKind, ProcessTimeline, Timeline, TimelinePoint, TimelineStack},
};

fn ms(i: usize) -> f64 {
    f64::from(u32::try_from(i).unwrap())
}

/// Three stacks leaking in one server process (one of them Python), a
/// few leaks without a stack, an EMFILE at the end, an exec.
pub fn page() -> (Report, Timeline) {
    let mut r = sample_report();
    let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    r.groups = vec![
        Group {
            stack_id: 1,
            count: 0,
            truncated: false,
            stack: vec![
                native("__libc_open64", "/usr/src/glibc/io/open64.c", 41, libc),
                native("open_log", "/src/server/log.c", 88, "/src/server/server"),
                native(
                    "handle_request",
                    "/src/server/http.c",
                    210,
                    "/src/server/server",
                ),
                native(
                    "worker_loop",
                    "/src/server/worker.c",
                    54,
                    "/src/server/server",
                ),
                native("main", "/src/server/main.c", 30, "/src/server/server"),
            ],
        },
        Group {
            stack_id: 2,
            count: 0,
            truncated: false,
            stack: vec![
                native("__socket", "/usr/src/glibc/socket.c", 10, libc),
                native(
                    "sock_initobj",
                    "Modules/socketmodule.c",
                    5300,
                    "/usr/bin/python3.12",
                ),
                python("socket.__init__", "/usr/lib/python3.12/socket.py", 233),
                python("Client.connect", "/src/app/client.py", 17),
                python("handle_request <&\"quoted\">", "/src/app/views.py", 42),
                python("<module>", "/src/app/main.py", 9),
            ],
        },
        Group {
            stack_id: 3,
            count: 0,
            truncated: true,
            stack: vec![
                native("pipe2", "/usr/src/glibc/pipe2.c", 30, libc),
                native(
                    "spawn_helper",
                    "/src/server/spawn.c",
                    77,
                    "/src/server/server",
                ),
                native(
                    "handle_request",
                    "/src/server/http.c",
                    250,
                    "/src/server/server",
                ),
                native(
                    "worker_loop",
                    "/src/server/worker.c",
                    54,
                    "/src/server/server",
                ),
                native("main", "/src/server/main.c", 30, "/src/server/server"),
            ],
        },
    ];
    let leak = |i: usize, stack_id: Option<u32>, kind: &'static str, target: String| LeakEntry {
        pid: 7,
        fd: i32::try_from(i + 3).unwrap(),
        kind,
        target,
        cloexec: false,
        opened_by: "openat",
        age_ms: 900 - u64::try_from(i).unwrap() / 2,
        stack_id,
        still_running: false,
        closed_at_shutdown: false,
    };
    r.leaks = (0..600)
        .map(|i| leak(i, Some(1), "file", format!("/var/log/server/req-{i}.log")))
        .chain((600..840).map(|i| leak(i, Some(2), "socket", format!("inet tcp 10.0.0.1:{i}"))))
        .chain((840..900).map(|i| leak(i, Some(3), "pipe", format!("pipe:[{}]", 4000 + i))))
        .chain((900..905).map(|i| leak(i, None, "file", "/etc/hosts".into())))
        .collect();
    r.regroup();
    r.exec_leaks = vec![ExecLeakEntry {
        pid: 7,
        fd: 5,
        kind: "pipe",
        target: "pipe:[4242]".into(),
        exec: "/bin/sh".into(),
        opened_by: "pipe2",
        stack_id: Some(3),
    }];
    r.emfile = vec![EmfileEntry {
        pid: 7,
        tid: 9,
        syscall: "openat",
        errno: 24,
        error: "EMFILE",
        argument: Some("/var/log/server/req-1021.log".into()),
        open_fds: 1024,
        rlimit: Some([1024, 4096]),
        stack_id: Some(1),
        holders: vec![
            HolderEntry {
                count: 600,
                stack_id: Some(1),
                oldest_age_ms: 900,
            },
            HolderEntry {
                count: 240,
                stack_id: Some(2),
                oldest_age_ms: 600,
            },
            HolderEntry {
                count: 60,
                stack_id: Some(3),
                oldest_age_ms: 300,
            },
        ],
        preexisting: vec![],
        stopped: false,
    }];
    r.fd_misuse = vec![MisuseEntry {
        kind: "double-close",
        pid: 7,
        tid: 9,
        fd: 12,
        syscall: "close",
        errno: 9,
        count: 3,
        stack_id: Some(3),
        closed_stack_id: Some(1),
        closed_tid: Some(7),
        closed_ms_before: Some(12),
    }];
    r.notes = vec!["Python 3.14 frames are not walked yet.".into()];
    r.regroup();
    let stacks = vec![
        TimelineStack {
            stack_id: Some(1),
            label: "open_log (log.c:88)".into(),
        },
        TimelineStack {
            stack_id: Some(2),
            label: "Client.connect (client.py:17)".into(),
        },
        TimelineStack {
            stack_id: Some(3),
            label: "spawn_helper (spawn.c:77)".into(),
        },
    ];
    let points: Vec<TimelinePoint> = (0..1000_usize)
        .map(|i| {
            let a = (i * 600 / 1000).min(600);
            let b = i.saturating_sub(300) * 240 / 700;
            let c = i.saturating_sub(700) * 60 / 300;
            let churn = (i * 7) % 23;
            TimelinePoint {
                t_ms: ms(i),
                open: (a + b + c + 4 + churn).min(1024),
                by_stack: vec![a, b, c],
            }
        })
        .collect();
    let peak = points.iter().map(|p| p.open).max().unwrap();
    let child = ProcessTimeline {
        pid: 8,
        comm: "sh".into(),
        soft_limit: Some(1024),
        peak: 5,
        peak_ms: 500.0,
        stacks: vec![],
        points: (400..1000)
            .step_by(10)
            .map(|i| TimelinePoint {
                t_ms: ms(i),
                open: 3 + (i / 100) % 3,
                by_stack: vec![],
            })
            .collect(),
        marks: vec![Mark {
            t_ms: 400.0,
            kind: MarkKind::Exec,
            label: "exec /bin/sh".into(),
            emfile: None,
        }],
    };
    let timeline = Timeline {
        duration_ms: 1000.0,
        processes: vec![
            ProcessTimeline {
                pid: 7,
                comm: "server".into(),
                soft_limit: Some(1024),
                peak,
                peak_ms: 999.0,
                stacks,
                points,
                marks: vec![
                    Mark {
                        t_ms: 400.0,
                        kind: MarkKind::Exec,
                        label: "child 8 ran /bin/sh".into(),
                        emfile: None,
                    },
                    Mark {
                        t_ms: 990.0,
                        kind: MarkKind::Emfile,
                        label: "openat failed with EMFILE".into(),
                        emfile: Some(0),
                    },
                ],
            },
            child,
        ],
        more_processes: 1,
    };
    (r, timeline)
}

/// What a trace of about a million events can leave: 100,000 leaks from
/// 2,000 stacks 12 frames deep, 10 processes with 1,000 points and 10
/// stacks each.
pub fn huge() -> (Report, Timeline) {
    let mut r = sample_report();
    r.groups = (0..2000_u32)
        .map(|id| Group {
            stack_id: id,
            count: 0,
            truncated: false,
            stack: (0..12_u32)
                .map(|depth| {
                    // Shared near the root, distinct near the leaf.
                    let branch = id >> (depth.min(11));
                    native(
                        &format!("crate::module{depth}::function_{branch}::<T>"),
                        &format!("/src/project/src/module{depth}.rs"),
                        depth * 10 + 1,
                        "/src/project/target/release/server",
                    )
                })
                .collect(),
        })
        .collect();
    r.leaks = (0..100_000_usize)
        .map(|i| LeakEntry {
            pid: 7 + u32::try_from(i % 10).unwrap(),
            fd: i32::try_from(i % 60_000).unwrap() + 3,
            kind: "file",
            target: format!("/var/lib/project/data/segment-{i:08}.dat"),
            cloexec: false,
            opened_by: "openat",
            age_ms: u64::try_from(i).unwrap(),
            stack_id: Some(u32::try_from(i % 2000).unwrap()),
            still_running: false,
            closed_at_shutdown: false,
        })
        .collect();
    r.regroup();
    let processes = (0..10_u32)
        .map(|p| ProcessTimeline {
            pid: 7 + p,
            comm: format!("worker-{p}"),
            soft_limit: Some(65_536),
            peak: 10_000,
            peak_ms: 999.0,
            stacks: (0..10)
                .map(|s| TimelineStack {
                    stack_id: Some(s),
                    label: format!("crate::module11::function_{s}::<T> (module11.rs:111)"),
                })
                .collect(),
            points: (0..1000_usize)
                .map(|i| TimelinePoint {
                    t_ms: ms(i) * 1.234_567,
                    open: i * 10,
                    by_stack: (0..10).map(|s| i * (10 - s) / 10).collect(),
                })
                .collect(),
            marks: vec![],
        })
        .collect();
    let timeline = Timeline {
        duration_ms: 1234.567,
        processes,
        more_processes: 40,
    };
    (r, timeline)
}
