//! The telemetry report: one window of one Envoy worker, as protobuf on the wire.
//!
//! The protobuf messages are private (`pb`); callers see [`Report`], which [`Report::decode`]
//! only returns after every field was checked, so the control plane never stores a report that
//! breaks the schema.

use crate::error::{Error, Result};
use crate::sketch::LatencySketch;

/// The schema version this crate writes and the only one it reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The `content-type` of an encoded report.
pub const REPORT_CONTENT_TYPE: &str = "application/x-protobuf";

/// A report naming more upstream clusters than this is refused (the filter caps itself lower).
pub const MAX_CLUSTERS_PER_REPORT: usize = 1024;

mod pb {
    //! Wire messages. Field numbers are the contract: never reuse one.

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Report {
        #[prost(uint32, tag = "1")]
        pub schema_version: u32,
        #[prost(string, tag = "2")]
        pub node_id: String,
        #[prost(string, tag = "3")]
        pub worker: String,
        #[prost(uint64, tag = "4")]
        pub sequence: u64,
        #[prost(uint64, tag = "5")]
        pub window_start_ms: u64,
        #[prost(uint64, tag = "6")]
        pub window_end_ms: u64,
        #[prost(uint64, tag = "7")]
        pub reports_dropped: u64,
        #[prost(message, repeated, tag = "8")]
        pub clusters: Vec<ClusterStats>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ClusterStats {
        #[prost(string, tag = "1")]
        pub cluster: String,
        #[prost(uint64, tag = "2")]
        pub requests: u64,
        #[prost(uint64, tag = "3")]
        pub responses_2xx: u64,
        #[prost(uint64, tag = "4")]
        pub responses_3xx: u64,
        #[prost(uint64, tag = "5")]
        pub responses_4xx: u64,
        #[prost(uint64, tag = "6")]
        pub responses_5xx: u64,
        #[prost(uint64, tag = "7")]
        pub no_response: u64,
        #[prost(uint64, tag = "8")]
        pub local_resets: u64,
        #[prost(uint64, tag = "9")]
        pub upstream_resets: u64,
        #[prost(uint64, tag = "10")]
        pub timeouts: u64,
        #[prost(uint64, tag = "11")]
        pub request_bytes: u64,
        #[prost(uint64, tag = "12")]
        pub response_bytes: u64,
        #[prost(message, optional, tag = "13")]
        pub latency: Option<Sketch>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sketch {
        /// The relative accuracy the bins were made with; must equal the crate's.
        #[prost(double, tag = "1")]
        pub relative_accuracy: f64,
        #[prost(sint32, repeated, tag = "2")]
        pub keys: Vec<i32>,
        #[prost(uint64, repeated, tag = "3")]
        pub counts: Vec<u64>,
        #[prost(uint64, tag = "4")]
        pub zero_count: u64,
        #[prost(double, tag = "5")]
        pub sum: f64,
        #[prost(double, tag = "6")]
        pub min: f64,
        #[prost(double, tag = "7")]
        pub max: f64,
    }
}

/// Counters and latency of one upstream cluster within one window.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterStats {
    /// The Envoy cluster that served the requests (`xds.cluster_name`).
    pub cluster: String,
    /// Requests completed in the window (every one is counted exactly once, at stream end).
    pub requests: u64,
    /// Responses with a 2xx status.
    pub responses_2xx: u64,
    /// Responses with a 3xx status.
    pub responses_3xx: u64,
    /// Responses with a 4xx status.
    pub responses_4xx: u64,
    /// Responses with a 5xx status (including Envoy's own 503s).
    pub responses_5xx: u64,
    /// Streams that ended without any response code.
    pub no_response: u64,
    /// Streams Envoy reset locally (response flag `LR`).
    pub local_resets: u64,
    /// Upstream connection failures, terminations and resets (flags `UF`, `UC`, `UR`).
    pub upstream_resets: u64,
    /// Upstream request timeouts and stream idle timeouts (flags `UT`, `SI`).
    pub timeouts: u64,
    /// Request body bytes received from downstream.
    pub request_bytes: u64,
    /// Response body bytes sent to downstream.
    pub response_bytes: u64,
    /// Time from request headers to the end of the response, in microseconds.
    pub latency: LatencySketch,
}

impl ClusterStats {
    /// Empty statistics for `cluster`.
    pub fn new(cluster: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            ..Self::default()
        }
    }

