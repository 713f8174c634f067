//! Buffers: `proxy_get_buffer_bytes`, `proxy_set_buffer_bytes`, `proxy_get_buffer_status` over
//! bodies, configurations, callout responses and foreign function arguments.

use wasmtime::{Caller, Linker, Result};

use super::wrap;
use crate::abi::{BufferType, Status};
use crate::memory::{self, guest};
use crate::state::HostState;

/// Adds this area's functions.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    wrap!(linker, "proxy_get_buffer_bytes", get_bytes, (ty: u32, start: u32, max: u32, rp: u32, rs: u32));
    wrap!(linker, "proxy_set_buffer_bytes", set_bytes, (ty: u32, start: u32, size: u32, vp: u32, vl: u32));
    wrap!(linker, "proxy_get_buffer_status", get_status, (ty: u32, rs: u32, rf: u32));
    Ok(())
}

enum Found<'a> {
    Bytes(&'a [u8]),
    Missing,
}

fn buffer(s: &HostState, ty: BufferType) -> Found<'_> {
    let stream = s.streams.get(&s.effective);
    let found = match ty {
        BufferType::RequestBody => stream.map(|st| st.request_body.as_slice()),
        BufferType::ResponseBody => stream.map(|st| st.response_body.as_slice()),
        BufferType::DownstreamData => stream.map(|st| st.downstream_data.as_slice()),
        BufferType::UpstreamData => stream.map(|st| st.upstream_data.as_slice()),
        BufferType::HttpCallResponseBody => s.buffers.http_response.as_ref().map(|r| &r.body[..]),
        BufferType::GrpcReceiveBuffer => s.buffers.grpc.as_ref().map(|r| &r.body[..]),
        // Envoy keeps both configurations readable for the plugin's life, not only in the
        // callback the spec names.
        BufferType::VmConfiguration => Some(&s.settings.vm_config[..]),
        BufferType::PluginConfiguration => Some(&s.settings.plugin_config[..]),
        BufferType::ForeignFunctionArguments => s.buffers.foreign_args.as_deref(),
    };
    found.map_or(Found::Missing, Found::Bytes)
}

fn get_bytes(
    c: &mut Caller<'_, HostState>,
    ty: u32,
    start: u32,
    max: u32,
    rp: u32,
    rs: u32,
) -> Result<Status> {
    let Some(ty) = BufferType::from_raw(ty) else {
        return Ok(Status::BadArgument);
    };
    let bytes = match buffer(c.data(), ty) {
        Found::Bytes(b) => {
            let from = (start as usize).min(b.len());
            let to = (start as usize).saturating_add(max as usize).min(b.len());
            b[from..to].to_vec()
        }
        Found::Missing => return Ok(Status::NotFound),
    };
    memory::copy_out(c, &bytes, rp, rs)
}

fn set_bytes(
    c: &mut Caller<'_, HostState>,
    ty: u32,
    start: u32,
    size: u32,
    vp: u32,
    vl: u32,
) -> Result<Status> {
    let Some(ty) = BufferType::from_raw(ty) else {
        return Ok(Status::BadArgument);
    };
    let value = guest!(memory::read(c, vp, vl));
    let s = c.data_mut();
    let writable = matches!(
        ty,
        BufferType::RequestBody
            | BufferType::ResponseBody
            | BufferType::DownstreamData
            | BufferType::UpstreamData
    );
    // The rest are the host's to give, not the plugin's to change.
    if !writable {
        return Ok(Status::BadArgument);
    }
    let Some(stream) = s.stream_mut() else {
        return Ok(Status::NotFound);
    };
    let target = match ty {
        BufferType::RequestBody => &mut stream.request_body,
        BufferType::ResponseBody => &mut stream.response_body,
        BufferType::DownstreamData => &mut stream.downstream_data,
        _ => &mut stream.upstream_data,
    };
    let from = (start as usize).min(target.len());
    let to = from.saturating_add(size as usize).min(target.len());
    target.splice(from..to, value);
    Ok(Status::Ok)
}

fn get_status(c: &mut Caller<'_, HostState>, ty: u32, rs: u32, rf: u32) -> Result<Status> {
    let Some(ty) = BufferType::from_raw(ty) else {
        return Ok(Status::BadArgument);
    };
    let len = match buffer(c.data(), ty) {
        Found::Bytes(b) => b.len() as u32,
        Found::Missing => return Ok(Status::NotFound),
    };
    guest!(memory::check(c, rf, 4));
    guest!(memory::write_u32(c, rs, len));
    guest!(memory::write_u32(c, rf, 0));
    Ok(Status::Ok)
}
