//! The ABI-surface fuzz driver (`support/fuzz.rs`) under fixed seeds, so every `cargo test`
//! plays the same few hundred random programs; `cargo xtask fuzz host-runner --secs N` runs the
//! same driver coverage-guided under cargo-fuzz.

#[path = "support/fuzz.rs"]
mod fuzz;

use fuzz::{Program, Stats};

/// Deterministic bytes for a seed (xorshift64).
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn random_programs_at_the_abi_surface_keep_the_host_whole() {
    let mut total = Stats::default();
    for seed in 0..200u64 {
        let input = bytes(0x5eed_0000 + seed, 6_000);
        let program = Program::from_bytes(&input).expect("any bytes decode");
        match fuzz::run(&program) {
            Ok(s) => total.add(&s),
            Err(e) => panic!("seed {seed}: {e}\n{program:?}"),
        }
    }
    // The programs reach what the properties are about: calls that succeed, out-of-bounds
    // pointers answered INVALID_MEMORY_ACCESS, and events the harness takes.
    assert!(total.calls > 5_000, "{total:?}");
    assert!(total.ok > 500, "{total:?}");
    assert!(total.oob > 500, "{total:?}");
    assert!(total.invalid_memory_access > 500, "{total:?}");
    assert!(total.events_ok > 1_000, "{total:?}");
}
