//! The callbacks the filter exports to Envoy, and only those: Envoy calls into the VM for every
//! callback a module exports, so the body-less ones (response headers, trailers, metadata,
//! `proxy_on_done`, `proxy_on_delete`) are left out (see [`super::abi`] on why not the SDK).
//! Each one converts the ABI's integers and hands over to the parent module.

// `#[unsafe(no_mangle)]` is the only unsafe thing here: each symbol is defined once, in this
// file, with the signature the spec gives it.
#![allow(unsafe_code)]

/// `proxy_action_t::CONTINUE`: the filter never holds a request back.
const CONTINUE: u32 = 0;

/// Marks the module as speaking proxy-wasm ABI v0.2.1; never called.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// A root context (`parent_context_id` 0) or a stream's context was created.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_context_id: u32) {
    super::on_context_create(context_id, parent_context_id);
}

/// The VM started; nothing to set up before the first configuration.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: u32) -> u32 {
    1
}

/// A root context got its plugin configuration; false refuses it.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_configure(root_context_id: u32, configuration_size: u32) -> u32 {
    u32::from(super::on_configure(
        root_context_id,
        configuration_size as usize,
    ))
}

/// The root context's tick.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_tick(root_context_id: u32) {
    super::on_tick(root_context_id);
}

/// A telemetry callout was answered, or failed.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_http_call_response(
    _root_context_id: u32,
    token: u32,
    _headers: u32,
    _body_size: u32,
    _trailers: u32,
) {
    super::on_http_call_response(token);
}

/// A request's headers: the filter routes it.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _headers: u32,
    _end_of_stream: u32,
) -> u32 {
    super::on_request_headers(context_id);
    CONTINUE
}

/// A chunk of the request body (without buffering, each call gives the new chunk's size).
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_body(context_id: u32, size: u32, _end_of_stream: u32) -> u32 {
    super::on_request_body(context_id, size as usize);
    CONTINUE
}

/// A chunk of the response body.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_response_body(context_id: u32, size: u32, _end_of_stream: u32) -> u32 {
    super::on_response_body(context_id, size as usize);
    CONTINUE
}

/// The stream is over (Envoy's access-log phase): the filter counts it.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_log(context_id: u32) {
    super::on_log(context_id);
}
