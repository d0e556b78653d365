//! `fdtrace monitor`: a host daemon that traces the processes a
//! [`Selection`] picks and serves descriptor counts by program and opening
//! site as OpenMetrics.
//!
//! The path of a record is the one `attach` takes (ring buffer -> tracer
//! -> fd table), with three stages around it: [`select`] decides about
//! every process that execs or forks into view before its record is
//! applied, [`fleet`] turns the table into counts once a second, and
//! [`http`] serves the latest [`Snapshot`] to scrapers from a thread of
//! its own, so neither waits on the other.

pub mod fleet;
pub mod http;
pub mod metrics;
pub mod select;
pub mod snapshot;

use std::{
    fs,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{MapData, RingBuf};
use fdtrace_common::StackMode;
use hashbrown::HashSet;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use self::{
    fleet::{Fleet, Limits},
    select::Selection,
    snapshot::Snapshot,
};
use crate::{
    events::{Arrival, arrival},
    load::{ProbeOptions, Probes},
    procfs,
    session::{Attach, attach_process, monotonic_ns, new_tracer_for},
    signals,
    tracer::Tracer,
};

/// How often the ring is drained when it does not wake us.
const TICK: Duration = Duration::from_millis(10);
/// How often the counts and the snapshot are brought up to date.
const REFRESH: Duration = Duration::from_secs(1);
/// How often /proc is read again for renamed, moved and missed processes
/// and for changed descriptor limits.
const RESCAN: Duration = Duration::from_secs(5);
/// How often slots of the kernel's traced set that only say "someone was
/// traced here" are cleared (every exec is traced for a moment with
/// `--comm` and `--cgroup`).
const SWEEP_SLOTS: Duration = Duration::from_secs(30);
/// How often the symbol tables parsed so far are let go of (binaries are
/// replaced on upgrade; what is still needed is parsed again).
const SYMBOLS_KEPT: Duration = Duration::from_secs(600);
/// Stacks of what is not a creation (closes, EMFILE failures) are unwound
/// this long after they were taken, or when counted.
const UNWIND_AFTER: Duration = Duration::from_millis(200);

/// A validated `fdtrace monitor` command line.
#[derive(Clone, Debug)]
pub struct MonitorConfig {
    pub selection: Selection,
    pub listen: SocketAddr,
    pub limits: Limits,
    pub stack_mode: StackMode,
    pub stack_bytes: u32,
}

/// Runs until SIGINT or SIGTERM.
pub fn run(config: &MonitorConfig) -> Result<()> {
    // The port and the processes first: found before BPF is loaded.
    let listener = http::bind(config.listen)?;
    for &pid in &config.selection.pids {
        if pid == std::process::id() {
            return Err(anyhow!("cannot monitor -p {pid}: it is fdtrace itself"));
        }
        if let Some(problem) = procfs::attach_problem(pid) {
            return Err(anyhow!("cannot monitor -p {pid}: {problem}"));
        }
    }
    let mut probes = Probes::load(ProbeOptions {
        stack_mode: config.stack_mode,
        stack_bytes: config.stack_bytes,
        stop_at_emfile: false,
        select: config.selection.kernel_bits(),
    })?;
    let mut tracer = new_tracer_for(&mut probes, config.stack_mode);
    tracer.count_opened();
    tracer.stacks.max_interned = config.limits.max_stacks;
    let mut monitor = Monitor {
        cgroup_ids: select::CgroupIds::new(&config.selection),
        selection: config.selection.clone(),
        fleet: Fleet::new(config.limits),
        pinned: HashSet::new(),
        unwanted: HashSet::new(),
        strays: HashSet::new(),
    };
    monitor.pinned.extend(config.selection.pids.iter().copied());
    monitor.rescan(&mut probes, &mut tracer);
    let latest: http::Latest = Arc::new(Mutex::new(Arc::new(Snapshot::default())));
    monitor.publish(&mut probes, &mut tracer, &latest);
    eprintln!(
        "fdtrace: monitoring {}: {} traced now; metrics on http://{}/metrics",
        config.selection.describe(),
        match tracer.table.processes.len() {
            1 => "1 process".to_owned(),
            n => format!("{n} processes"),
        },
        config.listen
    );
    // Scrapes are answered on their own thread, from the last snapshot:
    // neither waits on the other.
    let served = latest.clone();
    std::thread::Builder::new()
        .name("metrics".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                let _ = runtime.block_on(http::serve(listener, served));
            }
        })
        .context("start the metrics endpoint")?;
    let ring = probes.take_events().context("ring buffer already taken")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the event loop")?;
    runtime.block_on(monitor.run(ring, &mut probes, &mut tracer, &latest))
}

