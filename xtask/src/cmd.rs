//! Running external commands: echo the command line, inherit stdio, fail naming the command.

use std::env;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// A `cargo` command: the cargo that runs xtask (env `CARGO`) when set.
pub fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")))
}

/// Every package built for `wasm32-wasip1`: the filter, and the example filters that
/// host-runner's tests and the benches load next to it.
pub const WASM_PACKAGES: [&str; 2] = ["shadowplane-filter", "shadowplane-example-empty-filter"];

/// Builds `packages` for `wasm32-wasip1` with the `wasm` profile, in one cargo run.
pub fn build_wasm(root: &std::path::Path, packages: &[&str]) -> Result<()> {
    let mut cmd = cargo();
    cmd.current_dir(root).arg("build");
    for p in packages {
        cmd.args(["-p", p]);
    }
    run(cmd.args(["--target", "wasm32-wasip1", "--profile", "wasm"]))
}

/// Runs `cmd` with inherited stdio and fails if it does not exit successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` like [`run`], passing its stdout through line by line to `each_line` as well
/// as to our stdout.
pub fn run_watching(cmd: &mut Command, mut each_line: impl FnMut(&str)) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let line = display(cmd);
    println!("$ {line}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    if let Some(out) = child.stdout.take() {
        for l in BufReader::new(out).lines() {
            let l = l.with_context(|| format!("reading the output of `{line}`"))?;
            println!("{l}");
            each_line(&l);
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout and stderr together, failing if it does not exit
/// successfully.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("`{line}` failed: {}\n{}", out.status, text.trim_end());
    }
    Ok(text)
}

/// The command as a shell-like line, with the environment variables it sets.
fn display(cmd: &Command) -> String {
    let mut line = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            let _ = write!(line, "{}={} ", key.display(), value.display());
        }
    }
    line.push_str(&cmd.get_program().to_string_lossy());
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}
