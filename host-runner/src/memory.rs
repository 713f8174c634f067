//! Bounds-checked access to a guest's linear memory: every pointer and length a guest passes
//! goes through here, and a bad one becomes INVALID_MEMORY_ACCESS for the guest, never a host
//! panic.

use wasmtime::{Caller, Result};

use crate::abi::Status;
use crate::state::HostState;

/// Returns the status from the enclosing host function when a guest argument is bad.
macro_rules! guest {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(status) => return Ok(status),
        }
    };
}
pub(crate) use guest;

fn range(ptr: u32, len: u32, size: usize) -> Option<std::ops::Range<usize>> {
    let start = ptr as usize;
    let end = start.checked_add(len as usize)?;
    (end <= size).then_some(start..end)
}

/// Copies `len` bytes at `ptr` out of the guest.
pub(crate) fn read(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    len: u32,
) -> Result<Vec<u8>, Status> {
    let mem = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let data = mem.data(&*caller);
    let r = range(ptr, len, data.len()).ok_or(Status::InvalidMemoryAccess)?;
    Ok(data[r].to_vec())
}

/// Reads a string (lossily: header names and values from the guest need not be UTF-8).
pub(crate) fn read_string(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    len: u32,
) -> Result<String, Status> {
    read(caller, ptr, len).map(|b| match String::from_utf8(b) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Writes `bytes` at `ptr`.
pub(crate) fn write(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    bytes: &[u8],
) -> Result<(), Status> {
    let mem = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let len = u32::try_from(bytes.len()).map_err(|_| Status::InvalidMemoryAccess)?;
    let data = mem.data_mut(&mut *caller);
    let r = range(ptr, len, data.len()).ok_or(Status::InvalidMemoryAccess)?;
    data[r].copy_from_slice(bytes);
    Ok(())
}

/// Writes a little-endian u32.
pub(crate) fn write_u32(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    v: u32,
) -> Result<(), Status> {
    write(caller, ptr, &v.to_le_bytes())
}

/// Writes a little-endian u64.
pub(crate) fn write_u64(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    v: u64,
) -> Result<(), Status> {
    write(caller, ptr, &v.to_le_bytes())
}

/// True when `len` bytes at `ptr` are inside the guest's memory.
pub(crate) fn check(caller: &mut Caller<'_, HostState>, ptr: u32, len: u32) -> Result<(), Status> {
    let mem = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let size = mem.data_size(&*caller);
    range(ptr, len, size)
        .map(|_| ())
        .ok_or(Status::InvalidMemoryAccess)
}

/// Hands `bytes` to the guest as the ABI does: memory from the guest's own allocator, its
/// address written at `ret_ptr` and its size at `ret_size`. Empty values are returned as a null
/// pointer and size zero, as Envoy does. A trap inside the guest's allocator is a trap.
pub(crate) fn copy_out(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ret_ptr: u32,
    ret_size: u32,
) -> Result<Status> {
    guest!(check(caller, ret_ptr, 4));
    guest!(check(caller, ret_size, 4));
    let Ok(len) = u32::try_from(bytes.len()) else {
        return Ok(Status::InternalFailure);
    };
    let mut ptr = 0;
    if len > 0 {
        let Some(alloc) = caller.data().alloc.clone() else {
            return Ok(Status::InternalFailure);
        };
        ptr = alloc.call(&mut *caller, len)?;
        if ptr == 0 {
            return Ok(Status::InternalFailure);
        }
        guest!(write(caller, ptr, bytes));
    }
    guest!(write_u32(caller, ret_ptr, ptr));
    guest!(write_u32(caller, ret_size, len));
    Ok(Status::Ok)
}
