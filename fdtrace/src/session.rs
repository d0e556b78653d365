//! `fdtrace run`: load, start the command at a gate, then feed ring-buffer
//! records through decode -> stacks -> fd table until the command exits,
//! and build the report. The async loop only waits; [`Tracer`] does the work.

use std::{fs, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use fdtrace_common::StackMode;
use hashbrown::HashMap;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    cli::RunConfig,
    events::{Action, decode},
    fd_table::{FdTable, StackRef},
    load::{ProbeOptions, Probes},
    procfs::{self, ProcDescribe},
    report::{Context, Report},
    spawn::{self, Identity},
    stacks::{Stacks, maps::ProcessMaps, symbolize},
};

/// How long a stack sample stays raw before it is unwound and interned.
const UNWIND_AFTER: Duration = Duration::from_millis(200);
/// How often the ring buffer is drained without a wakeup from the kernel
/// (which only wakes us for stopped processes and a filling ring).
const TICK: Duration = Duration::from_millis(10);

/// The outcome of a run: the report and the command's exit code.
pub struct Outcome {
    pub report: Report,
    /// 128 + signal number when a signal ended the command.
    pub command_status: i32,
}

/// Everything that turns records into a report; synchronous and I/O-light.
pub struct Tracer {
    pub table: FdTable,
    pub stacks: Stacks,
    stack_mode: StackMode,
    /// Records that did not decode (counted as dropped).
    pub undecodable: u64,
}

impl Tracer {
    pub fn new(stack_mode: StackMode) -> Self {
        Self {
            table: FdTable::default(),
            stacks: Stacks::default(),
            stack_mode,
            undecodable: 0,
        }
    }

    /// Handles one ring-buffer record.
    pub fn handle(&mut self, bytes: &[u8]) {
        let mut event = match decode(bytes, self.stack_mode) {
            Ok(e) => e,
            Err(_) => {
                self.undecodable += 1;
                return;
            }
        };
        let tgid = event.tgid;
        if event.stopped {
            // The kernel stopped the process so its maps are still there.
            if let Ok(maps) = ProcessMaps::read(tgid) {
                self.stacks.set_maps(tgid, maps);
            }
        }
        match &mut event.action {
            Action::Fork { child, .. } => self.stacks.fork(tgid, *child),
            Action::Exec { filename } => {
                self.stacks.exec(tgid);
                // execve got a relative path: name the program by its real path.
                if !filename.starts_with('/')
                    && let Ok(exe) = fs::read_link(format!("/proc/{tgid}/exe"))
                {
                    *filename = exe.to_string_lossy().into_owned();
                }
            }
            _ => {}
        }
        let sample = match &mut event.action {
            Action::Create(c) => c.stack.take(),
            Action::Exhausted { stack, .. } => stack.take(),
            _ => None,
        };
        let stack = sample.map(|s| self.stacks.add(tgid, s, event.ts_ns));
        let used = self.table.apply(&event, stack, &mut ProcDescribe);
        for r in used.held {
            self.stacks.hold(r);
        }
        for r in used.released {
            self.stacks.release(r);
        }
        if let Some(r) = stack {
            self.stacks.drop_if_unused(r);
        }
        if event.stopped {
            // Maps read and new descriptors described: let it run.
            // SAFETY: plain kill(2); ESRCH (already gone) is fine.
            unsafe { libc::kill(libc::pid_t::try_from(tgid).unwrap_or(0), libc::SIGCONT) };
        }
    }

