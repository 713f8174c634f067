//! Shared queues: register, resolve, enqueue, dequeue; an enqueue schedules
//! `proxy_on_queue_ready` on the worker that registered the queue.

use wasmtime::{Caller, Linker, Result};

use super::wrap;
use crate::abi::Status;
use crate::memory::{self, guest};
use crate::state::{HostState, Queue};

/// Adds this area's functions.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    wrap!(linker, "proxy_register_shared_queue", register, (np: u32, nl: u32, ret: u32));
    wrap!(linker, "proxy_resolve_shared_queue", resolve, (vp: u32, vl: u32, np: u32, nl: u32, ret: u32));
    wrap!(linker, "proxy_enqueue_shared_queue", enqueue, (id: u32, vp: u32, vl: u32));
    wrap!(linker, "proxy_dequeue_shared_queue", dequeue, (id: u32, rp: u32, rs: u32));
    Ok(())
}

fn register(c: &mut Caller<'_, HostState>, np: u32, nl: u32, ret: u32) -> Result<Status> {
    let name = guest!(memory::read_string(c, np, nl));
    guest!(memory::check(c, ret, 4));
    let s = c.data();
    let vm_id = s.settings.vm_id.clone();
    let owner = (s.settings.worker, s.effective);
    let id = {
        let mut sh = s.shared.lock();
        match sh
            .queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
        {
            Some(i) => {
                sh.queues[i].owner = owner;
                i as u32 + 1
            }
            None => {
                sh.queues.push(Queue {
                    vm_id,
                    name,
                    owner,
                    items: Default::default(),
                });
                sh.queues.len() as u32
            }
        }
    };
    guest!(memory::write_u32(c, ret, id));
    Ok(Status::Ok)
}

fn resolve(
    c: &mut Caller<'_, HostState>,
    vp: u32,
    vl: u32,
    np: u32,
    nl: u32,
    ret: u32,
) -> Result<Status> {
    let vm_id = guest!(memory::read_string(c, vp, vl));
    let name = guest!(memory::read_string(c, np, nl));
    guest!(memory::check(c, ret, 4));
    let found = c
        .data()
        .shared
        .lock()
        .queues
        .iter()
        .position(|q| q.vm_id == vm_id && q.name == name);
    let Some(i) = found else {
        return Ok(Status::NotFound);
    };
    guest!(memory::write_u32(c, ret, i as u32 + 1));
    Ok(Status::Ok)
}

fn enqueue(c: &mut Caller<'_, HostState>, id: u32, vp: u32, vl: u32) -> Result<Status> {
    let value = guest!(memory::read(c, vp, vl));
    let mut sh = c.data().shared.lock();
    let Some(q) = (id as usize)
        .checked_sub(1)
        .and_then(|i| sh.queues.get_mut(i))
    else {
        return Ok(Status::NotFound);
    };
    q.items.push_back(value);
    let (worker, context) = q.owner;
    sh.ready.push_back((worker, context, id));
    Ok(Status::Ok)
}

fn dequeue(c: &mut Caller<'_, HostState>, id: u32, rp: u32, rs: u32) -> Result<Status> {
    guest!(memory::check(c, rp, 4));
    guest!(memory::check(c, rs, 4));
    let item = {
        let mut sh = c.data().shared.lock();
        let Some(q) = (id as usize)
            .checked_sub(1)
            .and_then(|i| sh.queues.get_mut(i))
        else {
            return Ok(Status::NotFound);
        };
        match q.items.pop_front() {
            Some(v) => v,
            None => return Ok(Status::Empty),
        }
    };
    memory::copy_out(c, &item, rp, rs)
}
