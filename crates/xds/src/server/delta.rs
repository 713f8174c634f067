//! Incremental (delta) xDS streams (ADS and per-type): per-resource versions, subscribe and
//! unsubscribe, `initial_resource_versions`, `removed_resources`.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as WireResource,
};

use super::driver::{self, Answer, Driver, Exchange, Interest, Outcome, Protocol};
use super::plan::Facts;
use crate::cache::{StreamHandle, Target};
use crate::resource::{Resource, ResourceType};

pub(crate) type DeltaStream = Driver<TypeState>;

/// What a delta response carried.
struct Sent {
    /// Name and version of each resource sent.
    resources: Vec<(Arc<str>, Arc<str>)>,
    removed: Vec<Arc<str>>,
}

/// What a delta stream keeps for one type.
#[derive(Default)]
pub(crate) struct TypeState {
    interest: Interest,
    /// What the node holds: name to version, `None` where unknown (a rejected response may
    /// have been applied in part, so those are resent).
    held: HashMap<Arc<str>, Option<Arc<str>>>,
    exchange: Exchange<Sent>,
    /// A first response went out, or was found unnecessary (`initial_resource_versions`).
    settled: bool,
    /// The first request listed `initial_resource_versions`.
    client_had: bool,
}

impl TypeState {
    fn holds(&self, r: &Resource) -> bool {
        self.held
            .get(r.name())
            .is_some_and(|v| v.as_deref() == Some(r.version()))
    }
}

impl Protocol for TypeState {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";

    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn type_url(req: &DeltaDiscoveryRequest) -> &str {
        &req.type_url
    }

    fn request(
        &mut self,
        t: ResourceType,
        req: DeltaDiscoveryRequest,
        handle: &StreamHandle,
        first: bool,
    ) {
        let mut sub = self.interest.sub().clone();
        if first {
            self.client_had = !req.initial_resource_versions.is_empty();
            for (name, version) in &req.initial_resource_versions {
                self.held
                    .insert(Arc::from(name.as_str()), Some(Arc::from(version.as_str())));
            }
            // Legacy wildcard: a first request that names nothing asks for everything.
            if req.resource_names_subscribe.is_empty() {
                sub.wildcard = true;
            }
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                sub.wildcard = true;
            } else {
                sub.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(name);
            }
        }
        self.interest.set(sub);
        // What Envoy no longer asks for, it dropped itself: no removal needed.
        let sub = self.interest.sub();
        if !sub.wildcard {
            self.held.retain(|n, _| sub.contains(n));
        }

        // A stale nonce is not an answer; its subscription changes above still count.
        let answer =
            self.exchange
                .answer(t, &req.response_nonce, req.error_detail.as_ref(), handle);
        match answer {
            Answer::Ack(sent) => {
                for (name, version) in sent.resources {
                    if sub.contains(&name) {
                        self.held.insert(name, Some(version));
                    }
                }
                for name in &sent.removed {
                    self.held.remove(name);
                }
            }
            Answer::Nack(sent) => {
                for name in sent
                    .resources
                    .into_iter()
                    .map(|(n, _)| n)
                    .chain(sent.removed)
                {
                    if sub.contains(&name) {
                        self.held.insert(name, None);
                    }
                }
            }
            Answer::Fresh | Answer::Stale => {}
        }
    }

    fn facts(&mut self, t: ResourceType, target: &Target) -> Facts {
        let desired = self.interest.desired(t, target);
        Facts {
            subscribed: self.interest.sub().is_active(),
            initial: !self.settled,
            inflight: self.exchange.waiting(),
            additions: desired.iter().any(|r| !self.holds(r)),
            removals: self.held.keys().any(|n| desired.get(n).is_none()),
            dirty: false,
            blocked: false,
        }
    }

    fn synced(&mut self, t: ResourceType, target: &Target) -> bool {
        if !self.interest.sub().is_active() {
            return true;
        }
        let f = self.facts(t, target);
        self.settled && !f.inflight && !f.additions && !f.removals
    }

    fn respond(
        &mut self,
        t: ResourceType,
        warm: bool,
        target: &Target,
        nonce: &str,
    ) -> Outcome<DeltaDiscoveryResponse> {
        let desired = self.interest.desired(t, target);
        let changed: Vec<&Resource> = desired.iter().filter(|r| !self.holds(r)).collect();
        let mut removed: Vec<Arc<str>> = if warm {
            Vec::new()
        } else {
            self.held
                .keys()
                .filter(|n| desired.get(n).is_none())
                .cloned()
                .collect()
        };
        removed.sort();
        if changed.is_empty() && removed.is_empty() && !self.settled && self.client_had {
            // Reconnect: Envoy already holds exactly this; nothing to send.
            self.settled = true;
            return Outcome::Settled;
        }
        let fingerprint = fingerprint(target.generation, &changed, &removed);
        if self.exchange.refuses(fingerprint) {
            return Outcome::Blocked;
        }
        let complete = !warm || !self.held.keys().any(|n| desired.get(n).is_none());
        let version = driver::version(target, complete);
        let response = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            resources: changed
                .iter()
                .map(|r| WireResource {
                    name: r.name().to_owned(),
                    version: r.version().to_owned(),
                    resource: Some(r.any().clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: t.type_url().to_owned(),
            removed_resources: removed.iter().map(|n| n.to_string()).collect(),
            nonce: nonce.to_owned(),
            ..Default::default()
        };
        let sent = Sent {
            resources: changed
                .iter()
                .map(|r| (r.name_arc().clone(), r.version_arc().clone()))
                .collect(),
            removed,
        };
        self.settled = true;
        self.exchange
            .sent(nonce, target.generation, version.clone(), fingerprint, sent);
        Outcome::Send { response, version }
    }
}

fn fingerprint(generation: u64, changed: &[&Resource], removed: &[Arc<str>]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&generation.to_le_bytes());
    for r in changed {
        h.update(r.name().as_bytes());
        h.update(&[0]);
        h.update(r.version().as_bytes());
        h.update(&[0]);
    }
    h.update(&[1]);
    for n in removed {
        h.update(n.as_bytes());
        h.update(&[0]);
    }
    h.digest()
}
