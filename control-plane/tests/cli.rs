//! The `shadowplane` binary's command line: configuration errors exit 2 naming file:line:column,
//! and the shipped example configuration checks clean.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_shadowplane");

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_config_exits_2_naming_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - name: ingress\n    address: 127.0.0.1:10000\n    port: 3\nservices: []\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    for cmd in ["serve", "check"] {
        let (code, _, err) = run(&[cmd, "--config", p]);
        assert_eq!(code, Some(2), "{cmd}: {err}");
        assert!(err.contains(&format!("{p}:4:5: ")), "{cmd}: {err}");
        assert!(err.contains("unknown field `port`"), "{cmd}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    std::fs::write(&path, "listeners: []\nservices: []\n").unwrap();
    let (code, _, err) = run(&["check", "--config", p]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains(&format!("{p}:1:1: at least one listener is required")),
        "{err}"
    );
}

#[test]
fn the_example_configuration_checks_clean() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let example = root.join("examples/shadowplane.yaml");
    let wasm = root.join("target/wasm32-wasip1/wasm/shadowplane_filter.wasm");
    assert!(
        wasm.is_file(),
        "build the filter first: cargo build -p shadowplane-filter --target wasm32-wasip1 --profile wasm"
    );
    let (code, out, err) = run(&["check", "--config", example.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ok (1 listeners, 1 services)"), "{out}");
}

#[test]
fn weights_set_needs_role_equals_percent() {
    let (code, _, err) = run(&[
        "weights",
        "set",
        "checkout",
        "primary:90",
        "--admin",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("\"primary:90\" is not ROLE=PERCENT"), "{err}");
}
