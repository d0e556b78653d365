//! Command line: clap types only, converted into validated [`RunConfig`]
//! and [`AttachConfig`].

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fdtrace_common::{DEFAULT_STACK_BYTES, MAX_STACK_BYTES, StackMode};

use crate::{
    monitor::{
        MonitorConfig,
        fleet::Limits,
        select::{self, Selection},
    },
    report::Finding,
    suppress::Suppressions,
};

#[derive(Debug, Parser)]
#[command(
    name = "fdtrace",
    version,
    about = "Find the file descriptors a program never closed, and the stacks that opened them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command and report every descriptor it and its children never closed.
    Run(RunArgs),
    /// Attach to running processes and watch which stacks keep accumulating descriptors.
    Attach(AttachArgs),
    /// Run a command like `run` and record the trace to a file as it goes,
    /// for `fdtrace report` to read anywhere later.
    Record(RecordArgs),
    /// Print any report from a recorded trace (`-` reads standard input).
    Report(ReportArgs),
    /// Trace the processes selected, as a host daemon, and serve their
    /// descriptor counts by program and opening site as Prometheus metrics.
    Monitor(MonitorArgs),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("selection").required(true).multiple(true))]
pub struct MonitorArgs {
    /// Trace every process on the host (but fdtrace itself).
    #[arg(long, group = "selection")]
    pub all: bool,
    /// Trace processes whose name (/proc/PID/comm, at most 15 characters)
    /// matches this glob, from their exec on (repeatable).
    #[arg(long, value_name = "GLOB", group = "selection")]
    pub comm: Vec<String>,
    /// Trace every process in this cgroup v2 subtree, including processes
    /// started in it later: a directory (/sys/fs/cgroup/system.slice/x.service)
    /// or the path /proc/PID/cgroup shows (/system.slice/x.service); repeatable.
    #[arg(long, value_name = "PATH", group = "selection")]
    pub cgroup: Vec<String>,
    /// Trace this process and its descendants (repeatable).
    #[arg(short, long = "pid", value_name = "PID", group = "selection")]
    pub pids: Vec<u32>,
    /// Where to serve /metrics and /healthz.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,
    /// Opening sites named per program; the rest are summed as site="other".
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..))]
    pub sites: u16,
    /// Descriptors tracked at most, across all processes; past it the
    /// process holding most is no longer traced (fdtrace_evicted_total).
    #[arg(long, value_name = "N", default_value_t = 1 << 20)]
    pub max_fds: usize,
    /// Distinct stacks kept at most; past it new stacks count as
    /// site="other" (fdtrace_evicted_total{what="stack"}).
    #[arg(long, value_name = "N", default_value_t = 1 << 16)]
    pub max_stacks: usize,
    /// How to capture stacks: dwarf (complete, unwound from a stack copy),
    /// fp (frame pointers only) or none.
    #[arg(long, value_enum, default_value_t = StackKind::Dwarf)]
    pub stack: StackKind,
    /// Bytes of user stack copied per event with --stack dwarf (512 to 32768).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_STACK_BYTES)]
    pub stack_bytes: usize,
}

/// What a report says and fails on: every subcommand takes these.
#[derive(Debug, Args)]
pub struct ReportOptions {
    /// Report format (html needs a file to go to).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Exit with --leak-exit-code when the report has any of these findings
    /// (after suppressions): leak, exec-leak, emfile, gc-closed, misuse;
    /// comma-separated.
    #[arg(long, value_enum, value_name = "LIST", value_delimiter = ',')]
    pub fail_on: Vec<FailOn>,
    /// Same as --fail-on leak.
    #[arg(long)]
    pub fail_on_leak: bool,
    /// Exit code for --fail-on and --fail-on-leak.
    #[arg(long, value_name = "CODE", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..))]
    pub leak_exit_code: u8,
    /// Suppression rules (TOML; repeatable), read after ./.fdtrace.toml.
    #[arg(long = "suppressions", value_name = "FILE")]
    pub suppressions: Vec<PathBuf>,
    /// Turn off the built-in suppressions (descriptors programs such as
    /// bash, make, tar and the Go runtime keep for life on purpose)
    #[arg(long)]
    pub no_default_suppressions: bool,
    /// After the report, print suppression rules for every leak and misuse
    /// found, to standard error, ready to paste into .fdtrace.toml.
    #[arg(long)]
    pub gen_suppressions: bool,
}

