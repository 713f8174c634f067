//! Per-worker aggregation and report delivery, as plain Rust driven by the host module.
//!
//! [`Telemetry`] owns the current window of per-cluster statistics and a bounded outbox of
//! encoded reports. The host feeds it finished requests ([`Telemetry::record`]), ticks
//! ([`Telemetry::tick`]) and callout results ([`Telemetry::delivered`],
//! [`Telemetry::failed`]); it answers with the report to send, if any. One report is in flight
//! at a time; a report that failed stays at the head of the outbox and is resent with the same
//! sequence number, so the collector can drop a duplicate when only the answer was lost.

use std::collections::VecDeque;

use shadowplane_wire::{ClusterStats, Report};

/// Name under which clusters past the `max_clusters` cap are counted.
pub const OVERFLOW_CLUSTER: &str = "other";

/// Name used when Envoy did not route the request to any cluster.
pub const NO_CLUSTER: &str = "none";

/// Envoy response flags (the legacy bit vector of `response.flags`).
pub mod flags {
    /// `UT`: upstream request timeout.
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 1 << 2;
    /// `LR`: connection local reset.
    pub const LOCAL_RESET: u64 = 1 << 3;
    /// `UR`: upstream remote reset.
    pub const UPSTREAM_REMOTE_RESET: u64 = 1 << 4;
    /// `UF`: upstream connection failure.
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 1 << 5;
    /// `UC`: upstream connection termination.
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 1 << 6;
    /// `SI`: stream idle timeout.
    pub const STREAM_IDLE_TIMEOUT: u64 = 1 << 16;
}

/// A `:status` value as a number; `None` for anything but one to three ASCII digits that are
/// not all zero (Envoy always sends three).
pub fn status_code(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 3 {
        return None;
    }
    let mut code = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        code = code * 10 + u32::from(d - b'0');
    }
    (code > 0).then_some(code)
}

/// What the host learned about one finished request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestRecord<'a> {
    /// The upstream cluster the request is counted under (see [`crate::attribution`]), if any.
    pub cluster: Option<&'a str>,
    /// The response status, if a response was sent.
    pub status: Option<u32>,
    /// Envoy's response flags.
    pub flags: u64,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// Microseconds from request headers to the end of the response, if measured.
    pub latency_us: Option<f64>,
}

/// Delivery settings taken from the newest configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Milliseconds per window.
    pub interval_ms: u64,
    /// Reports kept while the collector is away.
    pub buffer_reports: usize,
    /// Distinct clusters per window.
    pub max_clusters: usize,
    /// Milliseconds after which an unanswered callout counts as failed.
    pub callout_deadline_ms: u64,
}

/// A report handed to the host for sending.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Sequence number of the report.
    pub sequence: u64,
    /// Encoded report.
    pub body: Vec<u8>,
}

/// Counters the host exposes as Envoy metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Reports the collector accepted.
    pub sent: u64,
    /// Callouts that failed or were answered with a non-2xx status.
    pub failed: u64,
    /// Reports dropped from a full outbox.
    pub dropped: u64,
}

/// The per-worker telemetry state.
#[derive(Debug)]
pub struct Telemetry {
    node_id: String,
    worker: String,
    settings: Settings,
    window_start_ms: u64,
    /// The window's clusters in order of first request: a handful, so a scan beats hashing.
    window: Vec<ClusterStats>,
    next_sequence: u64,
    outbox: VecDeque<Outgoing>,
    /// Sequence and deadline of the report in flight.
    in_flight: Option<(u64, u64)>,
    stats: DeliveryStats,
}

impl Telemetry {
    /// A fresh state whose first window starts at `now_ms`.
    pub fn new(node_id: String, worker: String, settings: Settings, now_ms: u64) -> Self {
        Self {
            node_id,
            worker,
            settings,
            window_start_ms: now_ms,
            window: Vec::new(),
            next_sequence: 1,
            outbox: VecDeque::new(),
            in_flight: None,
            stats: DeliveryStats::default(),
        }
    }

    /// Applies the settings of a newer configuration; buffered reports past a smaller bound
    /// are dropped oldest first and counted.
    pub fn reconfigure(&mut self, settings: Settings) {
        self.settings = settings;
        self.trim_outbox();
    }

    /// Delivery counters.
    pub fn stats(&self) -> DeliveryStats {
        self.stats
    }

    /// Reports waiting in the outbox (including the one in flight).
    pub fn buffered(&self) -> usize {
        self.outbox.len()
    }

