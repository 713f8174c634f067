//! One node group's state: its stable snapshot, an optional canary, its nodes' sync state, and
//! the rules for ACK, NACK, rollback and promotion. No I/O and no async: effects are returned.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use super::{CanaryStatus, Event, GroupStatus, Nack, NodeStatus, SyncState, TypeStatus};
use crate::error::{Error, Result};
use crate::resource::ResourceType;
use crate::snapshot::Snapshot;

/// How many disconnected nodes a group remembers (for status) before forgetting the oldest.
const MAX_DISCONNECTED: usize = 1024;
/// How many generations' fates (rolled back, NACKed, replaced) a group remembers for `wait_synced`.
const MAX_OUTCOMES: usize = 64;

/// A snapshot as the cache pushed it: the generation tells pushes apart (versions are opaque).
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub generation: u64,
    pub snapshot: Snapshot,
}

/// What each stream of the group should converge to; published on a `watch` channel.
#[derive(Default, Debug)]
pub(crate) struct Targets {
    pub stable: Option<Target>,
    pub canary: Option<(Target, Arc<BTreeSet<String>>)>,
}

impl Targets {
    /// The target of one node: the canary candidate for canary nodes, else the stable snapshot.
    pub fn for_node(&self, node: &str) -> Option<&Target> {
        match &self.canary {
            Some((target, nodes)) if nodes.contains(node) => Some(target),
            _ => self.stable.as_ref(),
        }
    }
}

/// Side effects of a group change, applied by the caller while it still holds the group lock
/// (so events and target changes are published in the order they happened).
#[derive(Default)]
pub(crate) struct Effects {
    pub events: Vec<Event>,
    /// The targets changed: publish them to the streams.
    pub targets: bool,
    /// Something `wait_synced` looks at changed.
    pub progress: bool,
}

/// Why a generation will never sync.
#[derive(Clone, Debug)]
enum Outcome {
    RolledBack { to_version: String },
    Nacked { node: String, error: String },
    Superseded,
}

struct Canary {
    target: Target,
    nodes: Arc<BTreeSet<String>>,
    /// Canary nodes that have not yet ACKed the candidate on every type they subscribe to.
    pending: BTreeSet<String>,
}

/// A NACK that still counts: the node rejected `rejected_gen` while `latest_push` was the
/// newest push of its group.
#[derive(Clone, Copy)]
struct NackMark {
    rejected_gen: u64,
    latest_push: u64,
}

#[derive(Default)]
struct StreamRec {
    synced_gen: Option<u64>,
    types: BTreeMap<ResourceType, TypeStatus>,
}

struct NodeRec {
    streams: BTreeMap<u64, StreamRec>,
    /// The generation every stream of the node holds in full, if they agree.
    synced_gen: Option<u64>,
    /// The last stable snapshot the node held in full: where a NACK of this node rolls back to.
    last_synced_stable: Option<Target>,
    last_nack: Option<Nack>,
    nack_mark: Option<NackMark>,
    last_ack_at: Option<SystemTime>,
    last_sent_at: Option<SystemTime>,
    disconnected_at: Option<SystemTime>,
    /// Types seen on streams that closed, kept for the status of a disconnected node.
    last_types: BTreeMap<ResourceType, TypeStatus>,
}

impl NodeRec {
    fn new() -> Self {
        NodeRec {
            streams: BTreeMap::new(),
            synced_gen: None,
            last_synced_stable: None,
            last_nack: None,
            nack_mark: None,
            last_ack_at: None,
            last_sent_at: None,
            disconnected_at: None,
            last_types: BTreeMap::new(),
        }
    }

    fn connected(&self) -> bool {
        !self.streams.is_empty()
    }

    fn type_mut(&mut self, stream: u64, t: ResourceType) -> Option<&mut TypeStatus> {
        let s = self.streams.get_mut(&stream)?;
        Some(s.types.entry(t).or_insert_with(|| TypeStatus {
            type_url: t.type_url().to_owned(),
            last_sent_version: None,
            last_sent_nonce: None,
            last_acked_version: None,
        }))
    }
}

