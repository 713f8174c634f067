//! The stream driver both protocols share: opening the stream in the cache, waiting for
//! requests and target changes, the plan loop, nonces, ACK/NACK bookkeeping, sync reports.
//!
//! `sotw.rs` and `delta.rs` supply only what differs: the state a stream keeps per type, how
//! a request changes it, and how a response is built from it ([`Protocol`]).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::{Status, Streaming};

use super::contents::{Contents, Subscription};
use super::plan::{self, Facts, Step};
use super::{Scope, Shutdown};
use crate::cache::{SnapshotCache, StreamHandle, Target};
use crate::error::{Error, Result};
use crate::resource::ResourceType;

/// One xDS protocol, as the state a stream keeps for one resource type.
pub(crate) trait Protocol: Default + Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// Names the protocol in logs.
    const NAME: &'static str;

    fn node(req: &Self::Request) -> Option<&Node>;
    fn type_url(req: &Self::Request) -> &str;
    /// Applies a request for this type: its subscription changes and its answer to the
    /// response in flight. `first`: the stream's first request for this type.
    fn request(&mut self, t: ResourceType, req: Self::Request, handle: &StreamHandle, first: bool);
    fn facts(&mut self, t: ResourceType, target: &Target) -> Facts;
    /// The node holds all of the target it subscribes to (true if it subscribes to nothing).
    fn synced(&mut self, t: ResourceType, target: &Target) -> bool;
    /// Builds the response for a planned step (`warm`: add and update only); it carries
    /// `nonce`.
    fn respond(
        &mut self,
        t: ResourceType,
        warm: bool,
        target: &Target,
        nonce: &str,
    ) -> Outcome<Self::Response>;
}

/// What became of a planned step.
pub(crate) enum Outcome<R> {
    /// A response goes out, under `version`.
    Send { response: R, version: String },
    /// The response would be the one the node last rejected.
    Blocked,
    /// Nothing needs sending after all; the type's facts changed.
    Settled,
}

/// One stream of protocol `P` (ADS or one type, per `scope`).
pub(crate) struct Driver<P: Protocol> {
    cache: SnapshotCache,
    scope: Scope,
    requests: Streaming<P::Request>,
    shutdown: Shutdown,
    handle: Option<StreamHandle>,
    target: Option<Target>,
    types: BTreeMap<ResourceType, P>,
    next_nonce: u64,
    reported: Option<Option<u64>>,
    warned: BTreeSet<String>,
}

enum Next<T> {
    Send(T),
    Fail(Status),
    End,
}

