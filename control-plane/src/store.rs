//! The telemetry store: filter reports merged per cluster and window, kept in an embedded redb
//! database, durable before a report is acknowledged.
//!
//! A report is one window of one Envoy worker. Windows of different workers and Envoys do not
//! line up exactly, so each report is assigned to the store window that contains its end, and
//! merged there with every other report of that cluster (counts add, latency sketches merge
//! exactly). A report is identified by (node, worker, sequence): the filter resends the same
//! report when it could not confirm delivery, and the store counts it once. Everything a
//! report changes is written in one transaction and committed (fsync) before `ingest`
//! returns, so a report the filter saw acknowledged survives a crash or a restart.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use shadowplane_wire::{ClusterStats, Report};

/// Merged windows: (cluster, window start ms) -> a one-cluster `Report`, encoded with
/// crates/wire's codec (its decoder checks every invariant when the window is read back).
const WINDOWS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("windows");
/// Reports already counted: (node, worker, sequence) -> the window end ms, for pruning.
const SEEN: TableDefinition<(&str, &str, u64), u64> = TableDefinition::new("seen");
/// Counters: name -> value.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// The control plane's own state (weights, generation): key -> JSON.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// System metrics sampled by the provisioner: (group, sample time ms) -> the sample as JSON.
const SYSTEM: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("system");
/// Envoy's own upstream request times of a group, from its stats sink: (group, flush time ms,
/// Envoy node) -> the sample as JSON. This is how an idle group's latency (a cold shadow's, a
/// standby primary's: they only get mirrored requests, which the filter never sees) is kept.
const UPSTREAM: TableDefinition<(&str, u64, &str), &[u8]> = TableDefinition::new("upstream");

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (open, transaction, table, commit).
    #[error("telemetry store: {0}")]
    Db(String),
    /// A stored window does not decode: the file was damaged or written by something else.
    #[error("telemetry store: window {cluster}@{start_ms} is unreadable: {reason}")]
    Corrupt {
        /// The cluster.
        cluster: String,
        /// The window start.
        start_ms: u64,
        /// What the decoder said.
        reason: String,
    },
    /// A report that is valid on its own but cannot be added to what is stored (a count would
    /// overflow): it is refused and the stored window stays as it was.
    #[error("telemetry store: report cannot be merged into window {cluster}@{start_ms}: {reason}")]
    Unmergeable {
        /// The cluster.
        cluster: String,
        /// The window start.
        start_ms: u64,
        /// What the merge said.
        reason: String,
    },
}

fn dberr<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// What became of one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Merged and committed.
    Stored,
    /// Seen before (a resend): nothing changed.
    Duplicate,
}

/// One merged window of one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Window start, ms since the Unix epoch (a multiple of the window length).
    pub start_ms: u64,
    /// Window end (start + length).
    pub end_ms: u64,
    /// Number of reports merged into it.
    pub reports: u64,
    /// The merged statistics.
    pub stats: ClusterStats,
}

/// The embedded telemetry database.
pub struct Store {
    db: Database,
    window_ms: u64,
    retention_ms: u64,
}

