//! `host-runner run` as a user runs it: the shipped scenario passes, a broken expectation
//! fails the run, and a malformed scenario names its line.

#[path = "support/wasm.rs"]
mod wasm;

use std::path::{Path, PathBuf};
use std::process::Command;

use shadowplane_host_runner::scenario::Scenario;

fn run(scenario: &Path, json: bool) -> (i32, String, String) {
    let wasm = wasm::filter_path();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_host-runner"));
    cmd.arg("run")
        .arg("--wasm")
        .arg(&wasm)
        .arg("--scenario")
        .arg(scenario);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("host-runner runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/shadowplane-filter.yaml")
}

#[test]
fn the_shipped_scenario_passes() {
    let (code, stdout, stderr) = run(&shipped(), false);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("proxy_on_tick"), "{stdout}");
    assert!(stdout.contains("http callout 1 answered 200"), "{stdout}");
    assert!(!stdout.contains("FAILED"), "{stdout}");
}

#[test]
fn a_wrong_expectation_fails_the_run_and_says_which() {
    let dir = tempdir();
    let text = std::fs::read_to_string(shipped())
        .expect("scenario")
        .replace("shadowplane.reports_sent: 1", "shadowplane.reports_sent: 7");
    let path = dir.join("wrong.yaml");
    std::fs::write(&path, text).expect("write");
    let (code, stdout, _) = run(&path, true);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json report");
    assert_eq!(report["passed"], false);
    // The report counts the plugin's hostcalls: the scenario's telemetry callout among them.
    let calls = |name: &str| report["hostcalls"][name].as_u64().unwrap_or(0);
    assert!(calls("proxy_http_call") >= 1, "{}", report["hostcalls"]);
    assert!(calls("proxy_get_current_time_nanoseconds") >= 1);
    let failures = report["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0]
            .as_str()
            .unwrap_or("")
            .contains("shadowplane.reports_sent = 7")
    );
}

#[test]
fn a_malformed_scenario_names_its_line() {
    let text = "steps:\n  - tick_ms: 10\n  - request:\n      hedaers: {a: b}\n";
    let err = Scenario::from_yaml(text, "bad.yaml").expect_err("unknown field");
    let msg = err.to_string();
    assert!(msg.starts_with("bad.yaml: "), "{msg}");
    assert!(msg.contains("line 4"), "{msg}");
    let dir = tempdir();
    let path = dir.join("bad.yaml");
    std::fs::write(&path, text).expect("write");
    let (code, _, stderr) = run(&path, false);
    assert_eq!(code, 2);
    assert!(stderr.contains("line 4"), "{stderr}");
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "host-runner-cli-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("tempdir");
    dir
}
