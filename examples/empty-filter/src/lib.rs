//! An HTTP filter on the proxy-wasm Rust SDK that does nothing at all.
//!
//! `cargo xtask bench filter-overhead` loads it next to the shadowplane filter: the difference
//! between the two is the shadowplane filter's own work, with the SDK's dispatch (which calls
//! into the VM for every stream event the SDK exports) on both sides.

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::ContextType;

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| Box::new(Root));
    }}

    struct Root;

    impl Context for Root {}

    impl RootContext for Root {
        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Stream))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Stream;

    impl Context for Stream {}

    impl HttpContext for Stream {}
}
