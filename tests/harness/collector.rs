//! A telemetry collector for tests: receives the filter's reports, checks the bearer token,
//! validates and de-duplicates them, and can be stopped and brought back on the same port.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use shadowplane_wire::{ClusterStats, LatencySketch, REPORT_CONTENT_TYPE, Report};

use crate::server::{self, Server};
use crate::upstream::lock;

/// The path the filter posts reports to.
pub const TELEMETRY_PATH: &str = "/v1/telemetry";

/// Bodies larger than this are refused with 413 before decoding.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// What the collector has received; one lock, so every reader sees a consistent picture.
#[derive(Default)]
struct Store {
    reports: Vec<Report>,
    seen: HashSet<(String, String, u64)>,
    posts: u64,
    unauthorized: u64,
    rejected: u64,
    duplicates: u64,
    last_rejection: Option<String>,
    fail_with: Option<StatusCode>,
    delay: Duration,
}

struct State {
    token: String,
    store: Mutex<Store>,
}

/// A running collector on `127.0.0.1`. Stops when dropped; the reports it stored survive
/// [`Collector::stop`] and [`Collector::restart`].
pub struct Collector {
    addr: SocketAddr,
    state: Arc<State>,
    server: Mutex<Option<Server>>,
}

impl Collector {
    /// Starts a collector on a free port of `127.0.0.1` that accepts reports carrying
    /// `authorization: Bearer TOKEN`.
    pub async fn start(token: &str) -> Collector {
        let listener = server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .unwrap_or_else(|e| panic!("collector: cannot bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("collector: no local address: {e}"));
        let state = Arc::new(State {
            token: token.to_owned(),
            store: Mutex::new(Store::default()),
        });
        let server = spawn(listener, &state);
        Collector {
            addr,
            state,
            server: Mutex::new(Some(server)),
        }
    }

    /// The address it listens on (the same after a restart).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on, for a bootstrap's telemetry cluster.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT/v1/telemetry`.
    pub fn url(&self) -> String {
        format!("http://{}{TELEMETRY_PATH}", self.addr)
    }

    /// The token it accepts.
    pub fn token(&self) -> &str {
        &self.state.token
    }

    /// Stops accepting and closes every open connection, so the filter sees connection
    /// refused (or a reset) until [`Collector::restart`]. Stored reports are kept. Does nothing
    /// if already stopped.
    pub async fn stop(&self) {
        let server = lock(&self.server).take();
        if let Some(server) = server {
            server.stop().await;
        }
    }

    /// Listens again on the same port, keeping the stored reports. Does nothing if running.
    /// Fails if something else took the port meanwhile.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let mut server = lock(&self.server);
        if server.is_none() {
            let listener = server::bind(self.addr)
                .with_context(|| format!("collector: cannot bind {} again", self.addr))?;
            *server = Some(spawn(listener, &self.state));
        }
        Ok(())
    }

    /// Whether it is accepting connections.
    pub fn is_running(&self) -> bool {
        lock(&self.server).is_some()
    }

    /// Makes every authenticated post get `status` without being stored (`None` goes back to
    /// normal), to exercise the filter's retry and buffering.
    pub fn fail_with(&self, status: Option<u16>) {
        let status = status.map(|s| {
            StatusCode::from_u16(s).unwrap_or_else(|e| panic!("collector: status {s}: {e}"))
        });
        self.store().fail_with = status;
    }

    /// Latency added before every response from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.store().delay = delay;
    }

    /// The stored reports, in the order they arrived, without duplicates.
    pub fn reports(&self) -> Vec<Report> {
        self.store().reports.clone()
    }

    /// Requests counted by all stored reports, over all clusters.
    pub fn total_requests(&self) -> u64 {
        self.store().reports.iter().map(Report::requests).sum()
    }

    /// Requests per cluster over all stored reports.
    pub fn requests_by_cluster(&self) -> BTreeMap<String, u64> {
        let mut by_cluster = BTreeMap::new();
        for report in &self.store().reports {
            for c in &report.clusters {
                *by_cluster.entry(c.cluster.clone()).or_insert(0) += c.requests;
            }
        }
        by_cluster
    }

    /// The statistics of `cluster` merged over all stored reports (empty if none named it).
    pub fn merged_cluster(&self, cluster: &str) -> ClusterStats {
        let mut merged = ClusterStats::new(cluster);
        for report in &self.store().reports {
            for c in report.clusters.iter().filter(|c| c.cluster == cluster) {
                merged
                    .merge(c)
                    .expect("the collector's reports merge without overflow");
            }
        }
        merged
    }

    /// The latency sketch of `cluster` merged over all stored reports.
    pub fn merged_sketch(&self, cluster: &str) -> LatencySketch {
        self.merged_cluster(cluster).latency
    }

    /// Reports dropped by the filter: `reports_dropped` is cumulative per worker, so this is the
    /// largest value seen for each (node, worker), summed over workers.
    pub fn max_reports_dropped(&self) -> u64 {
        let mut per_worker: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        let store = self.store();
        for r in &store.reports {
            let max = per_worker
                .entry((r.node_id.as_str(), r.worker.as_str()))
                .or_insert(0);
            *max = (*max).max(r.reports_dropped);
        }
        per_worker.values().sum()
    }

