//! The fuzz driver for the ABI surface, shared by the seeded test (`tests/fuzz.rs`) and the
//! coverage-guided cargo-fuzz target (`fuzz/fuzz_targets/abi_surface.rs`): bytes become a
//! [`Program`] (host events, and tapes of host calls with random arguments that the guest runs
//! inside whatever callbacks those events cause), [`run`] plays it and checks that the host
//! never panics or traps, answers only statuses the spec defines, and never answers `OK` to a
//! call given a pointer outside the guest's memory.
//!
//! One guest module, compiled once, runs every program: each of its callbacks fetches the next
//! tape through the foreign function `TAPE`, interprets it (an op byte and the raw argument
//! words of one host function per call), and hands the statuses back through the foreign
//! function `STATUS`. The tape and the statuses live below `PUBLIC`, where no generated pointer
//! points, so random calls cannot disturb the interpreter.

// The test and the fuzz target use different parts of this file.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use shadowplane_host_runner::{Compiled, Error, GrpcEvent, Harness, HeaderMap, Host, HostConfig};

/// The guest's memory: 4 pages, never grown.
pub const MEM: u64 = 4 * 65_536;
/// The lowest address a generated pointer takes; below it are the interpreter's tape,
/// statuses and names.
const PUBLIC: u32 = 16_384;
const RET_SLOT: u32 = 1_000;
const STATUS_AT: u32 = 2_048;
const NAME_TAPE_AT: u32 = 1_024;
const NAME_STATUS_AT: u32 = 1_088;
const TAPE_AT: u32 = 8_192;
const TAPE_MAX: u32 = 8_192;
const STRINGS_AT: u32 = PUBLIC;
const SLOTS_AT: u32 = 20_480;
const HEAP_AT: u32 = 32_768;
const MAX_CALLS: usize = 24;
const MAX_TAPES: usize = 48;
const MAX_EVENTS: usize = 48;

/// The foreign function that hands the guest its next tape.
pub const TAPE: &str = "host-runner-fuzz-tape-6b1d";
/// The foreign function the guest reports statuses to.
pub const STATUS: &str = "host-runner-fuzz-status-6b1d";

/// How an argument is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Any i32.
    Int,
    /// Any i64.
    I64,
    /// A pointer and a length the host reads (or, for `random_get`, writes).
    Str,
    /// A pointer the host writes 4 or 8 bytes to.
    Ret,
}

use Kind::{I64, Int, Ret, Str};

