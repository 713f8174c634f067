//! A test upstream: an HTTP/1.1 and h2c server that names itself in every response and whose
//! latency and status can be changed while it runs, from the test that owns it or, when
//! started with [`UpstreamOptions::control`], over HTTP under [`CONTROL_PREFIX`] (the
//! `shadowplane-upstream` program runs it that way, in another process).

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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

/// The path prefix of the control endpoints, when enabled:
///
/// - `GET /_control/state`: `{"name", "delay_ms", "status", "received", "served"}`;
/// - `PUT /_control/delay_ms` with a whole number of milliseconds as the body;
/// - `PUT /_control/status` with an HTTP status (100 to 999) as the body.
///
/// Both `PUT`s answer with the new state. Control requests are neither delayed nor counted
/// nor remembered; a bad body gets 400 and changes nothing.
pub const CONTROL_PREFIX: &str = "/_control/";

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
    control: bool,
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

/// How to start an [`Upstream`], besides its name.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Where to listen. Default: a free port on `127.0.0.1`.
    pub addr: SocketAddr,
    /// Whether the [`CONTROL_PREFIX`] endpoints change delay and status over HTTP. Default:
    /// off, so every path is ordinary traffic.
    pub control: bool,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            control: false,
        }
    }
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
        Upstream::start_with(name, UpstreamOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts an upstream named `name` as `opts` say. The error names the upstream and the
    /// address it could not listen on.
    pub async fn start_with(name: &str, opts: UpstreamOptions) -> io::Result<Upstream> {
        let at = opts.addr;
        let listener = server::bind(at).map_err(|e| {
            io::Error::new(e.kind(), format!("upstream {name}: cannot bind {at}: {e}"))
        })?;
        let addr = listener.local_addr().map_err(|e| {
            io::Error::new(e.kind(), format!("upstream {name}: no local address: {e}"))
        })?;
        let handle = UpstreamHandle {
            state: Arc::new(State {
                name: name.to_owned(),
                control: opts.control,
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
        Ok(Upstream {
            addr,
            handle,
            _server: server,
        })
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

    /// The latency currently added before each response.
    pub fn delay(&self) -> Duration {
        *lock(&self.state.delay)
    }

    /// The status of responses now.
    pub fn status(&self) -> u16 {
        self.state.status.load(Ordering::Relaxed)
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
    if state.control && req.uri().path().starts_with(CONTROL_PREFIX) {
        return control(&state, req).await;
    }
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

/// The `shadowplane-upstream` program (this upstream in its own process), for tests of other
/// packages, which cargo gives no path to another package's binaries: built with cargo on
/// first use, into the target directory and profile of the running test. Panics with cargo's
/// output when the build fails.
pub fn upstream_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // A test runs as TARGET/PROFILE/deps/NAME-HASH (or TARGET/PROFILE/NAME for a binary).
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("no test executable: {e}"));
        let dir = exe.parent().unwrap_or(Path::new("."));
        let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
            dir.parent().unwrap_or(dir)
        } else {
            dir
        };
        let target = profile_dir.parent().unwrap_or(profile_dir);
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = std::process::Command::new(&cargo)
            .args(["build", "--quiet", "-p", "shadowplane-e2e"])
            .args(["--bin", "shadowplane-upstream", "--profile", profile])
            .arg("--target-dir")
            .arg(target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&cargo).display()));
        assert!(
            out.status.success(),
            "cargo build -p shadowplane-e2e --bin shadowplane-upstream failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = profile_dir.join("shadowplane-upstream");
        assert!(bin.is_file(), "cargo built no {}", bin.display());
        bin
    })
    .clone()
}

