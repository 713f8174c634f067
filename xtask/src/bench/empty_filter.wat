;; The `empty-wat` filter of `cargo xtask bench filter-overhead`: an HTTP filter that implements
;; proxy-wasm ABI v0.2.1 and does nothing, so the bench can measure the floor cost of running any
;; Wasm filter in Envoy's V8 runtime (creating a context per request and calling into the VM for
;; each event) apart from what the shadowplane filter itself does.
;;
;; Every callback is optional in the ABI, and Envoy calls into the VM only for the ones that
;; exist: this module exports the header, log and lifecycle ones a real filter has, but no body
;; or trailer callbacks. The Rust SDK exports all of them, so the bench's `empty-sdk` filter is
;; the floor for filters built on it; this one is lower.
(module
  ;; One page for the allocator to start in; it grows on demand.
  (memory (export "memory") 1)

  ;; Bump allocator state: the next free byte. Nothing is ever freed: Envoy allocates in the
  ;; guest only to return data from hostcalls, and this module makes none.
  (global $next (mut i32) (i32.const 1024))

  ;; Marker export: tells the host which ABI the module speaks; never called.
  (func (export "proxy_abi_version_0_2_1"))

  ;; Returns `size` bytes aligned to 8, growing memory when needed; 0 when it cannot.
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $start i32)
    (local $end i32)
    (local $pages i32)
    (local.set $start
      (i32.and (i32.add (global.get $next) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $start) (local.get $size)))
    ;; Overflow past 4 GiB wraps around: refuse instead.
    (if (i32.lt_u (local.get $end) (local.get $start))
      (then (return (i32.const 0))))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (local.set $pages
          (i32.sub
            (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16))
            (memory.size)))
        (if (i32.eq (memory.grow (local.get $pages)) (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $next (local.get $end))
    (local.get $start))

  ;; (context_id, parent_context_id): nothing to track.
  (func (export "proxy_on_context_create") (param i32 i32))

  ;; (root_context_id, vm_configuration_size) -> true: the VM started.
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (i32.const 1))

  ;; (root_context_id, plugin_configuration_size) -> true: the configuration is accepted.
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (i32.const 1))

  ;; (context_id, num_headers, end_of_stream) -> 0 = Continue.
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (i32.const 0))

  ;; (context_id, num_headers, end_of_stream) -> 0 = Continue.
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (i32.const 0))

  ;; (context_id): the stream is over; nothing to log.
  (func (export "proxy_on_log") (param i32))

  ;; (context_id) -> true: the host may delete the context now.
  (func (export "proxy_on_done") (param i32) (result i32)
    (i32.const 1))

  ;; (context_id): nothing to forget.
  (func (export "proxy_on_delete") (param i32)))
