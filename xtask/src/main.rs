//! shadowplane's developer tasks (work in progress).
fn main() {}