    /// Ends tracing and builds the report.
    pub fn report(mut self, command: &[String], exit_status: Option<i32>, dropped: u64) -> Report {
        let used = self.table.finish(monotonic_ns());
        for r in used.released {
            self.stacks.release(r);
        }
        let refs: Vec<StackRef> = self
            .table
            .leaks
            .iter()
            .filter_map(|l| l.stack)
            .chain(self.table.exec_leaks.iter().filter_map(|e| e.stack))
            .chain(self.table.exhaustions.iter().filter_map(|e| e.stack))
            .collect();
        let mut stack_ids = HashMap::new();
        for r in refs {
            if let Some(id) = self.stacks.resolve(r) {
                stack_ids.insert(r, id);
            }
        }
        let mut ids: Vec<_> = stack_ids.values().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        let frames = symbolize::symbolize(&self.stacks, &ids);
        let canonical = symbolize::same_source(&frames, &ids);
        for id in stack_ids.values_mut() {
            *id = canonical[id];
        }
        let mut truncated = HashMap::new();
        for &id in &ids {
            *truncated.entry(canonical[&id]).or_insert(false) |= self.stacks.stack(id).truncated;
        }
        Report::build(
            &self.table,
            &Context {
                command,
                exit_status,
                dropped_events: dropped + self.undecodable,
                stack_ids: &stack_ids,
                frames: &frames,
                truncated: &truncated,
            },
        )
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Runs `config.command` under tracing.
pub fn run(config: &RunConfig) -> Result<Outcome> {
    let path = spawn::resolve(&config.command[0])?;
    let mut probes = Probes::load(ProbeOptions {
        stack_mode: config.stack_mode,
        stack_bytes: config.stack_bytes,
    })?;
    let identity = if config.as_root {
        None
    } else {
        Identity::sudo_user()
    };
    let child = spawn::spawn_gated(&path, &config.command, identity.as_ref())?;
    let pid = child.pid;
    let mut tracer = Tracer::new(config.stack_mode);
    // What the command inherits: our own descriptors are close-on-exec and
    // vanish at its exec, so they are not part of its table.
    let mut inherited =
        procfs::snapshot(pid).with_context(|| format!("read the descriptors of process {pid}"))?;
    inherited.retain(|&(_, _, _, cloexec)| !cloexec);
    let exe = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    tracer
        .table
        .add_root(pid, &exe.to_string_lossy(), inherited);
    probes.trace(pid)?;
    if let Err(err) = child.release() {
        reap(pid);
        return Err(err);
    }
    let ring = probes.take_events().context("ring buffer already taken")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the event loop")?;
    let status = runtime.block_on(trace_until_exit(ring, &mut tracer, pid))?;
    let dropped = probes.losses().total();
    let report = tracer.report(&config.command, Some(status), dropped);
    Ok(Outcome {
        report,
        command_status: status,
    })
}

async fn trace_until_exit(ring: RingBuf<MapData>, tracer: &mut Tracer, pid: u32) -> Result<i32> {
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
    // for as long as it lives, and the AsyncFd owns the RingBuf.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("poll the ring buffer: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt()).context("handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("handle SIGTERM")?;
    let mut sigchld = signal(SignalKind::child()).context("handle SIGCHLD")?;
    let mut tick = tokio::time::interval(TICK);
    let mut interrupts = 0;
    loop {
        if let Some(status) = try_wait(pid) {
            drain(ring.get_mut(), tracer);
            return Ok(status);
        }
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("wait for ring buffer")?;
                drain(guard.get_inner_mut(), tracer);
                guard.clear_ready();
            }
            _ = sigchld.recv() => {}
            _ = tick.tick() => {
                drain(ring.get_mut(), tracer);
                tracer.stacks.mature(monotonic_ns(), UNWIND_AFTER);
            }
            _ = sigint.recv() => {
                interrupts += 1;
                forward(pid, if interrupts > 1 { libc::SIGKILL } else { libc::SIGINT });
            }
            _ = sigterm.recv() => forward(pid, libc::SIGTERM),
        }
    }
}

fn drain(ring: &mut RingBuf<MapData>, tracer: &mut Tracer) {
    while let Some(item) = ring.next() {
        tracer.handle(&item);
    }
}

fn forward(pid: u32, signal: libc::c_int) {
    // SAFETY: plain kill(2).
    unsafe { libc::kill(libc::pid_t::try_from(pid).unwrap_or(0), signal) };
}

/// The command's status if it has exited: its exit code, or 128 + signal.
fn try_wait(pid: u32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: valid pointer; WNOHANG never blocks.
    let ret =
        unsafe { libc::waitpid(libc::pid_t::try_from(pid).ok()?, &mut status, libc::WNOHANG) };
    if ret <= 0 {
        return None;
    }
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Some(128 + libc::WTERMSIG(status))
    } else {
        None
    }
}

fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: valid pointer; the child has exited or is about to.
    unsafe { libc::waitpid(libc::pid_t::try_from(pid).unwrap_or(0), &mut status, 0) };
}