/// Every host function the tapes call: module, name, arguments. `proc_exit` is left out (it
/// traps by design), and so are `environ_get`/`args_get` (with nothing to write they answer
/// success whatever their pointers).
const FUNCS: &[(&str, &str, &[Kind])] = &[
    ("env", "proxy_log", &[Int, Str]),
    ("env", "proxy_get_log_level", &[Ret]),
    ("env", "proxy_get_current_time_nanoseconds", &[Ret]),
    ("env", "proxy_set_tick_period_milliseconds", &[Int]),
    ("env", "proxy_get_header_map_size", &[Int, Ret]),
    ("env", "proxy_get_header_map_pairs", &[Int, Ret, Ret]),
    ("env", "proxy_set_header_map_pairs", &[Int, Str]),
    ("env", "proxy_get_header_map_value", &[Int, Str, Ret, Ret]),
    ("env", "proxy_add_header_map_value", &[Int, Str, Str]),
    ("env", "proxy_replace_header_map_value", &[Int, Str, Str]),
    ("env", "proxy_remove_header_map_value", &[Int, Str]),
    ("env", "proxy_get_buffer_bytes", &[Int, Int, Int, Ret, Ret]),
    ("env", "proxy_set_buffer_bytes", &[Int, Int, Int, Str]),
    ("env", "proxy_get_buffer_status", &[Int, Ret, Ret]),
    ("env", "proxy_get_property", &[Str, Ret, Ret]),
    ("env", "proxy_set_property", &[Str, Str]),
    ("env", "proxy_http_call", &[Str, Str, Str, Str, Int, Ret]),
    (
        "env",
        "proxy_grpc_call",
        &[Str, Str, Str, Str, Str, Int, Ret],
    ),
    ("env", "proxy_grpc_stream", &[Str, Str, Str, Str, Ret]),
    ("env", "proxy_grpc_send", &[Int, Str, Int]),
    ("env", "proxy_grpc_cancel", &[Int]),
    ("env", "proxy_grpc_close", &[Int]),
    ("env", "proxy_get_status", &[Ret, Ret, Ret]),
    ("env", "proxy_define_metric", &[Int, Str, Ret]),
    ("env", "proxy_increment_metric", &[Int, I64]),
    ("env", "proxy_record_metric", &[Int, I64]),
    ("env", "proxy_get_metric", &[Int, Ret]),
    ("env", "proxy_get_shared_data", &[Str, Ret, Ret, Ret]),
    ("env", "proxy_set_shared_data", &[Str, Str, Int]),
    ("env", "proxy_register_shared_queue", &[Str, Ret]),
    ("env", "proxy_resolve_shared_queue", &[Str, Str, Ret]),
    ("env", "proxy_enqueue_shared_queue", &[Int, Str]),
    ("env", "proxy_dequeue_shared_queue", &[Int, Ret, Ret]),
    ("env", "proxy_continue_stream", &[Int]),
    ("env", "proxy_close_stream", &[Int]),
    (
        "env",
        "proxy_send_local_response",
        &[Int, Str, Str, Str, Int],
    ),
    ("env", "proxy_set_effective_context", &[Int]),
    ("env", "proxy_done", &[]),
    ("env", "proxy_call_foreign_function", &[Str, Str, Ret, Ret]),
    ("wasi_snapshot_preview1", "fd_write", &[Int, Int, Int, Ret]),
    ("wasi_snapshot_preview1", "clock_time_get", &[Int, I64, Ret]),
    ("wasi_snapshot_preview1", "clock_res_get", &[Int, Ret]),
    ("wasi_snapshot_preview1", "random_get", &[Str]),
    ("wasi_snapshot_preview1", "environ_sizes_get", &[Ret, Ret]),
    ("wasi_snapshot_preview1", "args_sizes_get", &[Ret, Ret]),
    ("wasi_snapshot_preview1", "sched_yield", &[]),
];

/// Statuses proxy-wasm v0.2.1 defines.
const PROXY_STATUSES: &[u32] = &[0, 1, 2, 3, 4, 6, 7, 8, 10, 12];
/// The WASI errnos the host answers with: SUCCESS, BADF, FAULT, INVAL, NOSYS.
const WASI_ERRNOS: &[u32] = &[0, 8, 21, 28, 52];

/// Strings placed at `STRINGS_AT`, which `Str` arguments often point at.
fn strings() -> Vec<Vec<u8>> {
    let map = |pairs: &[(&str, &str)]| -> Vec<u8> {
        shadowplane_host_runner::abi::serialize_pairs(pairs.iter().copied())
    };
    vec![
        b":path".to_vec(),
        b":method".to_vec(),
        b":status".to_vec(),
        b"x-a".to_vec(),
        b"collector".to_vec(),
        b"echo".to_vec(),
        b"k".to_vec(),
        b"q".to_vec(),
        b"".to_vec(),
        b"plugin_name\0".to_vec(),
        b"request\0path\0".to_vec(),
        b"node\0id\0".to_vec(),
        b"response\0code\0".to_vec(),
        map(&[(":method", "GET"), (":path", "/"), (":authority", "a")]),
        map(&[]),
        map(&[("x-a", "1"), ("x-a", "2")]),
        // A map that claims far more entries than it holds.
        vec![0xff, 0xff, 0xff, 0x7f, 1, 0, 0, 0],
        b"hello".to_vec(),
    ]
}

/// Where each of `strings()` is placed.
fn string_table() -> &'static [(u32, u32)] {
    static T: OnceLock<Vec<(u32, u32)>> = OnceLock::new();
    T.get_or_init(|| {
        let mut at = STRINGS_AT;
        strings()
            .iter()
            .map(|s| {
                let entry = (at, s.len() as u32);
                at += s.len() as u32 + 8;
                entry
            })
            .collect()
    })
}

