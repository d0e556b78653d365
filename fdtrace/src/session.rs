//! Sessions: `fdtrace run` (start a command at a gate, trace it until it
//! exits) and `fdtrace attach` (trace running processes until Ctrl-C,
//! `--duration` or their exit). The async loop only waits for the ring
//! buffer, signals and timers; [`Tracer`] does the work.

use std::{
    fs::{self, File},
    io::{self, BufWriter, Write},
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{MapData, RingBuf};
use fdtrace_common::StackMode;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    cli::{AttachConfig, Format, OnEmfile, RunConfig, TraceConfig},
    load::{ProbeOptions, Probes},
    procfs,
    record::{Memory, Recorder, replay, wire::Header},
    report::{Context, IntervalEntry, Report, live, text, timeline::Timeline},
    signals,
    spawn::{self, Identity, LaunchError},
    suppress,
    tracer::{Notice, Tracer},
};

/// How long a stack sample stays raw before it is unwound and interned.
const UNWIND_AFTER: Duration = Duration::from_millis(200);
/// How often the ring buffer is drained without a wakeup from the kernel
/// (which only wakes us for an EMFILE stop and a filling ring).
const TICK: Duration = Duration::from_millis(10);
/// After CMD exits, how long descendants still running get to exit too: a
/// helper that notices its parent's exit (multiprocessing's resource
/// tracker and fork server read end of file on a pipe) is on its way out.
/// Whoever still runs after it is reported as still running.
const DESCENDANTS_GRACE: Duration = Duration::from_millis(500);

/// The outcome of a session.
pub struct Outcome {
    pub report: Report,
    /// The command's status for `run` (128 + signal number when a signal
    /// ended it); `None` for `attach`.
    pub command_status: Option<i32>,
    /// Open descriptors over time, for `--format html`.
    pub timeline: Option<Timeline>,
}

/// Where a session records its trace.
pub enum Recording {
    /// Nowhere (no `--record`, no HTML report).
    Off,
    /// Into the trace file given (opened, checked, empty).
    File(File, std::path::PathBuf),
}

/// Where the recording went, to read it back for the HTML report.
enum Recorded {
    Nowhere,
    Memory(Memory),
    File(std::path::PathBuf),
}