impl Store {
    /// Opens (or creates) the database at `path`; windows are `window_ms` long and kept for
    /// `retention_ms`.
    pub fn open(path: &Path, window_ms: u64, retention_ms: u64) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(dberr)?;
        }
        let db = Database::create(path).map_err(dberr)?;
        // Create the tables up front so readers never see them missing.
        let tx = db.begin_write().map_err(dberr)?;
        tx.open_table(WINDOWS).map_err(dberr)?;
        tx.open_table(SEEN).map_err(dberr)?;
        tx.open_table(COUNTERS).map_err(dberr)?;
        tx.open_table(STATE).map_err(dberr)?;
        tx.open_table(SYSTEM).map_err(dberr)?;
        tx.open_table(UPSTREAM).map_err(dberr)?;
        tx.commit().map_err(dberr)?;
        Ok(Store {
            db,
            window_ms: window_ms.max(1),
            retention_ms,
        })
    }

    /// The window a report ending at `end_ms` belongs to.
    fn window_of(&self, end_ms: u64) -> u64 {
        let t = end_ms.saturating_sub(1);
        t - t % self.window_ms
    }

    /// Merges `report` into its windows and commits, unless it was counted before. Windows and
    /// de-duplication records older than `now_ms - retention` are pruned in the same
    /// transaction.
    pub fn ingest(&self, report: &Report, now_ms: u64) -> Result<Ingested, StoreError> {
        let start = self.window_of(report.window_end_ms);
        let tx = self.db.begin_write().map_err(dberr)?;
        let outcome = {
            let mut seen = tx.open_table(SEEN).map_err(dberr)?;
            let key = (
                report.node_id.as_str(),
                report.worker.as_str(),
                report.sequence,
            );
            if seen.get(key).map_err(dberr)?.is_some() {
                Ingested::Duplicate
            } else {
                seen.insert(key, report.window_end_ms).map_err(dberr)?;
                let mut windows = tx.open_table(WINDOWS).map_err(dberr)?;
                for stats in &report.clusters {
                    let wkey = (stats.cluster.as_str(), start);
                    let mut merged = match windows.get(wkey).map_err(dberr)? {
                        Some(v) => decode_window(&stats.cluster, start, v.value())?,
                        None => Window {
                            start_ms: start,
                            end_ms: start + self.window_ms,
                            reports: 0,
                            stats: ClusterStats::new(stats.cluster.clone()),
                        },
                    };
                    // An error returns before the commit: the transaction is dropped and
                    // nothing of this report is stored.
                    merged
                        .stats
                        .merge(stats)
                        .map_err(|e| StoreError::Unmergeable {
                            cluster: stats.cluster.clone(),
                            start_ms: start,
                            reason: e.to_string(),
                        })?;
                    merged.reports += 1;
                    windows
                        .insert(wkey, encode_window(&merged).as_slice())
                        .map_err(dberr)?;
                }
                Ingested::Stored
            }
        };
        {
            let mut counters = tx.open_table(COUNTERS).map_err(dberr)?;
            let name = match outcome {
                Ingested::Stored => "reports",
                Ingested::Duplicate => "duplicates",
            };
            bump(&mut counters, name, 1)?;
        }
        self.prune(&tx, now_ms)?;
        tx.commit().map_err(dberr)?;
        Ok(outcome)
    }

    fn prune(&self, tx: &redb::WriteTransaction, now_ms: u64) -> Result<(), StoreError> {
        let Some(cutoff) = now_ms.checked_sub(self.retention_ms) else {
            return Ok(());
        };
        {
            let mut windows = tx.open_table(WINDOWS).map_err(dberr)?;
            windows
                .retain(|(_, start), _| start + self.window_ms > cutoff)
                .map_err(dberr)?;
        }
        {
            let mut system = tx.open_table(SYSTEM).map_err(dberr)?;
            system.retain(|(_, at), _| at > cutoff).map_err(dberr)?;
        }
        {
            let mut upstream = tx.open_table(UPSTREAM).map_err(dberr)?;
            upstream
                .retain(|(_, at, _), _| at > cutoff)
                .map_err(dberr)?;
        }
        let mut seen = tx.open_table(SEEN).map_err(dberr)?;
        seen.retain(|_, end| end > cutoff).map_err(dberr)?;
        Ok(())
    }

    /// Stores one system-metrics sample of `group` taken at `at_ms` (pruned with the windows).
    pub fn put_system(
        &self,
        group: &str,
        at_ms: u64,
        sample: &[u8],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut t = tx.open_table(SYSTEM).map_err(dberr)?;
            t.insert((group, at_ms), sample).map_err(dberr)?;
        }
        self.prune(&tx, now_ms)?;
        tx.commit().map_err(dberr)
    }

    /// The system-metrics samples of `group` taken at or after `since_ms`, oldest first.
    pub fn system(&self, group: &str, since_ms: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(SYSTEM).map_err(dberr)?;
        let mut out = Vec::new();
        for row in t
            .range((group, since_ms)..=(group, u64::MAX))
            .map_err(dberr)?
        {
            let (k, v) = row.map_err(dberr)?;
            out.push((k.value().1, v.value().to_vec()));
        }
        Ok(out)
    }

    /// Stores Envoy upstream samples of `group`, each (flush time ms, node, sample), in one
    /// transaction (pruned with the windows). Storing a sample again replaces it.
    pub fn put_upstream(
        &self,
        group: &str,
        samples: &[(u64, String, Vec<u8>)],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if samples.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut t = tx.open_table(UPSTREAM).map_err(dberr)?;
            for (at, node, sample) in samples {
                t.insert((group, *at, node.as_str()), sample.as_slice())
                    .map_err(dberr)?;
            }
        }
        self.prune(&tx, now_ms)?;
        tx.commit().map_err(dberr)
    }

    /// The Envoy upstream samples of `group` flushed at or after `since_ms`, oldest first:
    /// (flush time ms, node, sample).
    pub fn upstream(
        &self,
        group: &str,
        since_ms: u64,
    ) -> Result<Vec<(u64, String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(UPSTREAM).map_err(dberr)?;
        let mut out = Vec::new();
        for row in t
            .range((group, since_ms, "")..=(group, u64::MAX, "\u{10FFFF}"))
            .map_err(dberr)?
        {
            let (k, v) = row.map_err(dberr)?;
            let (_, at, node) = k.value();
            out.push((at, node.to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Adds `by` to the counter `name` (for rejected reports, which store nothing else).
    pub fn count(&self, name: &str, by: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut counters = tx.open_table(COUNTERS).map_err(dberr)?;
            bump(&mut counters, name, by)?;
        }
        tx.commit().map_err(dberr)
    }

    /// Stores `value` under `key` in the control plane's state, durably.
    pub fn put_state(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut t = tx.open_table(STATE).map_err(dberr)?;
            t.insert(key, value).map_err(dberr)?;
        }
        tx.commit().map_err(dberr)
    }

    /// The state stored under `key`, if any.
    pub fn state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(STATE).map_err(dberr)?;
        Ok(t.get(key).map_err(dberr)?.map(|v| v.value().to_vec()))
    }

    /// Every counter.
    pub fn counters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(COUNTERS).map_err(dberr)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            out.push((k.value().to_string(), v.value()));
        }
        Ok(out)
    }

    /// The windows of `cluster` starting at or after `since_ms`, oldest first.
    pub fn windows(&self, cluster: &str, since_ms: u64) -> Result<Vec<Window>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(WINDOWS).map_err(dberr)?;
        let mut out = Vec::new();
        for row in t
            .range((cluster, since_ms)..=(cluster, u64::MAX))
            .map_err(dberr)?
        {
            let (k, v) = row.map_err(dberr)?;
            out.push(decode_window(cluster, k.value().1, v.value())?);
        }
        Ok(out)
    }

    /// Every cluster with a stored window, with its totals over the retained windows.
    pub fn totals(&self) -> Result<Vec<(String, u64, ClusterStats)>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(WINDOWS).map_err(dberr)?;
        let mut out: Vec<(String, u64, ClusterStats)> = Vec::new();
        for row in t.iter().map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            let (cluster, start) = k.value();
            let w = decode_window(cluster, start, v.value())?;
            match out.last_mut() {
                Some((c, n, s)) if c == cluster => {
                    *n += 1;
                    s.merge(&w.stats).map_err(|e| StoreError::Unmergeable {
                        cluster: cluster.to_string(),
                        start_ms: start,
                        reason: e.to_string(),
                    })?;
                }
                _ => out.push((cluster.to_string(), 1, w.stats)),
            }
        }
        Ok(out)
    }
}