/// One host call of a tape: which function and its argument words, already encoded.
#[derive(Debug, Clone)]
pub struct Call {
    op: usize,
    words: Vec<u8>,
    /// Some pointer argument is outside memory: the call must not answer OK.
    oob: bool,
}

impl<'a> Arbitrary<'a> for Call {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let op = u.choose_index(FUNCS.len())?;
        let mut words = Vec::new();
        let mut oob = false;
        for kind in FUNCS[op].2 {
            match kind {
                Int => {
                    let v: i32 = match u.int_in_range(0..=7)? {
                        0 => 0,
                        1 => 1,
                        2 => 2,
                        3 | 4 => u.int_in_range(0..=16)?,
                        5 => -1,
                        _ => u.arbitrary()?,
                    };
                    words.extend(v.to_le_bytes());
                }
                I64 => {
                    let v: i64 = match u.int_in_range(0..=3)? {
                        0 => 0,
                        1 => u.int_in_range(-3..=100)?,
                        2 => -1,
                        _ => u.arbitrary()?,
                    };
                    words.extend(v.to_le_bytes());
                }
                Str => {
                    let (ptr, len) = match u.int_in_range(0..=5)? {
                        0..=2 => {
                            let t = string_table();
                            t[u.choose_index(t.len())?]
                        }
                        3 => {
                            let ptr = u.int_in_range(PUBLIC..=(MEM as u32 - 1))?;
                            let room = MEM as u32 - ptr;
                            let len = if u.ratio(1, 8)? {
                                u.int_in_range(0..=room)?
                            } else {
                                u.int_in_range(0..=room.min(64))?
                            };
                            (ptr, len)
                        }
                        4 => {
                            let back = u.int_in_range(0..=16u32)?;
                            (MEM as u32 - back, back + u.int_in_range(1..=64u32)?)
                        }
                        _ => match u.int_in_range(0..=2)? {
                            0 => (u.int_in_range(MEM as u32..=u32::MAX)?, u.arbitrary()?),
                            1 => (u.int_in_range(PUBLIC..=(MEM as u32 - 1))?, u32::MAX),
                            _ => (u32::MAX, 1),
                        },
                    };
                    oob |= u64::from(ptr) + u64::from(len) > MEM;
                    words.extend(ptr.to_le_bytes());
                    words.extend(len.to_le_bytes());
                }
                Ret => {
                    let ptr = match u.int_in_range(0..=5)? {
                        0..=3 => SLOTS_AT + 8 * u.int_in_range(0..=31u32)?,
                        4 => u.int_in_range(PUBLIC..=(MEM as u32 - 8))?,
                        _ => match u.int_in_range(0..=1)? {
                            0 => MEM as u32 - 3 + u.int_in_range(0..=2u32)?,
                            _ => u.int_in_range(MEM as u32..=u32::MAX)?,
                        },
                    };
                    oob |= u64::from(ptr) + 4 > MEM;
                    words.extend(ptr.to_le_bytes());
                }
            }
        }
        Ok(Call { op, words, oob })
    }
}

/// What one callback does: the value it returns (an action, or for `proxy_on_vm_start`,
/// `proxy_on_configure` and `proxy_on_done` 1 for false) and the host calls it makes.
#[derive(Debug, Clone)]
pub struct Tape {
    ret: u8,
    calls: Vec<Call>,
}

impl<'a> Arbitrary<'a> for Tape {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let ret = match u.int_in_range(0..=9)? {
            0..=5 => 0,
            6..=8 => 1,
            _ => u.arbitrary()?,
        };
        let n = u.int_in_range(0..=MAX_CALLS)?;
        let calls = (0..n)
            .map(|_| Call::arbitrary(u))
            .collect::<arbitrary::Result<_>>()?;
        Ok(Tape { ret, calls })
    }
}

/// A header name or value: mostly from a small vocabulary, sometimes any short text.
#[derive(Debug, Clone)]
pub struct Word(String);

