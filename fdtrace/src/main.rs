//! `fdtrace` binary: parse arguments, run, print the report, exit.

use std::{
    io::{self, BufWriter, IsTerminal as _, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, Result, anyhow};
use clap::Parser as _;
use fdtrace::{
    cli::{Cli, Command, Format, TraceConfig},
    output::{self, ReportFile},
    report::{self, Report, timeline::Timeline},
    session::{self, Outcome, Recording},
    spawn::LaunchError,
    suppress,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // From here on SIGINT and SIGTERM end tracing with a report.
    fdtrace::signals::catch();
    // Arguments and files named by them are checked (and the report file
    // set up) before anything runs; a problem there exits 2, like clap's
    // own usage errors.
    let result = match cli.command {
        Command::Run(args) => match args.into_config().and_then(with_files) {
            Ok((config, output, recording)) => session::run(&config, recording)
                .and_then(|outcome| finish(outcome, &config.trace, output)),
            Err(err) => return usage_error(&err),
        },
        Command::Record(args) => match args.into_config().and_then(with_files) {
            Ok((config, output, recording)) => session::run(&config, recording)
                .and_then(|outcome| finish(outcome, &config.trace, output)),
            Err(err) => return usage_error(&err),
        },
        Command::Attach(args) => match args.into_config().and_then(with_files) {
            Ok((config, output, recording)) => session::attach(&config, recording)
                .and_then(|outcome| finish(outcome, &config.trace, output)),
            Err(err) => return usage_error(&err),
        },
        Command::Report(args) => match args.into_config().and_then(with_files) {
            Ok((config, output, _)) => session::report(config.file.as_deref(), &config.trace)
                .and_then(|outcome| finish(outcome, &config.trace, output)),
            Err(err) => return usage_error(&err),
        },
        Command::Monitor(args) => match args.into_config() {
            Ok(config) => fdtrace::monitor::run(&config).map(|()| 0),
            Err(err) => return usage_error(&err),
        },
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("fdtrace: {err:#}");
            let code = err.downcast_ref::<LaunchError>().map_or(1, |e| e.exit_code);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

/// Exit code for a bad argument or a file an argument names.
const USAGE_EXIT_CODE: u8 = 2;

fn usage_error(err: &anyhow::Error) -> ExitCode {
    eprintln!("fdtrace: {err:#}");
    ExitCode::from(USAGE_EXIT_CODE)
}

/// Sets up the report file and the trace file the arguments name.
fn with_files<C: AsRef<TraceConfig>>(config: C) -> Result<(C, Option<ReportFile>, Recording)> {
    let trace = config.as_ref();
    let output = trace
        .output
        .as_deref()
        .map(ReportFile::create)
        .transpose()?;
    let recording = match &trace.record {
        Some(path) => Recording::File(
            output::create_new(path, trace.force, "record")?,
            path.clone(),
        ),
        None => Recording::Off,
    };
    Ok((config, output, recording))
}

/// Writes the report (and what CI asked for besides); the exit code is the
/// command's status (0 for `attach`), or --leak-exit-code when the report
/// has a finding named by --fail-on.
fn finish(outcome: Outcome, config: &TraceConfig, output: Option<ReportFile>) -> Result<u8> {
    let report = &outcome.report;
    write_report(report, outcome.timeline.as_ref(), config, output)?;
    let text_on_stderr = config.format == Format::Text && config.output.is_none();
    if !text_on_stderr {
        // The text report lists these itself.
        for line in report::text::stale_suppressions(report) {
            eprintln!("fdtrace: {line}");
        }
    }
    if config.gen_suppressions {
        eprint!("\n{}", suppress::generate(report));
    }
    if std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") {
        let workspace = std::env::var_os("GITHUB_WORKSPACE")
            .map(PathBuf::from)
            .map_or_else(std::env::current_dir, Ok)
            .context("find the GitHub workspace")?;
        let mut out = io::stdout().lock();
        report::github::render(report, &workspace, &mut out)
            .and_then(|()| out.flush())
            .context("write GitHub workflow commands to standard output")?;
    }
    let failed = config.fail_on.iter().any(|&f| report.has(f));
    Ok(if failed {
        config.fail_exit_code
    } else {
        u8::try_from(outcome.command_status.unwrap_or(0)).unwrap_or(1)
    })
}

/// Into the report file, or to standard error; if the file cannot be put
/// in place, to standard error after all (and exit 1): nothing is lost.
fn write_report(
    report: &Report,
    timeline: Option<&Timeline>,
    config: &TraceConfig,
    output: Option<ReportFile>,
) -> Result<()> {
    if let Some(mut file) = output {
        let path = file.path().to_path_buf();
        let mut out = BufWriter::new(file.file());
        let written = render(report, timeline, config.format, false, &mut out)
            .and_then(|()| out.flush().context("write the report"));
        drop(out);
        match written.and_then(|()| file.commit()) {
            Ok(()) => return Ok(()),
            Err(e) => {
                eprintln!(
                    "fdtrace: {}: {e:#}; the report follows on standard error",
                    path.display()
                );
                // A page is no use on a terminal: the text report it is.
                let format = match config.format {
                    Format::Html => Format::Text,
                    f => f,
                };
                write_stderr(report, format)?;
                return Err(anyhow!(
                    "the report file {} was not written",
                    path.display()
                ));
            }
        }
    }
    write_stderr(report, config.format)
}

fn write_stderr(report: &Report, format: Format) -> Result<()> {
    let stderr = io::stderr();
    let color = stderr.is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut out = BufWriter::new(stderr.lock());
    render(report, None, format, color, &mut out)?;
    out.flush().context("write the report to standard error")
}

fn render(
    report: &Report,
    timeline: Option<&Timeline>,
    format: Format,
    color: bool,
    out: &mut impl Write,
) -> Result<()> {
    match format {
        Format::Html => report::html::render(report, timeline.unwrap_or(&Timeline::default()), out),
        Format::Text => report::text::render(report, report::text::Style { color }, out),
        Format::Json => report::json::render(report, out),
        Format::Sarif => {
            let root = std::env::current_dir().context("read the working directory")?;
            report::sarif::render(report, &root, out)
        }
    }
    .context("write the report")
}
