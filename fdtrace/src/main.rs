//! `fdtrace` binary: parse arguments, run, print the report, exit.

use std::{
    fs::File,
    io::{self, BufWriter, IsTerminal as _, Write},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use fdtrace::{
    cli::{Cli, Command, Format, TraceConfig},
    report::{self, Report},
    session::{self, Outcome},
    spawn::LaunchError,
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

/// Writes the report; the exit code is the command's status (0 for
/// `attach`), or --leak-exit-code when asked to fail on leaks.
fn finish(outcome: Outcome, config: &TraceConfig) -> Result<u8> {
    write_report(&outcome.report, config)?;
    let leaked = !outcome.report.leaks.is_empty();
    Ok(match config.fail_on_leak {
        Some(code) if leaked => code,
        _ => u8::try_from(outcome.command_status.unwrap_or(0)).unwrap_or(1),
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
    }
    .context("write the report")
}
