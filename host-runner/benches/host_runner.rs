//! Criterion benches of host-runner: instantiating a compiled module through its
//! `InstancePre` on the pooling allocator, and one request (request headers, response headers,
//! done, log, delete) through the shadowplane filter and the empty filter.
//! `cargo xtask bench host-runner` builds the filters, runs these and writes
//! target/bench/host-runner.json.

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use shadowplane_host_runner::{
    Action, Compiled, Harness, Host, HostConfig, InstanceSettings, Plugin, Shared,
};

const CONFIG: &str =
    r#"{"groups": [{"name": "blue", "weight": 1}, {"name": "green", "weight": 1}]}"#;

fn wasm(env: &str, stem: &str, package: &str) -> Vec<u8> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join(format!("wasm32-wasip1/wasm/{stem}.wasm")));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `cargo build -p {package} --target wasm32-wasip1 --profile wasm`",
            path.display()
        )
    })
}

fn compiled(host: &Host) -> [Compiled; 2] {
    let filter = wasm(
        "SHADOWPLANE_FILTER_WASM",
        "shadowplane_filter",
        "shadowplane-filter",
    );
    let empty = wasm(
        "SHADOWPLANE_EMPTY_FILTER_WASM",
        "shadowplane_example_empty_filter",
        "shadowplane-example-empty-filter",
    );
    [filter, empty].map(|w| host.compile(&w).expect("the module compiles"))
}

fn cycle(h: &mut Harness) {
    let a = h
        .request_headers(
            &[
                (":method", "GET"),
                (":path", "/orders"),
                (":authority", "shop"),
                ("x-user", "u1"),
            ],
            true,
        )
        .expect("request headers");
    assert_eq!(a, Action::Continue);
    // Stamped as the routes stamp it: the cluster and the response code.
    h.response_headers(
        &[(":status", "200"), ("x-shadowplane-upstream", "blue 200")],
        true,
    )
    .expect("response headers");
    h.end_stream().expect("end");
}

fn benches(c: &mut Criterion) {
    let host = Host::new(HostConfig::default()).expect("host");
    let [filter, empty] = compiled(&host);
    let mut g = c.benchmark_group("host_runner");
    let settings = InstanceSettings::default();
    let shared = Shared::new();
    g.bench_function("instantiate", |b| {
        b.iter(|| Plugin::new(&filter, settings.clone(), shared.clone()).expect("instance"))
    });
    g.bench_function("instantiate_and_configure", |b| {
        b.iter(|| {
            let mut s = settings.clone();
            s.plugin_config = CONFIG.into();
            let mut p = Plugin::new(&filter, s, shared.clone()).expect("instance");
            p.start().expect("configured");
            p
        })
    });
    let mut h = Harness::from_compiled(&filter)
        .with_trace(false)
        .configure(CONFIG)
        .expect("configured");
    g.bench_function("request_cycle", |b| b.iter(|| cycle(&mut h)));
    assert!(h.traps().is_empty());
    let mut h = Harness::from_compiled(&empty)
        .with_trace(false)
        .start()
        .expect("started");
    g.bench_function("request_cycle_empty_filter", |b| b.iter(|| cycle(&mut h)));
    g.finish();
}

criterion_group!(host_runner, benches);
criterion_main!(host_runner);
