//! The admin HTTP API (JSON): sync status, services and weights, reload, events, and the
//! telemetry endpoint the filter posts its reports to.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/healthz` | `ok` |
//! | GET | `/v1/status` | per node group, per node: SYNCED, STALE or NACKED (with the error) |
//! | GET | `/v1/services` | services, groups, roles and weights |
//! | PUT | `/v1/services/NAME/weights` | `{"weights": {"primary": 90, "shadow": 10}, "canary": ["node"]}` |
//! | GET | `/v1/lifecycle` | every managed service: phase, step, weights, groups, forecasts, anomalies, last decision |
//! | POST | `/v1/services/NAME/lifecycle/OP` | OP = `pause`, `resume`, `abort` (back to the primary), `promote` (next step now) |
//! | POST | `/v1/reload` | re-read the file; body optional: `{"canary": ["node"]}` |
//! | GET | `/v1/events?since=N` | xDS events (ACK, NACK, rollback, canary promotion, sync) |
//! | GET | `/v1/snapshot` | the resources served, rendered as text |
//! | POST | `/v1/telemetry` | a filter report (protobuf, bearer token); 200 once committed |
//! | GET | `/v1/telemetry` | counters (stored, duplicates, rejected by reason) and per-cluster totals |
//! | GET | `/v1/telemetry/CLUSTER?since_ms=T` | the stored windows of one cluster |
//! | GET | `/v1/system/GROUP?since_ms=T` | the stored system-metrics samples of one group |
//!
//! Served over HTTP/1.1 and HTTP/2 (Envoy's telemetry cluster speaks HTTP/2).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::state::{ApiError, ControlPlane};
use crate::store::Ingested;

/// Largest request body accepted (a telemetry report of 32 clusters is a few KB).
pub const MAX_BODY: usize = 1 << 20;
/// How much of a too-large body is read (and dropped) so its sender still gets the 413.
const MAX_DRAIN: usize = 16 << 20;

/// Serves the admin API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, cp: Arc<ControlPlane>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let cp = Arc::clone(&cp);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let cp = Arc::clone(&cp);
                async move { Ok::<_, Infallible>(handle(cp, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The `since_ms` query parameter; 0 when absent.
fn since_ms(query: &str) -> Result<u64, ApiError> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("since_ms="))
        .map_or(Ok(0), |v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("since_ms: \"{v}\" is not a number")))
        })
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(e: ApiError) -> Response<Full<Bytes>> {
    let status = match e {
        ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        ApiError::Conflict(_) => StatusCode::CONFLICT,
        ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    reply(status, json!({"error": e.to_string()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsBody {
    weights: BTreeMap<String, u32>,
    #[serde(default)]
    canary: BTreeSet<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReloadBody {
    #[serde(default)]
    canary: BTreeSet<String>,
}

async fn body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    // Past MAX_BODY nothing is kept, but the rest is still read (up to MAX_DRAIN): answering
    // 413 while the client is still sending would reset the connection under it, and it would
    // see a transport error instead of the status.
    let mut body = req.into_body();
    let mut kept = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= MAX_BODY {
                kept.extend_from_slice(&data);
            } else if seen > MAX_DRAIN {
                break;
            }
        }
    }
    if seen > MAX_BODY {
        return Err(ApiError::TooLarge(format!(
            "the body is over {MAX_BODY} bytes"
        )));
    }
    Ok(kept.freeze())
}

fn json_body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("body: {e}")))
}

async fn handle(cp: Arc<ControlPlane>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result: Result<Response<Full<Bytes>>, ApiError> =
        match (req.method().clone(), segments.as_slice()) {
            (Method::GET, ["healthz"]) => Ok(Response::new(Full::new(Bytes::from_static(b"ok\n")))),
            (Method::GET, ["v1", "status"]) => Ok(reply(StatusCode::OK, cp.status())),
            (Method::GET, ["v1", "services"]) => Ok(reply(StatusCode::OK, cp.services())),
            (Method::PUT, ["v1", "services", name, "weights"]) => {
                let name = name.to_string();
                match body(req).await.and_then(|b| json_body::<WeightsBody>(&b)) {
                    Ok(b) => cp
                        .set_weights(&name, &b.weights, b.canary)
                        .map(|v| reply(StatusCode::OK, json!({"version": v}))),
                    Err(e) => Err(e),
                }
            }
            (Method::GET, ["v1", "lifecycle"]) => Ok(reply(StatusCode::OK, cp.lifecycle_views())),
            (Method::POST, ["v1", "services", name, "lifecycle", op]) => {
                let name = name.to_string();
                match serde_json::from_value::<crate::engine::Op>(json!(op)) {
                    Ok(op) => cp
                        .command(&name, op)
                        .await
                        .map(|v| reply(StatusCode::OK, v)),
                    Err(_) => Err(ApiError::NotFound(format!(
                        "\"{op}\" is not a lifecycle operation (pause, resume, abort, promote)"
                    ))),
                }
            }
            (Method::POST, ["v1", "reload"]) => match body(req).await {
                Ok(b) => {
                    let parsed = if b.is_empty() {
                        Ok(ReloadBody::default())
                    } else {
                        json_body::<ReloadBody>(&b)
                    };
                    parsed
                        .and_then(|r| cp.reload(r.canary))
                        .map(|v| reply(StatusCode::OK, json!({"version": v})))
                }
                Err(e) => Err(e),
            },
            (Method::GET, ["v1", "events"]) => {
                let since = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("since="))
                    .map(|v| {
                        v.parse::<u64>().map_err(|_| {
                            ApiError::BadRequest(format!("since: \"{v}\" is not a number"))
                        })
                    })
                    .transpose();
                since.map(|s| reply(StatusCode::OK, cp.events(s.unwrap_or(0))))
            }
            (Method::GET, ["v1", "snapshot"]) => {
                Ok(Response::new(Full::new(Bytes::from(cp.render_snapshot()))))
            }
            (Method::POST, ["v1", "telemetry"]) => {
                let header = |name: hyper::header::HeaderName| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let auth = header(hyper::header::AUTHORIZATION);
                let content_type = header(hyper::header::CONTENT_TYPE);
                match body(req).await {
                    Ok(b) => cp
                        .ingest(auth.as_deref(), content_type.as_deref(), &b)
                        .map(|o| reply(StatusCode::OK, json!({"stored": o == Ingested::Stored}))),
                    Err(e) => {
                        if let ApiError::TooLarge(_) = e {
                            cp.count("rejected_too_large");
                        }
                        Err(e)
                    }
                }
            }
            (Method::GET, ["v1", "telemetry"]) => cp.telemetry().map(|v| reply(StatusCode::OK, v)),
            (Method::GET, ["v1", "telemetry", cluster]) => {
                let cluster = cluster.to_string();
                since_ms(&query)
                    .and_then(|s| cp.telemetry_windows(&cluster, s))
                    .map(|v| reply(StatusCode::OK, v))
            }
            (Method::GET, ["v1", "system", group]) => {
                let group = group.to_string();
                since_ms(&query)
                    .and_then(|s| cp.system_samples(&group, s))
                    .map(|v| reply(StatusCode::OK, v))
            }
            (_, _) => Err(ApiError::NotFound(format!("no route for {path}"))),
        };
    result.unwrap_or_else(error)
}
