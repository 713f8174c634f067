//! Make-before-break: which response a stream sends next, decided from what it holds and wants.
//!
//! The plan is recomputed after every request and every target change, from state alone, so
//! a new snapshot arriving half-way through a rollout simply changes what is wanted.

use crate::resource::ResourceType;

/// What a stream knows about one type.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Facts {
    /// The node subscribes to something of this type.
    pub subscribed: bool,
    /// Nothing was sent or settled for this type on this stream yet.
    pub initial: bool,
    /// A response is out and neither ACKed nor NACKed.
    pub inflight: bool,
    /// The target has a resource the node lacks or holds at another version.
    pub additions: bool,
    /// The node holds a resource the target lacks.
    pub removals: bool,
    /// The node must be sent the target again even if it seems to hold it (after a NACK).
    pub dirty: bool,
    /// The response this step would send is the one the node last rejected.
    pub blocked: bool,
}

impl Facts {
    fn changes(&self) -> bool {
        self.additions || self.removals || self.dirty
    }
}

/// The next response to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Add and update, remove nothing: the node gets what it holds plus the target (SotW:
    /// the union; delta: only the differing resources).
    Warm(ResourceType),
    /// Send the target as it is, removals included.
    Apply(ResourceType),
}

const WARM: [ResourceType; 2] = [ResourceType::Cluster, ResourceType::Endpoint];
const SWAP: [ResourceType; 3] = [
    ResourceType::ExtensionConfig,
    ResourceType::Listener,
    ResourceType::Route,
];