    /// Adds one finished request to the current window.
    pub fn record(&mut self, r: &RequestRecord<'_>) {
        let name = r.cluster.filter(|c| !c.is_empty()).unwrap_or(NO_CLUSTER);
        let at = match self.window.iter().position(|s| s.cluster == name) {
            Some(at) => at,
            None => {
                let key = if self.window.len() < self.settings.max_clusters {
                    name
                } else {
                    OVERFLOW_CLUSTER
                };
                match self.window.iter().position(|s| s.cluster == key) {
                    Some(at) => at,
                    None => {
                        self.window.push(ClusterStats::new(key));
                        self.window.len() - 1
                    }
                }
            }
        };
        let Some(s) = self.window.get_mut(at) else {
            return;
        };
        s.requests += 1;
        match r.status {
            Some(200..=299) => s.responses_2xx += 1,
            Some(300..=399) => s.responses_3xx += 1,
            Some(400..=499) => s.responses_4xx += 1,
            Some(500..=599) => s.responses_5xx += 1,
            // 1xx finals and codes outside HTTP's range do not happen on a completed stream;
            // count them with the streams that had no usable response.
            _ => s.no_response += 1,
        }
        if r.flags & flags::LOCAL_RESET != 0 {
            s.local_resets += 1;
        }
        let upstream_reset = flags::UPSTREAM_REMOTE_RESET
            | flags::UPSTREAM_CONNECTION_FAILURE
            | flags::UPSTREAM_CONNECTION_TERMINATION;
        if r.flags & upstream_reset != 0 {
            s.upstream_resets += 1;
        }
        if r.flags & (flags::UPSTREAM_REQUEST_TIMEOUT | flags::STREAM_IDLE_TIMEOUT) != 0 {
            s.timeouts += 1;
        }
        s.request_bytes = s.request_bytes.saturating_add(r.request_bytes);
        s.response_bytes = s.response_bytes.saturating_add(r.response_bytes);
        if let Some(us) = r.latency_us {
            s.latency.add(us);
        }
    }

    /// Advances time: closes the window when its interval has passed, expires a callout past
    /// its deadline, and returns the report to send now, if any.
    pub fn tick(&mut self, now_ms: u64) -> Option<Outgoing> {
        if let Some((_, deadline)) = self.in_flight
            && now_ms >= deadline
        {
            self.in_flight = None;
            self.stats.failed += 1;
        }
        if now_ms.saturating_sub(self.window_start_ms) >= self.settings.interval_ms {
            self.close_window(now_ms);
        }
        self.next_to_send(now_ms)
    }

    /// Closes the current window into a report in the outbox, even if the interval has not
    /// passed (used when the VM is shutting down). Empty windows produce no report.
    pub fn close_window(&mut self, now_ms: u64) {
        let window = std::mem::take(&mut self.window);
        let start = self.window_start_ms;
        self.window_start_ms = now_ms;
        if window.is_empty() {
            return;
        }
        let report = Report {
            node_id: self.node_id.clone(),
            worker: self.worker.clone(),
            sequence: self.next_sequence,
            window_start_ms: start,
            window_end_ms: now_ms.max(start),
            reports_dropped: self.stats.dropped,
            clusters: window,
        };
        self.outbox.push_back(Outgoing {
            sequence: self.next_sequence,
            body: report.encode(),
        });
        self.next_sequence += 1;
        self.trim_outbox();
    }

    /// The collector accepted report `sequence`; returns the next one to send, if any.
    pub fn delivered(&mut self, sequence: u64, now_ms: u64) -> Option<Outgoing> {
        if self.in_flight.map(|(s, _)| s) != Some(sequence) {
            // An answer after its deadline: the report is still queued and will be resent,
            // and the collector drops the duplicate by its sequence number.
            return None;
        }
        self.in_flight = None;
        self.stats.sent += 1;
        if self.outbox.front().is_some_and(|o| o.sequence == sequence) {
            self.outbox.pop_front();
        }
        self.next_to_send(now_ms)
    }

    /// The callout for `sequence` failed, or could not even be dispatched (an unknown cluster,
    /// say); the report stays queued for the next tick.
    pub fn failed(&mut self, sequence: u64) {
        if self.in_flight.map(|(s, _)| s) == Some(sequence) {
            self.in_flight = None;
            self.stats.failed += 1;
        }
    }

    fn next_to_send(&mut self, now_ms: u64) -> Option<Outgoing> {
        if self.in_flight.is_some() {
            return None;
        }
        let next = self.outbox.front()?.clone();
        self.in_flight = Some((next.sequence, now_ms + self.settings.callout_deadline_ms));
        Some(next)
    }

