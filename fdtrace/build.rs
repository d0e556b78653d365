//! Builds `fdtrace-ebpf` for the BPF target (nightly, bpf-linker) and leaves
//! the object in OUT_DIR, where `load.rs` embeds it.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fdtrace-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "fdtrace-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