impl<P: Protocol> Driver<P> {
    pub fn new(
        cache: SnapshotCache,
        scope: Scope,
        requests: Streaming<P::Request>,
        shutdown: Shutdown,
    ) -> Self {
        Driver {
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
    pub fn into_stream(self) -> BoxStream<'static, Result<P::Response, Status>> {
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

    async fn next(&mut self) -> Next<P::Response> {
        loop {
            if let Some(r) = self.respond() {
                return Next::Send(r);
            }
            // Nothing to send: the stream may have just become synced (an ACK, a target
            // change, or a reconnect that needs nothing).
            self.report_synced();
            let wake = wait(&mut self.shutdown, &mut self.requests, self.handle.as_mut()).await;
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

    fn handle_request(&mut self, req: P::Request) -> Result<()> {
        if self.handle.is_none() {
            let node = P::node(&req).ok_or(Error::MissingNode)?;
            let mut handle = self.cache.open_stream(node)?;
            tracing::debug!(
                node = handle.node_id(),
                group = handle.group(),
                "{} stream opened",
                P::NAME
            );
            self.target = handle.target();
            self.handle = Some(handle);
        }
        let Some(t) = self.scope.resolve(P::type_url(&req), &mut self.warned)? else {
            return Ok(());
        };
        let handle = self.handle.as_ref().ok_or(Error::MissingNode)?;
        let first = !self.types.contains_key(&t);
        let st = self.types.entry(t).or_default();
        if first {
            handle.subscribed(t);
        }
        st.request(t, req, handle, first);
        Ok(())
    }

    fn respond(&mut self) -> Option<P::Response> {
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
            // Taken only if the response goes out.
            let nonce = (self.next_nonce + 1).to_string();
            match st.respond(t, warm, &target, &nonce) {
                Outcome::Send { response, version } => {
                    self.next_nonce += 1;
                    if let Some(h) = &self.handle {
                        h.sent(t, &version, &nonce);
                    }
                    self.report_synced();
                    return Some(response);
                }
                Outcome::Blocked => facts[t.index()].blocked = true,
                Outcome::Settled => facts[t.index()] = st.facts(t, &target),
            }
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

/// Why a stream woke up.
enum Wake<T> {
    Shutdown,
    Closed,
    Request(T),
    Target,
}

/// Waits for the next thing a stream must react to.
async fn wait<T>(
    shutdown: &mut Shutdown,
    requests: &mut Streaming<T>,
    handle: Option<&mut StreamHandle>,
) -> Wake<T> {
    let target = async {
        match handle {
            Some(h) => h.changed().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        () = shutdown.wait() => Wake::Shutdown,
        req = requests.next() => match req {
            Some(Ok(req)) => Wake::Request(req),
            Some(Err(status)) => {
                tracing::debug!(%status, "xds stream ended by the client");
                Wake::Closed
            }
            None => Wake::Closed,
        },
        () = target => Wake::Target,
    }
}

/// What a node asks for of one type, and the target's resources that match it (kept until
/// the target or the subscription changes).
#[derive(Default)]
pub(crate) struct Interest {
    sub: Subscription,
    /// Bumped when `sub` changes, to invalidate `desired`.
    epoch: u64,
    /// (target generation, epoch, selection).
    desired: Option<(u64, u64, Contents)>,
}

impl Interest {
    pub fn sub(&self) -> &Subscription {
        &self.sub
    }

    /// Replaces the subscription; true if it changed.
    pub fn set(&mut self, sub: Subscription) -> bool {
        if sub == self.sub {
            return false;
        }
        self.sub = sub;
        self.epoch += 1;
        true
    }

    /// The resources of type `t` in `target` that the node subscribes to.
    pub fn desired(&mut self, t: ResourceType, target: &Target) -> Contents {
        match &self.desired {
            Some((generation, epoch, c))
                if *generation == target.generation && *epoch == self.epoch =>
            {
                c.clone()
            }
            _ => {
                let c = self.sub.select(target.snapshot.list(t));
                self.desired = Some((target.generation, self.epoch, c.clone()));
                c
            }
        }
    }
}

/// The responses of one type on one stream: the one awaiting an answer (carrying the
/// protocol's record `B` of what it sent), the latest nonce, and the last rejected response.
pub(crate) struct Exchange<B> {
    inflight: Option<Inflight<B>>,
    last_nonce: Option<String>,
    /// Fingerprint of the last rejected response, never sent again.
    rejected: Option<u64>,
}

impl<B> Default for Exchange<B> {
    fn default() -> Self {
        Exchange {
            inflight: None,
            last_nonce: None,
            rejected: None,
        }
    }
}

/// One response out and not yet answered.
struct Inflight<B> {
    nonce: String,
    generation: u64,
    version: String,
    fingerprint: u64,
    body: B,
}

/// What a request says about the responses of its type.
pub(crate) enum Answer<B> {
    /// No answer to a response of this stream: no nonce, a nonce on a type this stream never
    /// answered (from an earlier stream), or the nonce of the latest response answered again.
    Fresh,
    /// An answer to an older response than the latest.
    Stale,
    /// The response in flight was accepted.
    Ack(B),
    /// The response in flight was rejected.
    Nack(B),
}

impl<B> Exchange<B> {
    /// A response is out and not yet answered.
    pub fn waiting(&self) -> bool {
        self.inflight.is_some()
    }

    /// The node rejected the response with this fingerprint last.
    pub fn refuses(&self, fingerprint: u64) -> bool {
        self.rejected == Some(fingerprint)
    }

    /// Records a response that goes out now.
    pub fn sent(
        &mut self,
        nonce: &str,
        generation: u64,
        version: String,
        fingerprint: u64,
        body: B,
    ) {
        self.last_nonce = Some(nonce.to_owned());
        self.inflight = Some(Inflight {
            nonce: nonce.to_owned(),
            generation,
            version,
            fingerprint,
            body,
        });
    }

    /// Reads a request's `response_nonce` and `error_detail`; an ACK or a NACK of the response
    /// in flight is reported to the cache and settles it.
    pub fn answer(
        &mut self,
        t: ResourceType,
        nonce: &str,
        error: Option<&RpcStatus>,
        handle: &StreamHandle,
    ) -> Answer<B> {
        if nonce.is_empty() {
            return Answer::Fresh;
        }
        let Some(inflight) = self.inflight.take_if(|i| i.nonce == nonce) else {
            if self.last_nonce.as_ref().is_some_and(|n| n != nonce) {
                return Answer::Stale;
            }
            return Answer::Fresh;
        };
        match error {
            None => {
                handle.acked(t, &inflight.version);
                self.rejected = None;
                Answer::Ack(inflight.body)
            }
            Some(status) => {
                tracing::warn!(node = handle.node_id(), type_url = t.type_url(), version = %inflight.version, error = %status.message, "nack");
                self.rejected = Some(inflight.fingerprint);
                handle.nacked(t, &inflight.version, inflight.generation, &status.message);
                Answer::Nack(inflight.body)
            }
        }
    }
}

/// The version a response carries: the snapshot's, marked `+mbb` while the response is not
/// the target yet (make-before-break).
pub(crate) fn version(target: &Target, complete: bool) -> String {
    if complete {
        target.snapshot.version().to_owned()
    } else {
        format!("{}+mbb", target.snapshot.version())
    }
}
