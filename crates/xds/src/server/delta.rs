//! Incremental (delta) xDS streams (ADS and per-type): per-resource versions, subscribe and
//! unsubscribe, `initial_resource_versions`, `removed_resources`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as WireResource,
};
use futures::StreamExt;
use tonic::{Status, Streaming};

use super::contents::{Contents, Subscription};
use super::plan::{self, Facts, Step};
use super::sotw::Next;
use super::{Scope, Shutdown, Wake};
use crate::cache::{SnapshotCache, StreamHandle, Target};
use crate::error::Result;
use crate::resource::{Resource, ResourceType};

struct Inflight {
    nonce: String,
    generation: u64,
    version: String,
    sent: Vec<(Arc<str>, Arc<str>)>,
    removed: Vec<Arc<str>>,
    fingerprint: u64,
}

#[derive(Default)]
struct TypeState {
    sub: Subscription,
    sub_epoch: u64,
    /// What the node holds: name to version, `None` where unknown (a rejected response may
    /// have been applied in part, so those are resent).
    held: HashMap<Arc<str>, Option<Arc<str>>>,
    inflight: Option<Inflight>,
    last_nonce: Option<String>,
    rejected: Option<u64>,
    /// A first response went out, or was found unnecessary (`initial_resource_versions`).
    settled: bool,
    /// The first request listed `initial_resource_versions`.
    client_had: bool,
    desired: Option<(u64, u64, Contents)>,
}

impl TypeState {
    fn desired(&mut self, t: ResourceType, target: &Target) -> Contents {
        match &self.desired {
            Some((generation, epoch, c))
                if *generation == target.generation && *epoch == self.sub_epoch =>
            {
                c.clone()
            }
            _ => {
                let c = self.sub.select(target.snapshot.list(t));
                self.desired = Some((target.generation, self.sub_epoch, c.clone()));
                c
            }
        }
    }

    fn holds(&self, r: &Resource) -> bool {
        self.held
            .get(r.name())
            .is_some_and(|v| v.as_deref() == Some(r.version()))
    }

    fn facts(&mut self, t: ResourceType, target: &Target) -> Facts {
        let desired = self.desired(t, target);
        Facts {
            subscribed: self.sub.is_active(),
            initial: !self.settled,
            inflight: self.inflight.is_some(),
            additions: desired.iter().any(|r| !self.holds(r)),
            removals: self.held.keys().any(|n| desired.get(n).is_none()),
            dirty: false,
            blocked: false,
        }
    }

    fn synced(&mut self, t: ResourceType, target: &Target) -> bool {
        if !self.sub.is_active() {
            return true;
        }
        let f = self.facts(t, target);
        self.settled && !f.inflight && !f.additions && !f.removals
    }
}

pub(crate) struct DeltaStream {
    cache: SnapshotCache,
    scope: Scope,
    requests: Streaming<DeltaDiscoveryRequest>,
    shutdown: Shutdown,
    handle: Option<StreamHandle>,
    target: Option<Target>,
    types: BTreeMap<ResourceType, TypeState>,
    next_nonce: u64,
    reported: Option<Option<u64>>,
    warned: BTreeSet<String>,
}

impl DeltaStream {
    pub fn new(
        cache: SnapshotCache,
        scope: Scope,
        requests: Streaming<DeltaDiscoveryRequest>,
        shutdown: Shutdown,
    ) -> Self {
        DeltaStream {
            cache,
            scope,
            requests,
            shutdown,
            handle: None,
            target: None,
            types: BTreeMap::new(),
            next_nonce: 0,
            reported: None,
            warned: BTreeSet::new(),
        }
    }

