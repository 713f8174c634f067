//! A test upstream: an HTTP/1.1 and h2c server that names itself in every response and whose
//! latency and status can be changed while it runs.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};

use shadowplane_wire::LatencySketch;

use crate::server::{self, Server};

/// The response header that names the upstream which served a request.
pub const SERVED_BY: &str = "x-served-by";

/// How many requests [`UpstreamHandle::requests`] remembers; older ones are forgotten so a
/// long load test does not grow memory without bound.
pub const REMEMBERED_REQUESTS: usize = 1024;

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// The request method.
    pub method: Method,
    /// The request target (path and query for HTTP/1.1, the full URI for h2).
    pub uri: Uri,
    /// HTTP/1.1 or HTTP/2.
    pub version: Version,
    /// The request headers, as Envoy forwarded them.
    pub headers: HeaderMap,
    /// Length of the request body in bytes.
    pub body_len: usize,
}

struct State {
    name: String,
    body: Bytes,
    delay: Mutex<Duration>,
    status: AtomicU16,
    received: AtomicU64,
    served: AtomicU64,
    requests: Mutex<VecDeque<SeenRequest>>,
    /// Microseconds from arrival to response per request: the delay as actually injected,
    /// which a loaded machine stretches past the configured one.
    held_us: Mutex<LatencySketch>,
}

/// A running upstream on `127.0.0.1`. Stops (and closes its connections) when dropped.
pub struct Upstream {
    addr: SocketAddr,
    handle: UpstreamHandle,
    _server: Server,
}

/// A cloneable handle that changes a running [`Upstream`]'s behaviour and reads its counters;
/// it can be moved into tasks while the test keeps the [`Upstream`].
#[derive(Clone)]
pub struct UpstreamHandle {
    state: Arc<State>,
}

impl Upstream {
    /// Starts an upstream named `name` on a free port of `127.0.0.1`. Every response carries
    /// `x-served-by: NAME` and the body `NAME\n`; by default it answers 200 at once.
    pub async fn start(name: &str) -> Upstream {
        let listener = server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .unwrap_or_else(|e| panic!("upstream {name}: cannot bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("upstream {name}: no local address: {e}"));
        let handle = UpstreamHandle {
            state: Arc::new(State {
                name: name.to_owned(),
                body: Bytes::from(format!("{name}\n")),
                delay: Mutex::new(Duration::ZERO),
                status: AtomicU16::new(200),
                received: AtomicU64::new(0),
                served: AtomicU64::new(0),
                requests: Mutex::new(VecDeque::new()),
                held_us: Mutex::new(LatencySketch::new()),
            }),
        };
        let state = handle.state.clone();
        let server = Server::spawn(listener, move |req| serve(state.clone(), req));
        Upstream {
            addr,
            handle,
            _server: server,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on, for a bootstrap's cluster.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A handle to control it from elsewhere.
    pub fn handle(&self) -> UpstreamHandle {
        self.handle.clone()
    }

    /// See [`UpstreamHandle::name`].
    pub fn name(&self) -> &str {
        self.handle.name()
    }

    /// See [`UpstreamHandle::set_delay`].
    pub fn set_delay(&self, delay: Duration) {
        self.handle.set_delay(delay);
    }

    /// See [`UpstreamHandle::set_status`].
    pub fn set_status(&self, status: u16) {
        self.handle.set_status(status);
    }

    /// See [`UpstreamHandle::received`].
    pub fn received(&self) -> u64 {
        self.handle.received()
    }

    /// See [`UpstreamHandle::served`].
    pub fn served(&self) -> u64 {
        self.handle.served()
    }

    /// See [`UpstreamHandle::requests`].
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.handle.requests()
    }

    /// See [`UpstreamHandle::held_us`].
    pub fn held_us(&self) -> LatencySketch {
        self.handle.held_us()
    }
}

impl UpstreamHandle {
    /// The name it puts in `x-served-by`.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Latency added before each response from now on (requests already waiting keep theirs).
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.state.delay) = delay;
    }

    /// Status of every response from now on. Panics if `status` is not a valid HTTP status
    /// (100..=999), since that is a mistake in the test.
    pub fn set_status(&self, status: u16) {
        StatusCode::from_u16(status)
            .unwrap_or_else(|e| panic!("upstream {}: status {status}: {e}", self.name()));
        self.state.status.store(status, Ordering::Relaxed);
    }

    /// Requests received so far, including those still waiting out their delay and those whose
    /// client gave up.
    pub fn received(&self) -> u64 {
        self.state.received.load(Ordering::Relaxed)
    }

    /// Responses produced so far (after the delay).
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::Relaxed)
    }

    /// The last [`REMEMBERED_REQUESTS`] requests received, oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.state.requests).iter().cloned().collect()
    }

    /// How long each request was held from arrival to response, in microseconds: the delay
    /// as actually injected.
    pub fn held_us(&self) -> LatencySketch {
        lock(&self.state.held_us).clone()
    }
}