/// Options of the subcommands that trace.
#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub report: ReportOptions,
    /// How to capture stacks: dwarf (complete, unwound from a stack copy),
    /// fp (frame pointers only) or none.
    #[arg(long, value_enum, default_value_t = StackKind::Dwarf)]
    pub stack: StackKind,
    /// Bytes of user stack copied per event with --stack dwarf (512 to 32768).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_STACK_BYTES)]
    pub stack_bytes: usize,
    /// What to do when a traced call fails with EMFILE or ENFILE: report it
    /// and go on, stop the process right there, or end tracing.
    #[arg(long, value_enum, default_value_t = OnEmfile::Report)]
    pub on_emfile: OnEmfile,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Write the report to FILE instead of standard error.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub command: CommandArgs,
}

/// The command `run` and `record` start.
#[derive(Debug, Args)]
pub struct CommandArgs {
    /// Under sudo, run the command as root instead of as the invoking user.
    #[arg(long)]
    pub as_root: bool,
    /// The command to run, after `--`.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The trace file to write (refused if it exists, unless --force).
    #[arg(short, long, value_name = "TRACE.fdt")]
    pub output: PathBuf,
    /// Replace the trace file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Write the live report to FILE instead of standard error.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub command: CommandArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A trace written by `fdtrace record` or `attach --record`; `-` for
    /// standard input.
    #[arg(value_name = "TRACE.fdt")]
    pub trace: PathBuf,
    /// Write the report to FILE instead of standard error.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub report: ReportOptions,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Write the report to FILE instead of standard error.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also record the trace to this file as it goes (see `fdtrace report`).
    #[arg(long, value_name = "TRACE.fdt")]
    pub record: Option<PathBuf>,
    /// Replace the --record file if it exists.
    #[arg(long, requires = "record")]
    pub force: bool,
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Process to attach to (repeatable).
    #[arg(short, long = "pid", value_name = "PID", required = true)]
    pub pids: Vec<u32>,
    /// Stop after this long (e.g. 30s, 5m, 500ms); default: until Ctrl-C or
    /// the processes exit.
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Print the growing stacks this often.
    #[arg(long, value_name = "TIME", value_parser = parse_duration, default_value = "5s")]
    pub interval: Duration,
    /// Only count descriptors at least this old in interval reports.
    #[arg(long, value_name = "TIME", value_parser = parse_duration, default_value = "10s")]
    pub min_age: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    /// SARIF 2.1.0, for code scanning (GitHub, GitLab, IDEs).
    Sarif,
    /// One self-contained page: a timeline of open descriptors and a
    /// flame graph of the leaks.
    Html,
}

/// Findings that fail the build with --fail-on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FailOn {
    /// A descriptor never closed.
    Leak,
    /// A descriptor that crossed exec without CLOEXEC.
    ExecLeak,
    /// A call that failed with EMFILE or ENFILE.
    Emfile,
    /// A descriptor closed only by CPython's garbage collector.
    GcClosed,
    /// A double close, a use after close or an invalid descriptor.
    Misuse,
}