/// Debug builds only: `FDTRACE_TEST_STALL_MS` holds the event loop that
/// long before it reads its first record, as a long symbolization would,
/// so the tests can show what must not wait for the loop does not.
fn stall_for_tests() {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("FDTRACE_TEST_STALL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
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

fn load(trace: &TraceConfig) -> Result<Probes> {
    Probes::load(ProbeOptions {
        stack_mode: trace.stack_mode,
        stack_bytes: trace.stack_bytes,
        stop_at_emfile: trace.on_emfile == OnEmfile::Stop,
        select: 0,
    })
}

/// Runs `config.command` under tracing.
pub fn run(config: &RunConfig, recording: Recording) -> Result<Outcome> {
    let path = spawn::resolve(&config.command[0])?;
    let mut probes = load(&config.trace)?;
    let identity = if config.as_root {
        None
    } else {
        Identity::sudo_user()
    };
    let mut tracer = new_tracer(&mut probes, &config.trace);
    let recorded = start_recording(
        &mut tracer,
        recording,
        &config.trace,
        ("run", &config.command),
    )?;
    tracer.register_python_program(&path);
    let child = spawn::spawn_gated(&path, &config.command, identity.as_ref())?;
    let pid = child.pid;
    // What the command inherits: our own descriptors are close-on-exec and
    // vanish at its exec, so they are not part of its table.
    let mut inherited =
        procfs::snapshot(pid).with_context(|| format!("read the descriptors of process {pid}"))?;
    inherited.retain(|&(_, _, _, cloexec)| !cloexec);
    let exe = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    tracer.add_root(pid, &exe.to_string_lossy(), inherited);
    probes.trace(pid)?;
    // Ctrl-C while the probes loaded: CMD never starts.
    if let Some(signal) = signals::take_noted() {
        child.cancel();
        reap(pid);
        return Err(LaunchError {
            message: format!("interrupted by signal {signal} before the command started"),
            exit_code: 128 + signal,
        }
        .into());
    }
    if let Err(err) = child.release() {
        reap(pid);
        return Err(err);
    }
    let watch = Watch::Child(pid);
    let ending = event_loop(&mut probes, &mut tracer, &config.trace, watch, None)?;
    let status = match ending.reason {
        Reason::CommandExited(status) => Some(status),
        _ => None,
    };
    let report = final_report(
        &mut tracer,
        &probes,
        &config.trace,
        ("run", &config.command, status),
        ending.intervals,
    );
    let timeline = timeline(&mut tracer, recorded, &config.trace)?;
    Ok(Outcome {
        report,
        command_status: status,
        timeline,
    })
}

/// Attaches to `config.pids` and traces them.
pub fn attach(config: &AttachConfig, recording: Recording) -> Result<Outcome> {
    for &pid in &config.pids {
        if pid == std::process::id() {
            bail!(
                "cannot attach: PID {pid} is fdtrace itself; give the PID of the process to trace"
            );
        }
        if let Some(problem) = procfs::attach_problem(pid) {
            bail!("cannot attach: {problem}");
        }
    }
    let started = Instant::now();
    let mut probes = load(&config.trace)?;
    let mut tracer = new_tracer(&mut probes, &config.trace);
    let pids: Vec<String> = config.pids.iter().map(u32::to_string).collect();
    let command = vec![format!("attach -p {}", pids.join(" -p "))];
    let recorded = start_recording(&mut tracer, recording, &config.trace, ("attach", &command))?;
    for &pid in &config.pids {
        attach_process(&mut probes, &mut tracer, pid).map_err(|e| match e {
            Attach::Gone(_) => anyhow!("process {pid} exited before fdtrace could attach"),
            Attach::Kernel(e) => e,
        })?;
    }
    eprintln!(
        "fdtrace: attached to {} in {} ms; Ctrl-C to stop",
        pids.join(", "),
        started.elapsed().as_millis()
    );
    let watch = Watch::Attached(config.pids.clone());
    let intervals = Some(Intervals {
        every: config.interval,
        min_age: config.min_age,
        duration: config.duration,
    });
    let ending = event_loop(&mut probes, &mut tracer, &config.trace, watch, intervals)?;
    let report = final_report(
        &mut tracer,
        &probes,
        &config.trace,
        ("attach", &command, None),
        ending.intervals,
    );
    let timeline = timeline(&mut tracer, recorded, &config.trace)?;
    Ok(Outcome {
        report,
        command_status: None,
        timeline,
    })
}

/// Why a running process could not be attached to.
#[derive(Debug)]
pub enum Attach {
    /// Its descriptors could not be read: it exited, or fdtrace may not
    /// look (the error says which); it is not traced.
    Gone(io::Error),
    /// The kernel's traced set refused it.
    Kernel(anyhow::Error),
}

/// Starts tracing a running process with what it holds now (`attach`, and
/// `monitor` for a process it picks while it runs).
pub fn attach_process(probes: &mut Probes, tracer: &mut Tracer, tgid: u32) -> Result<(), Attach> {
    // The kernel learns how to walk its Python frames (if it runs
    // CPython) before its first traced event.
    tracer.read_maps(tgid);
    // Traced first, then the snapshot: an fd opened in between arrives as
    // an event later and replaces its "origin unknown" entry.
    probes.trace(tgid).map_err(Attach::Kernel)?;
    let fds = match procfs::snapshot(tgid) {
        Ok(fds) => fds,
        Err(e) => {
            let _ = probes.untrace(tgid);
            return Err(Attach::Gone(e));
        }
    };
    let exe = fs::read_link(format!("/proc/{tgid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    tracer.add_root(tgid, &exe, fds);
    tracer.set_process(
        tgid,
        procfs::comm(tgid),
        procfs::cmdline(tgid),
        procfs::nofile_limit(tgid),
    );
    Ok(())
}

/// Starts recording, into the trace file or (for an HTML report) memory.
fn start_recording(
    tracer: &mut Tracer,
    recording: Recording,
    trace: &TraceConfig,
    (mode, command): (&str, &[String]),
) -> Result<Recorded> {
    let header = Header {
        writer: env!("CARGO_PKG_VERSION").to_owned(),
        mode: mode.to_owned(),
        command: command.to_vec(),
        stack_mode: crate::record::wire::stack_mode_number(trace.stack_mode),
        start_ns: monotonic_ns(),
        started_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let (out, recorded): (Box<dyn Write>, Recorded) = match recording {
        Recording::File(file, path) => (
            Box::new(BufWriter::with_capacity(1 << 16, file)),
            Recorded::File(path),
        ),
        Recording::Off if trace.format == Format::Html => {
            let memory = Memory::default();
            (Box::new(memory.clone()), Recorded::Memory(memory))
        }
        Recording::Off => return Ok(Recorded::Nowhere),
    };
    let recorder = Recorder::new(out, &header).context("start the trace file")?;
    tracer.record_to(recorder);
    Ok(recorded)
}

/// Says how the trace file ended up, and for an HTML report, reads the
/// recording back into its timeline.
fn timeline(
    tracer: &mut Tracer,
    recorded: Recorded,
    trace: &TraceConfig,
) -> Result<Option<Timeline>> {
    if let (Some(recorder), Recorded::File(path)) = (tracer.take_recorder(), &recorded) {
        let (written, failed) = recorder.written();
        match failed {
            Some(why) => eprintln!(
                "fdtrace: {}: writing stopped ({why}): the trace holds what came before, and \
                 `fdtrace report` says where it was cut",
                path.display()
            ),
            None => eprintln!(
                "fdtrace: trace written to {} ({written} bytes)",
                path.display()
            ),
        }
    }
    if trace.format != Format::Html {
        return Ok(None);
    }
    let (name, bytes) = match recorded {
        Recorded::Nowhere => return Ok(None),
        Recorded::Memory(memory) => ("the trace".to_owned(), memory.take()),
        Recorded::File(path) => (
            path.display().to_string(),
            fs::read(&path).with_context(|| format!("read back {}", path.display()))?,
        ),
    };
    Ok(Some(replay::replay(&name, &bytes)?.timeline))
}

/// Reads a recorded trace and builds its report, suppressions applied.
pub fn report(file: Option<&Path>, trace: &TraceConfig) -> Result<Outcome> {
    let (name, bytes) = match file {
        Some(path) => (
            path.display().to_string(),
            fs::read(path).with_context(|| format!("{}: cannot read it", path.display()))?,
        ),
        None => {
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut io::stdin().lock(), &mut bytes)
                .context("read the trace from standard input")?;
            ("standard input".to_owned(), bytes)
        }
    };
    let replayed = replay::replay(&name, &bytes)?;
    let mut report = replayed.report;
    suppress::apply(&mut report, &trace.suppressions);
    Ok(Outcome {
        report,
        command_status: None,
        timeline: Some(replayed.timeline),
    })
}

/// A tracer whose CPython walker entries go to the loaded programs.
fn new_tracer(probes: &mut Probes, trace: &TraceConfig) -> Tracer {
    new_tracer_for(probes, trace.stack_mode)
}

/// A tracer wired to the loaded probes' maps (Python walker, kept
/// creations, interpreter registry).
pub fn new_tracer_for(probes: &mut Probes, stack_mode: StackMode) -> Tracer {
    let mut tracer = Tracer::new(stack_mode);
    if let Some(walker) = probes.take_python_walker() {
        tracer.set_python_walker(walker);
    }
    if let Some(claim) = probes.take_deferred() {
        tracer.set_deferred_claim(claim);
    }
    if let Some(registry) = probes.take_python_registry() {
        tracer.set_python_registry(registry);
    }
    tracer
}

/// Ends tracing and builds the report, suppressions applied.
fn final_report(
    tracer: &mut Tracer,
    probes: &Probes,
    trace: &TraceConfig,
    (mode, command, exit_status): (&'static str, &[String], Option<i32>),
    intervals: Vec<IntervalEntry>,
) -> Report {
    tracer.finish(monotonic_ns());
    let losses = probes.losses();
    let cx = Context {
        mode,
        command,
        exit_status,
        dropped_events: losses.total(),
        skipped_stacks: losses.skipped_stacks,
        kept_in_kernel: losses.deferred,
        // Only losses that may have carried a close are timed.
        last_drop_ns: (losses.last_drop_ns > 0).then_some(losses.last_drop_ns),
        intervals,
    };
    let mut report = tracer.report(cx.clone());
    tracer.end_recording(&cx);
    suppress::apply(&mut report, &trace.suppressions);
    report
}

/// Every process the table knows has exited.
fn all_exited(tracer: &Tracer) -> bool {
    tracer
        .table
        .processes
        .values()
        .all(|p| p.exited_ns.is_some())
}

/// What ends a session.
enum Watch {
    /// `run`: the command's exit.
    Child(u32),
    /// `attach`: the exit of all of these (or a signal, or --duration).
    Attached(Vec<u32>),
}

struct Intervals {
    every: Duration,
    min_age: Duration,
    duration: Option<Duration>,
}

enum Reason {
    CommandExited(i32),
    AllExited,
    Duration,
    Interrupted,
    Emfile,
}

struct Ending {
    reason: Reason,
    intervals: Vec<IntervalEntry>,
}

fn event_loop(
    probes: &mut Probes,
    tracer: &mut Tracer,
    config: &TraceConfig,
    watch: Watch,
    intervals: Option<Intervals>,
) -> Result<Ending> {
    let ring = probes.take_events().context("ring buffer already taken")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the event loop")?;
    // Live notices go to stderr as text, unless that is where JSON goes.
    let live = text::Style { color: false };
    let live_enabled = config.format == Format::Text || config.output.is_some();
    let mut loop_state = LoopState {
        config,
        live,
        live_enabled,
        intervals: Vec::new(),
    };
    runtime.block_on(loop_state.run(ring, tracer, watch, intervals))
}

struct LoopState<'a> {
    config: &'a TraceConfig,
    live: text::Style,
    live_enabled: bool,
    intervals: Vec<IntervalEntry>,
}

impl LoopState<'_> {
    async fn run(
        &mut self,
        ring: RingBuf<MapData>,
        tracer: &mut Tracer,
        watch: Watch,
        intervals: Option<Intervals>,
    ) -> Result<Ending> {
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
        // for as long as it lives, and the AsyncFd owns the RingBuf.
        let mut ring =
            unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow!("poll the ring buffer: {e}"))?;
        let mut sigint = signal(SignalKind::interrupt()).context("handle SIGINT")?;
        let mut sigterm = signal(SignalKind::terminate()).context("handle SIGTERM")?;
        let mut sigchld = signal(SignalKind::child()).context("handle SIGCHLD")?;
        // Installed now; one that came before them is handled like them.
        let mut interrupts = 0;
        if let Some(early) = signals::take_noted() {
            match &watch {
                // Forwarded, not counted: tokio's handler may see it too.
                Watch::Child(pid) => forward(*pid, early),
                Watch::Attached(_) => {
                    self.drain(ring.get_mut(), tracer);
                    return Ok(Ending {
                        reason: Reason::Interrupted,
                        intervals: std::mem::take(&mut self.intervals),
                    });
                }
            }
        }
        stall_for_tests();
        let mut tick = tokio::time::interval(TICK);
        let start = Instant::now();
        let start_ns = monotonic_ns();
        let every = intervals.as_ref().map_or(Duration::MAX, |i| i.every);
        let mut next_interval = start + every.min(Duration::from_secs(1 << 30));
        let mut command_exit: Option<(i32, Instant)> = None;
        loop {
            let reason = match &watch {
                Watch::Child(pid) => {
                    if command_exit.is_none() {
                        command_exit = try_wait(*pid).map(|status| (status, Instant::now()));
                    }
                    command_exit
                        .filter(|(_, at)| at.elapsed() >= DESCENDANTS_GRACE || all_exited(tracer))
                        .map(|(status, _)| Reason::CommandExited(status))
                }
                Watch::Attached(pids) => pids
                    .iter()
                    .all(|p| {
                        tracer
                            .table
                            .processes
                            .get(p)
                            .is_none_or(|p| p.exited_ns.is_some())
                    })
                    .then_some(Reason::AllExited),
            };
            let reason = reason.or_else(|| {
                let limit = intervals.as_ref().and_then(|i| i.duration)?;
                (start.elapsed() >= limit).then_some(Reason::Duration)
            });
            if let Some(reason) = reason {
                self.drain(ring.get_mut(), tracer);
                return Ok(Ending {
                    reason,
                    intervals: std::mem::take(&mut self.intervals),
                });
            }
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard.context("wait for ring buffer")?;
                    let ended = self.drain(guard.get_inner_mut(), tracer);
                    guard.clear_ready();
                    if ended {
                        return Ok(Ending { reason: Reason::Emfile, intervals: std::mem::take(&mut self.intervals) });
                    }
                }
                _ = sigchld.recv() => {}
                _ = tick.tick() => {
                    if self.drain(ring.get_mut(), tracer) {
                        return Ok(Ending { reason: Reason::Emfile, intervals: std::mem::take(&mut self.intervals) });
                    }
                    tracer.mature(monotonic_ns(), UNWIND_AFTER);
                    tracer.claim_old(monotonic_ns());
                    if let Some(i) = &intervals && Instant::now() >= next_interval {
                        next_interval += i.every;
                        self.interval(tracer, start_ns, i);
                    }
                }
                _ = sigint.recv() => {
                    interrupts += 1;
                    // CMD already reaped (its descendants' grace): its pid
                    // may be another process's by now; stop waiting instead.
                    if let Some((status, _)) = command_exit {
                        self.drain(ring.get_mut(), tracer);
                        return Ok(Ending { reason: Reason::CommandExited(status), intervals: std::mem::take(&mut self.intervals) });
                    }
                    match &watch {
                        Watch::Child(pid) => forward(*pid, if interrupts > 1 { libc::SIGKILL } else { libc::SIGINT }),
                        Watch::Attached(_) => {
                            self.drain(ring.get_mut(), tracer);
                            return Ok(Ending { reason: Reason::Interrupted, intervals: std::mem::take(&mut self.intervals) });
                        }
                    }
                }
                _ = sigterm.recv() => match &watch {
                    Watch::Child(_) if let Some((status, _)) = command_exit => {
                        self.drain(ring.get_mut(), tracer);
                        return Ok(Ending { reason: Reason::CommandExited(status), intervals: std::mem::take(&mut self.intervals) });
                    }
                    Watch::Child(pid) => forward(*pid, libc::SIGTERM),
                    Watch::Attached(_) => {
                        self.drain(ring.get_mut(), tracer);
                        return Ok(Ending { reason: Reason::Interrupted, intervals: std::mem::take(&mut self.intervals) });
                    }
                },
            }
        }
    }

    /// Handles every record available; true if tracing must end now
    /// (`--on-emfile exit`).
    fn drain(&mut self, ring: &mut RingBuf<MapData>, tracer: &mut Tracer) -> bool {
        let mut end = false;
        while let Some(item) = ring.next() {
            let notice = tracer.handle(&item);
            drop(item);
            if let Some(notice) = notice {
                end |= self.notice(tracer, notice);
            }
        }
        end
    }

    fn notice(&mut self, tracer: &mut Tracer, notice: Notice) -> bool {
        let context = Context::live(Vec::new());
        match notice {
            Notice::Emfile {
                index,
                tgid,
                stopped,
            } => {
                if self.live_enabled {
                    let report = tracer.report(context);
                    let mut err = io::stderr().lock();
                    let _ = live::emfile(&report, index, self.live, &mut err);
                    if stopped {
                        let _ = writeln!(
                            err,
                            "fdtrace: process {tgid} is stopped at the failure (--on-emfile stop).\n  \
                             inspect: ls -l /proc/{tgid}/fd; cat /proc/{tgid}/limits; gdb -p {tgid}\n  \
                             resume:  kill -CONT {tgid}"
                        );
                    }
                }
                self.config.on_emfile == OnEmfile::Exit
            }
            Notice::FdSetOverflow { index } => {
                if self.live_enabled {
                    let report = tracer.report(context);
                    let _ =
                        live::fd_set_overflow(&report, index, self.live, &mut io::stderr().lock());
                }
                false
            }
        }
    }

    fn interval(&mut self, tracer: &mut Tracer, start_ns: u64, intervals: &Intervals) {
        let now = monotonic_ns();
        let min_age = u64::try_from(intervals.min_age.as_nanos()).unwrap_or(u64::MAX);
        let entry = tracer.interval((now - start_ns) / 1_000_000, now.saturating_sub(min_age));
        if self.live_enabled {
            let report = tracer.report(Context::live(vec![entry.clone()]));
            let _ = live::interval(
                &report,
                &entry,
                intervals.every,
                intervals.min_age,
                self.live,
                &mut io::stderr().lock(),
            );
        }
        self.intervals.push(entry);
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
