//! The WASI preview1 subset proxy-wasm modules import: stdout and stderr go to the log,
//! clocks, randomness, an environment given by the caller, empty arguments. File descriptors
//! other than 1 and 2 answer BADF; any other WASI import is given an ENOSYS stub when the
//! module is loaded (see `host.rs`).

use wasmtime::{Caller, Linker, Result};

use crate::abi::LogLevel;
use crate::memory;
use crate::state::HostState;

/// WASI errno values.
pub mod errno {
    /// No error.
    pub const SUCCESS: u32 = 0;
    /// Bad file descriptor.
    pub const BADF: u32 = 8;
    /// Bad address.
    pub const FAULT: u32 = 21;
    /// Invalid argument.
    pub const INVAL: u32 = 28;
    /// Function not supported.
    pub const NOSYS: u32 = 52;
    /// Not supported.
    pub const NOTSUP: u32 = 58;
}

const MODULE: &str = "wasi_snapshot_preview1";

/// Registers a function that only answers `errno`, counting its calls like the others.
macro_rules! answer {
    ($linker:expr, $name:literal, $errno:expr, ($($t:ty),*)) => {
        $linker.func_wrap(MODULE, $name, |mut c: Caller<'_, HostState>, $(_: $t),*| {
            c.data_mut().count($name);
            $errno
        })?
    };
}

/// Adds this area's functions.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut c: Caller<'_, HostState>, fd: u32, iov: u32, n: u32, ret: u32| {
            c.data_mut().count("fd_write");
            fd_write(&mut c, fd, iov, n, ret)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut c: Caller<'_, HostState>, id: u32, _precision: u64, ret: u32| {
            c.data_mut().count("clock_time_get");
            if id > 3 {
                return errno::INVAL;
            }
            let now = c.data().now();
            fault(memory::write_u64(&mut c, ret, now))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_res_get",
        |mut c: Caller<'_, HostState>, id: u32, ret: u32| {
            c.data_mut().count("clock_res_get");
            if id > 3 {
                return errno::INVAL;
            }
            fault(memory::write_u64(&mut c, ret, 1))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "random_get",
        |mut c: Caller<'_, HostState>, ptr: u32, len: u32| {
            c.data_mut().count("random_get");
            // Envoy refuses more than 64 KiB at once.
            if len > 65536 {
                return errno::INVAL;
            }
            if memory::check(&mut c, ptr, len).is_err() {
                return errno::FAULT;
            }
            let mut buf = vec![0; len as usize];
            c.data_mut().random(&mut buf);
            fault(memory::write(&mut c, ptr, &buf))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "environ_sizes_get",
        |mut c: Caller<'_, HostState>, rn: u32, rs: u32| {
            c.data_mut().count("environ_sizes_get");
            let env = &c.data().settings.env;
            let n = env.len() as u32;
            let size: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            if memory::check(&mut c, rs, 4).is_err() {
                return errno::FAULT;
            }
            let w = memory::write_u32(&mut c, rn, n);
            if w.is_err() {
                return errno::FAULT;
            }
            fault(memory::write_u32(&mut c, rs, size as u32))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "environ_get",
        |mut c: Caller<'_, HostState>, array: u32, buf: u32| {
            c.data_mut().count("environ_get");
            environ_get(&mut c, array, buf)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "args_sizes_get",
        |mut c: Caller<'_, HostState>, rn: u32, rs: u32| {
            c.data_mut().count("args_sizes_get");
            if memory::check(&mut c, rs, 4).is_err() || memory::write_u32(&mut c, rn, 0).is_err() {
                return errno::FAULT;
            }
            fault(memory::write_u32(&mut c, rs, 0))
        },
    )?;
    answer!(linker, "args_get", errno::SUCCESS, (u32, u32));
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |mut c: Caller<'_, HostState>, code: u32| -> Result<()> {
            c.data_mut().count("proc_exit");
            c.data_mut().exit_code = Some(code);
            Err(wasmtime::Error::msg(format!(
                "plugin called proc_exit({code})"
            )))
        },
    )?;
    // Stubs: counted like the rest, so a module that calls one shows it.
    answer!(linker, "sched_yield", errno::SUCCESS, ());
    answer!(linker, "fd_close", errno::BADF, (u32));
    answer!(linker, "fd_sync", errno::BADF, (u32));
    answer!(linker, "fd_datasync", errno::BADF, (u32));
    answer!(linker, "fd_fdstat_get", errno::BADF, (u32, u32));
    answer!(linker, "fd_prestat_get", errno::BADF, (u32, u32));
    answer!(linker, "fd_prestat_dir_name", errno::BADF, (u32, u32, u32));
    answer!(linker, "fd_read", errno::BADF, (u32, u32, u32, u32));
    answer!(linker, "fd_seek", errno::BADF, (u32, i64, u32, u32));
    Ok(())
}

fn fault<T, E>(r: std::result::Result<T, E>) -> u32 {
    if r.is_ok() {
        errno::SUCCESS
    } else {
        errno::FAULT
    }
}

fn fd_write(c: &mut Caller<'_, HostState>, fd: u32, iov: u32, n: u32, ret: u32) -> u32 {
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return errno::BADF,
    };
    let Some(iovs_len) = n.checked_mul(8) else {
        return errno::FAULT;
    };
    let Ok(iovs) = memory::read(c, iov, iovs_len) else {
        return errno::FAULT;
    };
    let mut text = Vec::new();
    for v in iovs.chunks_exact(8) {
        let ptr = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        let len = u32::from_le_bytes([v[4], v[5], v[6], v[7]]);
        match memory::read(c, ptr, len) {
            Ok(b) => text.extend(b),
            Err(_) => return errno::FAULT,
        }
    }
    if memory::write_u32(c, ret, text.len() as u32).is_err() {
        return errno::FAULT;
    }
    let msg = String::from_utf8_lossy(&text);
    let msg = msg.trim_end_matches('\n');
    if !msg.is_empty() {
        c.data_mut().log(level, msg.to_string());
    }
    errno::SUCCESS
}

fn environ_get(c: &mut Caller<'_, HostState>, array: u32, buf: u32) -> u32 {
    let env = c.data().settings.env.clone();
    let mut at = buf;
    for (i, (k, v)) in env.iter().enumerate() {
        let entry = format!("{k}={v}\0");
        let Some(slot) = (i as u32).checked_mul(4).and_then(|o| array.checked_add(o)) else {
            return errno::FAULT;
        };
        if memory::write_u32(c, slot, at).is_err()
            || memory::write(c, at, entry.as_bytes()).is_err()
        {
            return errno::FAULT;
        }
        at = at.wrapping_add(entry.len() as u32);
    }
    errno::SUCCESS
}