    fn trim_outbox(&mut self) {
        while self.outbox.len() > self.settings.buffer_reports {
            let in_flight = self.in_flight.map(|(s, _)| s);
            // Never drop the report in flight from under its callout: drop the next oldest.
            let at = usize::from(
                self.outbox.front().map(|o| o.sequence) == in_flight && self.outbox.len() > 1,
            );
            self.outbox.remove(at);
            self.stats.dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_read_from_their_digits() {
        assert_eq!(status_code(b"200"), Some(200));
        assert_eq!(status_code(b"503"), Some(503));
        assert_eq!(status_code(b"7"), Some(7));
        for bad in [&b""[..], b"000", b"2000", b"20x", b" 200", b"-20"] {
            assert_eq!(status_code(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn settings(buffer: usize) -> Settings {
        Settings {
            interval_ms: 1000,
            buffer_reports: buffer,
            max_clusters: 2,
            callout_deadline_ms: 3000,
        }
    }

    fn rec(cluster: &str, status: u32, us: f64) -> RequestRecord<'_> {
        RequestRecord {
            cluster: Some(cluster),
            status: Some(status),
            request_bytes: 100,
            response_bytes: 200,
            latency_us: Some(us),
            ..Default::default()
        }
    }

    fn decode(o: &Outgoing) -> Report {
        Report::decode(&o.body).expect("the filter's own reports decode")
    }

    #[test]
    fn one_report_per_window_with_every_request() {
        let mut t = Telemetry::new("n".into(), "w".into(), settings(8), 0);
        t.record(&rec("primary", 200, 1000.0));
        t.record(&rec("primary", 503, 2000.0));
        t.record(&rec("shadow", 404, 3000.0));
        assert_eq!(t.tick(500), None, "window still open");
        let out = t.tick(1000).expect("window closed");
        let r = decode(&out);
        assert_eq!(
            (r.sequence, r.window_start_ms, r.window_end_ms),
            (1, 0, 1000)
        );
        assert_eq!(r.requests(), 3);
        let p = &r.clusters[0];
        assert_eq!(
            (
                p.cluster.as_str(),
                p.responses_2xx,
                p.responses_5xx,
                p.request_bytes
            ),
            ("primary", 1, 1, 200)
        );
        assert_eq!(p.latency.count(), 2);
        assert_eq!(t.delivered(1, 1001), None);
        assert_eq!(t.buffered(), 0);
        assert_eq!(t.tick(2000), None, "empty windows send nothing");
    }

    #[test]
    fn cluster_cap_counts_the_rest_as_other() {
        let mut t = Telemetry::new("n".into(), "w".into(), settings(8), 0);
        for c in ["a", "b", "c", "d"] {
            t.record(&rec(c, 200, 1.0));
        }
        let r = decode(&t.tick(1000).unwrap());
        let names: Vec<_> = r
            .clusters
            .iter()
            .map(|c| (c.cluster.as_str(), c.requests))
            .collect();
        assert_eq!(names, [("a", 1), ("b", 1), ("other", 2)]);
    }

    #[test]
    fn flags_and_missing_responses_are_classified() {
        let mut t = Telemetry::new("n".into(), "w".into(), settings(8), 0);
        t.record(&RequestRecord {
            cluster: None,
            status: None,
            flags: flags::LOCAL_RESET | flags::UPSTREAM_REQUEST_TIMEOUT,
            ..Default::default()
        });
        t.record(&RequestRecord {
            cluster: Some("p"),
            status: Some(503),
            flags: flags::UPSTREAM_CONNECTION_FAILURE,
            ..Default::default()
        });
        let r = decode(&t.tick(1000).unwrap());
        let none = r.clusters.iter().find(|c| c.cluster == NO_CLUSTER).unwrap();
        assert_eq!(
            (none.no_response, none.local_resets, none.timeouts),
            (1, 1, 1)
        );
        let p = r.clusters.iter().find(|c| c.cluster == "p").unwrap();
        assert_eq!((p.responses_5xx, p.upstream_resets), (1, 1));
    }

    #[test]
    fn outage_keeps_a_bounded_buffer_and_counts_drops() {
        let mut t = Telemetry::new("n".into(), "w".into(), settings(3), 0);
        let mut now = 0;
        let mut first = None;
        for _ in 0..10 {
            t.record(&rec("p", 200, 1.0));
            now += 1000;
            if let Some(o) = t.tick(now) {
                first.get_or_insert(o.sequence);
                t.failed(o.sequence);
            }
            assert!(t.buffered() <= 3);
        }
        assert_eq!(t.stats().dropped, 7);
        assert!(t.stats().failed >= 9);
        // Collector back: the three newest windows arrive in order, each with the drop count.
        let mut got = vec![];
        let mut next = t.tick(now + 10);
        while let Some(o) = next {
            got.push(decode(&o).sequence);
            next = t.delivered(o.sequence, now + 20);
        }
        assert_eq!(got, [8, 9, 10]);
        assert_eq!(t.buffered(), 0);
    }

    #[test]
    fn unanswered_callout_expires_and_is_resent_with_the_same_sequence() {
        let mut t = Telemetry::new("n".into(), "w".into(), settings(8), 0);
        t.record(&rec("p", 200, 1.0));
        let o = t.tick(1000).unwrap();
        assert_eq!(t.tick(2000), None, "still in flight");
        let again = t.tick(4000).expect("deadline passed, resent");
        assert_eq!(again, o);
        // Both attempts carry the same sequence: one accepted answer removes the report, and
        // the collector drops the other copy by its sequence number.
        assert_eq!(t.delivered(again.sequence, 4001), None);
        assert_eq!(t.buffered(), 0);
        assert_eq!(
            t.stats(),
            DeliveryStats {
                sent: 1,
                failed: 1,
                dropped: 0
            }
        );
    }
}
