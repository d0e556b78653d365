//! What `fdtrace monitor --all` costs on a busy host: [`CHURNERS`]
//! long-lived processes each opening and closing /dev/null
//! [`OPENS_PER_SECOND`] times a second, watched for [`DURATION`] untraced,
//! then under the monitor, then under a bpftrace one-liner that only counts
//! creations by program (the cheapest tracer there is, not a peer in what
//! it tells you). The figures: the monitor's peak RSS and how much it still
//! grows once warm (memory must stay bounded), its dropped events, and its
//! CPU against bpftrace's.
//!
//! Probes run in the traced processes, so their CPU is charged to them, not
//! to the tracer: the cost of tracing compared here is the tracer's own CPU
//! plus what the churners spend beyond their untraced baseline.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{Figure, measure::Paths};

/// Long-lived processes churning descriptors.
const CHURNERS: u32 = 200;
/// Open/close pairs each churner makes a second.
const OPENS_PER_SECOND: u32 = 100;
/// How long each side is watched.
const DURATION: Duration = Duration::from_secs(30);
/// How long the monitor or bpftrace may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// Most RSS fdtrace may reach at the peak.
const PEAK_RSS_MB: f64 = 256.0;
/// Most RSS may still grow, in percent, from a third into the run to its
/// end: memory stays bounded.
const GROWTH_PERCENT: f64 = 10.0;
/// Informational: bpftrace here only bumps a per-CPU counter in the kernel,
/// while fdtrace copies and unwinds a stack per event and keeps a table of
/// every descriptor; this bound says "the same order", not "as cheap".
const CPU_RATIO: f64 = 10.0;
/// The peer: creations counted by program name, nothing else.
const BPFTRACE_SCRIPT: &str =
    "tracepoint:syscalls:sys_exit_openat /args->ret >= 0/ { @[comm] = count(); }";

/// What this part adds to the benchmark.
pub struct Monitored {
    pub figures: Vec<Figure>,
    pub json: Value,
}

