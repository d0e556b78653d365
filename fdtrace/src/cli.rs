//! Command line: clap types only, converted into a validated [`RunConfig`].

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fdtrace_common::{DEFAULT_STACK_BYTES, MAX_STACK_BYTES, StackMode};

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
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Write the report to FILE instead of standard error.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Exit with --leak-exit-code when any descriptor leaked.
    #[arg(long)]
    pub fail_on_leak: bool,
    /// Exit code for --fail-on-leak.
    #[arg(long, value_name = "CODE", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..))]
    pub leak_exit_code: u8,
    /// Under sudo, run the command as root instead of as the invoking user.
    #[arg(long)]
    pub as_root: bool,
    /// How to capture stacks: dwarf (complete, unwound from a stack copy),
    /// fp (frame pointers only) or none.
    #[arg(long, value_enum, default_value_t = StackKind::Dwarf)]
    pub stack: StackKind,
    /// Bytes of user stack copied per event with --stack dwarf (512 to 32768).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_STACK_BYTES)]
    pub stack_bytes: usize,
    /// The command to run, after `--`.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StackKind {
    Dwarf,
    Fp,
    None,
}

/// A checked `run` request.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub command: Vec<String>,
    pub output: Option<PathBuf>,
    pub format: Format,
    pub fail_on_leak: Option<u8>,
    pub as_root: bool,
    pub stack_mode: StackMode,
    pub stack_bytes: u32,
}

impl RunArgs {
    pub fn into_config(self) -> Result<RunConfig> {
        if !(512..=MAX_STACK_BYTES).contains(&self.stack_bytes) {
            bail!(
                "--stack-bytes must be between 512 and {MAX_STACK_BYTES}, got {}",
                self.stack_bytes
            );
        }
        let stack_mode = match self.stack {
            StackKind::Dwarf => StackMode::Dwarf,
            StackKind::Fp => StackMode::FramePointer,
            StackKind::None => StackMode::None,
        };
        Ok(RunConfig {
            command: self.command,
            output: self.output,
            format: self.format,
            fail_on_leak: self.fail_on_leak.then_some(self.leak_exit_code),
            as_root: self.as_root,
            stack_mode,
            stack_bytes: u32::try_from(self.stack_bytes)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunConfig> {
        let cli = Cli::try_parse_from(args)?;
        let Command::Run(run) = cli.command;
        run.into_config()
    }

    #[test]
    fn command_after_double_dash_keeps_its_flags() {
        let c = parse(&[
            "fdtrace", "run", "--format", "json", "--", "ls", "-l", "--all",
        ])
        .unwrap();
        assert_eq!(c.command, vec!["ls", "-l", "--all"]);
        assert_eq!(c.format, Format::Json);
        assert_eq!(c.stack_mode, StackMode::Dwarf);
        assert_eq!(c.fail_on_leak, None);
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["fdtrace", "run", "--stack-bytes", "100000", "--", "ls"]).is_err());
        assert!(parse(&["fdtrace", "run", "--leak-exit-code", "0", "--", "ls"]).is_err());
        assert!(parse(&["fdtrace", "run"]).is_err());
        let c = parse(&[
            "fdtrace",
            "run",
            "--fail-on-leak",
            "--leak-exit-code",
            "9",
            "--",
            "ls",
        ])
        .unwrap();
        assert_eq!(c.fail_on_leak, Some(9));
    }
}
