//! Callouts: `proxy_http_call`, the gRPC calls and streams, and `proxy_get_status`. Callouts are
//! recorded in the store; the driver (a test, a scenario) answers them.

use wasmtime::{Caller, Linker, Result};

use super::wrap;
use crate::abi::{Pairs, Status, deserialize_pairs};
use crate::memory::{self, guest};
use crate::state::{GrpcCall, HostState, HttpCall};

/// Adds this area's functions.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    wrap!(linker, "proxy_http_call", http_call,
        (up: u32, ul: u32, hp: u32, hl: u32, bp: u32, bl: u32, tp: u32, tl: u32, timeout: u32, ret: u32));
    wrap!(linker, "proxy_grpc_call", grpc_call,
        (up: u32, ul: u32, sp: u32, sl: u32, mp: u32, ml: u32, ip: u32, il: u32, gp: u32, gl: u32, timeout: u32, ret: u32));
    wrap!(linker, "proxy_grpc_stream", grpc_stream,
        (up: u32, ul: u32, sp: u32, sl: u32, mp: u32, ml: u32, ip: u32, il: u32, ret: u32));
    wrap!(linker, "proxy_grpc_send", grpc_send, (token: u32, p: u32, l: u32, end: u32));
    wrap!(linker, "proxy_grpc_cancel", grpc_cancel, (token: u32));
    wrap!(linker, "proxy_grpc_close", grpc_close, (token: u32));
    wrap!(linker, "proxy_get_status", get_status, (rc: u32, rp: u32, rs: u32));
    Ok(())
}

fn pairs(c: &mut Caller<'_, HostState>, p: u32, l: u32) -> Result<Pairs, Status> {
    let bytes = memory::read(c, p, l)?;
    deserialize_pairs(&bytes).ok_or(Status::BadArgument)
}

fn known_cluster(s: &HostState, name: &str) -> bool {
    s.settings
        .clusters
        .as_ref()
        .is_none_or(|c| c.contains(name))
}

#[allow(clippy::too_many_arguments)]
fn http_call(
    c: &mut Caller<'_, HostState>,
    up: u32,
    ul: u32,
    hp: u32,
    hl: u32,
    bp: u32,
    bl: u32,
    tp: u32,
    tl: u32,
    timeout: u32,
    ret: u32,
) -> Result<Status> {
    let upstream = guest!(memory::read_string(c, up, ul));
    let headers = guest!(pairs(c, hp, hl));
    let body = guest!(memory::read(c, bp, bl));
    let trailers = guest!(pairs(c, tp, tl));
    guest!(memory::check(c, ret, 4));
    let has = |n: &str| headers.iter().any(|(k, v)| k == n && !v.is_empty());
    if !known_cluster(c.data(), &upstream) || !has(":method") || !has(":path") || !has(":authority")
    {
        return Ok(Status::BadArgument);
    }
    let s = c.data_mut();
    let token = s.token();
    let call = HttpCall {
        token,
        context: s.effective,
        upstream,
        headers,
        body,
        trailers,
        timeout_ms: timeout,
        at_ns: s.now(),
        answered: false,
    };
    s.http_calls.push(call);
    guest!(memory::write_u32(c, ret, token));
    Ok(Status::Ok)
}

#[allow(clippy::too_many_arguments)]
fn open_grpc(
    c: &mut Caller<'_, HostState>,
    (up, ul): (u32, u32),
    (sp, sl): (u32, u32),
    (mp, ml): (u32, u32),
    (ip, il): (u32, u32),
    message: Option<(u32, u32)>,
    timeout: u32,
    ret: u32,
) -> Result<Status> {
    let upstream = guest!(memory::read_string(c, up, ul));
    let service = guest!(memory::read_string(c, sp, sl));
    let method = guest!(memory::read_string(c, mp, ml));
    let metadata = guest!(pairs(c, ip, il));
    let messages = match message {
        Some((gp, gl)) => vec![guest!(memory::read(c, gp, gl))],
        None => Vec::new(),
    };
    guest!(memory::check(c, ret, 4));
    if !known_cluster(c.data(), &upstream) {
        return Ok(Status::ParseFailure);
    }
    let s = c.data_mut();
    let token = s.token();
    let call = GrpcCall {
        token,
        context: s.effective,
        upstream,
        service,
        method,
        metadata,
        streaming: message.is_none(),
        messages,
        timeout_ms: timeout,
        local_closed: false,
        finished: false,
    };
    s.grpc_calls.push(call);
    guest!(memory::write_u32(c, ret, token));
    Ok(Status::Ok)
}

#[allow(clippy::too_many_arguments)]
fn grpc_call(
    c: &mut Caller<'_, HostState>,
    up: u32,
    ul: u32,
    sp: u32,
    sl: u32,
    mp: u32,
    ml: u32,
    ip: u32,
    il: u32,
    gp: u32,
    gl: u32,
    timeout: u32,
    ret: u32,
) -> Result<Status> {
    open_grpc(
        c,
        (up, ul),
        (sp, sl),
        (mp, ml),
        (ip, il),
        Some((gp, gl)),
        timeout,
        ret,
    )
}

#[allow(clippy::too_many_arguments)]
fn grpc_stream(
    c: &mut Caller<'_, HostState>,
    up: u32,
    ul: u32,
    sp: u32,
    sl: u32,
    mp: u32,
    ml: u32,
    ip: u32,
    il: u32,
    ret: u32,
) -> Result<Status> {
    open_grpc(c, (up, ul), (sp, sl), (mp, ml), (ip, il), None, 0, ret)
}

fn grpc_send(
    c: &mut Caller<'_, HostState>,
    token: u32,
    p: u32,
    l: u32,
    end: u32,
) -> Result<Status> {
    let message = guest!(memory::read(c, p, l));
    let Some(call) = c
        .data_mut()
        .grpc_calls
        .iter_mut()
        .find(|g| g.token == token)
    else {
        return Ok(Status::NotFound);
    };
    if !call.streaming || call.local_closed || call.finished {
        return Ok(Status::BadArgument);
    }
    call.messages.push(message);
    call.local_closed = end != 0;
    Ok(Status::Ok)
}

fn finish_grpc(c: &mut Caller<'_, HostState>, token: u32) -> Result<Status> {
    let Some(call) = c
        .data_mut()
        .grpc_calls
        .iter_mut()
        .find(|g| g.token == token)
    else {
        return Ok(Status::NotFound);
    };
    if call.finished {
        return Ok(Status::NotFound);
    }
    call.finished = true;
    Ok(Status::Ok)
}

fn grpc_cancel(c: &mut Caller<'_, HostState>, token: u32) -> Result<Status> {
    finish_grpc(c, token)
}

fn grpc_close(c: &mut Caller<'_, HostState>, token: u32) -> Result<Status> {
    finish_grpc(c, token)
}

fn get_status(c: &mut Caller<'_, HostState>, rc: u32, rp: u32, rs: u32) -> Result<Status> {
    let (code, message) = c.data().status.clone();
    guest!(memory::check(c, rc, 4));
    let st = memory::copy_out(c, &message, rp, rs)?;
    if st != Status::Ok {
        return Ok(st);
    }
    guest!(memory::write_u32(c, rc, code));
    Ok(Status::Ok)
}