impl<'a> Arbitrary<'a> for Word {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        const WORDS: &[&str] = &[
            ":path",
            ":method",
            ":authority",
            ":status",
            "x-a",
            "content-type",
            "GET",
            "/",
            "200",
            "",
        ];
        if u.ratio(3, 4)? {
            Ok(Word(WORDS[u.choose_index(WORDS.len())?].to_string()))
        } else {
            let s: String = u.arbitrary()?;
            Ok(Word(s.chars().take(12).collect()))
        }
    }
}

fn pairs(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<(Word, Word)>> {
    let n = u.int_in_range(0..=4)?;
    (0..n)
        .map(|_| Ok((u.arbitrary()?, u.arbitrary()?)))
        .collect()
}

fn chunk(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let n = u.int_in_range(0..=32)?;
    (0..n).map(|_| u.arbitrary()).collect()
}

/// One thing the host does to the plugin.
#[derive(Debug, Clone)]
pub enum Event {
    NewStream,
    Select(u32),
    RequestHeaders(Vec<(Word, Word)>, bool),
    RequestBody(Vec<u8>, bool),
    RequestTrailers(Vec<(Word, Word)>),
    ResponseHeaders(Vec<(Word, Word)>, bool),
    ResponseBody(Vec<u8>, bool),
    ResponseTrailers(Vec<(Word, Word)>),
    EndStream,
    Tick(u16),
    RespondHttp(u8, u16, Vec<(Word, Word)>, Vec<u8>),
    FailHttp(u8),
    RespondGrpc(u8, Vec<GrpcStep>),
    CallForeign(u32, Vec<u8>),
    NewConnection,
    Downstream(Vec<u8>, bool),
    Upstream(Vec<u8>, bool),
    ConnectionClosed(bool, u32),
    DeliverQueued,
    Reconfigure(Vec<u8>),
}

/// One gRPC event of a reply.
#[derive(Debug, Clone)]
pub enum GrpcStep {
    Initial(Vec<(Word, Word)>),
    Message(Vec<u8>),
    Trailing(Vec<(Word, Word)>),
    Close(u32),
}

impl<'a> Arbitrary<'a> for Event {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0..=19)? {
            0 => Event::NewStream,
            1 => Event::Select(u.int_in_range(0..=8)?),
            2 => Event::RequestHeaders(pairs(u)?, u.arbitrary()?),
            3 => Event::RequestBody(chunk(u)?, u.arbitrary()?),
            4 => Event::RequestTrailers(pairs(u)?),
            5 => Event::ResponseHeaders(pairs(u)?, u.arbitrary()?),
            6 => Event::ResponseBody(chunk(u)?, u.arbitrary()?),
            7 => Event::ResponseTrailers(pairs(u)?),
            8 => Event::EndStream,
            9 => Event::Tick(u.arbitrary()?),
            10 => Event::RespondHttp(u.arbitrary()?, u.arbitrary()?, pairs(u)?, chunk(u)?),
            11 => Event::FailHttp(u.arbitrary()?),
            12 => {
                let n = u.int_in_range(0..=4)?;
                let steps = (0..n)
                    .map(|_| {
                        Ok(match u.int_in_range(0..=3)? {
                            0 => GrpcStep::Initial(pairs(u)?),
                            1 => GrpcStep::Message(chunk(u)?),
                            2 => GrpcStep::Trailing(pairs(u)?),
                            _ => GrpcStep::Close(u.int_in_range(0..=16)?),
                        })
                    })
                    .collect::<arbitrary::Result<_>>()?;
                Event::RespondGrpc(u.arbitrary()?, steps)
            }
            13 => Event::CallForeign(u.int_in_range(0..=4)?, chunk(u)?),
            14 => Event::NewConnection,
            15 => Event::Downstream(chunk(u)?, u.arbitrary()?),
            16 => Event::Upstream(chunk(u)?, u.arbitrary()?),
            17 => Event::ConnectionClosed(u.arbitrary()?, u.int_in_range(0..=3)?),
            18 => Event::DeliverQueued,
            _ => Event::Reconfigure(chunk(u)?),
        })
    }
}

/// A whole fuzz case.
#[derive(Debug, Clone)]
pub struct Program {
    tapes: Vec<Tape>,
    events: Vec<Event>,
}

