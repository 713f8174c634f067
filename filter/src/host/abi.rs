//! The proxy-wasm ABI v0.2.1 as the filter uses it: the host functions it imports, with safe
//! wrappers, and the guest allocator the host calls back into. The callbacks the filter exports
//! are in the parent module.
//!
//! Why by hand and not through the proxy-wasm Rust SDK: the SDK's dispatcher exports every
//! callback of the ABI (context creation and deletion, both bodies, trailers, metadata, done),
//! and Envoy calls into the VM for each one a module exports, on every request. The SDK has no
//! way to leave callbacks out, and linking it at all brings its exports along (they are
//! `#[no_mangle]`), so the filter declares the dozen host functions it needs here and exports
//! only the callbacks it uses. The signatures follow the spec (proxy-wasm/spec,
//! abi-versions/v0.2.1).

// Every `unsafe` block here calls a host function with pointers into this module's own
// memory that live across the call, or adopts a buffer the host filled through
// `proxy_on_memory_allocate`; the host never keeps a pointer past the call.
#![allow(unsafe_code)]

use std::alloc::{Layout, alloc};
use std::cell::{Cell, UnsafeCell};
use std::ptr::null_mut;

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
    ) -> u32;
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
}

/// The spec's `proxy_status_t`; its names show in the filter's log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `OK`.
    Ok,
    /// `NOT_FOUND`.
    NotFound,
    /// `BAD_ARGUMENT`.
    BadArgument,
    /// `SERIALIZATION_FAILURE`.
    SerializationFailure,
    /// `PARSE_FAILURE`.
    ParseFailure,
    /// `INVALID_MEMORY_ACCESS`.
    InvalidMemoryAccess,
    /// `EMPTY`.
    Empty,
    /// `CAS_MISMATCH`.
    CasMismatch,
    /// `INTERNAL_FAILURE`.
    InternalFailure,
    /// `UNIMPLEMENTED`.
    Unimplemented,
    /// A code the spec does not define.
    Unknown(u32),
}

impl Status {
    fn from_code(code: u32) -> Status {
        match code {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::BadArgument,
            3 => Status::SerializationFailure,
            4 => Status::ParseFailure,
            6 => Status::InvalidMemoryAccess,
            7 => Status::Empty,
            8 => Status::CasMismatch,
            10 => Status::InternalFailure,
            12 => Status::Unimplemented,
            c => Status::Unknown(c),
        }
    }
}

/// `proxy_log_level_t`.
#[derive(Debug, Clone, Copy)]
pub enum LogLevel {
    /// `WARN`.
    Warn = 3,
    /// `ERROR`.
    Error = 4,
}

/// `proxy_map_type_t`: the header maps the filter reads or writes.
#[derive(Debug, Clone, Copy)]
pub enum Map {
    /// `HTTP_REQUEST_HEADERS`.
    Request = 0,
    /// `HTTP_RESPONSE_HEADERS`.
    Response = 2,
    /// `HTTP_CALL_RESPONSE_HEADERS`: the answer to a callout.
    CallResponse = 6,
}

/// `proxy_metric_type_t`.
#[derive(Debug, Clone, Copy)]
pub enum MetricKind {
    /// `COUNTER`.
    Counter = 0,
    /// `GAUGE`.
    Gauge = 1,
    /// `HISTOGRAM`.
    Histogram = 2,
}

/// `proxy_buffer_type_t::PLUGIN_CONFIGURATION`.
const PLUGIN_CONFIGURATION: u32 = 7;

/// Bytes of the scratch buffer that [`header_with`] lends the host for a short value.
const SCRATCH_LEN: usize = 32;

thread_local! {
    /// Where the host writes a short value that [`header_with`] reads at once (a status code),
    /// saving the allocation and its free. A Wasm VM has one thread, so this is one buffer.
    static SCRATCH: UnsafeCell<[u8; SCRATCH_LEN]> = const { UnsafeCell::new([0; SCRATCH_LEN]) };
    /// Set by [`header_with`] for the one hostcall it makes: the next allocation that fits
    /// takes the scratch buffer, and disarms it.
    static SCRATCH_ARMED: Cell<bool> = const { Cell::new(false) };
}

fn scratch_ptr() -> *mut u8 {
    SCRATCH.with(|b| b.get().cast::<u8>())
}

