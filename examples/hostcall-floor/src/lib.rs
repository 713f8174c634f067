//! A filter on the proxy-wasm Rust SDK that makes the hostcalls the shadowplane filter makes on
//! an ordinary request (a routed request answered with a 2xx to 4xx), in the same callbacks,
//! and does nothing else: no routing choice, no aggregation, no telemetry.
//!
//! `cargo xtask bench filter-overhead` measures it next to the empty SDK filter and the
//! shadowplane filter. Against the empty filter it is what the per-request behaviour
//! costs in crossings of the Wasm boundary alone; against it, the shadowplane filter's
//! difference is its own logic. host-runner's
//! `an_ordinary_request_costs_the_filter_the_hostcalls_of_the_floor` test keeps the two in
//! step: it fails when the shadowplane filter makes other hostcalls per request than this one.
//!
//! Per request, and why the shadowplane filter needs each:
//!
//! | callback | hostcall | for |
//! |---|---|---|
//! | request headers | `proxy_get_current_time_nanoseconds` | latency from the request headers |
//! | request headers | `proxy_replace_header_map_value` | the routing header the route's `cluster_header` reads |
//! | response headers | `proxy_get_header_map_value` | the route's stamp: the cluster Envoy used and the response code |
//! | response headers | `proxy_remove_header_map_value` | the stamp never reaches the client |
//! | log | `proxy_get_current_time_nanoseconds` | latency to the end of the response |
//! | log | `proxy_record_metric` | the group's latency histogram in Envoy's stats |
//!
//! Its plugin configuration is the group name to route to, as plain text, optionally followed
//! by `without` and the pieces to leave out, so the bench can measure what each piece costs:
//! `route` (the routing header), `stamp` (reading and removing the stamp), `clocks` (both clock
//! reads) and `metric` (the histogram sample). `upstream without route stamp clocks metric`
//! makes no hostcall per request at all: only the per-request state is left.

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};
    use std::rc::Rc;
    use std::time::UNIX_EPOCH;

    /// The header the route's `cluster_header` reads, and the route's stamp: the shadowplane
    /// filter's defaults.
    const ROUTE_HEADER: &str = "x-shadowplane-cluster";
    const STAMP: &str = "x-shadowplane-upstream";

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| Box::new(Root::default()));
    }}

    /// The pieces of the per-request work this instance does; all of them unless configured
    /// `without` some.
    #[derive(Clone, Copy)]
    struct Pieces {
        route: bool,
        stamp: bool,
        clocks: bool,
        metric: bool,
    }

    impl Default for Pieces {
        fn default() -> Self {
            Pieces {
                route: true,
                stamp: true,
                clocks: true,
                metric: true,
            }
        }
    }

    /// `GROUP [without PIECE...]`, or the word that is neither.
    fn parse(config: &str) -> Result<(&str, Pieces), String> {
        let mut words = config.split_whitespace();
        let Some(group) = words.next() else {
            return Err("the plugin configuration must be the group to route to".into());
        };
        let mut pieces = Pieces::default();
        match words.next() {
            None => return Ok((group, pieces)),
            Some("without") => {}
            Some(other) => {
                return Err(format!("expected `without` after the group, not `{other}`"));
            }
        }
        for word in words {
            let piece = match word {
                "route" => &mut pieces.route,
                "stamp" => &mut pieces.stamp,
                "clocks" => &mut pieces.clocks,
                "metric" => &mut pieces.metric,
                other => {
                    return Err(format!(
                        "unknown piece `{other}` (route, stamp, clocks or metric)"
                    ));
                }
            };
            *piece = false;
        }
        Ok((group, pieces))
    }

    #[derive(Default)]
    struct Root {
        group: Rc<str>,
        histogram: u32,
        pieces: Pieces,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let config = hostcalls::get_buffer(
                proxy_wasm::types::BufferType::PluginConfiguration,
                0,
                usize::MAX,
            )
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
            let (group, pieces) = match parse(&config) {
                Ok(parsed) => parsed,
                Err(e) => {
                    let _ = hostcalls::log(LogLevel::Error, &format!("hostcall-floor: {e}"));
                    return false;
                }
            };
            self.group = Rc::from(group);
            self.pieces = pieces;
            match hostcalls::define_metric(MetricType::Histogram, "hostcall_floor.rq_time_ms") {
                Ok(id) => self.histogram = id,
                Err(_) => return false,
            }
            true
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Stream {
                group: Rc::clone(&self.group),
                histogram: self.histogram,
                pieces: self.pieces,
                start_ns: 0,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Stream {
        group: Rc<str>,
        histogram: u32,
        pieces: Pieces,
        start_ns: u64,
    }

    fn now_ns() -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    impl Context for Stream {}

    impl HttpContext for Stream {
        fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            if self.pieces.clocks {
                self.start_ns = now_ns();
            }
            if self.pieces.route {
                let _ = hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    ROUTE_HEADER,
                    Some(&self.group),
                );
            }
            Action::Continue
        }

        fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            if !self.pieces.stamp {
                return Action::Continue;
            }
            if let Ok(Some(_stamp)) = hostcalls::get_map_value(MapType::HttpResponseHeaders, STAMP)
            {
                let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, STAMP, None);
            }
            Action::Continue
        }

        fn on_log(&mut self) {
            let ms = if self.pieces.clocks {
                now_ns().saturating_sub(self.start_ns) / 1_000_000
            } else {
                0
            };
            if self.pieces.metric {
                let _ = hostcalls::record_metric(self.histogram, ms);
            }
        }
    }
}