struct Monitor {
    selection: Selection,
    cgroup_ids: select::CgroupIds,
    fleet: Fleet,
    /// `-p` processes and their descendants: kept whatever they exec.
    pinned: HashSet<u32>,
    /// Processes this batch of records dropped, untraced at its end.
    unwanted: HashSet<u32>,
    /// Processes in the kernel's traced set but not followed, at the last
    /// rescan: candidates whose exec record was lost.
    strays: HashSet<u32>,
}

impl Monitor {
    async fn run(
        &mut self,
        ring: RingBuf<MapData>,
        probes: &mut Probes,
        tracer: &mut Tracer,
        latest: &http::Latest,
    ) -> Result<()> {
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
        // for as long as it lives, and the AsyncFd owns the RingBuf.
        let mut ring =
            unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow!("poll the ring buffer: {e}"))?;
        let mut sigint = signal(SignalKind::interrupt()).context("handle SIGINT")?;
        let mut sigterm = signal(SignalKind::terminate()).context("handle SIGTERM")?;
        if signals::take_noted().is_some() {
            return Ok(());
        }
        let mut tick = tokio::time::interval(TICK);
        let mut refreshed = Instant::now();
        let mut rescanned = Instant::now();
        let mut symbols_since = Instant::now();
        let mut swept = Instant::now();
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard.context("wait for ring buffer")?;
                    self.drain(guard.get_inner_mut(), probes, tracer);
                    guard.clear_ready();
                }
                _ = tick.tick() => {
                    self.drain(ring.get_mut(), probes, tracer);
                    tracer.mature(monotonic_ns(), UNWIND_AFTER);
                    tracer.claim_old(monotonic_ns());
                    if rescanned.elapsed() >= RESCAN {
                        rescanned = Instant::now();
                        self.rescan(probes, tracer);
                    }
                    if swept.elapsed() >= SWEEP_SLOTS {
                        swept = Instant::now();
                        let _ = probes.sweep_slots();
                    }
                    if symbols_since.elapsed() >= SYMBOLS_KEPT {
                        symbols_since = Instant::now();
                        tracer.drop_parsed_files();
                    }
                    if refreshed.elapsed() >= REFRESH {
                        refreshed = Instant::now();
                        self.publish(probes, tracer, latest);
                    }
                }
                _ = sigint.recv() => return Ok(()),
                _ = sigterm.recv() => return Ok(()),
            }
        }
    }

    /// Hands every record waiting to the tracer, deciding first about the
    /// processes records bring into view.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, probes: &mut Probes, tracer: &mut Tracer) {
        while let Some(item) = ring.next() {
            if let Some(arrival) = arrival(&item) {
                self.arrive(arrival, probes, tracer);
            }
            tracer.handle(&item);
        }
        // Decided once the batch is read: in a chain of execs (`env
        // prog`, `sh -c prog`) a later record about the same process may
        // keep what an earlier one dropped.
        for tgid in std::mem::take(&mut self.unwanted) {
            if !is_live(tracer, tgid) {
                let _ = probes.untrace(tgid);
            }
        }
    }

    /// Keeps or drops a process that exec'd, picks up a new process whose
    /// parent is not traced (`--all`), and forgets an exited process's pid.
    fn arrive(&mut self, arrival: Arrival, probes: &mut Probes, tracer: &mut Tracer) {
        match arrival {
            Arrival::Exec { tgid, comm, cgroup } => {
                if tracer.table.processes.contains_key(&tgid) && !is_live(tracer, tgid) {
                    // A pid reused before its exited owner was forgotten.
                    tracer.drop_process(tgid);
                }
                // Decided from the record: a short-lived program may be
                // gone before /proc could be read.
                let in_cgroup = self.cgroup_ids.contains(cgroup).unwrap_or_else(|| {
                    select::cgroup_of(tgid).is_some_and(|c| self.selection.in_cgroups(&c))
                });
                let keep = self.pinned.contains(&tgid)
                    || (!self.fleet.evicted.contains(&tgid)
                        && self.selection.picks(&comm, in_cgroup));
                match (is_live(tracer, tgid), keep) {
                    (true, true) => {}
                    (false, true) => admit_exec(tgid, &comm, probes, tracer),
                    (true, false) => {
                        tracer.drop_process(tgid);
                        self.unwanted.insert(tgid);
                    }
                    (false, false) => {
                        self.unwanted.insert(tgid);
                    }
                }
            }
            Arrival::Fork { parent, child } => {
                if self.pinned.contains(&parent) {
                    self.pinned.insert(child);
                }
                if is_live(tracer, parent) || is_live(tracer, child) {
                    return;
                }
                // The kernel traces every new process with `--all`; else
                // this is the child of a candidate that was dropped. A
                // kernel thread (no executable) makes no syscalls to trace.
                if self.selection.all && fs::read_link(format!("/proc/{child}/exe")).is_ok() {
                    admit(child, probes, tracer);
                } else {
                    self.unwanted.insert(child);
                }
            }
            Arrival::Exit { tgid } => {
                // Its pid may come back as another process.
                self.pinned.remove(&tgid);
                self.fleet.evicted.remove(&tgid);
            }
        }
    }

    /// Reads /proc for processes the selection picks that are not traced
    /// (at start, renamed, moved into a cgroup) and refreshes limits.
    fn rescan(&mut self, probes: &mut Probes, tracer: &mut Tracer) {
        // What the kernel traces that fdtrace does not follow, twice in a
        // row (a candidate whose exec record was lost in a full ring):
        // no longer traced.
        let strays: HashSet<u32> = probes
            .traced()
            .into_iter()
            .filter(|t| !tracer.table.processes.contains_key(t))
            .collect();
        for &tgid in strays.intersection(&self.strays) {
            let _ = probes.untrace(tgid);
        }
        self.strays = strays;
        let host = select::host_processes();
        let alive: HashSet<u32> = host.iter().copied().collect();
        self.fleet.evicted.retain(|t| alive.contains(t));
        self.pinned.retain(|t| alive.contains(t));
        for tgid in host {
            if is_live(tracer, tgid) {
                if let Some(p) = tracer.table.processes.get_mut(&tgid)
                    && let Some(limit) = procfs::nofile_limit(tgid)
                {
                    p.rlimit = Some(limit);
                }
                continue;
            }
            if self.fleet.evicted.contains(&tgid) {
                continue;
            }
            if self.pinned.contains(&tgid) || self.selection.picks_process(tgid) {
                admit(tgid, probes, tracer);
            }
        }
    }

    /// Brings the counts up to date and makes them what `/metrics` serves.
    fn publish(&mut self, probes: &mut Probes, tracer: &mut Tracer, latest: &http::Latest) {
        for tgid in self.fleet.update(tracer) {
            let _ = probes.untrace(tgid);
            eprintln!(
                "fdtrace: process {tgid} holds the most of more than --max-fds descriptors; \
                 no longer traced (fdtrace_evicted_total)"
            );
        }
        let losses = probes.losses();
        let snapshot = self
            .fleet
            .snapshot(tracer, losses.total() + tracer.undecodable);
        if let Ok(mut slot) = latest.lock() {
            *slot = Arc::new(snapshot);
        }
    }
}