/// Answers a control request (see [`CONTROL_PREFIX`]).
async fn control(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            );
        }
    };
    let what = &parts.uri.path()[CONTROL_PREFIX.len()..];
    let value = || -> Result<u64, String> {
        let s = std::str::from_utf8(&body).map_err(|_| "the body is not UTF-8".to_string())?;
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("\"{}\" is not a whole number", s.trim()))
    };
    match (&parts.method, what) {
        (&Method::GET, "state") => {}
        (&Method::PUT, "delay_ms") => match value() {
            Ok(ms) => *lock(&state.delay) = Duration::from_millis(ms),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("delay_ms: {e}")),
        },
        (&Method::PUT, "status") => match value() {
            Ok(s) if (100..=999).contains(&s) => state.status.store(s as u16, Ordering::Relaxed),
            Ok(s) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("status: {s} is not an HTTP status (100 to 999)"),
                );
            }
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("status: {e}")),
        },
        (m, w) => {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "no control endpoint {m} {CONTROL_PREFIX}{w} (GET state, PUT delay_ms, \
                     PUT status)"
                ),
            );
        }
    }
    let json = serde_json::json!({
        "name": state.name,
        "delay_ms": lock(&state.delay).as_millis() as u64,
        "status": state.status.load(Ordering::Relaxed),
        "received": state.received.load(Ordering::Relaxed),
        "served": state.served.load(Ordering::Relaxed),
    });
    let mut response = Response::new(Full::new(Bytes::from(json.to_string())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message + "\n")));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
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
    async fn control_endpoints_change_it_over_http_when_enabled() {
        let opts = UpstreamOptions {
            control: true,
            ..UpstreamOptions::default()
        };
        let up = Upstream::start_with("remote", opts).await.unwrap();
        let client = Client::new();
        let put = |what: &str, body: &'static str| {
            let url = up.url(&format!("{CONTROL_PREFIX}{what}"));
            let client = client.clone();
            async move {
                client
                    .request(Method::PUT, &url, &[], Bytes::from(body))
                    .await
                    .unwrap()
            }
        };
        let (status, _, body) = put("status", "503").await;
        assert_eq!(status, 200, "{body:?}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 503);
        assert_eq!(v["name"], "remote");
        assert_eq!(up.handle().status(), 503);
        assert_eq!(client.get(&up.url("/"), &[]).await.unwrap().0, 503);

        let (status, _, _) = put("delay_ms", "150\n").await;
        assert_eq!(status, 200);
        assert_eq!(up.handle().delay(), Duration::from_millis(150));
        let started = Instant::now();
        client.get(&up.url("/"), &[]).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));

        let (status, _, body) = put("status", "42").await;
        assert_eq!(status, 400);
        assert_eq!(
            &body[..],
            b"status: 42 is not an HTTP status (100 to 999)\n"
        );
        let (status, _, body) = put("delay_ms", "soon").await;
        assert_eq!(status, 400);
        assert_eq!(&body[..], b"delay_ms: \"soon\" is not a whole number\n");
        assert_eq!(up.handle().status(), 503, "a bad body changes nothing");
        let (status, _, _) = put("colour", "red").await;
        assert_eq!(status, 404);

        // Control requests are not traffic.
        let (status, _, body) = client.get(&up.url("/_control/state"), &[]).await.unwrap();
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (v["received"].as_u64(), v["served"].as_u64()),
            (Some(2), Some(2))
        );
        assert_eq!(v["delay_ms"], 150);
        assert_eq!(up.requests().len(), 2);
    }

    #[tokio::test]
    async fn control_paths_are_ordinary_traffic_by_default() {
        let up = Upstream::start("plain").await;
        let client = Client::new();
        let (status, headers, _) = client
            .request(
                Method::PUT,
                &up.url("/_control/status"),
                &[],
                Bytes::from("503"),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers[SERVED_BY], "plain");
        assert_eq!(up.handle().status(), 200);
        assert_eq!(up.served(), 1);
    }

    #[tokio::test]
    async fn start_with_listens_where_asked_and_names_a_taken_address() {
        let first = Upstream::start("first").await;
        let opts = UpstreamOptions {
            addr: first.addr(),
            ..UpstreamOptions::default()
        };
        // SO_REUSEADDR does not let two listeners share a port.
        let e = Upstream::start_with("second", opts).await.err().unwrap();
        assert!(
            e.to_string()
                .starts_with(&format!("upstream second: cannot bind {}: ", first.addr())),
            "{e}"
        );
        let port = crate::control_plane::free_port();
        let opts = UpstreamOptions {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            ..UpstreamOptions::default()
        };
        let up = Upstream::start_with("third", opts).await.unwrap();
        assert_eq!(up.port(), port);
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