/// Decides the next response; `facts` is indexed by [`ResourceType::index`].
///
/// A first response to a fresh subscription goes out at once: at startup Envoy drives the
/// order itself. On ADS (`ordered`), a change is rolled out in three phases:
/// 1. clusters and endpoints are added or updated (nothing removed), and both are ACKed;
/// 2. extension configs, listeners and routes are replaced, in that order, each after the
///    previous one was ACKed;
/// 3. clusters, then endpoints, lose what the target no longer has.
///
/// A phase with nothing to change is skipped, so a weight change only sends ECDS then RDS.
/// A type whose next response is the one it just rejected (`blocked`) holds back the later
/// phases: routes never move onto clusters a node refused. Per-type streams (not `ordered`)
/// cannot see each other, so they send the target directly.
pub(crate) fn plan(facts: &[Facts; 5], ordered: bool) -> Option<Step> {
    let f = |t: ResourceType| facts[t.index()];
    for t in ResourceType::ALL {
        let x = f(t);
        if x.subscribed && x.initial && !x.inflight && !x.blocked {
            return Some(Step::Apply(t));
        }
    }
    if !ordered {
        return ResourceType::ALL.into_iter().find_map(|t| {
            let x = f(t);
            (x.subscribed && !x.inflight && !x.blocked && x.changes()).then_some(Step::Apply(t))
        });
    }

    let mut waiting = false;
    for t in WARM {
        let x = f(t);
        if !x.subscribed {
            continue;
        }
        if x.inflight || (x.additions && x.blocked) {
            waiting = true;
        } else if x.additions {
            return Some(Step::Warm(t));
        }
    }
    if waiting {
        return None;
    }

    for t in SWAP {
        let x = f(t);
        if !x.subscribed {
            continue;
        }
        if x.inflight {
            return None;
        }
        if x.changes() {
            return (!x.blocked).then_some(Step::Apply(t));
        }
    }

    // Endpoints after clusters: once Envoy has dropped a cluster it unsubscribes its endpoints,
    // and there is nothing left to remove.
    for t in WARM {
        let x = f(t);
        if !x.subscribed {
            continue;
        }
        if x.inflight {
            return None;
        }
        if x.changes() {
            return (!x.blocked).then_some(Step::Apply(t));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResourceType::*;

    fn settled() -> [Facts; 5] {
        [Facts {
            subscribed: true,
            ..Default::default()
        }; 5]
    }

    fn with(mut facts: [Facts; 5], t: ResourceType, edit: impl Fn(&mut Facts)) -> [Facts; 5] {
        edit(&mut facts[t.index()]);
        facts
    }

    #[test]
    fn nothing_to_do_when_settled() {
        assert_eq!(plan(&settled(), true), None);
    }

    #[test]
    fn fresh_subscriptions_are_answered_in_any_order() {
        let f = with(settled(), Route, |x| x.initial = true);
        let f = with(f, Cluster, |x| x.inflight = true);
        assert_eq!(plan(&f, true), Some(Step::Apply(Route)));
    }

    #[test]
    fn a_full_change_goes_warm_then_swap_then_remove() {
        let everything = |mut f: [Facts; 5]| {
            for t in ResourceType::ALL {
                f[t.index()].additions = true;
                f[t.index()].removals = true;
            }
            f
        };
        let f = everything(settled());
        assert_eq!(plan(&f, true), Some(Step::Warm(Cluster)));
        let f = with(f, Cluster, |x| x.inflight = true);
        assert_eq!(plan(&f, true), Some(Step::Warm(Endpoint)));
        let f = with(f, Endpoint, |x| x.inflight = true);
        assert_eq!(plan(&f, true), None);
        // Both warm responses ACKed: only removals left on clusters and endpoints.
        let f = with(f, Cluster, |x| {
            x.inflight = false;
            x.additions = false;
        });
        assert_eq!(plan(&f, true), None, "endpoints still in flight");
        let f = with(f, Endpoint, |x| {
            x.inflight = false;
            x.additions = false;
        });
        assert_eq!(plan(&f, true), Some(Step::Apply(ExtensionConfig)));
        let f = with(f, ExtensionConfig, |x| x.inflight = true);
        assert_eq!(
            plan(&f, true),
            None,
            "listeners wait for the extension config ack"
        );
        let f = with(f, ExtensionConfig, |x| *x = settled()[0]);
        assert_eq!(plan(&f, true), Some(Step::Apply(Listener)));
        let f = with(f, Listener, |x| *x = settled()[0]);
        assert_eq!(plan(&f, true), Some(Step::Apply(Route)));
        let f = with(f, Route, |x| *x = settled()[0]);
        assert_eq!(plan(&f, true), Some(Step::Apply(Cluster)));
        let f = with(f, Cluster, |x| x.inflight = true);
        assert_eq!(plan(&f, true), None, "endpoints after clusters");
        let f = with(f, Cluster, |x| *x = settled()[0]);
        assert_eq!(plan(&f, true), Some(Step::Apply(Endpoint)));
    }

    #[test]
    fn a_weight_change_touches_only_ecds_and_rds() {
        let f = with(settled(), ExtensionConfig, |x| x.additions = true);
        let f = with(f, Route, |x| x.additions = true);
        assert_eq!(plan(&f, true), Some(Step::Apply(ExtensionConfig)));
        let f = with(f, ExtensionConfig, |x| *x = settled()[0]);
        assert_eq!(plan(&f, true), Some(Step::Apply(Route)));
    }

    #[test]
    fn a_rejected_step_holds_back_later_phases() {
        let f = with(settled(), Cluster, |x| {
            x.additions = true;
            x.blocked = true;
        });
        let f = with(f, Route, |x| x.additions = true);
        assert_eq!(plan(&f, true), None);
        let f = with(settled(), Listener, |x| {
            x.dirty = true;
            x.blocked = true;
        });
        let f = with(f, Route, |x| x.additions = true);
        assert_eq!(plan(&f, true), None);
    }

    #[test]
    fn unsubscribed_types_are_ignored() {
        let f = with(settled(), Cluster, |x| {
            x.subscribed = false;
            x.additions = true;
        });
        assert_eq!(plan(&f, true), None);
    }

    #[test]
    fn per_type_streams_send_the_target_directly() {
        let f = with(settled(), Cluster, |x| {
            x.additions = true;
            x.removals = true;
        });
        assert_eq!(plan(&f, false), Some(Step::Apply(Cluster)));
    }
}