/// The host allocates every value it returns by calling this export. The buffer becomes a
/// `Vec<u8>` of exactly `size` bytes in [`adopt`], so it is allocated with that layout; only
/// while [`header_with`] has armed it does a short value go to the scratch buffer instead.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    if size > 0 && size <= SCRATCH_LEN && SCRATCH_ARMED.replace(false) {
        return scratch_ptr();
    }
    match Layout::array::<u8>(size) {
        Ok(layout) if size > 0 => unsafe { alloc(layout) },
        _ => null_mut(),
    }
}

/// Takes ownership of a buffer the host returned: `size` bytes at `data`, allocated by
/// [`proxy_on_memory_allocate`] (or null when the value is empty).
fn adopt(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // The host filled exactly `size` bytes of an allocation of `size` bytes made with
    // `Layout::array::<u8>(size)`, which is the layout of a `Vec<u8>` of that capacity.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Calls a host function that returns a value through `(data, size)` out-pointers.
fn read(f: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Vec<u8>, Status> {
    let mut data = null_mut();
    let mut size = 0;
    match Status::from_code(f(&mut data, &mut size)) {
        Status::Ok => Ok(adopt(data, size)),
        s => Err(s),
    }
}

/// Writes a log line at `level`; a failure to log is not worth reporting anywhere.
pub fn log(level: LogLevel, message: &str) {
    unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// The host's wall clock in nanoseconds since the epoch (0 if it would not say).
pub fn now_ns() -> u64 {
    let mut t = 0;
    unsafe { proxy_get_current_time_nanoseconds(&mut t) };
    t
}

/// Asks for `on_tick` every `ms` milliseconds on the calling root context.
pub fn set_tick_period(ms: u32) {
    unsafe { proxy_set_tick_period_milliseconds(ms) };
}

/// The plugin configuration of the root context being configured.
pub fn plugin_configuration(size: usize) -> Result<Vec<u8>, Status> {
    read(|d, s| unsafe { proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, d, s) })
}

/// A header's value as bytes (HTTP allows values beyond UTF-8); `None` when absent.
pub fn header(map: Map, name: &str) -> Option<Vec<u8>> {
    read(|d, s| unsafe { proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), d, s) })
        .ok()
}

/// Hands header `name`'s value to `f` without keeping it: a short value (a status code) goes
/// through the scratch buffer, not the allocator. `None` when the header is absent.
pub fn header_with<R>(map: Map, name: &str, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    let mut data = null_mut();
    let mut size = 0;
    SCRATCH_ARMED.set(true);
    let code = unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    SCRATCH_ARMED.set(false);
    if Status::from_code(code) != Status::Ok {
        return None;
    }
    if data == scratch_ptr() && size <= SCRATCH_LEN {
        // Copied out before use: the buffer is the host's to write on the next armed call.
        let mut value = [0; SCRATCH_LEN];
        SCRATCH.with(|b| value = unsafe { *b.get() });
        return value.get(..size).map(f);
    }
    Some(f(&adopt(data, size)))
}

/// Sets header `name` to `value`, replacing any value it had.
pub fn set_header(map: Map, name: &str, value: &str) -> Status {
    Status::from_code(unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// An attribute, its path given as the spec's NUL-separated segments (`"xds\0cluster_name"`);
/// `None` when Envoy has no value for it.
pub fn property(path: &str) -> Option<Vec<u8>> {
    read(|d, s| unsafe { proxy_get_property(path.as_ptr(), path.len(), d, s) }).ok()
}

/// Dispatches an HTTP call to cluster `upstream`; the answer arrives in
/// `proxy_on_http_call_response` with the returned token.
/// `headers` are serialized by [`crate::callout::serialize_pairs`].
pub fn http_call(
    upstream: &str,
    headers: &[u8],
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, Status> {
    let mut token = 0;
    let status = unsafe {
        proxy_http_call(
            upstream.as_ptr(),
            upstream.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            null_mut(),
            0,
            timeout_ms,
            &mut token,
        )
    };
    match Status::from_code(status) {
        Status::Ok => Ok(token),
        s => Err(s),
    }
}

/// Defines (or finds) an Envoy metric; `None` if the host refused the name.
pub fn define_metric(kind: MetricKind, name: &str) -> Option<u32> {
    let mut id = 0;
    let status = unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) };
    (Status::from_code(status) == Status::Ok).then_some(id)
}

/// Adds `by` to counter or gauge `id`.
pub fn increment_metric(id: u32, by: i64) {
    unsafe { proxy_increment_metric(id, by) };
}

/// Records `value` in histogram `id`, or sets gauge `id` to it.
pub fn record_metric(id: u32, value: u64) {
    unsafe { proxy_record_metric(id, value) };
}
