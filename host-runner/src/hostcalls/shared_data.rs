//! Shared data: a key-value store shared by the workers of a plugin, with compare-and-swap.

use wasmtime::{Caller, Linker, Result};

use super::wrap;
use crate::abi::Status;
use crate::memory::{self, guest};
use crate::state::HostState;

/// Adds this area's functions.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    wrap!(linker, "proxy_get_shared_data", get, (kp: u32, kl: u32, rp: u32, rs: u32, rc: u32));
    wrap!(linker, "proxy_set_shared_data", set, (kp: u32, kl: u32, vp: u32, vl: u32, cas: u32));
    Ok(())
}

fn get(
    c: &mut Caller<'_, HostState>,
    kp: u32,
    kl: u32,
    rp: u32,
    rs: u32,
    rc: u32,
) -> Result<Status> {
    let key = guest!(memory::read_string(c, kp, kl));
    guest!(memory::check(c, rc, 4));
    let Some((value, cas)) = c.data().shared.shared_data(&key) else {
        return Ok(Status::NotFound);
    };
    let st = memory::copy_out(c, &value, rp, rs)?;
    if st != Status::Ok {
        return Ok(st);
    }
    guest!(memory::write_u32(c, rc, cas));
    Ok(Status::Ok)
}

fn set(
    c: &mut Caller<'_, HostState>,
    kp: u32,
    kl: u32,
    vp: u32,
    vl: u32,
    cas: u32,
) -> Result<Status> {
    let key = guest!(memory::read_string(c, kp, kl));
    let value = guest!(memory::read(c, vp, vl));
    let mut sh = c.data().shared.lock();
    if cas != 0
        && let Some((_, current)) = sh.data.get(&key)
        && *current != cas
    {
        return Ok(Status::CasMismatch);
    }
    sh.next_cas = sh.next_cas.wrapping_add(1).max(1);
    let next = sh.next_cas;
    sh.data.insert(key, (value, next));
    Ok(Status::Ok)
}
