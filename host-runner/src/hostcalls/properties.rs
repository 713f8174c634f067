//! Properties: `proxy_get_property` and `proxy_set_property` over a tree seeded by the caller
//! (per stream and per instance), with the request and response attributes Envoy derives from
//! the stream's headers.

use wasmtime::{Caller, Linker, Result};

use super::wrap;
use crate::abi::Status;
use crate::memory::{self, guest};
use crate::state::HostState;

/// Adds this area's functions.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    wrap!(linker, "proxy_get_property", get, (pp: u32, pl: u32, rp: u32, rs: u32));
    wrap!(linker, "proxy_set_property", set, (pp: u32, pl: u32, vp: u32, vl: u32));
    Ok(())
}

/// Splits the ABI's path encoding: segments separated (and usually ended) by NUL.
pub(crate) fn parse_path(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Looks a property up: the stream's seeded values, then attributes derived from the stream,
/// then the instance's seeded values.
pub(crate) fn lookup(s: &HostState, path: &[String]) -> Option<Vec<u8>> {
    let stream = s.streams.get(&s.effective);
    if let Some(v) = stream.and_then(|st| st.properties.get(path)) {
        return Some(v.to_vec());
    }
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let derived = match p.as_slice() {
        ["plugin_name"] => Some(s.settings.plugin_name.clone().into_bytes()),
        ["plugin_root_id"] => Some(s.settings.root_id.clone().into_bytes()),
        ["plugin_vm_id"] => Some(s.settings.vm_id.clone().into_bytes()),
        ["request", attr] => {
            let h = stream?.request_headers.as_ref();
            let header = |n: &str| h.and_then(|h| h.get(n)).map(String::into_bytes);
            match *attr {
                "path" => header(":path"),
                "url_path" => h
                    .and_then(|h| h.get(":path"))
                    .map(|p| p.split('?').next().unwrap_or_default().as_bytes().to_vec()),
                "host" => header(":authority"),
                "method" => header(":method"),
                "scheme" => header(":scheme"),
                "id" => header("x-request-id"),
                "useragent" => header("user-agent"),
                "referer" => header("referer"),
                _ => None,
            }
        }
        ["request", "headers", name] => stream?
            .request_headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(String::into_bytes),
        ["xds", "cluster_name"] => {
            let name = s.settings.cluster_header.as_deref()?;
            stream?
                .request_headers
                .as_ref()
                .and_then(|h| h.get(name))
                .filter(|v| !v.is_empty())
                .map(String::into_bytes)
        }
        ["response", "code"] => stream?
            .response_headers
            .as_ref()
            .and_then(|h| h.get(":status"))
            .and_then(|c| c.parse::<u64>().ok())
            .map(|c| c.to_le_bytes().to_vec()),
        ["response", "headers", name] => stream?
            .response_headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(String::into_bytes),
        ["response", "trailers", name] => stream?
            .response_trailers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(String::into_bytes),
        _ => None,
    };
    derived.or_else(|| s.settings.properties.get(path).map(<[u8]>::to_vec))
}

fn get(c: &mut Caller<'_, HostState>, pp: u32, pl: u32, rp: u32, rs: u32) -> Result<Status> {
    let path = parse_path(&guest!(memory::read(c, pp, pl)));
    let Some(value) = lookup(c.data(), &path) else {
        return Ok(Status::NotFound);
    };
    memory::copy_out(c, &value, rp, rs)
}

fn set(c: &mut Caller<'_, HostState>, pp: u32, pl: u32, vp: u32, vl: u32) -> Result<Status> {
    let path = parse_path(&guest!(memory::read(c, pp, pl)));
    let value = guest!(memory::read(c, vp, vl));
    if path.is_empty() {
        return Ok(Status::NotFound);
    }
    let s = c.data_mut();
    let effective = s.effective;
    let props = match s.streams.get_mut(&effective) {
        Some(st) => &mut st.properties,
        None => &mut s.settings.properties,
    };
    props.0.insert(path, value);
    Ok(Status::Ok)
}
