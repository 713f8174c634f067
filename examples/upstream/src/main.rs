//! `example-upstream`: an HTTP/1.1 service whose latency, errors, CPU and memory follow a
//! [profile] over compressible scenario time, for the
//! demo's and the migration bench's groups.
//!
//! ```text
//! example-upstream [--port N] [--name NAME] [--instance N]
//!                  [--profile FILE | --profile-json JSON] [--seed N]
//!                  [--time-scale X] [--start-s S] [--epoch-unix-ms MS]
//! ```
//!
//! It listens on `127.0.0.1:PORT` (`--port`, else `$PORT`, else a free port), names itself in
//! `x-served-by` (`--name`, else `$SHADOWPLANE_GROUP`, else `example-upstream`), prints
//! `example-upstream NAME listening on ADDR` once it serves, and runs until SIGTERM or SIGINT
//! (then exits 0; bad arguments exit 2). Scenario time is `start_s + (now - epoch) *
//! time_scale`, the epoch being `--epoch-unix-ms` or the moment it started. Every request is
//! held for a latency drawn from the profile's parameters at its arrival (CPU burnt first,
//! as part of it) and answered `NAME\n` with 200, or with the profile's error status.
//!
//! Control endpoints (not counted as traffic; a bad body gets 400 and changes nothing):
//! - `GET /_control/state`: the clock, the effective parameters now, the active effects, the
//!   memory held, the counters and the profile, as JSON;
//! - `PUT /_control/profile`: replace the profile (YAML or JSON body); answers the state;
//! - `POST /_control/effects`: add one effect (JSON body); answers the state.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use shadowplane_example_upstream::profile::{self, Sampler, ValidProfile};

/// The response header that names the group which served a request.
const SERVED_BY: &str = "x-served-by";
/// The control endpoints' path prefix.
const CONTROL_PREFIX: &str = "/_control/";
const MIB: usize = 1 << 20;

#[derive(Debug, Parser)]
#[command(
    name = "example-upstream",
    about = "An upstream that follows a profile over scenario time"
)]
struct Args {
    /// Port on 127.0.0.1. Default: $PORT, else a free port.
    #[arg(long)]
    port: Option<u16>,
    /// The name in x-served-by. Default: $SHADOWPLANE_GROUP, else example-upstream.
    #[arg(long)]
    name: Option<String>,
    /// The instance's index, which picks its own random sequence. Default:
    /// $SHADOWPLANE_INSTANCE, else 0.
    #[arg(long)]
    instance: Option<u64>,
    /// The profile, a YAML or JSON file. Default: steady, with the profile defaults.
    #[arg(long, conflicts_with = "profile_json")]
    profile: Option<PathBuf>,
    /// The profile as JSON.
    #[arg(long)]
    profile_json: Option<String>,
    /// Seed of the noise and of every request's draw. Default: 1.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scenario seconds per wall second. Default: 1.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Scenario time at the epoch, seconds. Default: 0.
    #[arg(long, default_value_t = 0.0)]
    start_s: f64,
    /// The wall instant (Unix milliseconds) that is scenario time --start-s. Default: when
    /// this process started.
    #[arg(long)]
    epoch_unix_ms: Option<u64>,
}

/// Everything the service shares between requests and tasks.
struct State {
    name: String,
    name_header: HeaderValue,
    instance: u64,
    seed: u64,
    clock: Clock,
    profile: RwLock<ValidProfile>,
    sampler: Mutex<Sampler>,
    received: AtomicU64,
    served: AtomicU64,
    errors: AtomicU64,
    /// The memory held, every byte written so it counts in the RSS. One buffer, grown and
    /// shrunk in place: glibc keeps a buffer this large in its own mapping and resizes it
    /// with mremap, so shrinking returns the pages. (Chunks freed one by one stay in the
    /// heap once glibc has raised its mmap threshold, and the RSS would not go down.)
    ballast: Mutex<Vec<u8>>,
    /// Cores to burn in the background, as `f64` bits.
    background: AtomicU64,
}

/// Wall time to scenario time.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start_s: f64,
    time_scale: f64,
    epoch_unix_ms: u64,
}