impl<'a> Arbitrary<'a> for Program {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let n = u.int_in_range(0..=MAX_TAPES)?;
        let tapes = (0..n)
            .map(|_| Tape::arbitrary(u))
            .collect::<arbitrary::Result<_>>()?;
        let n = u.int_in_range(0..=MAX_EVENTS)?;
        let events = (0..n)
            .map(|_| Event::arbitrary(u))
            .collect::<arbitrary::Result<_>>()?;
        Ok(Program { tapes, events })
    }
}

impl Program {
    /// Decodes bytes the way the fuzz target does (too few bytes give a shorter program).
    pub fn from_bytes(bytes: &[u8]) -> arbitrary::Result<Self> {
        Program::arbitrary_take_rest(Unstructured::new(bytes))
    }
}

/// What a run did, so a test can check that the programs reach the outcomes that matter.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Host calls the guest made from tapes.
    pub calls: usize,
    /// Those answered OK (or WASI SUCCESS).
    pub ok: usize,
    /// Those given an out-of-bounds pointer.
    pub oob: usize,
    /// Those answered INVALID_MEMORY_ACCESS (or WASI FAULT).
    pub invalid_memory_access: usize,
    /// Events the harness accepted.
    pub events_ok: usize,
}

impl Stats {
    /// Adds another run's figures.
    pub fn add(&mut self, o: &Stats) {
        self.calls += o.calls;
        self.ok += o.ok;
        self.oob += o.oob;
        self.invalid_memory_access += o.invalid_memory_access;
        self.events_ok += o.events_ok;
    }
}