async fn serve(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let arrived = Instant::now();
    state.received.fetch_add(1, Ordering::Relaxed);
    let delay = *lock(&state.delay);
    let (parts, body) = req.into_parts();
    // Reading the body to its end keeps an HTTP/1.1 connection reusable.
    let body_len = match body.collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    {
        let mut seen = lock(&state.requests);
        if seen.len() == REMEMBERED_REQUESTS {
            seen.pop_front();
        }
        seen.push_back(SeenRequest {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            body_len,
        });
    }
    if !delay.is_zero() {
        // tokio's timer rounds up to whole milliseconds; a thread sleep is accurate to tens of
        // microseconds, which latency assertions with a 1 ms budget need.
        let deadline = arrived + delay;
        let _ = tokio::task::spawn_blocking(move || {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        })
        .await;
    }
    let status = StatusCode::from_u16(state.status.load(Ordering::Relaxed))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Full::new(state.body.clone()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    // The name came from the test; a name that is no header value is the test's mistake.
    let served_by = HeaderValue::from_str(&state.name)
        .unwrap_or_else(|_| HeaderValue::from_static("invalid-upstream-name"));
    headers.insert(SERVED_BY, served_by);
    lock(&state.held_us).add(arrived.elapsed().as_micros() as f64);
    state.served.fetch_add(1, Ordering::Relaxed);
    response
}

/// Locks a mutex, ignoring poisoning: the data behind it stays consistent whatever a panicking
/// test thread was doing.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Client;
    use std::time::Instant;

    #[tokio::test]
    async fn names_itself_and_counts() {
        let up = Upstream::start("primary").await;
        let client = Client::new();
        let (status, headers, body) = client
            .get(&up.url("/hello?x=1"), &[("x-test", "yes")])
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers[SERVED_BY], "primary");
        assert_eq!(&body[..], b"primary\n");
        assert_eq!(up.served(), 1);
        assert_eq!(up.received(), 1);
        let seen = up.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].uri.path(), "/hello");
        assert_eq!(seen[0].headers["x-test"], "yes");
    }

    #[tokio::test]
    async fn status_and_delay_change_at_run_time() {
        let up = Upstream::start("canary").await;
        let handle = up.handle();
        let client = Client::new();

        handle.set_status(503);
        let (status, headers, _) = client.get(&up.url("/"), &[]).await.unwrap();
        assert_eq!(status, 503);
        assert_eq!(headers[SERVED_BY], "canary");

        handle.set_status(200);
        handle.set_delay(Duration::from_millis(300));
        let started = Instant::now();
        let (status, _, _) = client.get(&up.url("/"), &[]).await.unwrap();
        assert_eq!(status, 200);
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );

        handle.set_delay(Duration::ZERO);
        let started = Instant::now();
        client.get(&up.url("/"), &[]).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(up.served(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn holds_each_request_at_least_the_delay_and_says_how_long() {
        let up = Upstream::start("slow").await;
        up.set_delay(Duration::from_millis(20));
        let url = up.url("/");
        let res = Client::new()
            .run(100, 4, move |_| (url.clone(), vec![]))
            .await;
        let held = up.held_us();
        assert_eq!(held.count(), 100);
        let p50 = held.quantile(0.5).unwrap();
        eprintln!("held p50 with a 20 ms delay: {p50:.0} µs");
        // Never shorter than asked (up to the sketch's 1%); longer only by scheduling.
        assert!(held.min().unwrap() >= 20_000.0, "held {:?} µs", held.min());
        assert!(res.latency_us.quantile(0.5).unwrap() >= p50 * 0.99);
    }

    #[tokio::test]
    async fn speaks_h2c() {
        let up = Upstream::start("h2").await;
        let stream = tokio::net::TcpStream::connect(up.addr()).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = Request::get(up.url("/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.headers()[SERVED_BY], "h2");
        assert_eq!(up.requests()[0].version, Version::HTTP_2);
    }

    #[tokio::test]
    async fn stops_when_dropped() {
        let up = Upstream::start("gone").await;
        let url = up.url("/");
        let client = Client::new();
        client.get(&url, &[]).await.unwrap();
        drop(up);
        // Abort is asynchronous: give the runtime a moment to drop the listener.
        let refused = crate::wait_until(Duration::from_secs(2), || {
            std::net::TcpStream::connect(url.trim_start_matches("http://").trim_end_matches('/'))
                .is_err()
        })
        .await;
        assert!(refused, "upstream still accepts connections after drop");
    }
}
