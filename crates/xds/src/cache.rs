//! The snapshot cache: one snapshot per node group, canaries, NACK rollback, sync status and events.
//!
//! The cache knows nothing about gRPC: streams in `server` talk to it through a
//! [`stream::StreamHandle`], and it tells them what to converge to through one `watch` channel
//! per group, so a push wakes every stream of the group once and no one polls.

mod group;
mod stream;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::{broadcast, watch};

use crate::error::{Error, Result};
use crate::snapshot::Snapshot;

pub(crate) use group::Target;
use group::{Effects, Group, SyncCheck, Targets};
pub(crate) use stream::StreamHandle;

/// How many events the broadcast channel buffers; a receiver that falls further behind gets
/// `RecvError::Lagged` and skips ahead (events are for observation, not for correctness).
const EVENT_CAPACITY: usize = 4096;

/// Snapshots per node group, shared by every xDS stream.
///
/// `Clone` is cheap (one `Arc`); clones share everything. A node's group comes from its
/// `Node` (by default `Node.cluster`), read from the first request of each stream.
///
/// Every snapshot set on a group gets a generation, increasing across the whole cache; the
/// cache tells pushes apart by generation and never compares versions.
#[derive(Clone)]
pub struct SnapshotCache {
    inner: Arc<Inner>,
}

type Grouping = dyn Fn(&Node) -> String + Send + Sync;

struct Inner {
    grouping: Box<Grouping>,
    groups: RwLock<HashMap<String, Arc<GroupCell>>>,
    events: broadcast::Sender<Event>,
    next_gen: AtomicU64,
    next_stream: AtomicU64,
}

/// A group's state and the channels its streams and waiters listen on.
pub(crate) struct GroupCell {
    name: Arc<str>,
    state: Mutex<Group>,
    targets: watch::Sender<Arc<Targets>>,
    progress: watch::Sender<()>,
    events: broadcast::Sender<Event>,
}

impl GroupCell {
    /// Runs `f` on the group under its lock and publishes the effects before unlocking, so
    /// events and targets go out in the order the changes happened.
    fn update<R>(&self, f: impl FnOnce(&mut Group, &mut Effects) -> R) -> R {
        let mut group = self.state.lock().expect("xds group lock poisoned");
        let mut fx = Effects::default();
        let r = f(&mut group, &mut fx);
        if fx.targets {
            self.targets.send_replace(Arc::new(group.targets()));
        }
        if fx.progress {
            self.progress.send_modify(|_| {});
        }
        for e in fx.events {
            // No receiver is fine: events are optional.
            let _ = self.events.send(e);
        }
        r
    }

    fn read<R>(&self, f: impl FnOnce(&Group) -> R) -> R {
        let group = self.state.lock().expect("xds group lock poisoned");
        f(&group)
    }
}

impl Default for SnapshotCache {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SnapshotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let groups = self.inner.groups.read().expect("xds groups lock poisoned");
        f.debug_struct("SnapshotCache")
            .field("groups", &groups.len())
            .finish()
    }
}

impl SnapshotCache {
    /// A cache that groups nodes by `Node.cluster`.
    pub fn new() -> Self {
        Self::with_grouping(|node: &Node| node.cluster.clone())
    }

