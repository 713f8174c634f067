//! A stream's registration in its group: what it reports to the cache and how it learns its target.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use super::group::{Target, Targets};
use super::{GroupCell, Nack};
use crate::resource::ResourceType;

/// One open xDS stream of one node. Dropping it unregisters the stream (and, for the node's
/// last stream, emits `Disconnected`).
pub(crate) struct StreamHandle {
    cell: Arc<GroupCell>,
    node_id: Arc<str>,
    stream_id: u64,
    targets: watch::Receiver<Arc<Targets>>,
}

impl StreamHandle {
    pub(super) fn open(cell: Arc<GroupCell>, node_id: Arc<str>, stream_id: u64) -> Self {
        let targets = cell.targets.subscribe();
        cell.update(|g, fx| g.stream_opened(&node_id, stream_id, fx));
        StreamHandle {
            cell,
            node_id,
            stream_id,
            targets,
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn group(&self) -> &str {
        &self.cell.name
    }

    /// The node's current target, marking the published targets as seen.
    pub fn target(&mut self) -> Option<Target> {
        let targets = self.targets.borrow_and_update().clone();
        targets.for_node(&self.node_id).cloned()
    }

    /// Resolves when the group's targets change (cancel-safe).
    pub async fn changed(&mut self) {
        if self.targets.changed().await.is_err() {
            // The sender lives in the cell, which this handle keeps alive; never happens.
            std::future::pending::<()>().await;
        }
    }

    pub fn subscribed(&self, t: ResourceType) {
        self.cell
            .update(|g, _| g.stream_subscribed(&self.node_id, self.stream_id, t));
    }

    pub fn sent(&self, t: ResourceType, version: &str, nonce: &str) {
        self.cell
            .update(|g, _| g.stream_sent(&self.node_id, self.stream_id, t, version, nonce));
    }

    pub fn acked(&self, t: ResourceType, version: &str) {
        self.cell
            .update(|g, fx| g.stream_acked(&self.node_id, self.stream_id, t, version, fx));
    }

    pub fn nacked(&self, t: ResourceType, version: &str, generation: u64, error: &str) {
        let nack = Nack {
            type_url: t.type_url().to_owned(),
            version: version.to_owned(),
            error: error.to_owned(),
            at: SystemTime::now(),
        };
        self.cell
            .update(|g, fx| g.stream_nacked(&self.node_id, nack, generation, fx));
    }

    /// Reports the generation this stream holds in full on every subscribed type (or none).
    pub fn synced(&self, generation: Option<u64>) {
        self.cell
            .update(|g, fx| g.stream_synced(&self.node_id, self.stream_id, generation, fx));
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.cell
            .update(|g, fx| g.stream_closed(&self.node_id, self.stream_id, fx));
    }
}