    /// Adds `other`'s counts and samples into `self` (the cluster names must match; the caller
    /// keys by name).
    ///
    /// Fails, leaving `self` as it was, when a count would overflow or the latency sum would
    /// stop being finite: each report can be valid on its own and their merge not, and a
    /// stored merge that does not decode would refuse every later report of its window.
    pub fn merge(&mut self, other: &ClusterStats) -> Result<()> {
        let mut next = self.clone();
        for (field, mine, theirs) in [
            ("requests", &mut next.requests, other.requests),
            (
                "responses_2xx",
                &mut next.responses_2xx,
                other.responses_2xx,
            ),
            (
                "responses_3xx",
                &mut next.responses_3xx,
                other.responses_3xx,
            ),
            (
                "responses_4xx",
                &mut next.responses_4xx,
                other.responses_4xx,
            ),
            (
                "responses_5xx",
                &mut next.responses_5xx,
                other.responses_5xx,
            ),
            ("no_response", &mut next.no_response, other.no_response),
            ("local_resets", &mut next.local_resets, other.local_resets),
            (
                "upstream_resets",
                &mut next.upstream_resets,
                other.upstream_resets,
            ),
            ("timeouts", &mut next.timeouts, other.timeouts),
            (
                "request_bytes",
                &mut next.request_bytes,
                other.request_bytes,
            ),
            (
                "response_bytes",
                &mut next.response_bytes,
                other.response_bytes,
            ),
        ] {
            *mine = mine
                .checked_add(theirs)
                .ok_or_else(|| Error::report(field, "overflows when merged"))?;
        }
        next.latency.merge(&other.latency)?;
        *self = next;
        Ok(())
    }

    /// Responses by class, then streams with none: these add up to `requests`.
    fn classes(&self) -> [u64; 5] {
        [
            self.responses_2xx,
            self.responses_3xx,
            self.responses_4xx,
            self.responses_5xx,
            self.no_response,
        ]
    }
}

/// One telemetry window of one Envoy worker.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// Envoy's node id (`--service-node` or the bootstrap's `node.id`).
    pub node_id: String,
    /// Identifies the reporting Wasm VM (one per Envoy worker) for the lifetime of that VM.
    pub worker: String,
    /// Per-worker sequence number, starting at 1: a resent report keeps its number, so the
    /// receiver can drop duplicates.
    pub sequence: u64,
    /// Window start, Unix milliseconds.
    pub window_start_ms: u64,
    /// Window end, Unix milliseconds.
    pub window_end_ms: u64,
    /// Reports this worker dropped from its buffer since it started (cumulative).
    pub reports_dropped: u64,
    /// Statistics per upstream cluster.
    pub clusters: Vec<ClusterStats>,
}

impl Report {
    /// Encodes the report as protobuf.
    pub fn encode(&self) -> Vec<u8> {
        use prost::Message;
        let msg = pb::Report {
            schema_version: SCHEMA_VERSION,
            node_id: self.node_id.clone(),
            worker: self.worker.clone(),
            sequence: self.sequence,
            window_start_ms: self.window_start_ms,
            window_end_ms: self.window_end_ms,
            reports_dropped: self.reports_dropped,
            clusters: self.clusters.iter().map(encode_cluster).collect(),
        };
        msg.encode_to_vec()
    }

