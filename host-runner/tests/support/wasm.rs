//! Finds (building when missing) the guest modules the tests run: the shadowplane filter and
//! the empty example filter, all from the workspace's `--profile wasm` build.

// Each test binary uses a different part of this file.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use shadowplane_host_runner::{Compiled, Host, HostConfig};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The `.wasm` of `package` (file stem `stem`): `env` if set, else the `--profile wasm` build
/// output, built now if missing. Fails the test with the command to run when it cannot.
fn locate(env: &str, package: &str, stem: &str) -> Vec<u8> {
    let path = locate_path(env, package, stem);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The path of the shadowplane filter's `.wasm`, built if missing.
pub fn filter_path() -> PathBuf {
    locate_path(
        "SHADOWPLANE_FILTER_WASM",
        "shadowplane-filter",
        "shadowplane_filter",
    )
}

fn locate_path(env: &str, package: &str, stem: &str) -> PathBuf {
    let command = format!("cargo build -p {package} --target wasm32-wasip1 --profile wasm");
    // The nested build writes where this cargo does.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join(format!("wasm32-wasip1/wasm/{stem}.wasm")));
    if !path.exists() && std::env::var_os(env).is_none() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "-q",
                "-p",
                package,
                "--target",
                "wasm32-wasip1",
                "--profile",
                "wasm",
            ])
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "{} is missing and building it failed: run `{command}`",
            path.display()
        );
    }
    assert!(
        path.exists(),
        "{} is missing: run `{command}`",
        path.display()
    );
    path
}

/// The module of `package` (see [`locate`]), compiled on first use into `cell`.
fn compiled(
    cell: &'static OnceLock<Compiled>,
    env: &str,
    package: &str,
    stem: &str,
) -> &'static Compiled {
    cell.get_or_init(|| {
        let wasm = locate(env, package, stem);
        host()
            .compile(&wasm)
            .unwrap_or_else(|e| panic!("{package} does not compile: {e}"))
    })
}

/// The shadowplane filter, compiled once per test binary.
pub fn filter() -> &'static Compiled {
    static C: OnceLock<Compiled> = OnceLock::new();
    compiled(
        &C,
        "SHADOWPLANE_FILTER_WASM",
        "shadowplane-filter",
        "shadowplane_filter",
    )
}

/// The empty example filter, compiled once per test binary.
pub fn empty_filter() -> &'static Compiled {
    static C: OnceLock<Compiled> = OnceLock::new();
    compiled(
        &C,
        "SHADOWPLANE_EMPTY_FILTER_WASM",
        "shadowplane-example-empty-filter",
        "shadowplane_example_empty_filter",
    )
}

/// One host per test binary: compiling is the slow part, instantiating is cheap.
pub fn host() -> &'static Host {
    static H: OnceLock<Host> = OnceLock::new();
    H.get_or_init(|| {
        Host::new(HostConfig {
            max_instances: 128,
            ..HostConfig::default()
        })
        .expect("host")
    })
}
