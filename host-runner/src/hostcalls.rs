//! The host functions, one module per area of the ABI spec, each with an `add_to_linker` in the
//! shape of wasmtime-wasi's: the caller owns the `Linker` and builds it once.

use wasmtime::Linker;

use crate::state::HostState;

pub mod buffers;
pub mod callouts;
pub mod headers;
pub mod logging;
pub mod metrics;
pub mod properties;
pub mod queues;
pub mod shared_data;
pub mod stream;
pub mod timers;
pub mod wasi;

/// Registers a host function whose body returns `Result<Status>`, counting its calls.
macro_rules! wrap {
    ($linker:expr, $name:literal, $f:path, ($($a:ident : $t:ty),*)) => {
        $linker.func_wrap(
            "env",
            $name,
            |mut c: wasmtime::Caller<'_, HostState>, $($a: $t),*| -> wasmtime::Result<u32> {
                c.data_mut().count($name);
                $f(&mut c, $($a),*).map(|s| s as u32)
            },
        )?
    };
}
pub(crate) use wrap;

/// Adds every proxy-wasm and WASI host function to `linker`.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    logging::add_to_linker(linker)?;
    timers::add_to_linker(linker)?;
    headers::add_to_linker(linker)?;
    buffers::add_to_linker(linker)?;
    properties::add_to_linker(linker)?;
    callouts::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    shared_data::add_to_linker(linker)?;
    queues::add_to_linker(linker)?;
    stream::add_to_linker(linker)?;
    wasi::add_to_linker(linker)?;
    Ok(())
}