    /// A cache that groups nodes by `f(node)`.
    pub fn with_grouping(f: impl Fn(&Node) -> String + Send + Sync + 'static) -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        SnapshotCache {
            inner: Arc::new(Inner {
                grouping: Box::new(f),
                groups: RwLock::new(HashMap::new()),
                events,
                next_gen: AtomicU64::new(1),
                next_stream: AtomicU64::new(1),
            }),
        }
    }

    fn group(&self, name: &str) -> Option<Arc<GroupCell>> {
        let groups = self.inner.groups.read().expect("xds groups lock poisoned");
        groups.get(name).cloned()
    }

    fn group_or_create(&self, name: &str) -> Arc<GroupCell> {
        if let Some(g) = self.group(name) {
            return g;
        }
        let mut groups = self.inner.groups.write().expect("xds groups lock poisoned");
        groups
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(GroupCell {
                    name: Arc::from(name),
                    state: Mutex::new(Group::new(name)),
                    targets: watch::Sender::new(Arc::new(Targets::default())),
                    progress: watch::Sender::new(()),
                    events: self.inner.events.clone(),
                })
            })
            .clone()
    }

    fn next_target(&self, snapshot: Snapshot) -> Target {
        Target {
            generation: self.inner.next_gen.fetch_add(1, Ordering::Relaxed),
            snapshot,
        }
    }

    /// Makes `snapshot` the group's snapshot; every node of the group converges to it
    /// (make-before-break on ADS streams).
    ///
    /// A canary in progress is discarded: the new snapshot replaces both the candidate and
    /// the old snapshot, for every node.
    pub fn set_snapshot(&self, group: &str, snapshot: Snapshot) -> Result<()> {
        let target = self.next_target(snapshot);
        self.group_or_create(group)
            .update(|g, fx| g.set_snapshot(target, fx));
        Ok(())
    }

    /// Sends `snapshot` to the `canary` nodes only (by node id); the other nodes stay on the
    /// current snapshot until every canary node ACKed the new one on every type it subscribes
    /// to. Then the cache promotes it, emits [`Event::CanaryPromoted`] and the others get it.
    /// A NACK from a canary node discards it ([`Event::RolledBack`]); the others never see it.
    ///
    /// Refuses an empty canary, a canary node that is not connected in the group, and a group
    /// without a snapshot. A canary node that disconnects before ACKing keeps the canary
    /// pending (it gets the candidate again when it reconnects): nothing is promoted that no
    /// canary checked. A second canary replaces the first.
    pub fn set_snapshot_canary(
        &self,
        group: &str,
        snapshot: Snapshot,
        canary: BTreeSet<String>,
    ) -> Result<()> {
        let cell = self.group(group).ok_or_else(|| Error::NoSnapshot {
            group: group.to_owned(),
        })?;
        let target = self.next_target(snapshot);
        cell.update(|g, fx| g.set_canary(target, canary, fx))
    }

    /// The group's current stable snapshot (not a canary candidate).
    pub fn snapshot(&self, group: &str) -> Option<Snapshot> {
        self.group(group)?.read(|g| g.stable_snapshot())
    }

    /// Status of every group, sorted by group name (nodes sorted by id). Disconnected nodes are
    /// kept (up to 1024 per group) so their last NACK stays visible.
    pub fn status(&self) -> Vec<GroupStatus> {
        let cells: Vec<Arc<GroupCell>> = {
            let groups = self.inner.groups.read().expect("xds groups lock poisoned");
            groups.values().cloned().collect()
        };
        let mut out: Vec<GroupStatus> = cells.iter().map(|c| c.read(|g| g.status())).collect();
        out.sort_by(|a, b| a.group.cmp(&b.group));
        out
    }

    /// A receiver of every event from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Waits until every connected node of `group` ACKed `version` on every type it
    /// subscribes to. A version that is a canary candidate is waited for through promotion.
    ///
    /// Fails with [`Error::Timeout`] after `timeout`; with [`Error::RolledBack`] if the version
    /// was rejected and rolled back (or a canary candidate discarded); with [`Error::Nacked`]
    /// if it was rejected with nothing to roll back to; with [`Error::Superseded`] if a newer
    /// snapshot replaced it first; with [`Error::UnknownVersion`] if the group has no such
    /// version. With no node connected the group is synced at once.
    pub async fn wait_synced(&self, group: &str, version: &str, timeout: Duration) -> Result<()> {
        let cell = self.group(group).ok_or_else(|| Error::UnknownVersion {
            group: group.to_owned(),
            version: version.to_owned(),
        })?;
        // Subscribe before looking, so no change between the look and the wait is missed.
        let mut progress = cell.progress.subscribe();
        let generation = cell.read(|g| g.resolve(version))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let unsynced = match cell.read(|g| g.check(generation, version)) {
                SyncCheck::Done(r) => return r,
                SyncCheck::Pending { unsynced } => unsynced,
            };
            match tokio::time::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives as long as `cell`, which this function holds.
                Ok(Err(_)) | Err(_) => {
                    return Err(Error::Timeout {
                        group: group.to_owned(),
                        version: version.to_owned(),
                        unsynced,
                    });
                }
            }
        }
    }

    /// Registers a new stream for `node`; the handle unregisters it when dropped.
    pub(crate) fn open_stream(&self, node: &Node) -> Result<StreamHandle> {
        if node.id.is_empty() {
            return Err(Error::MissingNode);
        }
        let group = (self.inner.grouping)(node);
        let cell = self.group_or_create(&group);
        let stream_id = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        Ok(StreamHandle::open(
            cell,
            Arc::from(node.id.as_str()),
            stream_id,
        ))
    }
}

