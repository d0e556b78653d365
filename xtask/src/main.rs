//! `cargo xtask`: the developer entry point. Parses the subcommand and hands
//! it to the module that does the work; orchestration only, no product logic.

mod bench;
mod bpf_linker;
mod dist;
mod process;
mod setup;
mod tasks;
mod vm;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Developer tasks for the fdtrace workspace.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install whatever is missing to build and test fdtrace (idempotent).
    Setup,
    /// Run setup, then build the fdtrace binary.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build fdtrace and run it on examples/leaky.c.
    Demo,
    /// Run setup, formatting and lint checks, then the whole test suite.
    Test {
        /// Extra arguments for the test harness, e.g. `-- --nocapture`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build a static, self-contained release binary (musl, eBPF object
    /// inside) at target/dist/fdtrace-x86_64-linux-musl.
    Dist,
    /// Measure fdtrace against untraced runs; table to stdout, JSON to target/bench.json.
    Bench {
        /// Runs per workload and mode (traced and untraced alternate).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Run the end-to-end smoke set on Debian's 5.10, 6.1 and 6.12 kernels
    /// (booted with virtme-ng under qemu) and on the host kernel.
    VmTest {
        /// Which kernels, comma-separated: any of 5.10, 6.1, 6.12, host.
        #[arg(long, value_delimiter = ',', default_value = "5.10,6.1,6.12,host")]
        kernels: Vec<String>,
        /// The fdtrace binary to test [default: build target/debug/fdtrace].
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Keep every kernel's logs under target/vm/logs (failed ones are always kept).
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> Result<ExitCode> {
    match Cli::parse().command {
        Command::Setup => setup::run()?,
        Command::Build { release } => tasks::build(release)?,
        Command::Demo => return tasks::demo(),
        Command::Test { args } => tasks::test(&args)?,
        Command::Bench { runs } => bench::bench(runs)?,
        Command::VmTest {
            kernels,
            binary,
            keep,
        } => {
            return vm::vm_test(&vm::Options {
                kernels,
                binary,
                keep,
            });
        }
        Command::Dist => {
            let binary = dist::dist()?;
            println!("{}", binary.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
