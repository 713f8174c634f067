//! Stream and context operations: continue and close, local responses, the effective
//! context, `proxy_done`, foreign functions, and the v0.1.0 names of some of them.

use wasmtime::{Caller, Linker, Result};

use super::wrap;
use crate::abi::{Status, deserialize_pairs};
use crate::memory::{self, guest};
use crate::state::{HostState, LocalResponse};

/// Adds this area's functions.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    wrap!(linker, "proxy_continue_stream", continue_stream, (ty: u32));
    wrap!(linker, "proxy_close_stream", close_stream, (ty: u32));
    wrap!(linker, "proxy_send_local_response", send_local_response,
        (code: u32, dp: u32, dl: u32, bp: u32, bl: u32, hp: u32, hl: u32, grpc: i32));
    wrap!(linker, "proxy_set_effective_context", set_effective_context, (id: u32));
    wrap!(linker, "proxy_done", done, ());
    wrap!(linker, "proxy_call_foreign_function", call_foreign_function,
        (np: u32, nl: u32, ap: u32, al: u32, rp: u32, rs: u32));
    // ABI v0.1.0.
    wrap!(linker, "proxy_continue_request", continue_request, ());
    wrap!(linker, "proxy_continue_response", continue_response, ());
    wrap!(linker, "proxy_clear_route_cache", clear_route_cache, ());
    Ok(())
}

/// Resumes the request (0) or response (1) side of the effective stream: what the host held
/// while paused goes on.
pub(crate) fn resume(s: &mut HostState, ty: u32) -> Status {
    let Some(st) = s.stream_mut() else {
        return Status::NotFound;
    };
    match ty {
        0 => {
            st.request_paused = false;
            let body = std::mem::take(&mut st.request_body);
            st.request_forwarded.extend(body);
        }
        1 => {
            st.response_paused = false;
            let body = std::mem::take(&mut st.response_body);
            st.response_forwarded.extend(body);
        }
        2 => {
            st.downstream_paused = false;
            let data = std::mem::take(&mut st.downstream_data);
            st.downstream_forwarded.extend(data);
        }
        3 => {
            st.upstream_paused = false;
            let data = std::mem::take(&mut st.upstream_data);
            st.upstream_forwarded.extend(data);
        }
        _ => return Status::BadArgument,
    }
    Status::Ok
}

fn continue_stream(c: &mut Caller<'_, HostState>, ty: u32) -> Result<Status> {
    let s = c.data_mut();
    Ok(resume(s, ty))
}

fn continue_request(c: &mut Caller<'_, HostState>) -> Result<Status> {
    Ok(resume(c.data_mut(), 0))
}

fn continue_response(c: &mut Caller<'_, HostState>) -> Result<Status> {
    Ok(resume(c.data_mut(), 1))
}

fn clear_route_cache(_: &mut Caller<'_, HostState>) -> Result<Status> {
    // There is no route cache here: routes are the caller's, read after each callback.
    Ok(Status::Ok)
}

fn close_stream(c: &mut Caller<'_, HostState>, ty: u32) -> Result<Status> {
    let s = c.data_mut();
    if ty > 3 {
        return Ok(Status::BadArgument);
    }
    let Some(st) = s.stream_mut() else {
        return Ok(Status::NotFound);
    };
    match ty {
        0 | 1 => st.reset = true,
        2 => st.downstream_closed = true,
        _ => st.upstream_closed = true,
    }
    Ok(Status::Ok)
}

#[allow(clippy::too_many_arguments)]
fn send_local_response(
    c: &mut Caller<'_, HostState>,
    code: u32,
    dp: u32,
    dl: u32,
    bp: u32,
    bl: u32,
    hp: u32,
    hl: u32,
    grpc: i32,
) -> Result<Status> {
    let details = guest!(memory::read_string(c, dp, dl));
    let body = guest!(memory::read(c, bp, bl));
    let raw = guest!(memory::read(c, hp, hl));
    let Some(headers) = deserialize_pairs(&raw) else {
        return Ok(Status::BadArgument);
    };
    let Some(st) = c.data_mut().stream_mut() else {
        return Ok(Status::NotFound);
    };
    // -1 (or u32::MAX) means no gRPC status.
    let grpc_status = u32::try_from(grpc).ok().filter(|g| *g != u32::MAX);
    st.local_response = Some(LocalResponse {
        status: code,
        details,
        body,
        headers,
        grpc_status,
    });
    Ok(Status::Ok)
}

fn set_effective_context(c: &mut Caller<'_, HostState>, id: u32) -> Result<Status> {
    let s = c.data_mut();
    if id != s.root_context && !s.streams.contains_key(&id) {
        return Ok(Status::BadArgument);
    }
    s.effective = id;
    Ok(Status::Ok)
}

fn done(c: &mut Caller<'_, HostState>) -> Result<Status> {
    let s = c.data_mut();
    let id = s.effective;
    match s.streams.get_mut(&id) {
        Some(st) if st.done_pending => {
            st.done_pending = false;
            s.done_calls.push(id);
            Ok(Status::Ok)
        }
        _ => Ok(Status::NotFound),
    }
}

fn call_foreign_function(
    c: &mut Caller<'_, HostState>,
    np: u32,
    nl: u32,
    ap: u32,
    al: u32,
    rp: u32,
    rs: u32,
) -> Result<Status> {
    let name = guest!(memory::read_string(c, np, nl));
    let args = guest!(memory::read(c, ap, al));
    let Some(f) = c.data().settings.foreign.get(&name).cloned() else {
        return Ok(Status::NotFound);
    };
    let out = f(&args);
    memory::copy_out(c, &out, rp, rs)
}
