//! The `shadowplane serve` process for tests: started from a configuration file on free loopback
//! ports, driven through its admin API, killed and restarted on the same ports; plus the
//! shipped ADS bootstrap adapted per Envoy and a background load that counts failures.

use std::fs;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use serde_yaml_ng::Value as Yaml;
use tempfile::TempDir;
use tokio::task::JoinSet;

use crate::filter_stack::workspace_root;
use crate::load::Client;

/// A free TCP port on 127.0.0.1 (bound, then released; the kernel does not hand it out again
/// right away).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A running `shadowplane serve`.
pub struct ControlPlane {
    bin: PathBuf,
    child: Option<Child>,
    /// The xDS port.
    pub xds_port: u16,
    /// The admin API port.
    pub admin_port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    client: Client,
    dir: TempDir,
}

impl ControlPlane {
    /// Writes `config(xds_port, admin_port)` to a file and serves it with `bin`, waiting until
    /// the admin API answers.
    pub async fn start(
        bin: &Path,
        config: impl Fn(u16, u16) -> String,
    ) -> anyhow::Result<ControlPlane> {
        let dir = tempfile::Builder::new()
            .prefix("shadowplane-cp-")
            .tempdir()
            .context("cannot create the control plane's directory")?;
        let (xds_port, admin_port) = (free_port(), free_port());
        let config_path = dir.path().join("shadowplane.yaml");
        fs::write(&config_path, config(xds_port, admin_port))?;
        let mut cp = ControlPlane {
            bin: bin.to_path_buf(),
            child: None,
            xds_port,
            admin_port,
            log_path: dir.path().join("shadowplane.log"),
            config_path,
            client: Client::with_timeout(Duration::from_secs(5)),
            dir,
        };
        cp.spawn().await?;
        Ok(cp)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("SHADOWPLANE_LOG", "info,shadowplane_xds=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("shadowplane exited ({status}) at start\n{}", self.log());
            }
            if let Ok((200, _, _)) = self.client.get(&self.url("/healthz"), &[]).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "shadowplane not answering /healthz after 20 s\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
    }