    /// Decodes and validates a report; arbitrary bytes give an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        use prost::Message;
        let msg = pb::Report::decode(bytes)?;
        if msg.schema_version != SCHEMA_VERSION {
            return Err(Error::report(
                "schema_version",
                format!(
                    "version {} is not supported (expected {SCHEMA_VERSION})",
                    msg.schema_version
                ),
            ));
        }
        if msg.node_id.is_empty() {
            return Err(Error::report("node_id", "must not be empty"));
        }
        if msg.worker.is_empty() {
            return Err(Error::report("worker", "must not be empty"));
        }
        if msg.sequence == 0 {
            return Err(Error::report("sequence", "starts at 1"));
        }
        if msg.window_end_ms < msg.window_start_ms {
            return Err(Error::report(
                "window_end_ms",
                "window ends before it starts",
            ));
        }
        if msg.clusters.len() > MAX_CLUSTERS_PER_REPORT {
            return Err(Error::report(
                "clusters",
                format!(
                    "{} clusters, at most {MAX_CLUSTERS_PER_REPORT}",
                    msg.clusters.len()
                ),
            ));
        }
        let mut clusters: Vec<ClusterStats> = Vec::with_capacity(msg.clusters.len());
        for (i, c) in msg.clusters.into_iter().enumerate() {
            let field = format!("clusters[{i}]");
            let stats = decode_cluster(&field, c)?;
            if clusters.iter().any(|o| o.cluster == stats.cluster) {
                return Err(Error::report(
                    format!("{field}.cluster"),
                    "cluster named twice",
                ));
            }
            clusters.push(stats);
        }
        Ok(Report {
            node_id: msg.node_id,
            worker: msg.worker,
            sequence: msg.sequence,
            window_start_ms: msg.window_start_ms,
            window_end_ms: msg.window_end_ms,
            reports_dropped: msg.reports_dropped,
            clusters,
        })
    }

    /// Total requests over all clusters.
    pub fn requests(&self) -> u64 {
        self.clusters.iter().map(|c| c.requests).sum()
    }
}

fn encode_cluster(c: &ClusterStats) -> pb::ClusterStats {
    let (bins, zero_count) = c.latency.parts();
    let (keys, counts) = bins.unzip();
    pb::ClusterStats {
        cluster: c.cluster.clone(),
        requests: c.requests,
        responses_2xx: c.responses_2xx,
        responses_3xx: c.responses_3xx,
        responses_4xx: c.responses_4xx,
        responses_5xx: c.responses_5xx,
        no_response: c.no_response,
        local_resets: c.local_resets,
        upstream_resets: c.upstream_resets,
        timeouts: c.timeouts,
        request_bytes: c.request_bytes,
        response_bytes: c.response_bytes,
        latency: Some(pb::Sketch {
            relative_accuracy: crate::RELATIVE_ACCURACY,
            keys,
            counts,
            zero_count,
            sum: c.latency.sum(),
            min: c.latency.min().unwrap_or(0.0),
            max: c.latency.max().unwrap_or(0.0),
        }),
    }
}