fn guest_wat() -> String {
    let mut w = String::from("(module\n");
    for (i, (module, name, kinds)) in FUNCS.iter().enumerate() {
        let params: String = kinds
            .iter()
            .map(|k| match k {
                Int | Ret => " i32",
                I64 => " i64",
                Str => " i32 i32",
            })
            .collect();
        let params = if params.is_empty() {
            String::new()
        } else {
            format!(" (param{params})")
        };
        let _ = writeln!(
            w,
            "  (import \"{module}\" \"{name}\" (func $f{i}{params} (result i32)))"
        );
    }
    let foreign = FUNCS
        .iter()
        .position(|f| f.1 == "proxy_call_foreign_function")
        .unwrap_or_default();
    let _ = write!(
        w,
        r#"
  (memory (export "memory") 4)
  (func (export "proxy_abi_version_0_2_1"))
  (global $heap (mut i32) (i32.const {HEAP_AT}))
  (global $depth (mut i32) (i32.const 0))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32) (local $p i32)
    ;; Too big to ever fit: a pointer past the end, which the host must refuse.
    (if (i32.gt_u (local.get $n) (i32.const {room}))
      (then (return (i32.const {MEM}))))
    (if (i32.gt_u (i32.add (global.get $heap) (local.get $n)) (i32.const {MEM}))
      (then (global.set $heap (i32.const {HEAP_AT}))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (local.get $p))
  (data (i32.const {NAME_TAPE_AT}) "{TAPE}")
  (data (i32.const {NAME_STATUS_AT}) "{STATUS}")
"#,
        room = MEM as u32 - HEAP_AT,
    );
    for ((at, _), bytes) in string_table().iter().zip(strings()) {
        let esc: String = bytes.iter().map(|b| format!("\\{b:02x}")).collect();
        let _ = writeln!(w, "  (data (i32.const {at}) \"{esc}\")");
    }
    // The interpreter: fetch a tape, copy it below PUBLIC, run its calls, report.
    let _ = write!(
        w,
        r#"  (func $run (result i32) (local $p i32) (local $end i32) (local $op i32) (local $s i32) (local $k i32) (local $len i32) (local $ret i32)
    ;; A callback inside a callback would share the tape area: the host never nests them.
    (if (global.get $depth) (then (unreachable)))
    (global.set $depth (i32.const 1))
    (i32.store (i32.const {RET_SLOT}) (i32.const 0))
    (i32.store (i32.const {r2}) (i32.const 0))
    (drop (call $f{foreign} (i32.const {NAME_TAPE_AT}) (i32.const {tl}) (i32.const 0) (i32.const 0) (i32.const {RET_SLOT}) (i32.const {r2})))
    (local.set $len (i32.load (i32.const {r2})))
    (if (i32.lt_u (local.get $len) (i32.const 5))
      (then (global.set $depth (i32.const 0)) (return (i32.const 0))))
    (if (i32.gt_u (local.get $len) (i32.const {TAPE_MAX})) (then (unreachable)))
    (memory.copy (i32.const {TAPE_AT}) (i32.load (i32.const {RET_SLOT})) (local.get $len))
    (i32.store (i32.const {STATUS_AT}) (i32.load (i32.const {TAPE_AT})))
    (local.set $ret (i32.load8_u (i32.const {t4})))
    (local.set $p (i32.const {t5}))
    (local.set $end (i32.add (i32.const {TAPE_AT}) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $op (i32.load8_u (local.get $p)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (local.set $s (i32.const -1))
"#,
        r2 = RET_SLOT + 4,
        tl = TAPE.len(),
        t4 = TAPE_AT + 4,
        t5 = TAPE_AT + 5,
    );
    for (i, (_, _, kinds)) in FUNCS.iter().enumerate() {
        let mut args = String::new();
        let mut off = 0u32;
        for k in kinds.iter() {
            match k {
                Int | Ret => {
                    let _ = write!(args, " (i32.load offset={off} (local.get $p))");
                    off += 4;
                }
                I64 => {
                    let _ = write!(args, " (i64.load offset={off} (local.get $p))");
                    off += 8;
                }
                Str => {
                    let _ = write!(
                        args,
                        " (i32.load offset={off} (local.get $p)) (i32.load offset={} (local.get $p))",
                        off + 4
                    );
                    off += 8;
                }
            }
        }
        let _ = writeln!(
            w,
            "        (if (i32.eq (local.get $op) (i32.const {i})) (then (local.set $s (call $f{i}{args})) (local.set $p (i32.add (local.get $p) (i32.const {off})))))"
        );
    }
    let _ = write!(
        w,
        r#"        (i32.store (i32.add (i32.const {s4}) (i32.shl (local.get $k) (i32.const 2))) (local.get $s))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br $next)))
    (drop (call $f{foreign} (i32.const {NAME_STATUS_AT}) (i32.const {sl}) (i32.const {STATUS_AT}) (i32.add (i32.const 4) (i32.shl (local.get $k) (i32.const 2))) (i32.const {RET_SLOT}) (i32.const {r2})))
    (global.set $depth (i32.const 0))
    (local.get $ret))
"#,
        s4 = STATUS_AT + 4,
        sl = STATUS.len(),
        r2 = RET_SLOT + 4,
    );
    // Every callback of v0.2.1 runs a tape.
    let callbacks: &[(&str, usize, &str)] = &[
        ("proxy_on_vm_start", 2, "bool"),
        ("proxy_on_configure", 2, "bool"),
        ("proxy_on_context_create", 2, ""),
        ("proxy_on_request_headers", 3, "action"),
        ("proxy_on_request_body", 3, "action"),
        ("proxy_on_request_trailers", 2, "action"),
        ("proxy_on_response_headers", 3, "action"),
        ("proxy_on_response_body", 3, "action"),
        ("proxy_on_response_trailers", 2, "action"),
        ("proxy_on_done", 1, "bool"),
        ("proxy_on_log", 1, ""),
        ("proxy_on_delete", 1, ""),
        ("proxy_on_tick", 1, ""),
        ("proxy_on_queue_ready", 2, ""),
        ("proxy_on_http_call_response", 5, ""),
        ("proxy_on_grpc_receive_initial_metadata", 3, ""),
        ("proxy_on_grpc_receive", 3, ""),
        ("proxy_on_grpc_receive_trailing_metadata", 3, ""),
        ("proxy_on_grpc_close", 3, ""),
        ("proxy_on_foreign_function", 3, ""),
        ("proxy_on_new_connection", 1, "action"),
        ("proxy_on_downstream_data", 3, "action"),
        ("proxy_on_upstream_data", 3, "action"),
        ("proxy_on_downstream_connection_close", 2, ""),
        ("proxy_on_upstream_connection_close", 2, ""),
    ];
    for (name, n, result) in callbacks {
        let params = format!(" (param{})", " i32".repeat(*n));
        let (sig, body) = match *result {
            "action" => (" (result i32)", "(call $run)"),
            "bool" => (" (result i32)", "(i32.ne (call $run) (i32.const 1))"),
            _ => ("", "(drop (call $run))"),
        };
        let _ = writeln!(w, "  (func (export \"{name}\"){params}{sig} {body})");
    }
    w.push(')');
    w
}

/// The guest, compiled once per process on a host of its own.
fn guest() -> &'static Compiled {
    static G: OnceLock<Compiled> = OnceLock::new();
    G.get_or_init(|| {
        let host = Host::new(HostConfig {
            // Generous, so a slow machine does not turn a long tape into a deadline trap.
            callback_deadline: Duration::from_secs(10),
            ..HostConfig::default()
        })
        .expect("host");
        let wat = guest_wat();
        let wasm = wat::parse_str(&wat).unwrap_or_else(|e| panic!("{e}\n{wat}"));
        host.compile(&wasm).expect("the fuzz guest compiles")
    })
}

fn encode(index: u32, tape: &Tape) -> Vec<u8> {
    let mut out = index.to_le_bytes().to_vec();
    out.push(tape.ret);
    for c in &tape.calls {
        out.push(c.op as u8);
        out.extend(&c.words);
    }
    out
}

fn refs(p: &[(Word, Word)]) -> Vec<(&str, &str)> {
    p.iter()
        .map(|(k, v)| (k.0.as_str(), v.0.as_str()))
        .collect()
}

/// Plays `program`; `Err` says which property broke.
pub fn run(program: &Program) -> Result<Stats, String> {
    let queue: Arc<Mutex<VecDeque<Vec<u8>>>> = Arc::new(Mutex::new(
        program
            .tapes
            .iter()
            .enumerate()
            .map(|(i, t)| encode(i as u32, t))
            .collect(),
    ));
    let reports: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let tape_fn = {
        let queue = Arc::clone(&queue);
        Arc::new(move |_: &[u8]| {
            queue
                .lock()
                .map(|mut q| q.pop_front().unwrap_or_default())
                .unwrap_or_default()
        })
    };
    let status_fn = {
        let reports = Arc::clone(&reports);
        Arc::new(move |args: &[u8]| {
            if let Ok(mut r) = reports.lock() {
                r.push(args.to_vec());
            }
            Vec::new()
        })
    };
    let mut stats = Stats::default();
    let started = Harness::from_compiled(guest())
        .with_trace(false)
        .with_foreign(TAPE, tape_fn)
        .with_foreign(STATUS, status_fn)
        .with_foreign(
            "echo",
            Arc::new(|a: &[u8]| a.iter().rev().copied().collect()),
        )
        .with_property(&["node", "id"], "n1")
        .configure("config");
    let mut traps = Vec::new();
    match started {
        Ok(mut h) => {
            for (i, e) in program.events.iter().enumerate() {
                match event(&mut h, e) {
                    Ok(()) => stats.events_ok += 1,
                    Err(
                        Error::NoStream(_)
                        | Error::NoCallout(_)
                        | Error::Rejected { .. }
                        | Error::Failed(_),
                    ) => {}
                    Err(err) => return Err(format!("event {i} ({e:?}): {err}")),
                }
            }
            traps = h.traps().to_vec();
        }
        Err(Error::Rejected { .. }) => {}
        Err(e) => return Err(format!("the start failed: {e}")),
    }
    if !traps.is_empty() {
        return Err(format!("the guest trapped: {traps:?}"));
    }
    let popped = program.tapes.len() - queue.lock().map(|q| q.len()).unwrap_or_default();
    let reports = reports.lock().map(|r| r.clone()).unwrap_or_default();
    if reports.len() != popped {
        return Err(format!(
            "{popped} tapes ran but {} reported back",
            reports.len()
        ));
    }
    for r in &reports {
        let words: Vec<u32> = r
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let Some((&index, statuses)) = words.split_first() else {
            return Err("an empty report".into());
        };
        let tape = program
            .tapes
            .get(index as usize)
            .ok_or_else(|| format!("a report for tape {index}, which does not exist"))?;
        if statuses.len() != tape.calls.len() {
            return Err(format!(
                "tape {index}: {} calls but {} statuses",
                tape.calls.len(),
                statuses.len()
            ));
        }
        for (j, (call, &status)) in tape.calls.iter().zip(statuses).enumerate() {
            let (module, name, _) = FUNCS[call.op];
            let (allowed, fault) = if module == "env" {
                (PROXY_STATUSES, 6)
            } else {
                (WASI_ERRNOS, 21)
            };
            let at = || format!("tape {index} call {j}: {name}{:?}", call.words);
            if !allowed.contains(&status) {
                return Err(format!("{}: status {status} is not in the spec", at()));
            }
            if call.oob && status == 0 {
                return Err(format!("{}: OK for an out-of-bounds pointer", at()));
            }
            stats.calls += 1;
            stats.ok += usize::from(status == 0);
            stats.oob += usize::from(call.oob);
            stats.invalid_memory_access += usize::from(status == fault);
        }
    }
    Ok(stats)
}

fn event(h: &mut Harness, e: &Event) -> shadowplane_host_runner::Result<()> {
    match e {
        Event::NewStream => h.new_stream().map(drop),
        Event::Select(id) => h.select(*id),
        Event::RequestHeaders(p, eos) => h.request_headers(&refs(p), *eos).map(drop),
        Event::RequestBody(c, eos) => h.request_body(c, *eos).map(drop),
        Event::RequestTrailers(p) => h.request_trailers(&refs(p)).map(drop),
        Event::ResponseHeaders(p, eos) => h.response_headers(&refs(p), *eos).map(drop),
        Event::ResponseBody(c, eos) => h.response_body(c, *eos).map(drop),
        Event::ResponseTrailers(p) => h.response_trailers(&refs(p)).map(drop),
        Event::EndStream => h.end_stream(),
        Event::Tick(ms) => h.tick(Duration::from_millis(u64::from(*ms))),
        Event::RespondHttp(n, status, p, body) => {
            let calls = h.http_calls();
            if calls.is_empty() {
                return Ok(());
            }
            let token = calls[*n as usize % calls.len()].token;
            h.respond_http(token, *status, &refs(p), body)
        }
        Event::FailHttp(n) => {
            let calls = h.http_calls();
            if calls.is_empty() {
                return Ok(());
            }
            let token = calls[*n as usize % calls.len()].token;
            h.fail_http(token)
        }
        Event::RespondGrpc(n, steps) => {
            let calls = h.grpc_calls();
            if calls.is_empty() {
                return Ok(());
            }
            let token = calls[*n as usize % calls.len()].token;
            let events = steps
                .iter()
                .map(|s| match s {
                    GrpcStep::Initial(p) => {
                        GrpcEvent::InitialMetadata(HeaderMap::from_pairs(&refs(p)))
                    }
                    GrpcStep::Message(m) => GrpcEvent::Message(m.clone()),
                    GrpcStep::Trailing(p) => {
                        GrpcEvent::TrailingMetadata(HeaderMap::from_pairs(&refs(p)))
                    }
                    GrpcStep::Close(status) => GrpcEvent::Close {
                        status: *status,
                        message: "closed".into(),
                    },
                })
                .collect();
            h.respond_grpc(token, events)
        }
        Event::CallForeign(id, args) => h.call_foreign(*id, args),
        Event::NewConnection => h.new_connection().map(drop),
        Event::Downstream(c, eos) => h.downstream_data(c, *eos).map(drop),
        Event::Upstream(c, eos) => h.upstream_data(c, *eos).map(drop),
        Event::ConnectionClosed(down, peer) => h.connection_closed(*down, *peer),
        Event::DeliverQueued => h.deliver_queued(),
        Event::Reconfigure(c) => h.reconfigure(c.clone()),
    }
}