    /// The control plane's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The admin API URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// The configuration file it serves (rewrite it, then [`ControlPlane::reload`]).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The scratch directory (for extra files a configuration names).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends a JSON request to the admin API; returns the status and the JSON answer.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let method: hyper::Method = method.parse()?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, _, bytes) = self
            .client
            .request(
                method,
                &self.url(path),
                &[("content-type", "application/json")],
                body.into(),
            )
            .await?;
        let v = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow!("{path}: {e}: {}", String::from_utf8_lossy(&bytes)))?;
        Ok((status, v))
    }

    /// Sets a service's weights; returns the new version.
    pub async fn set_weights(
        &self,
        service: &str,
        weights: &[(&str, u32)],
        canary: &[&str],
    ) -> anyhow::Result<String> {
        let w: serde_json::Map<String, Value> = weights
            .iter()
            .map(|(r, p)| (r.to_string(), json!(p)))
            .collect();
        let (status, v) = self
            .admin(
                "PUT",
                &format!("/v1/services/{service}/weights"),
                Some(json!({"weights": w, "canary": canary})),
            )
            .await?;
        if status != 200 {
            bail!("set weights: {status} {v}");
        }
        v["version"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no version in {v}"))
    }

    /// Re-reads the configuration file; returns the status and the answer.
    pub async fn reload(&self, canary: &[&str]) -> anyhow::Result<(u16, Value)> {
        self.admin("POST", "/v1/reload", Some(json!({"canary": canary})))
            .await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> anyhow::Result<Value> {
        Ok(self.admin("GET", "/v1/status", None).await?.1)
    }

    /// `GET /v1/events?since=N`.
    pub async fn events(&self, since: u64) -> anyhow::Result<Vec<Value>> {
        let v = self
            .admin("GET", &format!("/v1/events?since={since}"), None)
            .await?
            .1;
        Ok(v["events"].as_array().cloned().unwrap_or_default())
    }

    /// The status entry of `node`, if the control plane knows it.
    pub async fn node(&self, node: &str) -> Option<Value> {
        let s = self.status().await.ok()?;
        s["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["nodes"].as_array().cloned().unwrap_or_default())
            .find(|n| n["node"] == node)
    }

    /// Waits until every one of `nodes` is SYNCED on `version`.
    pub async fn wait_synced(&self, nodes: &[&str], version: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let mut all = true;
            for n in nodes {
                match self.node(n).await {
                    Some(v) if v["state"] == "SYNCED" && v["target_version"] == version => {}
                    _ => all = false,
                }
            }
            if all {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
    }

    /// Kills the process (SIGKILL: no goodbye to the Envoys).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and file.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "--- shadowplane log (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.kill();
    }
}

/// The shipped `envoy-config/ads-bootstrap.yaml` for one test Envoy: its own node id, admin on
/// port 0, the control plane on `xds_port`, and the ADS variant (`GRPC` or `DELTA_GRPC`).
pub fn ads_bootstrap(node_id: &str, xds_port: u16, api_type: &str) -> String {
    let path = workspace_root().join("envoy-config/ads-bootstrap.yaml");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut b: Yaml =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b["node"]["id"] = Yaml::from(node_id);
    b["admin"]["address"]["socket_address"]["port_value"] = Yaml::from(0);
    b["dynamic_resources"]["ads_config"]["api_type"] = Yaml::from(api_type);
    b["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["socket_address"]["port_value"] = Yaml::from(u64::from(xds_port));
    serde_yaml_ng::to_string(&b).unwrap_or_default()
}

/// Requests sent in the background while a test changes things, counting every failure.
pub struct BackgroundLoad {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    first_error: Arc<std::sync::Mutex<Option<String>>>,
    sessions: Arc<std::sync::Mutex<Sessions>>,
    tasks: JoinSet<()>,
}

/// Which group (`x-served-by`) served each session, and every change of group seen.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    last: std::collections::BTreeMap<String, String>,
    /// (from, to) -> how many sessions moved that way.
    pub moves: std::collections::BTreeMap<(String, String), u64>,
}

impl Sessions {
    fn saw(&mut self, session: &str, served_by: &str) {
        match self.last.get_mut(session) {
            Some(last) if last != served_by => {
                *self
                    .moves
                    .entry((last.clone(), served_by.to_string()))
                    .or_default() += 1;
                *last = served_by.to_string();
            }
            Some(_) => {}
            None => {
                self.last.insert(session.to_string(), served_by.to_string());
            }
        }
    }

    /// Sessions seen.
    pub fn count(&self) -> usize {
        self.last.len()
    }
}

/// What a [`BackgroundLoad`] saw.
#[derive(Debug, Clone)]
pub struct BackgroundResult {
    /// Requests sent.
    pub sent: u64,
    /// Requests that did not get a 200.
    pub failed: u64,
    /// The first failure, described.
    pub first_error: Option<String>,
    /// Sessions and their moves between groups (empty without session keys).
    pub sessions: Sessions,
}

impl BackgroundLoad {
    /// `per_url` loops per URL, each sending one request every 5 ms at most, for at most
    /// `limit` (a bound, so a forgotten stop cannot run forever).
    pub fn start(urls: &[String], per_url: usize, limit: Duration) -> BackgroundLoad {
        Self::start_with_sessions(urls, per_url, limit, None)
    }

    /// As [`BackgroundLoad::start`], and with `sessions` = (header, count) each request carries
    /// one of `count` session keys in `header` (loop by loop, round robin), and the group that
    /// served it (`x-served-by`) is tallied per session.
    pub fn start_with_sessions(
        urls: &[String],
        per_url: usize,
        limit: Duration,
        sessions: Option<(&str, usize)>,
    ) -> BackgroundLoad {
        let session_header = sessions.map(|(h, n)| (h.to_string(), n.max(1)));
        let tally = Arc::new(std::sync::Mutex::new(Sessions::default()));
        let loops = urls.len() * per_url;
        let mut index = 0usize;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let first_error = Arc::new(std::sync::Mutex::new(None));
        let mut tasks = JoinSet::new();
        for url in urls {
            for _ in 0..per_url {
                let (client, url) = (Client::new(), url.clone());
                let (stop, sent, failed, first) = (
                    stop.clone(),
                    sent.clone(),
                    failed.clone(),
                    first_error.clone(),
                );
                let (tally, session_header, me) = (tally.clone(), session_header.clone(), index);
                index += 1;
                tasks.spawn(async move {
                    let started = Instant::now();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                        sent.fetch_add(1, Ordering::Relaxed);
                        let session = session_header.as_ref().map(|(h, count)| {
                            (h.clone(), format!("s{}", (me + n * loops) % count))
                        });
                        n += 1;
                        let headers: Vec<(&str, &str)> = session
                            .iter()
                            .map(|(h, k)| (h.as_str(), k.as_str()))
                            .collect();
                        let r = client.get(&url, &headers).await;
                        if let (Some((_, key)), Ok((200, h, _))) = (&session, &r)
                            && let Some(by) = h
                                .get(crate::upstream::SERVED_BY)
                                .and_then(|v| v.to_str().ok())
                            && let Ok(mut t) = tally.lock()
                        {
                            t.saw(key, by);
                        }
                        if !matches!(r, Ok((200, _, _))) {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let what = match r {
                                Ok((s, _, b)) => {
                                    format!("{url}: {s} {}", String::from_utf8_lossy(&b))
                                }
                                Err(e) => format!("{e:#}"),
                            };
                            if let Ok(mut f) = first.lock() {
                                f.get_or_insert(what);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                });
            }
        }
        BackgroundLoad {
            stop,
            sent,
            failed,
            first_error,
            sessions: tally,
            tasks,
        }
    }

    /// Stops and tallies.
    pub async fn stop(mut self) -> BackgroundResult {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
        BackgroundResult {
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            first_error: self.first_error.lock().ok().and_then(|f| f.clone()),
            sessions: self.sessions.lock().map(|s| s.clone()).unwrap_or_default(),
        }
    }
}
