//! `host-runner serve` (part of the binary): an HTTP/1.1 and HTTP/2 proxy on hyper that runs
//! the plugin on live traffic. Each request goes through the plugin's request callbacks, then
//! to the upstream, then through its response callbacks; HTTP callouts go to the clusters
//! given with `--cluster NAME=URL`; ticks follow the real clock.
//!
//! With a `tcp://HOST:PORT` upstream it proxies TCP instead, through the plugin's L4
//! callbacks: each connection is a stream context (`proxy_on_new_connection`), each side's
//! bytes go through `proxy_on_downstream_data`/`proxy_on_upstream_data` (end of stream on a
//! half-close), what the plugin lets through goes on to the other side, and both
//! `proxy_on_*_connection_close` callbacks come when the connection ends.
//!
//! Bodies are buffered whole and handed to the plugin as one chunk: this is a way to try a
//! filter with curl, not a production proxy.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use shadowplane_host_runner::{Clock, Compiled, Harness, Stream};

/// What `serve` needs.
pub struct Options {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Base URL requests are forwarded to; `tcp://HOST:PORT` proxies TCP through the L4
    /// callbacks instead.
    pub upstream: Uri,
    /// Plugin configuration.
    pub config: Vec<u8>,
    /// Clusters the plugin's HTTP callouts may reach, by name.
    pub clusters: BTreeMap<String, Uri>,
    /// The request header that names each request's cluster, as Envoy's `cluster_header`.
    pub cluster_header: Option<String>,
}

struct Proxy {
    harness: Mutex<Harness>,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: Uri,
    clusters: BTreeMap<String, Uri>,
    dispatched: Mutex<BTreeSet<u32>>,
}

/// How long a paused stream may wait for the plugin to continue it.
const PAUSE_LIMIT: Duration = Duration::from_secs(30);

