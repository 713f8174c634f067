//! The shadowplane proxy-wasm filter (work in progress).
