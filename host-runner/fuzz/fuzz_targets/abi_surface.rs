//! cargo-fuzz target: libFuzzer's inputs through the driver the seeded test uses
//! (`tests/support/fuzz.rs`); any broken property panics, which libFuzzer reports as a crash
//! and keeps the input under `artifacts/abi_surface/`.

#![no_main]

#[path = "../../tests/support/fuzz.rs"]
mod fuzz;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(program) = fuzz::Program::from_bytes(data) else {
        return;
    };
    if let Err(e) = fuzz::run(&program) {
        panic!("{e}\n{program:?}");
    }
});