/// One node group.
pub(crate) struct Group {
    name: String,
    stable: Option<Target>,
    canary: Option<Canary>,
    /// Generation of the newest snapshot the caller pushed (stable or canary); 0 before any.
    latest_pushed: u64,
    nodes: HashMap<Arc<str>, NodeRec>,
    /// Connected nodes that do not hold the stable snapshot in full.
    unsynced: HashSet<Arc<str>>,
    /// Whether `Synced` was emitted since the stable target last changed.
    synced_emitted: bool,
    /// How many nodes have at least one open stream.
    connected: usize,
    outcomes: VecDeque<(u64, String, Outcome)>,
}

/// Result of looking at a generation for `wait_synced`.
pub(crate) enum SyncCheck {
    Done(Result<()>),
    Pending { unsynced: usize },
}

impl Group {
    pub fn new(name: &str) -> Self {
        Group {
            name: name.to_owned(),
            stable: None,
            canary: None,
            latest_pushed: 0,
            nodes: HashMap::new(),
            unsynced: HashSet::new(),
            synced_emitted: false,
            connected: 0,
            outcomes: VecDeque::new(),
        }
    }

    pub fn targets(&self) -> Targets {
        Targets {
            stable: self.stable.clone(),
            canary: self
                .canary
                .as_ref()
                .map(|c| (c.target.clone(), c.nodes.clone())),
        }
    }

    pub fn stable_snapshot(&self) -> Option<Snapshot> {
        self.stable.as_ref().map(|t| t.snapshot.clone())
    }

    fn target_for(&self, node: &str) -> Option<&Target> {
        match &self.canary {
            Some(c) if c.nodes.contains(node) => Some(&c.target),
            _ => self.stable.as_ref(),
        }
    }

