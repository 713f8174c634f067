//! HTTP fields: the `proxy_*_header_map_*` functions over request and response headers and
//! trailers, and (read-only) the maps of callout responses.

use wasmtime::{Caller, Linker, Result};

use super::wrap;
use crate::abi::{MapType, Status, deserialize_pairs};
use crate::memory::{self, guest};
use crate::state::{HeaderMap, HostState};

/// Adds this area's functions.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    wrap!(linker, "proxy_get_header_map_size", get_size, (map: u32, ret: u32));
    wrap!(linker, "proxy_get_header_map_pairs", get_pairs, (map: u32, rp: u32, rs: u32));
    wrap!(linker, "proxy_set_header_map_pairs", set_pairs, (map: u32, p: u32, l: u32));
    wrap!(linker, "proxy_get_header_map_value", get_value, (map: u32, kp: u32, kl: u32, rp: u32, rs: u32));
    wrap!(linker, "proxy_add_header_map_value", add_value, (map: u32, kp: u32, kl: u32, vp: u32, vl: u32));
    wrap!(linker, "proxy_replace_header_map_value", replace_value, (map: u32, kp: u32, kl: u32, vp: u32, vl: u32));
    wrap!(linker, "proxy_remove_header_map_value", remove_value, (map: u32, kp: u32, kl: u32));
    Ok(())
}

/// The map `map` of the effective context, if it exists now.
pub(crate) fn map_ref(s: &HostState, map: MapType) -> Option<&HeaderMap> {
    let stream = s.streams.get(&s.effective);
    match map {
        MapType::RequestHeaders => stream?.request_headers.as_ref(),
        MapType::RequestTrailers => stream?.request_trailers.as_ref(),
        MapType::ResponseHeaders => stream?.response_headers.as_ref(),
        MapType::ResponseTrailers => stream?.response_trailers.as_ref(),
        MapType::HttpCallResponseHeaders => s.buffers.http_response.as_ref().map(|r| &r.headers),
        MapType::HttpCallResponseTrailers => s.buffers.http_response.as_ref().map(|r| &r.trailers),
        MapType::GrpcInitialMetadata => s.buffers.grpc.as_ref().map(|r| &r.headers),
        MapType::GrpcTrailingMetadata => s.buffers.grpc.as_ref().map(|r| &r.trailers),
    }
}

/// A writable map. Trailers spring into existence when written, as when a plugin adds
/// trailers at the end of a body; callout maps are read-only.
fn map_mut(s: &mut HostState, map: MapType) -> Option<&mut HeaderMap> {
    let stream = s.streams.get_mut(&s.effective)?;
    match map {
        MapType::RequestHeaders => stream.request_headers.as_mut(),
        MapType::ResponseHeaders => stream.response_headers.as_mut(),
        MapType::RequestTrailers => Some(stream.request_trailers.get_or_insert_default()),
        MapType::ResponseTrailers => Some(stream.response_trailers.get_or_insert_default()),
        _ => None,
    }
}

fn get_size(c: &mut Caller<'_, HostState>, map: u32, ret: u32) -> Result<Status> {
    let Some(map) = MapType::from_raw(map) else {
        return Ok(Status::BadArgument);
    };
    let Some(m) = map_ref(c.data(), map) else {
        return Ok(Status::BadArgument);
    };
    let size = m.serialize().len() as u32;
    guest!(memory::write_u32(c, ret, size));
    Ok(Status::Ok)
}

fn get_pairs(c: &mut Caller<'_, HostState>, map: u32, rp: u32, rs: u32) -> Result<Status> {
    let Some(map) = MapType::from_raw(map) else {
        return Ok(Status::BadArgument);
    };
    let Some(m) = map_ref(c.data(), map) else {
        return Ok(Status::BadArgument);
    };
    let bytes = m.serialize();
    memory::copy_out(c, &bytes, rp, rs)
}

fn set_pairs(c: &mut Caller<'_, HostState>, map: u32, p: u32, l: u32) -> Result<Status> {
    let Some(map) = MapType::from_raw(map) else {
        return Ok(Status::BadArgument);
    };
    let bytes = guest!(memory::read(c, p, l));
    let Some(pairs) = deserialize_pairs(&bytes) else {
        return Ok(Status::BadArgument);
    };
    let Some(m) = map_mut(c.data_mut(), map) else {
        return Ok(Status::BadArgument);
    };
    *m = HeaderMap::from_pairs(&pairs);
    Ok(Status::Ok)
}

fn get_value(
    c: &mut Caller<'_, HostState>,
    map: u32,
    kp: u32,
    kl: u32,
    rp: u32,
    rs: u32,
) -> Result<Status> {
    let Some(map) = MapType::from_raw(map) else {
        return Ok(Status::BadArgument);
    };
    let key = guest!(memory::read_string(c, kp, kl));
    let Some(m) = map_ref(c.data(), map) else {
        return Ok(Status::BadArgument);
    };
    let Some(value) = m.get(&key) else {
        return Ok(Status::NotFound);
    };
    memory::copy_out(c, value.as_bytes(), rp, rs)
}

fn edit(
    c: &mut Caller<'_, HostState>,
    map: u32,
    kp: u32,
    kl: u32,
    value: Option<(u32, u32)>,
    f: impl FnOnce(&mut HeaderMap, &str, &str),
) -> Result<Status> {
    let Some(map) = MapType::from_raw(map) else {
        return Ok(Status::BadArgument);
    };
    let key = guest!(memory::read_string(c, kp, kl));
    let value = match value {
        Some((vp, vl)) => guest!(memory::read_string(c, vp, vl)),
        None => String::new(),
    };
    let Some(m) = map_mut(c.data_mut(), map) else {
        return Ok(Status::BadArgument);
    };
    f(m, &key, &value);
    Ok(Status::Ok)
}

fn add_value(
    c: &mut Caller<'_, HostState>,
    map: u32,
    kp: u32,
    kl: u32,
    vp: u32,
    vl: u32,
) -> Result<Status> {
    edit(c, map, kp, kl, Some((vp, vl)), |m, k, v| m.add(k, v))
}

fn replace_value(
    c: &mut Caller<'_, HostState>,
    map: u32,
    kp: u32,
    kl: u32,
    vp: u32,
    vl: u32,
) -> Result<Status> {
    edit(c, map, kp, kl, Some((vp, vl)), |m, k, v| m.replace(k, v))
}

fn remove_value(c: &mut Caller<'_, HostState>, map: u32, kp: u32, kl: u32) -> Result<Status> {
    edit(c, map, kp, kl, None, |m, k, _| m.remove(k))
}