pub fn measure(paths: &Paths) -> Result<Monitored> {
    let duration = DURATION;
    let seconds = duration.as_secs_f64();
    let creations = CHURNERS * OPENS_PER_SECOND;
    println!(
        "\nmonitor --all: {CHURNERS} processes, each opening and closing /dev/null \
         {OPENS_PER_SECOND} times a second ({} creations/s in all), {seconds:.0} s a side:",
        grouped(u64::from(creations))
    );
    let comm = comm_of(&paths.bench)?;
    // Alive for all three sides and a margin; ended by the guard before that.
    let mut churners = Churners::start(&paths.bench, 3.0 * seconds + 120.0)?;
    thread::sleep(Duration::from_secs(1));

    let untraced = watch(None, &mut churners, duration)?;
    println!(
        "untraced:  churners {:.1}% of a core",
        untraced.churners_cpu
    );

    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new(&paths.fdtrace);
    cmd.args(["monitor", "--all", "--listen", &addr.to_string()]);
    let mut monitor = Daemon::start("fdtrace monitor", cmd, "metrics on http://")?;
    get(addr, "/healthz")?;
    let traced = watch(Some(&mut monitor), &mut churners, duration)?;
    let scraped = Scraped::parse(&get(addr, "/metrics")?, &comm)?;
    let said = monitor.stop(libc::SIGTERM)?;
    let rss = Rss::of(&traced.rss_kb, traced.peak_kb)?;
    println!(
        "fdtrace:   own CPU {:.1}% of a core, churners {:.1}%; RSS peak {:.1} MB, \
         {:.1} MB at {:.0} s, {:.1} MB at {seconds:.0} s ({:+.1}%)",
        traced.tracer_cpu,
        traced.churners_cpu,
        mb(rss.peak_kb),
        mb(rss.warm_kb),
        rss.warm_at,
        mb(rss.end_kb),
        rss.growth_percent,
    );
    println!(
        "           traced {} processes; {comm} opened {} ({}/s) at {}; dropped {} events; \
         evicted {}",
        scraped.traced,
        grouped(scraped.opened),
        grouped(scraped.opened / duration.as_secs().max(1)),
        scraped.sites.join(", "),
        scraped.dropped,
        scraped
            .evicted
            .iter()
            .map(|(what, n)| format!("{n} {what}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    for line in &said {
        println!("           fdtrace said: {line}");
    }
    if scraped.traced < u64::from(CHURNERS) {
        println!("           (fewer traced processes than churners: the figures undercount)");
    }

    let mut cmd = Command::new("bpftrace");
    cmd.args(["-e", BPFTRACE_SCRIPT]);
    let mut bpftrace = Daemon::start("bpftrace", cmd, "Attaching")?;
    let peer = watch(Some(&mut bpftrace), &mut churners, duration)?;
    // It prints its map on the way out.
    let counted = bpftrace
        .stop(libc::SIGINT)?
        .iter()
        .find_map(|line| {
            line.strip_prefix(&format!("@[{comm}]: "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let peer_rss = Rss::of(&peer.rss_kb, peer.peak_kb)?;
    println!(
        "bpftrace:  own CPU {:.1}% of a core, churners {:.1}%; RSS peak {:.1} MB, \
         {:.1} MB at the end; counted {} opens by {comm} ({}/s)",
        peer.tracer_cpu,
        peer.churners_cpu,
        mb(peer_rss.peak_kb),
        mb(peer_rss.end_kb),
        grouped(counted),
        grouped(counted / duration.as_secs().max(1)),
    );
    drop(churners);

    // The cost of tracing: the tracer's own CPU and what the probes added
    // to the churners'.
    let cost = |w: &Watched| w.tracer_cpu + (w.churners_cpu - untraced.churners_cpu);
    let (cost_fdtrace, cost_bpftrace) = (cost(&traced), cost(&peer));
    // Below zero, bpftrace's cost is lost in the noise and no ratio holds.
    let cost_ratio = (cost_bpftrace > 0.0).then(|| cost_fdtrace / cost_bpftrace);
    let own_ratio = (peer.tracer_cpu > 0.0).then(|| traced.tracer_cpu / peer.tracer_cpu);
    println!(
        "own CPU, fdtrace / bpftrace: {}",
        match own_ratio {
            Some(ratio) => format!("{ratio:.1}x"),
            None => "n/a: bpftrace's process used no CPU (it counts in the kernel)".to_owned(),
        }
    );
    println!(
        "cost of tracing (own CPU + churners' beyond untraced): fdtrace {cost_fdtrace:.1}%, \
         bpftrace {cost_bpftrace:.1}% of a core: {}",
        ratio_text(cost_ratio)
    );

    let figures = vec![
        Figure {
            name: format!("monitor --all, {CHURNERS} busy processes: peak RSS"),
            value: format!("{:.0} MB", mb(rss.peak_kb)),
            target: format!("<= {PEAK_RSS_MB:.0} MB"),
            met: mb(rss.peak_kb) <= PEAK_RSS_MB,
        },
        Figure {
            name: format!(
                "monitor --all: RSS growth, {:.0} s to {seconds:.0} s",
                rss.warm_at
            ),
            value: format!("{:+.1}%", rss.growth_percent),
            target: format!("< {GROWTH_PERCENT:.0}%"),
            met: rss.growth_percent < GROWTH_PERCENT,
        },
        Figure {
            name: "monitor --all: dropped events".into(),
            value: scraped.dropped.to_string(),
            target: "0".into(),
            met: scraped.dropped == 0,
        },
        Figure {
            name: "monitor --all: cost of tracing vs bpftrace".into(),
            value: ratio_text(cost_ratio),
            target: format!("<= {CPU_RATIO:.0}x (info)"),
            met: cost_ratio.is_some_and(|r| r <= CPU_RATIO),
        },
    ];
    Ok(Monitored {
        figures,
        json: json!({
            "churners": CHURNERS,
            "opens_per_second_each": OPENS_PER_SECOND,
            "seconds_a_side": seconds,
            "untraced": {"churners_cpu_percent": untraced.churners_cpu},
            "fdtrace": {
                "cpu_percent": traced.tracer_cpu,
                "churners_cpu_percent": traced.churners_cpu,
                "rss_kb_every_second": traced.rss_kb,
                "peak_rss_kb": rss.peak_kb,
                "rss_growth_percent": rss.growth_percent,
                "rss_growth_from_second": rss.warm_at,
                "traced_processes": scraped.traced,
                "churner_opens_seen": scraped.opened,
                "churner_sites": scraped.sites,
                "dropped_events": scraped.dropped,
                "evicted": scraped.evicted.iter().map(|(w, n)| (w.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            },
            "bpftrace": {
                "script": BPFTRACE_SCRIPT,
                "cpu_percent": peer.tracer_cpu,
                "churners_cpu_percent": peer.churners_cpu,
                "rss_kb_every_second": peer.rss_kb,
                "peak_rss_kb": peer_rss.peak_kb,
                "churner_opens_counted": counted,
            },
            "tracing_cost_percent": {"fdtrace": cost_fdtrace, "bpftrace": cost_bpftrace},
            "tracing_cost_ratio": cost_ratio,
            "own_cpu_ratio": own_ratio,
        }),
    })
}

fn ratio_text(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.1}x"))
}

/// `20000` as `20,000`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The name the kernel gives processes of `binary` (at most 15 bytes).
fn comm_of(binary: &Path) -> Result<String> {
    let name = binary
        .file_name()
        .context("the bench fixture's file name")?
        .to_string_lossy();
    Ok(name.chars().take(15).collect())
}

/// A port nothing listens on now, for the monitor to take.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// `cmd`, set to be killed when this process dies without its guards
/// running (killed, or interrupted: the churners' process group is not the
/// terminal's, so Ctrl-C does not reach them).
fn ended_with_us(mut cmd: Command) -> Command {
    // SAFETY: runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed; prctl is one, and the closure
    // touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    };
    cmd
}

/// The churning processes, in one process group so that one signal ends
/// them all, on every path out (the guard's `Drop`).
struct Churners {
    children: Vec<Child>,
    group: libc::pid_t,
}

impl Churners {
    fn start(bench: &Path, seconds: f64) -> Result<Churners> {
        let mut churners = Churners {
            children: Vec::new(),
            group: 0,
        };
        for _ in 0..CHURNERS {
            let child = ended_with_us(Command::new(bench))
                .args([
                    "churnsleep",
                    &OPENS_PER_SECOND.to_string(),
                    &seconds.to_string(),
                ])
                .process_group(churners.group)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("start {} churnsleep", bench.display()))?;
            let pid = libc::pid_t::try_from(child.id())?;
            churners.children.push(child);
            if churners.group == 0 {
                churners.group = pid;
            }
        }
        Ok(churners)
    }

    /// The churners' utime + stime, in clock ticks; fails if one is gone.
    fn ticks(&mut self) -> Result<u64> {
        let mut sum = 0;
        for child in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("a churner ended early ({status}): does bench.c have `churnsleep`?");
            }
            sum += cpu_ticks(child.id())?;
        }
        Ok(sum)
    }
}

impl Drop for Churners {
    fn drop(&mut self) {
        if self.group > 0 {
            // SAFETY: signals the process group this guard started, whose
            // leader it has not reaped, so the id cannot have been reused.
            unsafe { libc::kill(-self.group, libc::SIGKILL) };
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

/// A tracer running beside the churners, what it prints (stdout and
/// stderr) read line by line; killed if dropped still running.
struct Daemon {
    name: &'static str,
    child: Child,
    lines: Receiver<String>,
}

impl Daemon {
    /// Starts `cmd` and waits for the line that holds `ready`.
    fn start(name: &'static str, cmd: Command, ready: &str) -> Result<Daemon> {
        let mut child = ended_with_us(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {name}"))?;
        let (send, lines) = mpsc::channel();
        follow(child.stdout.take().context("stdout")?, send.clone());
        follow(child.stderr.take().context("stderr")?, send);
        let daemon = Daemon { name, child, lines };
        daemon.wait_for(ready)?;
        Ok(daemon)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, with what it said, if it has ended.
    fn running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let said: Vec<String> = self.lines.try_iter().collect();
            bail!(
                "{} ended during the run ({status}): {}",
                self.name,
                said.join("\n")
            );
        }
        Ok(())
    }

    fn wait_for(&self, needle: &str) -> Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(()),
                Ok(line) => seen.push(line),
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{} was not ready within {READY_WITHIN:?}: {}",
                    self.name,
                    seen.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "{} ended before it was ready: {}",
                        self.name,
                        seen.join("\n")
                    )
                }
            }
        }
    }

    /// Ends it with `signal`, as a service manager or a user would, and
    /// returns what it said since it was ready; fails unless it exits 0.
    fn stop(mut self, signal: libc::c_int) -> Result<Vec<String>> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: signals our own child, not yet reaped.
        unsafe { libc::kill(pid, signal) };
        let status = self.child.wait()?;
        // The stream ends with the process, and so does the receiver.
        let said: Vec<String> = self.lines.iter().collect();
        if !status.success() {
            bail!("{} ended with {status}: {}", self.name, said.join("\n"));
        }
        Ok(said)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads `stream` on a thread, a line at a time, so the process never
/// blocks on a full pipe; the receiver ends when every stream has.
fn follow(stream: impl Read + Send + 'static, lines: Sender<String>) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
}

/// One side watched for `duration`: CPU over the whole, RSS every second.
struct Watched {
    /// The tracer's own CPU, percent of one core.
    tracer_cpu: f64,
    /// The churners' CPU, percent of one core, probes included.
    churners_cpu: f64,
    /// The tracer's VmRSS, KiB, once a second.
    rss_kb: Vec<u64>,
    /// The tracer's VmHWM at the end, KiB: its peak since it started.
    peak_kb: u64,
}

fn watch(
    mut daemon: Option<&mut Daemon>,
    churners: &mut Churners,
    duration: Duration,
) -> Result<Watched> {
    let tracer = daemon.as_ref().map(|d| d.pid());
    let tracer_ticks = || tracer.map_or(Ok(0), cpu_ticks);
    let (tracer_start, churners_start) = (tracer_ticks()?, churners.ticks()?);
    let started = Instant::now();
    let mut rss_kb = Vec::new();
    for second in 1..=duration.as_secs() {
        let due = started + Duration::from_secs(second);
        thread::sleep(due.saturating_duration_since(Instant::now()));
        if let Some(daemon) = daemon.as_mut() {
            daemon.running()?;
            rss_kb.push(status_kb(daemon.pid(), "VmRSS:")?);
        }
    }
    let (tracer_end, churners_end) = (tracer_ticks()?, churners.ticks()?);
    let wall = started.elapsed().as_secs_f64();
    let percent = |ticks: u64| ticks as f64 / clock_ticks() / wall * 100.0;
    Ok(Watched {
        tracer_cpu: percent(tracer_end - tracer_start),
        churners_cpu: percent(churners_end - churners_start),
        rss_kb,
        peak_kb: tracer.map_or(Ok(0), |pid| status_kb(pid, "VmHWM:"))?,
    })
}

/// Clock ticks a second, the unit of /proc/PID/stat's times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant and touches no memory.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime + stime of every thread of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // Fields after the command name, which may hold spaces: state is
    // field 3, utime 14 and stime 15 (proc(5)).
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("field {n} of {path}"))
    };
    Ok(field(14)? + field(15)?)
}