    fn remember(&mut self, generation: u64, version: String, outcome: Outcome) {
        if self.outcomes.len() == MAX_OUTCOMES {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back((generation, version, outcome));
    }

    /// A plain push: replaces the stable snapshot and discards any canary.
    pub fn set_snapshot(&mut self, target: Target, fx: &mut Effects) {
        if let Some(c) = self.canary.take() {
            let version = c.target.snapshot.version().to_owned();
            self.remember(c.target.generation, version, Outcome::Superseded);
        }
        if let Some(old) = self.stable.take() {
            let version = old.snapshot.version().to_owned();
            self.remember(old.generation, version, Outcome::Superseded);
        }
        self.latest_pushed = target.generation;
        self.stable = Some(target);
        self.retarget(fx);
    }

    /// A canary push: only `nodes` get the candidate until they all hold it in full.
    pub fn set_canary(
        &mut self,
        target: Target,
        nodes: BTreeSet<String>,
        fx: &mut Effects,
    ) -> Result<()> {
        if nodes.is_empty() {
            return Err(Error::EmptyCanary {
                group: self.name.clone(),
            });
        }
        if let Some(missing) = nodes.iter().find(|n| {
            !self
                .nodes
                .get(n.as_str())
                .is_some_and(|rec| rec.connected())
        }) {
            return Err(Error::CanaryNodeNotConnected {
                group: self.name.clone(),
                node: missing.clone(),
            });
        }
        if self.stable.is_none() {
            return Err(Error::NoSnapshot {
                group: self.name.clone(),
            });
        }
        if let Some(c) = self.canary.take() {
            let version = c.target.snapshot.version().to_owned();
            self.remember(c.target.generation, version, Outcome::Superseded);
        }
        self.latest_pushed = target.generation;
        self.canary = Some(Canary {
            target,
            pending: nodes.clone(),
            nodes: Arc::new(nodes),
        });
        // A canary node might already hold the candidate (identical content); check them all.
        let ids: Vec<Arc<str>> = self.nodes.keys().cloned().collect();
        fx.targets = true;
        fx.progress = true;
        for id in ids {
            self.node_progress(&id, fx);
        }
        Ok(())
    }

    /// The stable target changed: every connected node has to show again that it holds it.
    fn retarget(&mut self, fx: &mut Effects) {
        self.synced_emitted = false;
        self.unsynced.clear();
        let stable = self.stable.clone();
        for (id, node) in &mut self.nodes {
            if !node.connected() {
                continue;
            }
            match (&stable, node.synced_gen) {
                (Some(t), Some(g)) if t.generation == g => {
                    node.last_synced_stable = Some(t.clone())
                }
                _ => {
                    self.unsynced.insert(id.clone());
                }
            }
        }
        fx.targets = true;
        fx.progress = true;
        self.check_synced(fx);
    }

    /// Emits `Synced` once the last connected node holds the stable snapshot. Not while no node
    /// is connected: the event says that Envoys took the snapshot (`wait_synced` still returns at
    /// once for an empty group).
    fn check_synced(&mut self, fx: &mut Effects) {
        if self.synced_emitted || !self.unsynced.is_empty() || self.connected == 0 {
            return;
        }
        if let Some(t) = &self.stable {
            self.synced_emitted = true;
            fx.progress = true;
            fx.events.push(Event::Synced {
                group: self.name.clone(),
                version: t.snapshot.version().to_owned(),
            });
        }
    }

    /// Re-evaluates one node after its streams' sync state changed.
    fn node_progress(&mut self, id: &Arc<str>, fx: &mut Effects) {
        let stable = self.stable.clone();
        let canary_gen = self.canary.as_ref().map(|c| c.target.generation);
        let Some(node) = self.nodes.get_mut(id) else {
            return;
        };
        let mut gens = node.streams.values().map(|s| s.synced_gen);
        let first = gens.next().flatten();
        let agreed = if gens.all(|g| g == first) {
            first
        } else {
            None
        };
        if node.connected() {
            node.synced_gen = agreed;
        }
        let connected = node.connected();
        let synced = node.synced_gen;
        if let (Some(g), Some(mark)) = (synced, node.nack_mark)
            && g > mark.rejected_gen
        {
            // It now holds something newer than what it rejected.
            node.nack_mark = None;
        }
        match (&stable, synced) {
            (Some(t), Some(g)) if t.generation == g => {
                node.last_synced_stable = Some(t.clone());
                if self.unsynced.remove(id) && self.unsynced.is_empty() {
                    fx.progress = true;
                }
            }
            _ if connected => {
                self.unsynced.insert(id.clone());
            }
            _ => {
                if self.unsynced.remove(id) && self.unsynced.is_empty() {
                    fx.progress = true;
                }
            }
        }
        if synced.is_some() && synced == canary_gen {
            let promote = match &mut self.canary {
                Some(c) => c.pending.remove(&**id) && c.pending.is_empty(),
                None => false,
            };
            if promote {
                self.promote(fx);
                return;
            }
        }
        self.check_synced(fx);
    }

    fn promote(&mut self, fx: &mut Effects) {
        let Some(c) = self.canary.take() else {
            return;
        };
        if let Some(old) = self.stable.take() {
            let version = old.snapshot.version().to_owned();
            self.remember(old.generation, version, Outcome::Superseded);
        }
        fx.events.push(Event::CanaryPromoted {
            group: self.name.clone(),
            version: c.target.snapshot.version().to_owned(),
        });
        self.stable = Some(c.target);
        self.retarget(fx);
    }

    pub fn stream_opened(&mut self, node_id: &Arc<str>, stream: u64, fx: &mut Effects) {
        let node = self
            .nodes
            .entry(node_id.clone())
            .or_insert_with(NodeRec::new);
        if !node.connected() {
            node.disconnected_at = None;
            self.connected += 1;
            fx.events.push(Event::Connected {
                group: self.name.clone(),
                node: node_id.to_string(),
            });
        }
        node.streams.insert(stream, StreamRec::default());
        self.node_progress(node_id, fx);
    }

    pub fn stream_closed(&mut self, node_id: &Arc<str>, stream: u64, fx: &mut Effects) {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        let Some(rec) = node.streams.remove(&stream) else {
            return;
        };
        node.last_types.extend(rec.types);
        if node.connected() {
            self.node_progress(node_id, fx);
            return;
        }
        node.disconnected_at = Some(SystemTime::now());
        self.connected -= 1;
        if self.unsynced.remove(node_id) && self.unsynced.is_empty() {
            fx.progress = true;
        }
        fx.events.push(Event::Disconnected {
            group: self.name.clone(),
            node: node_id.to_string(),
        });
        self.forget_old_disconnected();
        // A disconnected canary node stays pending: nothing is promoted that no canary checked.
        self.check_synced(fx);
    }

    fn forget_old_disconnected(&mut self) {
        if self.nodes.len() - self.connected <= MAX_DISCONNECTED {
            return;
        }
        let oldest = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.connected())
            .min_by_key(|(_, n)| n.disconnected_at)
            .map(|(id, _)| id.clone());
        if let Some(id) = oldest {
            self.nodes.remove(&id);
        }
    }

