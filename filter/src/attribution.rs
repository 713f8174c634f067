//! Which cluster a finished request is counted under: the group the filter routed it to, checked
//! now and then against the cluster Envoy actually used.
//!
//! Every value Envoy hands back to the filter costs a call back into the VM to allocate it, and
//! on Envoy 1.40 with V8 that is the dearest thing a filter can do per request (about as much
//! as Envoy's whole Wasm runtime floor; see README.md, Overhead). The filter sets the header the
//! route's `cluster_header` reads, so with the route tables `shadowplane serve` writes and
//! `envoy-config/` ships, the cluster Envoy uses *is* the group the filter chose. The filter
//! trusts that, and checks it: it reads Envoy's `xds.cluster_name` for the first
//! [`CHECK_FIRST`] requests of a configuration and for every [`CHECK_EVERY`]th after. One
//! disagreement (a route table that sends some requests elsewhere, a group Envoy has no cluster
//! for) switches that configuration to reading the cluster on every request, so telemetry stays
//! right on any route table and is only cheap on the one the filter expects.

/// Requests of a new configuration whose cluster is always checked.
pub const CHECK_FIRST: u64 = 64;

/// After the first [`CHECK_FIRST`], one request in this many is checked.
pub const CHECK_EVERY: u64 = 256;

/// How a configuration attributes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Counted under the group the filter chose; checked on a sample.
    Trusting,
    /// A check failed: counted under the cluster Envoy reports for each request.
    ByAttribute,
}

/// The attribution state of one filter configuration (small and `Copy`, so the host can keep
/// it in a `Cell`).
#[derive(Debug, Clone, Copy)]
pub struct Attribution {
    seen: u64,
    mode: Mode,
}

/// What [`Attribution::resolve`] decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved<'a> {
    /// The cluster to count the request under; `None` when Envoy routed it to no cluster.
    pub cluster: Option<&'a str>,
    /// This request's check failed and switched the configuration to [`Mode::ByAttribute`].
    pub switched: bool,
}

impl Default for Attribution {
    fn default() -> Self {
        Self::new()
    }
}

impl Attribution {
    /// A configuration's state before its first request.
    pub fn new() -> Self {
        Self {
            seen: 0,
            mode: Mode::Trusting,
        }
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether the host must read the cluster Envoy used for the request finishing now, which
    /// has `chosen` as the group the filter routed it to (`None` when the filter never saw its
    /// request headers). Call once per finished request, before [`Attribution::resolve`].
    pub fn wants_cluster(&mut self, chosen: Option<&str>) -> bool {
        let n = self.seen;
        self.seen = self.seen.saturating_add(1);
        chosen.is_none()
            || self.mode == Mode::ByAttribute
            || n < CHECK_FIRST
            || n.is_multiple_of(CHECK_EVERY)
    }

    /// The cluster to count a finished request under. `actual` is what the host read when
    /// [`Attribution::wants_cluster`] asked for it (`Some(None)`: Envoy used no cluster), or
    /// `None` when it did not read.
    pub fn resolve<'a>(
        &mut self,
        chosen: Option<&'a str>,
        actual: Option<Option<&'a str>>,
    ) -> Resolved<'a> {
        match actual {
            None => Resolved {
                cluster: chosen,
                switched: false,
            },
            Some(actual) => {
                let agrees = chosen.is_some() && actual == chosen;
                // A request the filter never routed says nothing about the route table.
                let switched = chosen.is_some() && !agrees && self.mode == Mode::Trusting;
                if switched {
                    self.mode = Mode::ByAttribute;
                }
                Resolved {
                    cluster: actual,
                    switched,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_first_requests_then_a_sample() {
        let mut a = Attribution::new();
        let checked: Vec<u64> = (0..2000u64)
            .filter(|_| a.wants_cluster(Some("primary")))
            .collect();
        let mut expected: Vec<u64> = (0..CHECK_FIRST).collect();
        expected.extend((CHECK_EVERY..2000).step_by(CHECK_EVERY as usize));
        assert_eq!(checked, expected);
    }

    #[test]
    fn agreement_keeps_trusting_and_counts_the_chosen_group() {
        let mut a = Attribution::new();
        assert!(a.wants_cluster(Some("primary")));
        let r = a.resolve(Some("primary"), Some(Some("primary")));
        assert_eq!(r.cluster, Some("primary"));
        assert!(!r.switched);
        assert_eq!(a.resolve(Some("shadow"), None).cluster, Some("shadow"));
        assert_eq!(a.mode(), Mode::Trusting);
    }

    #[test]
    fn one_disagreement_switches_to_the_attribute_for_good() {
        let mut a = Attribution::new();
        a.wants_cluster(Some("primary"));
        let r = a.resolve(Some("primary"), Some(Some("admin")));
        assert_eq!(r.cluster, Some("admin"), "counted where Envoy sent it");
        assert!(r.switched);
        // A request routed nowhere (a direct response) is counted under no cluster.
        a.wants_cluster(Some("primary"));
        let r = a.resolve(Some("primary"), Some(None));
        assert_eq!(r.cluster, None);
        assert!(!r.switched, "switching is reported once");
        assert_eq!(a.mode(), Mode::ByAttribute);
        // From now on every request is read, however far past the first ones.
        let mut past = Attribution::new();
        past.wants_cluster(Some("p"));
        past.resolve(Some("p"), Some(Some("q")));
        assert!((0..1000).all(|_| past.wants_cluster(Some("p"))));
    }

    #[test]
    fn a_request_the_filter_never_routed_is_read_and_switches_nothing() {
        let mut a = Attribution::new();
        for _ in 0..CHECK_FIRST {
            a.wants_cluster(Some("p"));
        }
        assert!(a.wants_cluster(None), "no group chosen: read it");
        let r = a.resolve(None, Some(Some("p")));
        assert_eq!(r.cluster, Some("p"));
        assert!(!r.switched);
        assert_eq!(a.resolve(None, Some(None)).cluster, None);
        assert_eq!(a.mode(), Mode::Trusting);
    }
}
