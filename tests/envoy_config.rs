//! Every file under `envoy-config/` passes Envoy's own `--mode validate`.
//!
//! Validate mode does not read files that a bootstrap loads at run time (file-based RDS and
//! ECDS), so each such file is also validated inlined into the bootstrap that reads it. A file
//! that no bootstrap reads and that is not a bootstrap fails the test: nothing in the folder
//! goes unchecked.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;
use shadowplane_e2e::envoy::envoy_bin;
use shadowplane_e2e::filter_stack::{filter_wasm, workspace_root};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
}

fn read(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first resource of a discovery-response file, without its `@type`.
fn resource(path: &Path) -> Value {
    let mut r = read(path)["resources"][0].clone();
    assert!(!r.is_null(), "{} has no resources", path.display());
    if let Value::Mapping(m) = &mut r {
        m.remove("@type");
    }
    r
}

fn file_source(v: &Value) -> Option<&str> {
    v["path_config_source"]["path"].as_str()
}

/// Replaces file-based RDS and ECDS in `v` by the resources they name; records each file read.
fn inline(v: &mut Value, root: &Path, read_files: &mut BTreeSet<PathBuf>) {
    match v {
        Value::Mapping(m) => {
            if let Some(path) = m
                .get("rds")
                .and_then(|rds| file_source(&rds["config_source"]))
            {
                let path = root.join(path);
                let routes = resource(&path);
                read_files.insert(path);
                m.remove("rds");
                m.insert("route_config".into(), routes);
            }
            if let Some(path) = m
                .get("config_discovery")
                .and_then(|cd| file_source(&cd["config_source"]))
            {
                let path = root.join(path);
                let mut typed = resource(&path)["typed_config"].clone();
                // Point the Wasm code at the built filter, wherever the build put it.
                if !typed["config"]["vm_config"]["code"]["local"]["filename"].is_null() {
                    typed["config"]["vm_config"]["code"]["local"]["filename"] =
                        Value::String(filter_wasm().display().to_string());
                }
                read_files.insert(path);
                m.remove("config_discovery");
                m.insert("typed_config".into(), typed);
            }
            for (_, child) in m.iter_mut() {
                inline(child, root, read_files);
            }
        }
        Value::Sequence(s) => s.iter_mut().for_each(|c| inline(c, root, read_files)),
        _ => {}
    }
}

fn validate(bootstrap: &Path, root: &Path) {
    let out = Command::new(envoy_bin())
        .current_dir(root)
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(bootstrap)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("OK"),
        "{} does not validate:\n{text}",
        bootstrap.display()
    );
}

#[test]
fn every_file_in_envoy_config_validates() {
    let root = workspace_root();
    let mut all = Vec::new();
    files(&root.join("envoy-config"), &mut all);
    let scratch = tempfile::tempdir().unwrap();
    let mut checked = BTreeSet::new();
    let bootstraps: Vec<&PathBuf> = all
        .iter()
        .filter(|p| !read(p)["static_resources"].is_null())
        .collect();
    assert!(
        !bootstraps.is_empty(),
        "no bootstrap found under envoy-config/"
    );
    for bootstrap in bootstraps {
        validate(bootstrap, &root);
        checked.insert(bootstrap.clone());
        let mut doc = read(bootstrap);
        let mut read_files = BTreeSet::new();
        inline(&mut doc, &root, &mut read_files);
        if !read_files.is_empty() {
            let inlined = scratch.path().join(bootstrap.file_name().unwrap());
            fs::write(&inlined, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
            validate(&inlined, &root);
            checked.extend(read_files);
        }
    }
    let unchecked: Vec<_> = all.iter().filter(|p| !checked.contains(*p)).collect();
    assert!(
        unchecked.is_empty(),
        "files no bootstrap reads and that are no bootstrap: {unchecked:?}"
    );
}

#[test]
fn a_broken_route_file_fails_validation() {
    // The check above must be able to fail: a route naming a cluster that does not exist.
    let root = workspace_root();
    let bootstrap = root.join("envoy-config/filter-static.yaml");
    let mut doc = read(&bootstrap);
    let mut read_files = BTreeSet::new();
    inline(&mut doc, &root, &mut read_files);
    let split = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["virtual_hosts"][0]["routes"]
        .as_sequence_mut()
        .and_then(|routes| routes.last_mut())
        .expect("the bootstrap has routes");
    let routes = &mut split["route"]["weighted_clusters"]["clusters"][0]["name"];
    assert_eq!(routes.as_str(), Some("primary"));
    *routes = Value::String("no-such-cluster".into());
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("broken.yaml");
    fs::write(&path, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
    let out = Command::new(envoy_bin())
        .current_dir(&root)
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "Envoy accepted a route to a missing cluster"
    );
}