    /// The response stream; see `SotwStream::into_stream`.
    pub fn into_stream(
        self,
    ) -> futures::stream::BoxStream<'static, Result<DeltaDiscoveryResponse, Status>> {
        futures::stream::unfold(Some(self), |state| async move {
            let mut s = state?;
            match s.next().await {
                Next::Send(r) => Some((Ok(r), Some(s))),
                Next::Fail(status) => Some((Err(status), None)),
                Next::End => None,
            }
        })
        .boxed()
    }

    async fn next(&mut self) -> Next<DeltaDiscoveryResponse> {
        loop {
            if let Some(r) = self.respond() {
                return Next::Send(r);
            }
            // Nothing to send: the stream may have just become synced (an ACK, a target
            // change, or a reconnect that needs nothing).
            self.report_synced();
            let wake =
                super::wait(&mut self.shutdown, &mut self.requests, self.handle.as_mut()).await;
            match wake {
                Wake::Shutdown | Wake::Closed => return Next::End,
                Wake::Request(req) => {
                    if let Err(e) = self.handle_request(req) {
                        return Next::Fail(Status::from(e));
                    }
                }
                Wake::Target => {
                    if let Some(h) = self.handle.as_mut() {
                        self.target = h.target();
                    }
                }
            }
        }
    }

    fn handle_request(&mut self, req: DeltaDiscoveryRequest) -> Result<()> {
        if self.handle.is_none() {
            let node = req.node.as_ref().ok_or(crate::Error::MissingNode)?;
            let mut handle = self.cache.open_stream(node)?;
            tracing::debug!(
                node = handle.node_id(),
                group = handle.group(),
                "delta stream opened"
            );
            self.target = handle.target();
            self.handle = Some(handle);
        }
        let Some(t) = self.scope.resolve(&req.type_url, &mut self.warned)? else {
            return Ok(());
        };
        let handle = self.handle.as_ref().ok_or(crate::Error::MissingNode)?;
        let first = !self.types.contains_key(&t);
        let st = self.types.entry(t).or_default();
        let mut sub = st.sub.clone();
        if first {
            handle.subscribed(t);
            st.client_had = !req.initial_resource_versions.is_empty();
            for (name, version) in &req.initial_resource_versions {
                st.held
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
        if sub != st.sub {
            st.sub = sub;
            st.sub_epoch += 1;
        }
        // What Envoy no longer asks for, it dropped itself: no removal needed.
        if !st.sub.wildcard {
            let sub = &st.sub;
            st.held.retain(|n, _| sub.contains(n));
        }

        // A stale nonce is not an answer; its subscription changes above still count.
        let answers_inflight = !req.response_nonce.is_empty()
            && st
                .inflight
                .as_ref()
                .is_some_and(|i| i.nonce == req.response_nonce);
        if answers_inflight && let Some(inflight) = st.inflight.take() {
            match &req.error_detail {
                None => {
                    handle.acked(t, &inflight.version);
                    for (name, version) in inflight.sent {
                        if st.sub.contains(&name) {
                            st.held.insert(name, Some(version));
                        }
                    }
                    for name in &inflight.removed {
                        st.held.remove(name);
                    }
                    st.rejected = None;
                }
                Some(status) => {
                    tracing::warn!(node = handle.node_id(), type_url = t.type_url(), version = %inflight.version, error = %status.message, "nack");
                    for name in inflight
                        .sent
                        .into_iter()
                        .map(|(n, _)| n)
                        .chain(inflight.removed)
                    {
                        if st.sub.contains(&name) {
                            st.held.insert(name, None);
                        }
                    }
                    st.rejected = Some(inflight.fingerprint);
                    handle.nacked(t, &inflight.version, inflight.generation, &status.message);
                }
            }
        }
        Ok(())
    }

    fn respond(&mut self) -> Option<DeltaDiscoveryResponse> {
        let target = self.target.clone()?;
        let ordered = matches!(self.scope, Scope::Ads);
        let mut facts = [Facts::default(); 5];
        for (t, st) in &mut self.types {
            facts[t.index()] = st.facts(*t, &target);
        }
        loop {
            let step = plan::plan(&facts, ordered)?;
            let (t, warm) = match step {
                Step::Warm(t) => (t, true),
                Step::Apply(t) => (t, false),
            };
            let st = self.types.get_mut(&t)?;
            let desired = st.desired(t, &target);
            let changed: Vec<&Resource> = desired.iter().filter(|r| !st.holds(r)).collect();
            let mut removed: Vec<Arc<str>> = if warm {
                Vec::new()
            } else {
                st.held
                    .keys()
                    .filter(|n| desired.get(n).is_none())
                    .cloned()
                    .collect()
            };
            removed.sort();
            if changed.is_empty() && removed.is_empty() && !st.settled && st.client_had {
                // Reconnect: Envoy already holds exactly this; nothing to send.
                st.settled = true;
                facts[t.index()] = st.facts(t, &target);
                continue;
            }
            let fingerprint = fingerprint(target.generation, &changed, &removed);
            if st.rejected == Some(fingerprint) {
                facts[t.index()].blocked = true;
                continue;
            }
            let complete = !warm || !st.held.keys().any(|n| desired.get(n).is_none());
            let version = if complete {
                target.snapshot.version().to_owned()
            } else {
                format!("{}+mbb", target.snapshot.version())
            };
            self.next_nonce += 1;
            let nonce = self.next_nonce.to_string();
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
                nonce: nonce.clone(),
                ..Default::default()
            };
            let sent = changed
                .iter()
                .map(|r| (r.name_arc().clone(), r.version_arc().clone()))
                .collect();
            if let Some(h) = &self.handle {
                h.sent(t, &version, &nonce);
            }
            st.settled = true;
            st.last_nonce = Some(nonce.clone());
            st.inflight = Some(Inflight {
                nonce,
                generation: target.generation,
                version,
                sent,
                removed,
                fingerprint,
            });
            self.report_synced();
            return Some(response);
        }
    }

    fn report_synced(&mut self) {
        let Some(handle) = &self.handle else {
            return;
        };
        let synced = self.target.as_ref().and_then(|target| {
            let all = self.types.iter_mut().all(|(t, st)| st.synced(*t, target));
            all.then_some(target.generation)
        });
        if self.reported != Some(synced) {
            self.reported = Some(synced);
            handle.synced(synced);
        }
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