impl From<FailOn> for Finding {
    fn from(f: FailOn) -> Self {
        match f {
            FailOn::Leak => Finding::Leak,
            FailOn::ExecLeak => Finding::ExecLeak,
            FailOn::Emfile => Finding::Emfile,
            FailOn::GcClosed => Finding::GcClosed,
            FailOn::Misuse => Finding::Misuse,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StackKind {
    Dwarf,
    Fp,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnEmfile {
    Report,
    Stop,
    Exit,
}

/// Checked options shared by `run` and `attach`.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    pub output: Option<PathBuf>,
    pub format: Format,
    /// Findings that fail the run, and the exit code they fail it with.
    pub fail_on: Vec<Finding>,
    pub fail_exit_code: u8,
    pub suppressions: Suppressions,
    pub gen_suppressions: bool,
    pub stack_mode: StackMode,
    pub stack_bytes: u32,
    pub on_emfile: OnEmfile,
    /// Record the trace to this file as it goes; `force`: over an
    /// existing one.
    pub record: Option<PathBuf>,
    pub force: bool,
}

/// A checked `report` request: the trace to read, and the report options
/// (in a [`TraceConfig`] whose capture options go unused).
#[derive(Clone, Debug)]
pub struct ReportConfig {
    pub trace: TraceConfig,
    /// `None` for standard input.
    pub file: Option<PathBuf>,
}

/// A checked `run` request.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub trace: TraceConfig,
    pub command: Vec<String>,
    pub as_root: bool,
}

/// A checked `attach` request.
#[derive(Clone, Debug)]
pub struct AttachConfig {
    pub trace: TraceConfig,
    pub pids: Vec<u32>,
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub min_age: Duration,
}

impl ReportOptions {
    /// `output` is the report file, given with the option `flag`.
    fn into_config(self, (output, flag): (Option<PathBuf>, &str)) -> Result<TraceConfig> {
        if self.gen_suppressions && self.format != Format::Text && output.is_none() {
            bail!(
                "--gen-suppressions prints to standard error: with --format json, sarif or \
                 html, write the report elsewhere with {flag} FILE"
            );
        }
        if self.format == Format::Html && output.is_none() {
            bail!(
                "--format html writes a page: name it with {flag} FILE (e.g. {flag} report.html)"
            );
        }
        let mut fail_on: Vec<Finding> = self.fail_on.into_iter().map(Finding::from).collect();
        if self.fail_on_leak {
            fail_on.push(Finding::Leak);
        }
        fail_on.sort_unstable();
        fail_on.dedup();
        let cwd = std::env::current_dir().context("read the working directory")?;
        let suppressions =
            Suppressions::load(&cwd, &self.suppressions, !self.no_default_suppressions)?;
        Ok(TraceConfig {
            output,
            format: self.format,
            fail_on,
            fail_exit_code: self.leak_exit_code,
            suppressions,
            gen_suppressions: self.gen_suppressions,
            stack_mode: StackMode::Dwarf,
            stack_bytes: u32::try_from(DEFAULT_STACK_BYTES)?,
            on_emfile: OnEmfile::Report,
            record: None,
            force: false,
        })
    }
}

/// `--stack` and `--stack-bytes`, checked.
fn stack_options(stack: StackKind, stack_bytes: usize) -> Result<(StackMode, u32)> {
    if !(512..=MAX_STACK_BYTES).contains(&stack_bytes) {
        bail!("--stack-bytes must be between 512 and {MAX_STACK_BYTES}, got {stack_bytes}");
    }
    let mode = match stack {
        StackKind::Dwarf => StackMode::Dwarf,
        StackKind::Fp => StackMode::FramePointer,
        StackKind::None => StackMode::None,
    };
    Ok((mode, u32::try_from(stack_bytes)?))
}

impl MonitorArgs {
    pub fn into_config(self) -> Result<MonitorConfig> {
        let (stack_mode, stack_bytes) = stack_options(self.stack, self.stack_bytes)?;
        let selection = Selection {
            all: self.all,
            comms: self
                .comm
                .iter()
                .map(|c| select::comm_pattern(c))
                .collect::<Result<_>>()?,
            cgroups: self
                .cgroup
                .iter()
                .map(|c| select::cgroup_path(c))
                .collect::<Result<_>>()?,
            pids: self.pids,
        };
        Ok(MonitorConfig {
            selection,
            listen: self.listen,
            limits: Limits {
                sites: usize::from(self.sites),
                max_fds: self.max_fds,
                max_stacks: self.max_stacks,
            },
            stack_mode,
            stack_bytes,
        })
    }
}

impl TraceArgs {
    fn into_config(self, output: (Option<PathBuf>, &str)) -> Result<TraceConfig> {
        let (stack_mode, stack_bytes) = stack_options(self.stack, self.stack_bytes)?;
        let report = self.report.into_config(output)?;
        Ok(TraceConfig {
            stack_mode,
            stack_bytes,
            on_emfile: self.on_emfile,
            ..report
        })
    }
}

impl RunArgs {
    pub fn into_config(self) -> Result<RunConfig> {
        Ok(RunConfig {
            trace: self.trace.into_config((self.output, "-o"))?,
            command: self.command.command,
            as_root: self.command.as_root,
        })
    }
}

impl RecordArgs {
    pub fn into_config(self) -> Result<RunConfig> {
        let mut trace = self.trace.into_config((self.report, "--report"))?;
        trace.record = Some(self.output);
        trace.force = self.force;
        Ok(RunConfig {
            trace,
            command: self.command.command,
            as_root: self.command.as_root,
        })
    }
}

impl ReportArgs {
    pub fn into_config(self) -> Result<ReportConfig> {
        let file = (self.trace.as_os_str() != "-").then_some(self.trace);
        Ok(ReportConfig {
            trace: self.report.into_config((self.output, "-o"))?,
            file,
        })
    }
}

impl AttachArgs {
    pub fn into_config(self) -> Result<AttachConfig> {
        if self.interval.is_zero() {
            bail!("--interval must be more than 0");
        }
        let mut pids = self.pids;
        pids.dedup();
        let mut trace = self.trace.into_config((self.output, "-o"))?;
        trace.record = self.record;
        trace.force = self.force;
        Ok(AttachConfig {
            trace,
            pids,
            duration: self.duration,
            interval: self.interval,
            min_age: self.min_age,
        })
    }
}

/// `500ms`, `30s`, `5m`, `1h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: use e.g. 500ms, 30s, 5m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}`: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is out of range"))
}

impl AsRef<TraceConfig> for RunConfig {
    fn as_ref(&self) -> &TraceConfig {
        &self.trace
    }
}

impl AsRef<TraceConfig> for ReportConfig {
    fn as_ref(&self) -> &TraceConfig {
        &self.trace
    }
}

impl AsRef<TraceConfig> for AttachConfig {
    fn as_ref(&self) -> &TraceConfig {
        &self.trace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_run(args: &[&str]) -> Result<RunConfig> {
        match Cli::try_parse_from(args)?.command {
            Command::Run(run) => run.into_config(),
            _ => bail!("not run"),
        }
    }

    fn parse_attach(args: &[&str]) -> Result<AttachConfig> {
        match Cli::try_parse_from(args)?.command {
            Command::Attach(attach) => attach.into_config(),
            _ => bail!("not attach"),
        }
    }

    #[test]
    fn command_after_double_dash_keeps_its_flags() {
        let c = parse_run(&[
            "fdtrace", "run", "--format", "json", "--", "ls", "-l", "--all",
        ])
        .unwrap();
        assert_eq!(c.command, vec!["ls", "-l", "--all"]);
        assert_eq!(c.trace.format, Format::Json);
        assert_eq!(c.trace.stack_mode, StackMode::Dwarf);
        assert!(c.trace.fail_on.is_empty());
        assert_eq!(c.trace.on_emfile, OnEmfile::Report);
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse_run(&["fdtrace", "run", "--stack-bytes", "100000", "--", "ls"]).is_err());
        assert!(parse_run(&["fdtrace", "run", "--leak-exit-code", "0", "--", "ls"]).is_err());
        assert!(parse_run(&["fdtrace", "run"]).is_err());
        let c = parse_run(&[
            "fdtrace",
            "run",
            "--fail-on-leak",
            "--leak-exit-code",
            "9",
            "--",
            "ls",
        ])
        .unwrap();
        assert_eq!(c.trace.fail_on, vec![Finding::Leak]);
        assert_eq!(c.trace.fail_exit_code, 9);
        let c = parse_run(&[
            "fdtrace",
            "run",
            "--fail-on",
            "emfile,exec-leak",
            "--fail-on-leak",
            "--",
            "ls",
        ])
        .unwrap();
        assert_eq!(
            c.trace.fail_on,
            vec![Finding::Leak, Finding::ExecLeak, Finding::Emfile]
        );
        assert!(parse_run(&["fdtrace", "run", "--fail-on", "leaks", "--", "ls"]).is_err());
        let err = parse_run(&[
            "fdtrace",
            "run",
            "--gen-suppressions",
            "--format",
            "sarif",
            "--",
            "ls",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("-o FILE"), "{err}");
    }

    #[test]
    fn attach_takes_several_pids_and_durations() {
        let c = parse_attach(&[
            "fdtrace",
            "attach",
            "-p",
            "1",
            "--pid",
            "2",
            "--duration",
            "30s",
            "--interval",
            "500ms",
        ])
        .unwrap();
        assert_eq!(c.pids, vec![1, 2]);
        assert_eq!(c.duration, Some(Duration::from_secs(30)));
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(c.min_age, Duration::from_secs(10));
        assert!(parse_attach(&["fdtrace", "attach"]).is_err());
        assert!(parse_attach(&["fdtrace", "attach", "-p", "1", "--interval", "0"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("soon").is_err());
    }
}