/// Status of one group, for an admin API (plain data; map it to JSON as you like).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    /// The group name.
    pub group: String,
    /// Version of the stable snapshot ("" before the first).
    pub version: String,
    /// The canary in progress, if any.
    pub canary: Option<CanaryStatus>,
    /// Every node seen in the group, connected or not, sorted by id.
    pub nodes: Vec<NodeStatus>,
}

/// A canary in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryStatus {
    /// Version of the candidate snapshot.
    pub version: String,
    /// The canary node ids.
    pub nodes: Vec<String>,
    /// Canary nodes that have not yet ACKed the candidate on every subscribed type.
    pub pending: Vec<String>,
}

/// Status of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// `Node.id`.
    pub node_id: String,
    /// Where the node stands against its target.
    pub state: SyncState,
    /// Whether at least one stream of the node is open.
    pub connected: bool,
    /// Version the node should converge to (the canary candidate for a canary node).
    pub target_version: String,
    /// Per subscribed type, what was last sent and ACKed.
    pub types: Vec<TypeStatus>,
    /// The node's last NACK, kept after later ACKs.
    pub last_nack: Option<Nack>,
    /// When the node last ACKed anything.
    pub last_ack_at: Option<SystemTime>,
    /// When the node was last sent anything.
    pub last_sent_at: Option<SystemTime>,
}

/// Where a node stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SyncState {
    /// It ACKed its target on every type it subscribes to (holds exactly the target's resources).
    Synced,
    /// Something was sent or is still to be sent and has not been ACKed yet.
    Stale,
    /// It rejected the newest generation pushed to its group and has not ACKed a newer one;
    /// it stays NACKED after the rollback, until the next push.
    Nacked,
}

/// One type on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeStatus {
    /// The type url.
    pub type_url: String,
    /// `version_info` (SotW) or `system_version_info` (delta) of the last response sent.
    pub last_sent_version: Option<String>,
    /// Nonce of the last response sent.
    pub last_sent_nonce: Option<String>,
    /// Version of the last response ACKed. A type whose resources did not change is not resent,
    /// so this can be an older version than the target while the node is synced.
    pub last_acked_version: Option<String>,
}

/// A rejected response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    /// Type of the rejected response.
    pub type_url: String,
    /// Version of the rejected response (what was sent, not what Envoy reports it keeps).
    pub version: String,
    /// Envoy's `error_detail.message`.
    pub error: String,
    /// When the NACK arrived.
    pub at: SystemTime,
}