    /// HTTP requests received, whatever became of them.
    pub fn posts(&self) -> u64 {
        self.store().posts
    }

    /// Posts refused with 401 (missing or wrong token).
    pub fn unauthorized(&self) -> u64 {
        self.store().unauthorized
    }

    /// Authenticated posts refused as malformed: a body that [`Report::decode`] rejects (400),
    /// the wrong content type (415), or a body over [`MAX_BODY_BYTES`] (413).
    pub fn rejected(&self) -> u64 {
        self.store().rejected
    }

    /// Why the last rejected post was rejected.
    pub fn last_rejection(&self) -> Option<String> {
        self.store().last_rejection.clone()
    }

    /// Valid reports whose (node_id, worker, sequence) was already stored: resends, answered
    /// 200 but not stored again.
    pub fn duplicates(&self) -> u64 {
        self.store().duplicates
    }

    /// Waits until the stored reports count at least `n` requests; false on timeout.
    pub async fn wait_for_requests(&self, n: u64, timeout: Duration) -> bool {
        crate::wait_until(timeout, || self.total_requests() >= n).await
    }

    /// Waits until at least `n` reports are stored; false on timeout.
    pub async fn wait_for_reports(&self, n: usize, timeout: Duration) -> bool {
        crate::wait_until(timeout, || self.store().reports.len() >= n).await
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        lock(&self.state.store)
    }
}

fn spawn(listener: tokio::net::TcpListener, state: &Arc<State>) -> Server {
    let state = state.clone();
    Server::spawn(listener, move |req| handle(state.clone(), req))
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, message) = ingest(&state, req).await;
    let mut response = Response::new(Full::new(Bytes::from(message)));
    *response.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

async fn ingest(state: &State, req: Request<Incoming>) -> (StatusCode, String) {
    let (fail_with, delay) = {
        let mut store = lock(&state.store);
        store.posts += 1;
        (store.fail_with, store.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if req.uri().path() != TELEMETRY_PATH {
        return (StatusCode::NOT_FOUND, format!("only {TELEMETRY_PATH}\n"));
    }
    if req.method() != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "POST only\n".into());
    }
    if !authorized(&req, &state.token) {
        lock(&state.store).unauthorized += 1;
        return (
            StatusCode::UNAUTHORIZED,
            "bad or missing bearer token\n".into(),
        );
    }
    if let Some(status) = fail_with {
        return (status, "failing on purpose\n".into());
    }
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if content_type != Some(REPORT_CONTENT_TYPE) {
        let why = format!("content-type {content_type:?}, expected {REPORT_CONTENT_TYPE}");
        return reject(state, StatusCode::UNSUPPORTED_MEDIA_TYPE, why);
    }
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => return reject(state, StatusCode::PAYLOAD_TOO_LARGE, format!("body: {e}")),
    };
    let report = match Report::decode(&body) {
        Ok(report) => report,
        Err(e) => return reject(state, StatusCode::BAD_REQUEST, e.to_string()),
    };
    let mut store = lock(&state.store);
    let key = (
        report.node_id.clone(),
        report.worker.clone(),
        report.sequence,
    );
    if store.seen.insert(key) {
        store.reports.push(report);
    } else {
        store.duplicates += 1;
    }
    (StatusCode::OK, String::new())
}

fn reject(state: &State, status: StatusCode, why: String) -> (StatusCode, String) {
    let mut store = lock(&state.store);
    store.rejected += 1;
    store.last_rejection = Some(why.clone());
    (status, why + "\n")
}

fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(value) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    // The scheme name is case-insensitive (RFC 9110 section 11.1); the token is not.
    match value.split_once(' ') {
        Some((scheme, given)) => scheme.eq_ignore_ascii_case("bearer") && given == token,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Client;

    const TOKEN: &str = "s3cret";

    fn report(worker: &str, sequence: u64, requests: u64, dropped: u64) -> Report {
        let mut stats = ClusterStats::new("primary");
        stats.requests = requests;
        stats.responses_2xx = requests;
        for i in 0..requests {
            stats.latency.add(1000.0 * (i + 1) as f64);
        }
        Report {
            node_id: "node-a".into(),
            worker: worker.into(),
            sequence,
            window_start_ms: 1_000,
            window_end_ms: 2_000,
            reports_dropped: dropped,
            clusters: vec![stats, ClusterStats::new("shadow")],
        }
    }

    async fn post(client: &Client, c: &Collector, token: &str, body: Vec<u8>) -> u16 {
        let auth = format!("Bearer {token}");
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", REPORT_CONTENT_TYPE),
        ];
        client.post(&c.url(), &headers, body).await.unwrap().0
    }

    #[tokio::test]
    async fn checks_the_token() {
        let c = Collector::start(TOKEN).await;
        let client = Client::new();
        let body = report("w0", 1, 1, 0).encode();
        assert_eq!(post(&client, &c, "wrong", body.clone()).await, 401);
        let no_auth = [("content-type", REPORT_CONTENT_TYPE)];
        let (status, _, _) = client.post(&c.url(), &no_auth, body).await.unwrap();
        assert_eq!(status, 401);
        assert_eq!(c.unauthorized(), 2);
        assert!(c.reports().is_empty());
    }

    #[tokio::test]
    async fn rejects_malformed_reports() {
        let c = Collector::start(TOKEN).await;
        let client = Client::new();
        assert_eq!(post(&client, &c, TOKEN, vec![0xff, 0xff, 0xff]).await, 400);
        // Well-formed protobuf that breaks the schema (sequence 0) is refused as well.
        assert_eq!(
            post(&client, &c, TOKEN, report("w0", 0, 1, 0).encode()).await,
            400
        );
        assert!(c.last_rejection().unwrap().contains("sequence"));
        let text = [
            ("authorization", "Bearer s3cret"),
            ("content-type", "text/plain"),
        ];
        let body = report("w0", 1, 1, 0).encode();
        assert_eq!(client.post(&c.url(), &text, body).await.unwrap().0, 415);
        assert_eq!(c.rejected(), 3);
        assert!(c.reports().is_empty());
    }

    #[tokio::test]
    async fn stores_and_dedupes_reports() {
        let c = Collector::start(TOKEN).await;
        let client = Client::new();
        assert_eq!(
            post(&client, &c, TOKEN, report("w0", 1, 3, 0).encode()).await,
            200
        );
        // A resend keeps its sequence number: answered 200, counted once.
        assert_eq!(
            post(&client, &c, TOKEN, report("w0", 1, 3, 0).encode()).await,
            200
        );
        assert_eq!(
            post(&client, &c, TOKEN, report("w0", 2, 2, 4).encode()).await,
            200
        );
        assert_eq!(
            post(&client, &c, TOKEN, report("w1", 1, 5, 1).encode()).await,
            200
        );
        assert_eq!(c.reports().len(), 3);
        assert_eq!(c.duplicates(), 1);
        assert_eq!(c.total_requests(), 10);
        assert_eq!(
            c.requests_by_cluster(),
            BTreeMap::from([("primary".to_owned(), 10), ("shadow".to_owned(), 0)])
        );
        let sketch = c.merged_sketch("primary");
        assert_eq!(sketch.count(), 10);
        assert!(
            (sketch.max().unwrap() - 5000.0).abs() < 1e-9,
            "{:?}",
            sketch.max()
        );
        assert_eq!(c.merged_cluster("primary").responses_2xx, 10);
        assert_eq!(c.merged_sketch("absent").count(), 0);
        assert_eq!(c.max_reports_dropped(), 4 + 1);
        assert!(c.wait_for_requests(10, Duration::ZERO).await);
        assert!(!c.wait_for_requests(11, Duration::from_millis(60)).await);
    }

    #[tokio::test]
    async fn fails_on_purpose_without_storing() {
        let c = Collector::start(TOKEN).await;
        let client = Client::new();
        c.fail_with(Some(503));
        assert_eq!(
            post(&client, &c, TOKEN, report("w0", 1, 1, 0).encode()).await,
            503
        );
        c.fail_with(None);
        assert_eq!(
            post(&client, &c, TOKEN, report("w0", 1, 1, 0).encode()).await,
            200
        );
        assert_eq!(c.reports().len(), 1);
        assert_eq!(c.duplicates(), 0);
        assert_eq!(c.posts(), 2);
    }

    #[tokio::test]
    async fn restarts_on_the_same_port_keeping_reports() {
        let c = Collector::start(TOKEN).await;
        let addr = c.addr();
        let client = Client::new();
        // This leaves a keep-alive connection in the client's pool, which stop must close.
        assert_eq!(
            post(&client, &c, TOKEN, report("w0", 1, 2, 0).encode()).await,
            200
        );

        c.stop().await;
        assert!(!c.is_running());
        let auth = format!("Bearer {TOKEN}");
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", REPORT_CONTENT_TYPE),
        ];
        let body = report("w0", 2, 1, 0).encode();
        let err = client.post(&c.url(), &headers, body.clone()).await;
        assert!(err.is_err(), "post to a stopped collector: {err:?}");
        let err = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);

        c.restart().await.unwrap();
        assert_eq!(c.addr(), addr);
        assert_eq!(client.post(&c.url(), &headers, body).await.unwrap().0, 200);
        assert_eq!(c.reports().len(), 2);
        assert_eq!(c.total_requests(), 3);
        // Restarting a running collector is harmless.
        c.restart().await.unwrap();
        assert!(c.is_running());
    }

    #[tokio::test]
    async fn unknown_paths_and_methods() {
        let c = Collector::start(TOKEN).await;
        let client = Client::new();
        let base = format!("http://{}", c.addr());
        assert_eq!(
            client.get(&format!("{base}/other"), &[]).await.unwrap().0,
            404
        );
        assert_eq!(client.get(&c.url(), &[]).await.unwrap().0, 405);
        assert_eq!(c.rejected(), 0);
    }
}
