//! An HTTP/1.1 keep-alive client and a bounded load generator that tallies statuses and which
//! upstream served each request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use shadowplane_wire::LatencySketch;
use tokio::task::JoinSet;

use crate::upstream::SERVED_BY;

/// How long one request may take, by default, before it counts as an error. Generous, so a
/// loaded 2-core machine does not fail a test; a test of timeouts sets its own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP/1.1 client with a keep-alive connection pool. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Client {
    http: HyperClient<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// A response: status, headers, whole body.
pub type Reply = (u16, HeaderMap, Bytes);

/// What [`Client::run`] saw.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Responses by the value of their `x-served-by` header (responses without one are not
    /// counted here, such as Envoy's own 503s and direct responses).
    pub served_by: BTreeMap<String, u64>,
    /// Requests that got no response: connect failures, resets, timeouts.
    pub errors: u64,
    /// The first transport error, to make a failing assertion readable.
    pub first_error: Option<String>,
    /// Time from sending to the whole body received, in microseconds (responses only).
    pub latency_us: LatencySketch,
}

impl LoadResult {
    /// Responses with `status`.
    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    /// Responses of any status.
    pub fn responses(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Responses served by the upstream named `name`.
    pub fn served_by(&self, name: &str) -> u64 {
        self.served_by.get(name).copied().unwrap_or(0)
    }

    fn add(&mut self, other: LoadResult) {
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_insert(0) += n;
        }
        for (name, n) in other.served_by {
            *self.served_by.entry(name).or_insert(0) += n;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency_us
            .merge(&other.latency_us)
            .expect("one test's latencies merge without overflow");
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client with [`DEFAULT_TIMEOUT`] per request.
    pub fn new() -> Client {
        Client::with_timeout(DEFAULT_TIMEOUT)
    }

    /// A client that gives up on a request (an error) after `timeout`.
    pub fn with_timeout(timeout: Duration) -> Client {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = HyperClient::builder(TokioExecutor::new()).build(connector);
        Client { http, timeout }
    }

    /// GETs `url` with extra `headers`. An `Err` means no response (a non-2xx status is `Ok`).
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        self.request(Method::GET, url, headers, Bytes::new()).await
    }

    /// POSTs `body` to `url` with extra `headers`.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Reply> {
        self.request(Method::POST, url, headers, body.into()).await
    }

    /// GETs `url` with header values given as bytes, which HTTP allows beyond UTF-8
    /// (obs-text, 0x80 to 0xFF).
    pub async fn get_bytes(&self, url: &str, headers: &[(&str, &[u8])]) -> anyhow::Result<Reply> {
        self.send(Method::GET, url, headers, Bytes::new()).await
    }

    /// Sends one request and reads the whole response.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        self.send(method, url, headers, body).await
    }

    async fn send<V: AsRef<[u8]>>(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, V)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let mut req = Request::builder().method(method.clone()).uri(url);
        for (name, value) in headers {
            req = req.header(*name, value.as_ref());
        }
        let req = req
            .body(Full::new(body))
            .with_context(|| format!("{method} {url}: bad request"))?;
        let exchange = async {
            let resp = self.http.request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok((parts.status.as_u16(), parts.headers, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            // `{:#}` shows the sources too: hyper's own message ("client error (Connect)")
            // hides the part that matters ("Connection refused").
            Ok(reply) => reply.map_err(|e| anyhow!("{method} {url}: {e:#}")),
            Err(_) => Err(anyhow!("{method} {url}: no response in {:?}", self.timeout)),
        }
    }

    /// Sends exactly `n` GETs, at most `concurrency` at a time; `make_request(i)` gives the URL
    /// and headers of request `i` (`0..n`, each once, roughly in order).
    pub async fn run<F>(&self, n: usize, concurrency: usize, make_request: F) -> LoadResult
    where
        F: Fn(usize) -> (String, Vec<(String, String)>) + Send + Sync + 'static,
    {
        let make_request = Arc::new(make_request);
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = JoinSet::new();
        for _ in 0..concurrency.clamp(1, n.max(1)) {
            let (client, make_request, next) = (self.clone(), make_request.clone(), next.clone());
            workers.spawn(async move {
                let mut result = LoadResult::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return result;
                    }
                    let (url, headers) = make_request(i);
                    let headers: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let started = Instant::now();
                    match client.get(&url, &headers).await {
                        Ok((status, headers, _)) => {
                            result.latency_us.add(started.elapsed().as_micros() as f64);
                            *result.statuses.entry(status).or_insert(0) += 1;
                            if let Some(name) = headers.get(SERVED_BY).and_then(|v| v.to_str().ok())
                            {
                                *result.served_by.entry(name.to_owned()).or_insert(0) += 1;
                            }
                        }
                        Err(e) => {
                            result.errors += 1;
                            result.first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
            });
        }
        let mut total = LoadResult::default();
        while let Some(joined) = workers.join_next().await {
            match joined {
                Ok(result) => total.add(result),
                // A panic in `make_request` is the test's bug: surface it, do not count it.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("load worker cancelled: {e}"),
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Upstream;

    #[tokio::test]
    async fn runs_a_bounded_load_and_tallies_it() {
        let a = Upstream::start("a").await;
        let b = Upstream::start("b").await;
        b.set_status(503);
        let (url_a, url_b) = (a.url("/"), b.url("/"));
        let result = Client::new()
            .run(30, 4, move |i| {
                let url = if i % 3 == 0 { &url_b } else { &url_a };
                (url.clone(), vec![("x-i".into(), i.to_string())])
            })
            .await;
        assert_eq!(result.errors, 0, "{:?}", result.first_error);
        assert_eq!(result.count(200), 20);
        assert_eq!(result.count(503), 10);
        assert_eq!(result.served_by("a"), 20);
        assert_eq!(result.served_by("b"), 10);
        assert_eq!(result.latency_us.count(), 30);
        assert_eq!(a.served() + b.served(), 30);
        // Every index was requested exactly once.
        let mut seen: Vec<usize> = a
            .requests()
            .iter()
            .chain(b.requests().iter())
            .map(|r| r.headers["x-i"].to_str().unwrap().parse().unwrap())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..30).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn counts_transport_errors_and_timeouts() {
        let up = Upstream::start("slow").await;
        up.set_delay(Duration::from_secs(5));
        let slow = up.url("/");
        // A port nobody listens on: bind one, then let it go.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/", l.local_addr().unwrap())
        };
        let result = Client::with_timeout(Duration::from_millis(200))
            .run(4, 4, move |i| {
                let url = if i % 2 == 0 { &slow } else { &closed };
                (url.clone(), vec![])
            })
            .await;
        assert_eq!(result.errors, 4);
        assert_eq!(result.responses(), 0);
        let first = result.first_error.unwrap();
        assert!(
            first.contains("refused") || first.contains("no response"),
            "{first}"
        );
    }

    #[tokio::test]
    async fn errors_name_the_cause() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/", l.local_addr().unwrap())
        };
        let err = Client::new().get(&closed, &[]).await.unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
    }
}