/// Something that happened in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A node opened its first stream.
    Connected {
        /// Group.
        group: String,
        /// Node id.
        node: String,
    },
    /// A node closed its last stream.
    Disconnected {
        /// Group.
        group: String,
        /// Node id.
        node: String,
    },
    /// A node ACKed a response.
    Acked {
        /// Group.
        group: String,
        /// Node id.
        node: String,
        /// Type of the response.
        type_url: String,
        /// Version of the response.
        version: String,
    },
    /// A node NACKed a response.
    Nacked {
        /// Group.
        group: String,
        /// Node id.
        node: String,
        /// Type of the response.
        type_url: String,
        /// Version of the rejected response.
        version: String,
        /// Envoy's error detail.
        error: String,
    },
    /// The group went back to an earlier snapshot after a NACK (or a canary candidate was
    /// discarded and the canary nodes went back to the stable snapshot).
    RolledBack {
        /// Group.
        group: String,
        /// The rejected version.
        from_version: String,
        /// The version the group went back to.
        to_version: String,
    },
    /// Every canary node ACKed the candidate and it became the group's snapshot.
    CanaryPromoted {
        /// Group.
        group: String,
        /// The promoted version.
        version: String,
    },
    /// Every connected node of the group ACKed the group's snapshot on every subscribed type.
    /// Emitted once each time the group's snapshot changes (set, promotion, rollback) and
    /// then syncs; never while no node is connected (`wait_synced` returns at once then).
    Synced {
        /// Group.
        group: String,
        /// The synced version.
        version: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::ResourceType;

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            cluster: "g".into(),
            ..Default::default()
        }
    }

    fn snap(version: &str) -> Snapshot {
        Snapshot::builder(version)
            .build()
            .expect("empty snapshots are consistent")
    }

    fn drain(rx: &mut broadcast::Receiver<Event>) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
        out
    }

    /// Registers a stream and reports it holds its current target.
    fn synced_stream(cache: &SnapshotCache, id: &str) -> StreamHandle {
        let mut h = cache.open_stream(&node(id)).expect("node");
        h.subscribed(ResourceType::Cluster);
        let generation = h.target().map(|t| t.generation);
        h.synced(generation);
        h
    }

    fn state(cache: &SnapshotCache, id: &str) -> Option<SyncState> {
        cache
            .status()
            .iter()
            .flat_map(|g| g.nodes.iter())
            .find(|n| n.node_id == id)
            .map(|n| n.state)
    }

    #[tokio::test]
    async fn an_empty_group_is_synced_at_once_but_emits_no_synced() {
        let cache = SnapshotCache::new();
        let mut events = cache.events();
        cache.set_snapshot("g", snap("v1")).expect("set");
        cache
            .wait_synced("g", "v1", Duration::from_millis(10))
            .await
            .expect("vacuously synced");
        assert_eq!(drain(&mut events), []);

        let _h = synced_stream(&cache, "n1");
        assert_eq!(
            drain(&mut events),
            [
                Event::Connected {
                    group: "g".into(),
                    node: "n1".into()
                },
                Event::Synced {
                    group: "g".into(),
                    version: "v1".into()
                }
            ]
        );
        assert_eq!(state(&cache, "n1"), Some(SyncState::Synced));
    }

    #[tokio::test]
    async fn a_nack_rolls_back_to_the_nodes_last_synced_snapshot() {
        let cache = SnapshotCache::new();
        cache.set_snapshot("g", snap("v1")).expect("set");
        let mut h = synced_stream(&cache, "n1");
        cache.set_snapshot("g", snap("v2")).expect("set");
        let v2 = h.target().expect("target");
        assert_eq!(v2.snapshot.version(), "v2");
        h.synced(None);
        let mut events = cache.events();
        h.nacked(ResourceType::Cluster, "v2", v2.generation, "bad");
        assert_eq!(
            drain(&mut events),
            [
                Event::Nacked {
                    group: "g".into(),
                    node: "n1".into(),
                    type_url: ResourceType::Cluster.type_url().into(),
                    version: "v2".into(),
                    error: "bad".into()
                },
                Event::RolledBack {
                    group: "g".into(),
                    from_version: "v2".into(),
                    to_version: "v1".into()
                }
            ]
        );
        let v1 = h.target().expect("target");
        assert_eq!(v1.snapshot.version(), "v1");
        assert_eq!(
            cache.snapshot("g").map(|s| s.version().to_owned()),
            Some("v1".into())
        );
        let err = cache
            .wait_synced("g", "v2", Duration::from_millis(10))
            .await
            .expect_err("rolled back");
        assert!(matches!(err, Error::RolledBack { .. }), "{err:?}");
        h.synced(Some(v1.generation));
        cache
            .wait_synced("g", "v1", Duration::from_millis(10))
            .await
            .expect("back on v1");
        assert_eq!(state(&cache, "n1"), Some(SyncState::Nacked), "stays nacked");
        cache.set_snapshot("g", snap("v3")).expect("set");
        assert_eq!(
            state(&cache, "n1"),
            Some(SyncState::Stale),
            "a new push clears it"
        );
        let v3 = h.target().expect("target");
        h.synced(Some(v3.generation));
        assert_eq!(state(&cache, "n1"), Some(SyncState::Synced));
    }

    #[tokio::test]
    async fn a_canary_waits_for_a_canary_node_that_left() {
        let cache = SnapshotCache::new();
        cache.set_snapshot("g", snap("v1")).expect("set");
        let h1 = synced_stream(&cache, "n1");
        let _h2 = synced_stream(&cache, "n2");
        cache
            .set_snapshot_canary("g", snap("v2"), ["n1".to_owned()].into())
            .expect("canary");
        drop(h1);
        let err = cache
            .wait_synced("g", "v2", Duration::from_millis(20))
            .await
            .expect_err("pending");
        assert!(matches!(err, Error::Timeout { unsynced: 1, .. }), "{err:?}");
        // It comes back, gets the candidate, ACKs it: promoted.
        let mut events = cache.events();
        let mut h1 = cache.open_stream(&node("n1")).expect("node");
        let candidate = h1.target().expect("target");
        assert_eq!(candidate.snapshot.version(), "v2");
        h1.synced(Some(candidate.generation));
        assert!(drain(&mut events).contains(&Event::CanaryPromoted {
            group: "g".into(),
            version: "v2".into()
        }));
        assert_eq!(
            cache.snapshot("g").map(|s| s.version().to_owned()),
            Some("v2".into())
        );
    }

    #[test]
    fn a_canary_needs_a_snapshot_and_connected_nodes() {
        let cache = SnapshotCache::new();
        let _h = cache.open_stream(&node("n1")).expect("node");
        let err = cache
            .set_snapshot_canary("g", snap("v1"), ["n1".to_owned()].into())
            .expect_err("no stable snapshot");
        assert!(matches!(err, Error::NoSnapshot { .. }), "{err:?}");
        cache.set_snapshot("g", snap("v1")).expect("set");
        let err = cache
            .set_snapshot_canary("g", snap("v2"), BTreeSet::new())
            .expect_err("empty");
        assert!(matches!(err, Error::EmptyCanary { .. }), "{err:?}");
        let err = cache
            .set_snapshot_canary("g", snap("v2"), ["n2".to_owned()].into())
            .expect_err("n2 is not connected");
        assert_eq!(
            err.to_string(),
            "canary node `n2` is not connected in group `g`"
        );
        assert!(matches!(
            cache.open_stream(&Node::default()),
            Err(Error::MissingNode)
        ));
    }

    #[test]
    fn custom_grouping_picks_the_group() {
        let cache = SnapshotCache::with_grouping(|n: &Node| format!("by-id-{}", n.id));
        let _h = cache.open_stream(&node("n1")).expect("node");
        let groups: Vec<String> = cache.status().into_iter().map(|g| g.group).collect();
        assert_eq!(groups, ["by-id-n1"]);
    }
}