/// A `kB` line of /proc/PID/status, such as `VmRSS:`.
fn status_kb(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{key} in {path}"))
}

/// The RSS figures of one tracer.
struct Rss {
    peak_kb: u64,
    /// The second growth is measured from: a third into the run.
    warm_at: f64,
    warm_kb: u64,
    end_kb: u64,
    growth_percent: f64,
}

impl Rss {
    fn of(samples: &[u64], peak_kb: u64) -> Result<Rss> {
        let warm = (samples.len() / 3).max(1);
        let warm_kb = *samples.get(warm - 1).context("no RSS samples")?;
        let end_kb = *samples.last().context("no RSS samples")?;
        Ok(Rss {
            peak_kb,
            warm_at: warm as f64,
            warm_kb,
            end_kb,
            growth_percent: (end_kb as f64 - warm_kb as f64) / warm_kb as f64 * 100.0,
        })
    }
}

/// A GET of `path` on the monitor's port; the body, if the status is 200.
fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    // The server answers one request per connection and closes once the
    // peer has nothing more to say.
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .with_context(|| format!("read GET {path}"))?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: no end of head in {answer:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// What the benchmark reads from the monitor's /metrics.
#[derive(Default)]
struct Scraped {
    traced: u64,
    dropped: u64,
    /// `fdtrace_evicted_total` by its `what` label.
    evicted: Vec<(String, u64)>,
    /// `fdtrace_site_opened_total` of the churners' program, all sites.
    opened: u64,
    /// The churners' sites, as the monitor names them.
    sites: Vec<String>,
}

impl Scraped {
    fn parse(text: &str, comm: &str) -> Result<Scraped> {
        let mut scraped = Scraped::default();
        let ours = format!("fdtrace_site_opened_total{{comm=\"{comm}\",site=\"");
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            // Label values are escaped, so the value is after the last space.
            let (series, value) = line
                .rsplit_once(' ')
                .with_context(|| format!("a metrics line without a value: {line}"))?;
            let value: u64 = value
                .parse()
                .with_context(|| format!("the value of {line}"))?;
            if series == "fdtrace_traced_processes" {
                scraped.traced = value;
            } else if series == "fdtrace_dropped_events_total" {
                scraped.dropped = value;
            } else if let Some(what) = series.strip_prefix("fdtrace_evicted_total{what=\"") {
                scraped
                    .evicted
                    .push((what.trim_end_matches("\"}").to_owned(), value));
            } else if let Some(site) = series.strip_prefix(&ours) {
                scraped.opened += value;
                scraped.sites.push(site.trim_end_matches("\"}").to_owned());
            }
        }
        Ok(scraped)
    }
}
