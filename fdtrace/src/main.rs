//! `fdtrace` binary: parse arguments, run, print the report, exit.

use std::{
    fs::File,
    io::{self, BufWriter, IsTerminal as _, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use fdtrace::{
    cli::{Cli, Command, Format, TraceConfig},
    report::{self, Report},
    session::{self, Outcome},
    spawn::LaunchError,
    suppress,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => args
            .into_config()
            .and_then(|config| finish(session::run(&config)?, &config.trace)),
        Command::Attach(args) => args
            .into_config()
            .and_then(|config| finish(session::attach(&config)?, &config.trace)),
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

/// Writes the report (and what CI asked for besides); the exit code is the
/// command's status (0 for `attach`), or --leak-exit-code when the report
/// has a finding named by --fail-on.
fn finish(outcome: Outcome, config: &TraceConfig) -> Result<u8> {
    let report = &outcome.report;
    write_report(report, config)?;
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

fn write_report(report: &Report, config: &TraceConfig) -> Result<()> {
    match &config.output {
        Some(path) => {
            let file = File::create(path)
                .with_context(|| format!("create report file {}", path.display()))?;
            let mut out = BufWriter::new(file);
            render(report, config.format, false, &mut out)?;
            out.flush()
                .with_context(|| format!("write report file {}", path.display()))
        }
        None => {
            let stderr = io::stderr();
            let color = stderr.is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let mut out = BufWriter::new(stderr.lock());
            render(report, config.format, color, &mut out)?;
            out.flush().context("write the report to standard error")
        }
    }
}

fn render(report: &Report, format: Format, color: bool, out: &mut impl Write) -> Result<()> {
    match format {
        Format::Text => report::text::render(report, report::text::Style { color }, out),
        Format::Json => report::json::render(report, out),
        Format::Sarif => {
            let root = std::env::current_dir().context("read the working directory")?;
            report::sarif::render(report, &root, out)
        }
    }
    .context("write the report")
}
