//! State-of-the-world xDS streams (ADS and per-type): subscriptions, ACK/NACK, responses.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::contents::{Contents, Subscription};
use super::driver::{self, Answer, Driver, Exchange, Interest, Outcome, Protocol};
use super::plan::Facts;
use crate::cache::{StreamHandle, Target};
use crate::resource::ResourceType;

pub(crate) type SotwStream = Driver<TypeState>;

/// What a SotW stream keeps for one type.
#[derive(Default)]
pub(crate) struct TypeState {
    interest: Interest,
    /// What the node ACKed last (SotW: it holds exactly this); `None` before the first ACK.
    held: Option<Contents>,
    /// The responses, each recorded with the contents it carried.
    exchange: Exchange<Contents>,
    /// Resend even if `held` equals the target (after a NACK: Envoy may have applied part).
    dirty: bool,
    sent_any: bool,
}

impl Protocol for TypeState {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const NAME: &'static str = "sotw";

    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn type_url(req: &DiscoveryRequest) -> &str {
        &req.type_url
    }

    fn request(&mut self, t: ResourceType, req: DiscoveryRequest, handle: &StreamHandle, _: bool) {
        let answer =
            self.exchange
                .answer(t, &req.response_nonce, req.error_detail.as_ref(), handle);
        match answer {
            Answer::Ack(contents) => {
                self.held = Some(contents);
                self.dirty = false;
            }
            Answer::Nack(_) => self.dirty = true,
            // Envoy will answer the newer response with its current interest.
            Answer::Stale => return,
            Answer::Fresh => {}
        }

        let names: BTreeSet<String> = req.resource_names.into_iter().collect();
        let wildcard = names.contains("*") || (names.is_empty() && t.empty_means_wildcard());
        let sub = Subscription {
            wildcard,
            names: if wildcard { BTreeSet::new() } else { names },
        };
        if self.interest.set(sub)
            && !self.interest.sub().wildcard
            && let Some(held) = &self.held
        {
            // A name Envoy stopped asking for is gone from it; it needs no removal.
            let sub = self.interest.sub();
            self.held = Some(held.retain(|n| sub.contains(n)));
        }
    }

    fn facts(&mut self, t: ResourceType, target: &Target) -> Facts {
        let desired = self.interest.desired(t, target);
        let empty = Contents::default();
        let held = self.held.as_ref().unwrap_or(&empty);
        Facts {
            subscribed: self.interest.sub().is_active(),
            initial: !self.sent_any,
            inflight: self.exchange.waiting(),
            additions: !held.covers(&desired),
            removals: held.has_names_outside(&desired),
            dirty: self.dirty,
            blocked: false,
        }
    }

    fn synced(&mut self, t: ResourceType, target: &Target) -> bool {
        if !self.interest.sub().is_active() {
            return true;
        }
        let desired = self.interest.desired(t, target);
        !self.exchange.waiting()
            && !self.dirty
            && self.held.as_ref().is_some_and(|h| h.same(&desired))
    }

    fn respond(
        &mut self,
        t: ResourceType,
        warm: bool,
        target: &Target,
        nonce: &str,
    ) -> Outcome<DiscoveryResponse> {
        let desired = self.interest.desired(t, target);
        let contents = match (&self.held, warm) {
            (Some(held), true) => held.merged(&desired),
            _ => desired.clone(),
        };
        let fingerprint = contents.fingerprint(target.generation);
        if self.exchange.refuses(fingerprint) {
            return Outcome::Blocked;
        }
        let version = driver::version(target, contents.same(&desired));
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: contents.iter().map(|r| r.any().clone()).collect(),
            type_url: t.type_url().to_owned(),
            nonce: nonce.to_owned(),
            ..Default::default()
        };
        self.sent_any = true;
        self.exchange.sent(
            nonce,
            target.generation,
            version.clone(),
            fingerprint,
            contents,
        );
        Outcome::Send { response, version }
    }
}
