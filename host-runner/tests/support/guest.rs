//! Builds WAT test guests: a module with every proxy-wasm import, a bump allocator, and
//! callbacks given as WAT bodies. A body reports what it saw by `(call $rec X)`, which appends
//! X to the histogram `probe`, read back with `Harness::histogram("probe")`.

// Each test binary uses a different part of this file.
#![allow(dead_code)]

use shadowplane_host_runner::{Compiled, Host};

const IMPORTS: &str = r#"
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_log_level" (func $get_log_level (param i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $map_size (param i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove_header (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $buffer_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $set_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_call" (func $grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_stream" (func $grpc_stream (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_send" (func $grpc_send (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_cancel" (func $grpc_cancel (param i32) (result i32)))
  (import "env" "proxy_grpc_close" (func $grpc_close (param i32) (result i32)))
  (import "env" "proxy_get_status" (func $get_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment_metric (param i32 i64) (result i32)))
  (import "env" "proxy_record_metric" (func $record_metric (param i32 i64) (result i32)))
  (import "env" "proxy_get_metric" (func $get_metric (param i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $register_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_resolve_shared_queue" (func $resolve_queue (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue_stream (param i32) (result i32)))
  (import "env" "proxy_close_stream" (func $close_stream (param i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_effective (param i32) (result i32)))
  (import "env" "proxy_done" (func $done (result i32)))
  (import "env" "proxy_call_foreign_function" (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_not_in_any_spec" (func $unknown (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "sched_yield" (func $sched_yield (result i32)))
  (import "wasi_snapshot_preview1" "clock_res_get" (func $clock_res_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
"#;

/// Scratch addresses guests may use: 64.. for return values.
pub const RET: u32 = 64;
/// A second return slot.
pub const RET2: u32 = 68;
/// A third return slot.
pub const RET3: u32 = 72;

/// A guest under construction.
pub struct Guest {
    data: Vec<(u32, Vec<u8>)>,
    next: u32,
    funcs: Vec<String>,
    abi: &'static str,
    alloc: &'static str,
}

impl Default for Guest {
    fn default() -> Self {
        Self {
            data: Vec::new(),
            next: 1024,
            funcs: Vec::new(),
            abi: "proxy_abi_version_0_2_1",
            alloc: "proxy_on_memory_allocate",
        }
    }
}

impl Guest {
    /// A guest declaring ABI v0.2.1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares another ABI version marker.
    #[allow(dead_code)]
    pub fn abi(mut self, marker: &'static str) -> Self {
        self.abi = marker;
        self
    }

    /// Exports the allocator under another name (`malloc`, the fallback hosts look for).
    pub fn alloc_export(mut self, name: &'static str) -> Self {
        self.alloc = name;
        self
    }

    /// Places bytes in memory; returns `(i32.const ptr) (i32.const len)`.
    pub fn s(&mut self, bytes: &[u8]) -> String {
        let at = self.next;
        self.next += bytes.len() as u32 + 8;
        self.data.push((at, bytes.to_vec()));
        format!("(i32.const {at}) (i32.const {})", bytes.len())
    }

    /// Places a serialized header map; returns `(i32.const ptr) (i32.const len)`.
    pub fn map(&mut self, pairs: &[(&str, &str)]) -> String {
        let bytes = shadowplane_host_runner::abi::serialize_pairs(pairs.iter().copied());
        self.s(&bytes)
    }

    /// Adds a raw function or export.
    pub fn func(mut self, wat: &str) -> Self {
        self.funcs.push(wat.to_string());
        self
    }

    /// The module text.
    pub fn wat(&self) -> String {
        let mut out = String::from("(module\n");
        out.push_str(IMPORTS);
        out.push_str(
            r#"
  (memory (export "memory") 4)
  (global $heap (mut i32) (i32.const 131072))
  (func $alloc (param i32) (result i32)
    (global.get $heap)
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get 0) (i32.const 7)) (i32.const -8)))))
  (global $probe (mut i32) (i32.const 0))
  (func $rec (param i32)
    (drop (call $record_metric (global.get $probe) (i64.extend_i32_u (local.get 0)))))
  (func $define_probe
    (drop (call $define_metric (i32.const 2) (i32.const 8) (i32.const 5) (i32.const 0)))
    (global.set $probe (i32.load (i32.const 0))))
  (data (i32.const 8) "probe")
"#,
        );
        out.push_str(&format!("  (func (export \"{}\"))\n", self.abi));
        out.push_str(&format!("  (export \"{}\" (func $alloc))\n", self.alloc));
        for (at, bytes) in &self.data {
            let esc: String = bytes.iter().map(|b| format!("\\{b:02x}")).collect();
            out.push_str(&format!("  (data (i32.const {at}) \"{esc}\")\n"));
        }
        for f in &self.funcs {
            out.push_str(f);
            out.push('\n');
        }
        out.push(')');
        out
    }

    /// Compiles on `host`.
    pub fn compile(&self, host: &Host) -> Compiled {
        let wasm = wat::parse_str(self.wat()).unwrap_or_else(|e| panic!("{e}\n{}", self.wat()));
        host.compile(&wasm).expect("the guest compiles")
    }
}

/// `proxy_on_vm_start` that defines the probe histogram (include it in every guest that
/// records).
pub const VM_START: &str = r#"(func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (call $define_probe) (i32.const 1))"#;