/// Whether the table follows `tgid` and it has not exited.
fn is_live(tracer: &Tracer, tgid: u32) -> bool {
    tracer
        .table
        .processes
        .get(&tgid)
        .is_some_and(|p| p.exited_ns.is_none())
}

/// Starts tracking a program the kernel traced from its exec on, whose
/// records wait in the ring: with what it holds now if it still runs, with
/// nothing if it already exited (its records say what it did).
fn admit_exec(tgid: u32, comm: &str, probes: &mut Probes, tracer: &mut Tracer) {
    let fds = match procfs::snapshot(tgid) {
        Ok(fds) => {
            // Traced since its exec, unless an earlier batch dropped it
            // on a record from before this exec.
            let _ = probes.trace(tgid);
            fds
        }
        Err(_) => Vec::new(),
    };
    let exe = fs::read_link(format!("/proc/{tgid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| comm.to_owned());
    tracer.add_root(tgid, &exe, fds);
    tracer.set_process(
        tgid,
        comm.to_owned(),
        procfs::cmdline(tgid),
        procfs::nofile_limit(tgid),
    );
}

/// Whether fdtrace said it may not read a process's descriptors (said once).
static DENIED_SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Starts tracking a process that runs now, with what it holds.
fn admit(tgid: u32, probes: &mut Probes, tracer: &mut Tracer) {
    if let Err(Attach::Gone(e)) = attach_process(probes, tracer, tgid)
        && e.kind() == std::io::ErrorKind::PermissionDenied
        && !DENIED_SAID.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        eprintln!(
            "fdtrace: cannot read /proc/{tgid}/fd ({e}): processes fdtrace may not inspect \
             are not traced; run it as root with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"
        );
    }
}