impl Clock {
    fn now_s(&self) -> f64 {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        self.start_s + (now_ms - self.epoch_unix_ms as f64) / 1000.0 * self.time_scale
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Bad arguments exit 2, as clap's own errors do; failures after that exit 1.
    let (state, port) = match setup(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("example-upstream: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")
        .and_then(|runtime| runtime.block_on(run(state, port)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-upstream: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the arguments and the environment into the service's state and port.
fn setup(args: Args) -> anyhow::Result<(Arc<State>, u16)> {
    let env = |k: &str| std::env::var(k).ok();
    let port = match (args.port, env("PORT")) {
        (Some(p), _) => p,
        (None, Some(p)) => p
            .trim()
            .parse()
            .with_context(|| format!("$PORT \"{p}\" is not a port"))?,
        (None, None) => 0,
    };
    let name = args
        .name
        .or_else(|| env("SHADOWPLANE_GROUP"))
        .unwrap_or_else(|| "example-upstream".to_string());
    let name_header = HeaderValue::from_str(&name)
        .ok()
        .filter(|_| !name.is_empty())
        .with_context(|| format!("name {name:?} cannot be an x-served-by header value"))?;
    let instance = match (args.instance, env("SHADOWPLANE_INSTANCE")) {
        (Some(i), _) => i,
        (None, Some(i)) => i
            .trim()
            .parse()
            .with_context(|| format!("$SHADOWPLANE_INSTANCE \"{i}\" is not a number"))?,
        (None, None) => 0,
    };
    let profile = match (&args.profile, &args.profile_json) {
        (Some(path), _) => profile::load(path)?,
        (None, Some(json)) => profile::parse_json(json, "--profile-json")?,
        (None, None) => ValidProfile::steady(),
    };
    if !(args.time_scale.is_finite() && args.time_scale > 0.0) {
        bail!("--time-scale {} must be positive", args.time_scale);
    }
    if !args.start_s.is_finite() {
        bail!("--start-s {} is not a time", args.start_s);
    }
    let epoch_unix_ms = match args.epoch_unix_ms {
        Some(ms) => ms,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the system clock is before 1970")?
            .as_millis() as u64,
    };
    let state = Arc::new(State {
        name,
        name_header,
        instance,
        seed: args.seed,
        clock: Clock {
            start_s: args.start_s,
            time_scale: args.time_scale,
            epoch_unix_ms,
        },
        profile: RwLock::new(profile),
        sampler: Mutex::new(Sampler::new(args.seed, instance)),
        received: AtomicU64::new(0),
        served: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        // Never below 1 MiB of capacity (untouched, so not resident): freeing the mapping
        // would raise glibc's mmap threshold and move the next growth into the heap.
        ballast: Mutex::new(Vec::with_capacity(MIB)),
        background: AtomicU64::new(0f64.to_bits()),
    });
    Ok((state, port))
}

async fn run(state: Arc<State>, port: u16) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().context("no local address")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?;
    // Memory and background CPU before the first request, so a sample right after the
    // line below already sees them.
    adjust(&state);
    tokio::spawn(follow(state.clone()));
    // Only now, with the signals handled: whoever waits for this line may stop us at once.
    println!("example-upstream {} listening on {local}", state.name);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    // Out of file descriptors and the like: wait, do not spin.
                    Err(e) => {
                        eprintln!("example-upstream {}: accept: {e}", state.name);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(serve(state, req).await) }
                    });
                    // A client that goes away mid-request is not our error.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
    Ok(())
}

/// Every 100 ms of wall time: the memory held and the background CPU follow the profile.
async fn follow(state: Arc<State>) {
    let mut burners = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let cores = adjust(&state);
        // One thread per (part of a) core to burn; they read their share from `background`.
        while (burners as f64) < cores.ceil() {
            let s = state.clone();
            let index = burners;
            std::thread::spawn(move || burn_background(&s, index));
            burners += 1;
        }
    }
}

/// Sets the ballast and the background CPU to the profile's values now; returns the cores.
fn adjust(state: &State) -> f64 {
    // The ballast's lock is taken before the profile is read, so two adjustments (the
    // ticker's and a control request's) run one after the other and the later one reads the
    // later profile: otherwise a tick that read the profile before a change could resize the
    // ballast after it, back to the old size.
    let mut ballast = lock(&state.ballast);
    let p = state
        .profile
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .params_at(state.clock.now_s(), state.seed);
    let want = p.memory_mb.round().max(0.0) as usize * MIB;
    if ballast.len() > want {
        ballast.truncate(want);
        ballast.shrink_to(want.max(MIB));
    } else if ballast.len() < want {
        let held = ballast.len();
        ballast.reserve_exact(want - held);
        // Not zeroes: zeroed pages would not be resident until written. Copied a MiB at a
        // time (a memcpy even unoptimised), not byte by byte.
        let chunk = vec![0xA5u8; MIB];
        let mut held = held;
        while held < want {
            let n = (want - held).min(MIB);
            ballast.extend_from_slice(&chunk[..n]);
            held += n;
        }
    }
    // Under the same lock, for the same reason.
    state
        .background
        .store(p.background_cores.to_bits(), Ordering::Relaxed);
    drop(ballast);
    p.background_cores
}

/// Burner `index` busies its thread for its share of each 10 ms slot: all of it for the
/// cores below the total, the fraction for the last one, none above.
fn burn_background(state: &State, index: usize) {
    let slot = Duration::from_millis(10);
    loop {
        let cores = f64::from_bits(state.background.load(Ordering::Relaxed));
        let share = (cores - index as f64).clamp(0.0, 1.0);
        if share <= 0.0 {
            std::thread::sleep(slot * 10);
            continue;
        }
        let start = Instant::now();
        let busy = slot.mul_f64(share);
        spin_until(|| start.elapsed() >= busy);
        if let Some(rest) = slot.checked_sub(start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

fn spin_until(mut done: impl FnMut() -> bool) {
    let mut x = 0u64;
    while !done() {
        for i in 0..1000u64 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
    }
    std::hint::black_box(x);
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Burns `cpu` of this thread's CPU time, or gives up after ten times that in wall time (a
/// starved machine should slow requests, not hold them forever).
fn burn_cpu(cpu: Duration) {
    let start_cpu = thread_cpu();
    let start = Instant::now();
    spin_until(|| thread_cpu() - start_cpu >= cpu || start.elapsed() >= cpu * 10);
}

async fn serve(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path().starts_with(CONTROL_PREFIX) {
        return control(&state, req).await;
    }
    let arrived = Instant::now();
    state.received.fetch_add(1, Ordering::Relaxed);
    let params = state
        .profile
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .params_at(state.clock.now_s(), state.seed);
    let sample = lock(&state.sampler).sample(&params);
    if params.cpu_ms > 0.0 {
        let cpu = Duration::from_secs_f64(params.cpu_ms / 1000.0);
        // On the blocking pool, so a burst of CPU-heavy requests does not stall the timers of
        // those already waiting out their latency.
        let _ = tokio::task::spawn_blocking(move || burn_cpu(cpu)).await;
    }
    let hold = Duration::from_secs_f64(sample.latency_ms / 1000.0);
    if let Some(rest) = hold.checked_sub(arrived.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    // Drain the body so the connection can be reused.
    let _ = req.into_body().collect().await;
    let status = if sample.error {
        state.errors.fetch_add(1, Ordering::Relaxed);
        StatusCode::from_u16(params.error_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
    } else {
        StatusCode::OK
    };
    state.served.fetch_add(1, Ordering::Relaxed);
    let mut response = Response::new(Full::new(Bytes::from(format!("{}\n", state.name))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(SERVED_BY, state.name_header.clone());
    response
}

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
    let body = match std::str::from_utf8(&body) {
        Ok(s) => s,
        Err(_) => return text(StatusCode::BAD_REQUEST, "the body is not UTF-8".to_string()),
    };
    match (&parts.method, what) {
        (&Method::GET, "state") => {}
        (&Method::PUT, "profile") => match profile::parse_yaml(body, "profile") {
            Ok(p) => *state.profile.write().unwrap_or_else(|e| e.into_inner()) = p,
            Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
        },
        (&Method::POST, "effects") => {
            let added = profile::parse_effect_json(body, "effect").and_then(|e| {
                let mut p = state.profile.write().unwrap_or_else(|e| e.into_inner());
                *p = p.with_effect(e)?;
                Ok(())
            });
            if let Err(e) = added {
                return text(StatusCode::BAD_REQUEST, e.to_string());
            }
        }
        (m, w) => {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "no control endpoint {m} {CONTROL_PREFIX}{w} (GET state, PUT profile, POST \
                     effects)"
                ),
            );
        }
    }
    // Memory and background CPU follow a change at once, not at the next tick.
    if parts.method != Method::GET {
        adjust(state);
    }
    let now = state.clock.now_s();
    let profile = state
        .profile
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let json = serde_json::json!({
        "name": state.name,
        "instance": state.instance,
        "seed": state.seed,
        "time_scale": state.clock.time_scale,
        "start_s": state.clock.start_s,
        "epoch_unix_ms": state.clock.epoch_unix_ms,
        "scenario_s": now,
        "params": profile.params_at(now, state.seed),
        "active": profile.active_at(now),
        "memory_held_mb": lock(&state.ballast).len() / MIB,
        "received": state.received.load(Ordering::Relaxed),
        "served": state.served.load(Ordering::Relaxed),
        "errors": state.errors.load(Ordering::Relaxed),
        "profile": profile,
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