    pub fn stream_subscribed(&mut self, node_id: &str, stream: u64, t: ResourceType) {
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.type_mut(stream, t);
        }
    }

    pub fn stream_sent(
        &mut self,
        node_id: &str,
        stream: u64,
        t: ResourceType,
        version: &str,
        nonce: &str,
    ) {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        node.last_sent_at = Some(SystemTime::now());
        if let Some(ts) = node.type_mut(stream, t) {
            ts.last_sent_version = Some(version.to_owned());
            ts.last_sent_nonce = Some(nonce.to_owned());
        }
    }

    pub fn stream_acked(
        &mut self,
        node_id: &str,
        stream: u64,
        t: ResourceType,
        version: &str,
        fx: &mut Effects,
    ) {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        node.last_ack_at = Some(SystemTime::now());
        if let Some(ts) = node.type_mut(stream, t) {
            ts.last_acked_version = Some(version.to_owned());
        }
        fx.events.push(Event::Acked {
            group: self.name.clone(),
            node: node_id.to_owned(),
            type_url: t.type_url().to_owned(),
            version: version.to_owned(),
        });
    }

    pub fn stream_synced(
        &mut self,
        node_id: &Arc<str>,
        stream: u64,
        generation: Option<u64>,
        fx: &mut Effects,
    ) {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        let Some(rec) = node.streams.get_mut(&stream) else {
            return;
        };
        if rec.synced_gen == generation {
            return;
        }
        rec.synced_gen = generation;
        self.node_progress(node_id, fx);
    }

    /// A node rejected a response built from generation `rejected_gen`.
    ///
    /// A canary node rejecting the candidate discards it. A node rejecting the stable snapshot
    /// rolls the group back to the last stable snapshot that node held in full; without one the
    /// group stays on the rejected snapshot and the NACK is only recorded.
    pub fn stream_nacked(
        &mut self,
        node_id: &str,
        nack: Nack,
        rejected_gen: u64,
        fx: &mut Effects,
    ) {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        fx.events.push(Event::Nacked {
            group: self.name.clone(),
            node: node_id.to_owned(),
            type_url: nack.type_url.clone(),
            version: nack.version.clone(),
            error: nack.error.clone(),
        });
        node.nack_mark = Some(NackMark {
            rejected_gen,
            latest_push: self.latest_pushed,
        });
        let error = nack.error.clone();
        node.last_nack = Some(nack);
        let rollback_to = node.last_synced_stable.clone();
        fx.progress = true;

        let canary_hit = self
            .canary
            .as_ref()
            .is_some_and(|c| c.target.generation == rejected_gen && c.nodes.contains(node_id));
        if canary_hit {
            let Some(c) = self.canary.take() else {
                return;
            };
            let from = c.target.snapshot.version().to_owned();
            let to = self
                .stable
                .as_ref()
                .map(|t| t.snapshot.version().to_owned())
                .unwrap_or_default();
            tracing::warn!(group = %self.name, node = node_id, from = %from, to = %to, "canary rejected; candidate discarded");
            self.remember(
                c.target.generation,
                from.clone(),
                Outcome::RolledBack {
                    to_version: to.clone(),
                },
            );
            fx.events.push(Event::RolledBack {
                group: self.name.clone(),
                from_version: from,
                to_version: to,
            });
            self.retarget(fx);
            return;
        }

        let Some(stable) = self.stable.clone() else {
            return;
        };
        if stable.generation != rejected_gen {
            return;
        }
        let from = stable.snapshot.version().to_owned();
        match rollback_to {
            Some(to) if to.generation != rejected_gen => {
                let to_version = to.snapshot.version().to_owned();
                tracing::warn!(group = %self.name, node = node_id, from = %from, to = %to_version, "snapshot rejected; group rolled back");
                self.remember(
                    rejected_gen,
                    from.clone(),
                    Outcome::RolledBack {
                        to_version: to_version.clone(),
                    },
                );
                fx.events.push(Event::RolledBack {
                    group: self.name.clone(),
                    from_version: from,
                    to_version,
                });
                self.stable = Some(to);
                self.retarget(fx);
            }
            _ => {
                tracing::warn!(group = %self.name, node = node_id, version = %from, "snapshot rejected; nothing to roll back to");
                self.remember(
                    rejected_gen,
                    from,
                    Outcome::Nacked {
                        node: node_id.to_owned(),
                        error,
                    },
                );
            }
        }
    }

    /// Resolves a version to the generation `wait_synced` should wait for.
    pub fn resolve(&self, version: &str) -> Result<u64> {
        if let Some(c) = &self.canary
            && c.target.snapshot.version() == version
        {
            return Ok(c.target.generation);
        }
        if let Some(t) = &self.stable
            && t.snapshot.version() == version
        {
            return Ok(t.generation);
        }
        if let Some((_, _, outcome)) = self.outcomes.iter().rev().find(|(_, v, _)| v == version) {
            return Err(self.outcome_error(version, outcome));
        }
        Err(Error::UnknownVersion {
            group: self.name.clone(),
            version: version.to_owned(),
        })
    }

    fn outcome_error(&self, version: &str, outcome: &Outcome) -> Error {
        let group = self.name.clone();
        let version = version.to_owned();
        match outcome {
            Outcome::RolledBack { to_version } => Error::RolledBack {
                group,
                version,
                to_version: to_version.clone(),
            },
            Outcome::Nacked { node, error } => Error::Nacked {
                group,
                version,
                node: node.clone(),
                error: error.clone(),
            },
            Outcome::Superseded => Error::Superseded { group, version },
        }
    }

    /// Whether generation `generation` (version `version`) synced, failed, or is still under way.
    pub fn check(&self, generation: u64, version: &str) -> SyncCheck {
        if let Some((_, _, outcome)) = self
            .outcomes
            .iter()
            .rev()
            .find(|(g, _, o)| *g == generation && !matches!(o, Outcome::Superseded))
        {
            return SyncCheck::Done(Err(self.outcome_error(version, outcome)));
        }
        if self
            .stable
            .as_ref()
            .is_some_and(|t| t.generation == generation)
        {
            return if self.unsynced.is_empty() {
                SyncCheck::Done(Ok(()))
            } else {
                SyncCheck::Pending {
                    unsynced: self.unsynced.len(),
                }
            };
        }
        if let Some(c) = &self.canary
            && c.target.generation == generation
        {
            return SyncCheck::Pending {
                unsynced: c.pending.len(),
            };
        }
        SyncCheck::Done(Err(Error::Superseded {
            group: self.name.clone(),
            version: version.to_owned(),
        }))
    }

    pub fn status(&self) -> GroupStatus {
        let mut nodes: Vec<NodeStatus> = self
            .nodes
            .iter()
            .map(|(id, n)| self.node_status(id, n))
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        GroupStatus {
            group: self.name.clone(),
            version: self
                .stable
                .as_ref()
                .map(|t| t.snapshot.version().to_owned())
                .unwrap_or_default(),
            canary: self.canary.as_ref().map(|c| CanaryStatus {
                version: c.target.snapshot.version().to_owned(),
                nodes: c.nodes.iter().cloned().collect(),
                pending: c.pending.iter().cloned().collect(),
            }),
            nodes,
        }
    }

    fn node_status(&self, id: &str, n: &NodeRec) -> NodeStatus {
        let target = self.target_for(id);
        let nacked = n
            .nack_mark
            .is_some_and(|m| m.latest_push == self.latest_pushed);
        let state = if nacked {
            SyncState::Nacked
        } else if target.is_some_and(|t| n.synced_gen == Some(t.generation)) {
            SyncState::Synced
        } else {
            SyncState::Stale
        };
        // The newest stream's view of a type wins (an old stream may linger until keepalive ends it).
        let mut types = if n.connected() {
            BTreeMap::new()
        } else {
            n.last_types.clone()
        };
        for s in n.streams.values() {
            for (t, ts) in &s.types {
                types.insert(*t, ts.clone());
            }
        }
        NodeStatus {
            node_id: id.to_owned(),
            state,
            connected: n.connected(),
            target_version: target
                .map(|t| t.snapshot.version().to_owned())
                .unwrap_or_default(),
            types: types.into_values().collect(),
            last_nack: n.last_nack.clone(),
            last_ack_at: n.last_ack_at,
            last_sent_at: n.last_sent_at,
        }
    }
}
