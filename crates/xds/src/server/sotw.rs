//! State-of-the-world xDS streams (ADS and per-type): subscriptions, ACK/NACK, responses.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use futures::StreamExt;
use tonic::{Status, Streaming};

use super::contents::{Contents, Subscription};
use super::plan::{self, Facts, Step};
use super::{Scope, Shutdown, Wake};
use crate::cache::{SnapshotCache, StreamHandle, Target};
use crate::error::Result;
use crate::resource::ResourceType;

/// One SotW response out and not yet answered.
struct Inflight {
    nonce: String,
    generation: u64,
    version: String,
    contents: Contents,
    fingerprint: u64,
}

#[derive(Default)]
struct TypeState {
    sub: Subscription,
    /// Bumped when `sub` changes, to invalidate `desired`.
    sub_epoch: u64,
    /// What the node ACKed last (SotW: it holds exactly this); `None` before the first ACK.
    held: Option<Contents>,
    inflight: Option<Inflight>,
    last_nonce: Option<String>,
    /// Resend even if `held` equals the target (after a NACK: Envoy may have applied part).
    dirty: bool,
    /// Fingerprint of the last rejected response, never sent again.
    rejected: Option<u64>,
    sent_any: bool,
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

    fn facts(&mut self, t: ResourceType, target: &Target) -> Facts {
        let desired = self.desired(t, target);
        let empty = Contents::default();
        let held = self.held.as_ref().unwrap_or(&empty);
        Facts {
            subscribed: self.sub.is_active(),
            initial: !self.sent_any,
            inflight: self.inflight.is_some(),
            additions: !held.covers(&desired),
            removals: held.has_names_outside(&desired),
            dirty: self.dirty,
            blocked: false,
        }
    }

    fn synced(&mut self, t: ResourceType, target: &Target) -> bool {
        if !self.sub.is_active() {
            return true;
        }
        let desired = self.desired(t, target);
        self.inflight.is_none()
            && !self.dirty
            && self.held.as_ref().is_some_and(|h| h.same(&desired))
    }
}

pub(crate) struct SotwStream {
    cache: SnapshotCache,
    scope: Scope,
    requests: Streaming<DiscoveryRequest>,
    shutdown: Shutdown,
    handle: Option<StreamHandle>,
    target: Option<Target>,
    types: BTreeMap<ResourceType, TypeState>,
    next_nonce: u64,
    reported: Option<Option<u64>>,
    warned: BTreeSet<String>,
}

pub(crate) enum Next<T> {
    Send(T),
    Fail(Status),
    End,
}

impl SotwStream {
    pub fn new(
        cache: SnapshotCache,
        scope: Scope,
        requests: Streaming<DiscoveryRequest>,
        shutdown: Shutdown,
    ) -> Self {
        SotwStream {
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

    /// The response stream: pulls requests and target changes, yields responses lazily (a
    /// response is built only when the transport can take it).
    pub fn into_stream(
        self,
    ) -> futures::stream::BoxStream<'static, Result<DiscoveryResponse, Status>> {
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

    async fn next(&mut self) -> Next<DiscoveryResponse> {
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
                Wake::Target => self.refresh_target(),
            }
        }
    }

    fn refresh_target(&mut self) {
        if let Some(h) = self.handle.as_mut() {
            self.target = h.target();
        }
    }

    fn handle_request(&mut self, req: DiscoveryRequest) -> Result<()> {
        if self.handle.is_none() {
            let node = req.node.as_ref().ok_or(crate::Error::MissingNode)?;
            let handle = self.cache.open_stream(node)?;
            tracing::debug!(
                node = handle.node_id(),
                group = handle.group(),
                "sotw stream opened"
            );
            self.handle = Some(handle);
            self.refresh_target();
        }
        let Some(t) = self.scope.resolve(&req.type_url, &mut self.warned)? else {
            return Ok(());
        };
        let handle = self.handle.as_ref().ok_or(crate::Error::MissingNode)?;
        let st = self.types.entry(t).or_insert_with(|| {
            handle.subscribed(t);
            TypeState::default()
        });

        if !req.response_nonce.is_empty() {
            let answers_inflight = st
                .inflight
                .as_ref()
                .is_some_and(|i| i.nonce == req.response_nonce);
            if answers_inflight {
                if let Some(inflight) = st.inflight.take() {
                    match &req.error_detail {
                        None => {
                            handle.acked(t, &inflight.version);
                            st.held = Some(inflight.contents);
                            st.dirty = false;
                            st.rejected = None;
                        }
                        Some(status) => {
                            tracing::warn!(node = handle.node_id(), type_url = t.type_url(), version = %inflight.version, error = %status.message, "nack");
                            st.dirty = true;
                            st.rejected = Some(inflight.fingerprint);
                            handle.nacked(
                                t,
                                &inflight.version,
                                inflight.generation,
                                &status.message,
                            );
                        }
                    }
                }
            } else if st
                .last_nonce
                .as_ref()
                .is_some_and(|n| *n != req.response_nonce)
            {
                // Stale: Envoy will answer the newer response with its current interest. (A
                // nonce on a type this stream never answered comes from an earlier stream and
                // is taken as a fresh request.)
                return Ok(());
            }
        }

        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let wildcard = names.contains("*") || (names.is_empty() && t.empty_means_wildcard());
        let sub = Subscription {
            wildcard,
            names: if wildcard { BTreeSet::new() } else { names },
        };
        if sub != st.sub {
            st.sub = sub;
            st.sub_epoch += 1;
            if !st.sub.wildcard
                && let Some(held) = &st.held
            {
                // A name Envoy stopped asking for is gone from it; it needs no removal.
                let sub = &st.sub;
                st.held = Some(held.retain(|n| sub.contains(n)));
            }
        }
        Ok(())
    }

    fn respond(&mut self) -> Option<DiscoveryResponse> {
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
            let contents = match (&st.held, warm) {
                (Some(held), true) => held.merged(&desired),
                _ => desired.clone(),
            };
            let fingerprint = contents.fingerprint(target.generation);
            if st.rejected == Some(fingerprint) {
                facts[t.index()].blocked = true;
                continue;
            }
            let version = if contents.same(&desired) {
                target.snapshot.version().to_owned()
            } else {
                format!("{}+mbb", target.snapshot.version())
            };
            self.next_nonce += 1;
            let nonce = self.next_nonce.to_string();
            let response = DiscoveryResponse {
                version_info: version.clone(),
                resources: contents.iter().map(|r| r.any().clone()).collect(),
                type_url: t.type_url().to_owned(),
                nonce: nonce.clone(),
                ..Default::default()
            };
            if let Some(h) = &self.handle {
                h.sent(t, &version, &nonce);
            }
            st.sent_any = true;
            st.last_nonce = Some(nonce.clone());
            st.inflight = Some(Inflight {
                nonce,
                generation: target.generation,
                version,
                contents,
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
