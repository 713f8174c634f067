//! `cargo xtask fuzz host-runner --secs N`: host-runner's ABI-surface fuzz target
//! (`host-runner/fuzz`) coverage-guided under cargo-fuzz for N seconds. libFuzzer runs on
//! stable Rust with `--sanitizer none` (no address sanitizer, which needs nightly): the target
//! checks its properties itself. cargo-fuzz is installed with `cargo install` when missing.
//! Crashing inputs land in `host-runner/fuzz/artifacts/abi_surface/`.

use std::path::Path;

use anyhow::{Result, bail};

use crate::cmd;

/// The targets `run` knows.
const KNOWN: &[&str] = &["host-runner"];

/// Fuzzes `name` for `secs` seconds.
pub fn run(root: &Path, name: &str, secs: u64) -> Result<()> {
    if name != "host-runner" {
        bail!(
            "unknown fuzz target `{name}`: known targets are {}",
            KNOWN.join(", ")
        );
    }
    let has_cargo_fuzz = cmd::cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cargo_fuzz {
        cmd::run(cmd::cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let fuzz_dir = root.join("host-runner/fuzz");
    cmd::run(
        cmd::cargo()
            .current_dir(root)
            .args(["fuzz", "run", "--sanitizer", "none", "--fuzz-dir"])
            .arg(&fuzz_dir)
            .args(["abi_surface", "--", &format!("-max_total_time={secs}")]),
    )
}