fn decode_cluster(field: &str, c: pb::ClusterStats) -> Result<ClusterStats> {
    if c.cluster.is_empty() {
        return Err(Error::report(
            format!("{field}.cluster"),
            "must not be empty",
        ));
    }
    let latency = match c.latency {
        None => LatencySketch::new(),
        Some(s) => {
            let sf = format!("{field}.latency");
            if s.relative_accuracy != crate::RELATIVE_ACCURACY {
                return Err(Error::report(
                    format!("{sf}.relative_accuracy"),
                    format!(
                        "{} does not match {}",
                        s.relative_accuracy,
                        crate::RELATIVE_ACCURACY
                    ),
                ));
            }
            LatencySketch::from_parts(&sf, &s.keys, &s.counts, s.zero_count, s.sum, s.min, s.max)?
        }
    };
    let stats = ClusterStats {
        cluster: c.cluster,
        requests: c.requests,
        responses_2xx: c.responses_2xx,
        responses_3xx: c.responses_3xx,
        responses_4xx: c.responses_4xx,
        responses_5xx: c.responses_5xx,
        no_response: c.no_response,
        local_resets: c.local_resets,
        upstream_resets: c.upstream_resets,
        timeouts: c.timeouts,
        request_bytes: c.request_bytes,
        response_bytes: c.response_bytes,
        latency,
    };
    let classes = stats
        .classes()
        .iter()
        .try_fold(0u64, |a, b| a.checked_add(*b));
    if classes != Some(stats.requests) {
        return Err(Error::report(
            format!("{field}.requests"),
            format!(
                "{} requests but the response classes add up to {classes:?}",
                stats.requests
            ),
        ));
    }
    if stats.latency.count() > stats.requests {
        return Err(Error::report(
            format!("{field}.latency"),
            format!(
                "{} samples for {} requests",
                stats.latency.count(),
                stats.requests
            ),
        ));
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Report {
        let mut primary = ClusterStats::new("primary");
        for (i, code) in [200u32, 200, 503, 404, 301].iter().enumerate() {
            primary.requests += 1;
            match code / 100 {
                2 => primary.responses_2xx += 1,
                3 => primary.responses_3xx += 1,
                4 => primary.responses_4xx += 1,
                _ => primary.responses_5xx += 1,
            }
            primary.latency.add(1000.0 * (i + 1) as f64);
        }
        primary.request_bytes = 512;
        primary.response_bytes = 4096;
        Report {
            node_id: "envoy-a".into(),
            worker: "w0".into(),
            sequence: 7,
            window_start_ms: 1_000,
            window_end_ms: 2_000,
            reports_dropped: 3,
            clusters: vec![primary, ClusterStats::new("shadow")],
        }
    }

    #[test]
    fn round_trips() {
        let r = sample();
        assert_eq!(Report::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn rejects_inconsistent_counts_naming_the_field() {
        let mut r = sample();
        r.clusters[0].requests += 1;
        let err = Report::decode(&r.encode()).unwrap_err().to_string();
        assert!(err.contains("clusters[0].requests"), "{err}");
    }

    #[test]
    fn a_merge_that_would_overflow_fails_naming_the_field_and_changes_nothing() {
        let mut a = sample().clusters.remove(0);
        let before = a.clone();
        let mut b = a.clone();
        b.response_bytes = u64::MAX;
        let err = a.merge(&b).unwrap_err().to_string();
        assert!(err.contains("response_bytes"), "{err}");
        assert_eq!(a, before);
        a.merge(&before).unwrap();
        assert_eq!(a.requests, 2 * before.requests);
        assert_eq!(a.latency.count(), 2 * before.latency.count());
    }

    #[test]
    fn rejects_duplicate_clusters() {
        let mut r = sample();
        r.clusters[1].cluster = "primary".into();
        let err = Report::decode(&r.encode()).unwrap_err().to_string();
        assert!(err.contains("clusters[1].cluster"), "{err}");
    }

    #[test]
    fn rejects_other_schema_version() {
        use prost::Message;
        let mut m = pb::Report::decode(sample().encode().as_slice()).unwrap();
        m.schema_version = 2;
        let err = Report::decode(&m.encode_to_vec()).unwrap_err().to_string();
        assert!(err.contains("schema_version"), "{err}");
    }

    #[test]
    fn rejects_unsorted_sketch_keys() {
        use prost::Message;
        let mut m = pb::Report::decode(sample().encode().as_slice()).unwrap();
        let s = m.clusters[0].latency.as_mut().unwrap();
        s.keys.reverse();
        let err = Report::decode(&m.encode_to_vec()).unwrap_err().to_string();
        assert!(err.contains("clusters[0].latency.keys[1]"), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = Report::decode(&bytes);
        }

        #[test]
        fn mutated_reports_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut bytes = sample().encode();
            for (i, b) in flips {
                let at = i.index(bytes.len());
                bytes[at] = b;
            }
            let _ = Report::decode(&bytes);
        }
    }
}