impl Proxy {
    fn lock(&self) -> MutexGuard<'_, Harness> {
        self.harness.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the plugin's new HTTP callouts to their clusters; each answer goes back to the
    /// plugin when it arrives.
    fn dispatch_callouts(self: &Arc<Self>) {
        let calls: Vec<_> = {
            let h = self.lock();
            let mut seen = self.dispatched.lock().unwrap_or_else(|p| p.into_inner());
            h.http_calls()
                .iter()
                .filter(|c| !c.answered && seen.insert(c.token))
                .cloned()
                .collect()
        };
        for call in calls {
            let p = Arc::clone(self);
            tokio::spawn(async move {
                let answer = p.callout(&call).await;
                let mut h = p.lock();
                let r = match answer {
                    Ok((status, headers, body)) => {
                        let refs: Vec<(&str, &str)> = headers
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_str()))
                            .collect();
                        h.respond_http(call.token, status, &refs, &body)
                    }
                    Err(e) => {
                        eprintln!(
                            "host-runner: callout {} to {}: {e:#}",
                            call.token, call.upstream
                        );
                        h.fail_http(call.token)
                    }
                };
                // A callout its timeout already answered is not an error.
                drop(r);
                drop(h);
                p.dispatch_callouts();
            });
        }
    }

    async fn callout(
        &self,
        call: &shadowplane_host_runner::HttpCall,
    ) -> Result<(u16, Vec<(String, String)>, Vec<u8>)> {
        let base = self
            .clusters
            .get(&call.upstream)
            .with_context(|| format!("no --cluster for {}", call.upstream))?;
        let path = call.header(":path").unwrap_or("/");
        let uri: Uri = format!("{}{path}", base.to_string().trim_end_matches('/')).parse()?;
        let mut req = Request::builder()
            .method(call.header(":method").unwrap_or("GET"))
            .uri(uri);
        for (k, v) in &call.headers {
            if !k.starts_with(':') {
                req = req.header(k, v);
            }
        }
        let timeout = Duration::from_millis(u64::from(call.timeout_ms.max(1)));
        let resp = tokio::time::timeout(
            timeout,
            self.client
                .request(req.body(Full::new(Bytes::from(call.body.clone())))?),
        )
        .await
        .context("timed out")??;
        let status = resp.status().as_u16();
        let headers = header_pairs(resp.headers());
        let body = resp.into_body().collect().await?.to_bytes().to_vec();
        Ok((status, headers, body))
    }

    /// Waits until the stream is no longer paused on `side` (or was answered locally).
    async fn wait(&self, id: u32, request: bool) -> Result<()> {
        let start = Instant::now();
        loop {
            {
                let mut h = self.lock();
                if h.select(id).is_err() {
                    bail!("stream {id} is gone");
                }
                let st = h.stream().context("no stream")?;
                let paused = if request {
                    st.request_paused
                } else {
                    st.response_paused
                };
                if !paused || st.local_sent || st.reset {
                    return Ok(());
                }
            }
            if start.elapsed() > PAUSE_LIMIT {
                bail!("the plugin kept the stream paused for {PAUSE_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn snapshot(&self, id: u32) -> Result<Stream> {
        let mut h = self.lock();
        h.select(id)?;
        h.stream().cloned().context("no stream")
    }

    fn end(&self, id: u32) {
        let mut h = self.lock();
        if h.select(id).is_ok() {
            let _ = h.end_stream();
        }
    }
}

fn header_pairs(map: &hyper::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn refs(p: &[(String, String)]) -> Vec<(&str, &str)> {
    p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The downstream response from the stream's response headers and what went downstream.
fn downstream(st: &Stream) -> Result<Response<Full<Bytes>>> {
    let headers = st.response_headers.clone().unwrap_or_default();
    let status = headers
        .get(":status")
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(502);
    let mut resp = Response::builder().status(StatusCode::from_u16(status)?);
    for (k, v) in &headers.0 {
        if !k.starts_with(':') && k != "content-length" && k != "transfer-encoding" {
            resp = resp.header(k, v);
        }
    }
    let body = if st.local_sent {
        st.local_response
            .as_ref()
            .map(|l| l.body.clone())
            .unwrap_or_default()
    } else {
        st.response_forwarded.clone()
    };
    Ok(resp.body(Full::new(Bytes::from(body)))?)
}

async fn proxy(p: Arc<Proxy>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let authority = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut headers = vec![
        (":method".to_string(), parts.method.to_string()),
        (":path".to_string(), path),
        (":authority".to_string(), authority),
        (":scheme".to_string(), "http".to_string()),
    ];
    headers.extend(
        header_pairs(&parts.headers)
            .into_iter()
            .filter(|(k, _)| k != "host"),
    );
    let id = {
        let mut h = p.lock();
        let id = h.new_stream()?;
        h.request_headers(&refs(&headers), body.is_empty())?;
        if !body.is_empty() && h.local_response().is_none() {
            h.request_body(&body, true)?;
        }
        id
    };
    p.dispatch_callouts();
    p.wait(id, true).await?;
    let st = p.snapshot(id)?;
    if st.local_sent || st.reset {
        let r = downstream(&st);
        p.end(id);
        return r;
    }
    let req_headers = st.request_headers.clone().unwrap_or_default();
    let path = req_headers.get(":path").unwrap_or_else(|| "/".into());
    let uri: Uri = format!("{}{path}", p.upstream.to_string().trim_end_matches('/')).parse()?;
    let mut up = Request::builder()
        .method(
            req_headers
                .get(":method")
                .unwrap_or_else(|| "GET".into())
                .as_str(),
        )
        .uri(uri);
    for (k, v) in &req_headers.0 {
        if !k.starts_with(':') && k != "content-length" {
            up = up.header(k, v);
        }
    }
    let up = up.body(Full::new(Bytes::from(st.request_forwarded.clone())))?;
    let resp = match p.client.request(up).await {
        Ok(r) => r,
        Err(e) => {
            p.end(id);
            return Ok(Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Full::new(Bytes::from(format!("upstream: {e}\n"))))?);
        }
    };
    let status = resp.status().as_u16().to_string();
    let mut rh = vec![(":status".to_string(), status)];
    rh.extend(header_pairs(resp.headers()));
    let rbody = resp.into_body().collect().await?.to_bytes();
    {
        let mut h = p.lock();
        h.select(id)?;
        h.response_headers(&refs(&rh), rbody.is_empty())?;
        if !rbody.is_empty() && h.local_response().is_none() {
            h.response_body(&rbody, true)?;
        }
    }
    p.dispatch_callouts();
    p.wait(id, false).await?;
    let st = p.snapshot(id)?;
    let r = downstream(&st);
    p.end(id);
    r
}

/// Runs the proxy until the process is stopped.
pub async fn serve(compiled: &Compiled, opts: Options) -> Result<()> {
    let tcp = match opts.upstream.scheme_str() {
        Some("tcp") => Some(
            opts.upstream
                .authority()
                .map(|a| a.to_string())
                .with_context(|| format!("{}: a tcp upstream is tcp://HOST:PORT", opts.upstream))?,
        ),
        _ => None,
    };
    let names: Vec<&str> = opts.clusters.keys().map(String::as_str).collect();
    let harness = Harness::from_compiled(compiled)
        .with_trace(false)
        .with_settings(|s| {
            s.clock = Clock::Real;
            s.cluster_header = opts.cluster_header.clone();
        })
        .with_clusters(&names)
        .configure(opts.config)?;
    let p = Arc::new(Proxy {
        harness: Mutex::new(harness),
        client: Client::builder(TokioExecutor::new()).build_http(),
        upstream: opts.upstream,
        clusters: opts.clusters,
        dispatched: Mutex::new(BTreeSet::new()),
    });
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    println!("listening on {}", listener.local_addr()?);
    {
        let p = Arc::clone(&p);
        tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let now = Instant::now();
                let r = p.lock().tick(now - last);
                last = now;
                if let Err(e) = r {
                    eprintln!("host-runner: tick: {e}");
                }
                p.dispatch_callouts();
            }
        });
    }
    if let Some(addr) = tcp {
        loop {
            let (conn, _) = listener.accept().await?;
            let p = Arc::clone(&p);
            let addr = addr.clone();
            tokio::spawn(async move {
                if let Err(e) = tcp_connection(p, conn, &addr).await {
                    eprintln!("host-runner: connection: {e:#}");
                }
            });
        }
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let p = Arc::clone(&p);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let p = Arc::clone(&p);
                async move {
                    Ok::<_, Infallible>(match proxy(p, req).await {
                        Ok(r) => r,
                        Err(e) => {
                            let mut r = Response::new(Full::new(Bytes::from(format!(
                                "host-runner: {e:#}\n"
                            ))));
                            *r.status_mut() = StatusCode::BAD_GATEWAY;
                            r
                        }
                    })
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// How often a connection looks for bytes the plugin let through since the last look (it may
/// continue a paused side from any callback, a callout's answer or a tick among them).
const FLUSH_INTERVAL: Duration = Duration::from_millis(2);

/// One L4 connection through the plugin, until both sides have ended or the plugin closed it.
async fn tcp_connection(p: Arc<Proxy>, client: TcpStream, upstream: &str) -> Result<()> {
    let server = TcpStream::connect(upstream)
        .await
        .with_context(|| format!("cannot connect to {upstream}"))?;
    let id = {
        let mut h = p.lock();
        h.new_connection()?;
        h.current().context("the connection has no context")?
    };
    p.dispatch_callouts();
    let (cr, mut cw) = client.into_split();
    let (sr, mut sw) = server.into_split();
    let down = tokio::spawn(read_side(Arc::clone(&p), id, cr, true));
    let up = tokio::spawn(read_side(Arc::clone(&p), id, sr, false));
    // Bytes already written each way, and whether that way's write half is shut.
    let mut sent = [0usize; 2];
    let mut shut = [false, false];
    let closed_by_plugin = loop {
        // Read before the snapshot, so a side seen as ended has all its bytes in it.
        let ended = [down.is_finished(), up.is_finished()];
        let (fresh, held, closed) = {
            let mut h = p.lock();
            h.select(id)?;
            let st = h.stream().context("the connection is gone")?;
            (
                [
                    st.downstream_forwarded[sent[0]..].to_vec(),
                    st.upstream_forwarded[sent[1]..].to_vec(),
                ],
                [!st.downstream_data.is_empty(), !st.upstream_data.is_empty()],
                st.downstream_closed || st.upstream_closed,
            )
        };
        // Downstream bytes go to the upstream server, upstream bytes to the client.
        if !fresh[0].is_empty() {
            sw.write_all(&fresh[0]).await?;
            sent[0] += fresh[0].len();
        }
        if !fresh[1].is_empty() {
            cw.write_all(&fresh[1]).await?;
            sent[1] += fresh[1].len();
        }
        if closed {
            break true;
        }
        // A side that ended, with nothing held back, half-closes the other.
        if ended[0] && !held[0] && !shut[0] {
            let _ = sw.shutdown().await;
            shut[0] = true;
        }
        if ended[1] && !held[1] && !shut[1] {
            let _ = cw.shutdown().await;
            shut[1] = true;
        }
        if shut[0] && shut[1] {
            break false;
        }
        tokio::time::sleep(FLUSH_INTERVAL).await;
    };
    down.abort();
    up.abort();
    // proxy_peer_type_t: 1 local (the plugin closed it), 2 remote (the peer did).
    let peer = if closed_by_plugin { 1 } else { 2 };
    let mut h = p.lock();
    h.select(id)?;
    h.connection_closed(true, peer)?;
    h.connection_closed(false, peer)?;
    h.end_stream()?;
    Ok(())
}

/// Feeds what one side sends to the plugin until that side ends (end of stream) or the
/// connection is closed.
async fn read_side(p: Arc<Proxy>, id: u32, mut from: OwnedReadHalf, downstream: bool) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        let eos = n == 0;
        {
            let mut h = p.lock();
            if h.select(id).is_err() {
                return;
            }
            let r = if downstream {
                h.downstream_data(&buf[..n], eos)
            } else {
                h.upstream_data(&buf[..n], eos)
            };
            if r.is_err() {
                return;
            }
        }
        p.dispatch_callouts();
        if eos {
            return;
        }
    }
}