fn bump(t: &mut redb::Table<'_, &'static str, u64>, name: &str, by: u64) -> Result<(), StoreError> {
    let now = t.get(name).map_err(dberr)?.map_or(0, |v| v.value());
    t.insert(name, now + by).map_err(dberr)?;
    Ok(())
}

fn encode_window(w: &Window) -> Vec<u8> {
    Report {
        node_id: "shadowplane-store".to_string(),
        worker: "merged".to_string(),
        sequence: w.reports,
        window_start_ms: w.start_ms,
        window_end_ms: w.end_ms,
        reports_dropped: 0,
        clusters: vec![w.stats.clone()],
    }
    .encode()
}

fn decode_window(cluster: &str, start_ms: u64, bytes: &[u8]) -> Result<Window, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        cluster: cluster.to_string(),
        start_ms,
        reason,
    };
    let r = Report::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    let stats = r
        .clusters
        .into_iter()
        .next()
        .ok_or_else(|| corrupt("no cluster in the window".into()))?;
    Ok(Window {
        start_ms: r.window_start_ms,
        end_ms: r.window_end_ms,
        reports: r.sequence,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowplane_wire::LatencySketch;

    fn report(
        node: &str,
        worker: &str,
        seq: u64,
        end_ms: u64,
        cluster: &str,
        rq: u64,
        us: f64,
    ) -> Report {
        let mut latency = LatencySketch::new();
        for _ in 0..rq {
            latency.add(us);
        }
        Report {
            node_id: node.into(),
            worker: worker.into(),
            sequence: seq,
            window_start_ms: end_ms - 1000,
            window_end_ms: end_ms,
            reports_dropped: 0,
            clusters: vec![ClusterStats {
                requests: rq,
                responses_2xx: rq,
                latency,
                ..ClusterStats::new(cluster)
            }],
        }
    }

    #[test]
    fn a_report_that_would_overflow_the_window_is_refused_and_nothing_stored_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb"), 1000, 3_600_000).unwrap();
        let now = 5_002_000;
        let mut first = report("a", "0", 1, 5_000_400, "blue", 10, 1000.0);
        first.clusters[0].request_bytes = 5;
        store.ingest(&first, now).unwrap();
        // Valid on its own; its byte count overflows the stored window's once added.
        let mut huge = report("b", "0", 1, 5_000_500, "blue", 1, 1000.0);
        huge.clusters[0].request_bytes = u64::MAX;
        let before = store.windows("blue", 0).unwrap();
        let err = store.ingest(&huge, now).unwrap_err();
        assert!(
            matches!(err, StoreError::Unmergeable { ref cluster, .. } if cluster == "blue"),
            "{err}"
        );
        assert_eq!(store.windows("blue", 0).unwrap(), before);
        // Not marked as seen either: once the sender fixes it, the same sequence is taken.
        huge.clusters[0].request_bytes = 1;
        assert_eq!(store.ingest(&huge, now).unwrap(), Ingested::Stored);
        assert_eq!(store.windows("blue", 0).unwrap()[0].stats.requests, 11);
    }

    #[test]
    fn merges_workers_and_envoys_per_window_and_counts_resends_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb"), 1000, 3_600_000).unwrap();
        let now = 5_002_000;
        // Two Envoys, two workers, windows ending within the same second.
        assert_eq!(
            store
                .ingest(&report("a", "0", 1, 5_000_400, "blue", 10, 1000.0), now)
                .unwrap(),
            Ingested::Stored
        );
        assert_eq!(
            store
                .ingest(&report("a", "1", 1, 5_000_900, "blue", 5, 2000.0), now)
                .unwrap(),
            Ingested::Stored
        );
        assert_eq!(
            store
                .ingest(&report("b", "0", 1, 5_000_001, "blue", 5, 3000.0), now)
                .unwrap(),
            Ingested::Stored
        );
        assert_eq!(
            store
                .ingest(&report("a", "0", 1, 5_000_400, "blue", 10, 1000.0), now)
                .unwrap(),
            Ingested::Duplicate
        );
        // The next window.
        store
            .ingest(&report("a", "0", 2, 5_001_400, "blue", 7, 1000.0), now)
            .unwrap();
        let w = store.windows("blue", 0).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].start_ms, w[0].end_ms, w[0].reports),
            (5_000_000, 5_001_000, 3)
        );
        assert_eq!(w[0].stats.requests, 20);
        assert_eq!(w[0].stats.latency.count(), 20);
        let p50 = w[0].stats.latency.quantile(0.5).unwrap();
        assert!((p50 - 1000.0).abs() <= 10.0, "{p50}");
        assert_eq!(w[1].stats.requests, 7);
        assert!(store.windows("green", 0).unwrap().is_empty());
        let counters: std::collections::BTreeMap<_, _> =
            store.counters().unwrap().into_iter().collect();
        assert_eq!(counters.get("reports"), Some(&4));
        assert_eq!(counters.get("duplicates"), Some(&1));
    }

    #[test]
    fn system_samples_are_kept_per_group_in_order_survive_reopening_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let store = Store::open(&path, 1000, 10_000).unwrap();
            store.put_system("blue", 2_000, b"b2", 2_000).unwrap();
            store.put_system("blue", 1_000, b"b1", 2_000).unwrap();
            store.put_system("green", 1_500, b"g", 2_000).unwrap();
        }
        let store = Store::open(&path, 1000, 10_000).unwrap();
        assert_eq!(
            store.system("blue", 0).unwrap(),
            vec![(1_000, b"b1".to_vec()), (2_000, b"b2".to_vec())]
        );
        assert_eq!(store.system("blue", 1_001).unwrap().len(), 1);
        // Past the retention, with the next write.
        store.put_system("blue", 11_500, b"b3", 11_500).unwrap();
        assert_eq!(
            store.system("blue", 0).unwrap(),
            vec![(2_000, b"b2".to_vec()), (11_500, b"b3".to_vec())]
        );
        assert!(store.system("green", 0).unwrap().is_empty());
    }

    #[test]
    fn survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let store = Store::open(&path, 1000, 3_600_000).unwrap();
            store
                .ingest(
                    &report("a", "0", 1, 5_000_400, "blue", 10, 1000.0),
                    5_000_500,
                )
                .unwrap();
        }
        let store = Store::open(&path, 1000, 3_600_000).unwrap();
        let totals = store.totals().unwrap();
        assert_eq!(totals.len(), 1);
        assert_eq!(
            (totals[0].0.as_str(), totals[0].1, totals[0].2.requests),
            ("blue", 1, 10)
        );
        // A resend after the restart is still a duplicate.
        assert_eq!(
            store
                .ingest(
                    &report("a", "0", 1, 5_000_400, "blue", 10, 1000.0),
                    5_000_600
                )
                .unwrap(),
            Ingested::Duplicate
        );
    }

    #[test]
    fn retention_prunes_old_windows_and_their_dedup_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb"), 1000, 60_000).unwrap();
        store
            .ingest(&report("a", "0", 1, 1_000_500, "blue", 1, 1.0), 1_000_600)
            .unwrap();
        store
            .ingest(&report("a", "0", 2, 1_100_500, "blue", 1, 1.0), 1_100_600)
            .unwrap();
        let w = store.windows("blue", 0).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].start_ms, 1_100_000);
    }

    #[test]
    fn upstream_samples_survive_a_restart_and_are_pruned_with_the_windows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let store = Store::open(&path, 1000, 60_000).unwrap();
            let rows = vec![
                (1_000_000, "edge-b".to_string(), b"1".to_vec()),
                (1_000_000, "edge-a".to_string(), b"2".to_vec()),
                (1_001_000, "edge-a".to_string(), b"3".to_vec()),
            ];
            store.put_upstream("green", &rows, 1_001_000).unwrap();
            store
                .put_upstream(
                    "blue",
                    &[(1_000_500, "edge-a".into(), b"x".to_vec())],
                    1_001_000,
                )
                .unwrap();
        }
        let store = Store::open(&path, 1000, 60_000).unwrap();
        let got = store.upstream("green", 0).unwrap();
        let keys: Vec<(u64, &str)> = got.iter().map(|(a, n, _)| (*a, n.as_str())).collect();
        assert_eq!(
            keys,
            [
                (1_000_000, "edge-a"),
                (1_000_000, "edge-b"),
                (1_001_000, "edge-a")
            ]
        );
        assert_eq!(store.upstream("green", 1_000_001).unwrap().len(), 1);
        // Past the retention, the next write prunes them.
        store
            .put_upstream(
                "green",
                &[(1_100_000, "edge-a".into(), b"4".to_vec())],
                1_100_000,
            )
            .unwrap();
        assert_eq!(store.upstream("green", 0).unwrap().len(), 1);
        assert!(store.upstream("blue", 0).unwrap().is_empty());
    }
}
