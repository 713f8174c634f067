//! A real Envoy process for tests: started from a bootstrap in a fresh directory, waited on
//! until ready, read through its admin API, and killed when dropped.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rustix::process::{Pid, Signal, kill_process};
use tempfile::TempDir;

use crate::load::Client;
use crate::upstream::lock;

/// How long [`Envoy`]'s drop waits after SIGTERM before it sends SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// Lines of log quoted in errors and when a test panics.
const LOG_TAIL_LINES: usize = 60;

/// How to run Envoy besides its bootstrap.
#[derive(Debug, Clone)]
pub struct EnvoyOpts {
    /// Worker threads (`--concurrency`); default 2, so per-worker behaviour is exercised.
    pub concurrency: u32,
    /// `--service-node`, which overrides the bootstrap's `node.id`; default none.
    pub node_id: Option<String>,
    /// `--service-cluster`, which overrides the bootstrap's `node.cluster`; default none.
    pub cluster: Option<String>,
    /// Appended to the command line as they are, e.g. `--component-log-level wasm:debug`;
    /// default none.
    pub extra_args: Vec<String>,
    /// How long to wait for `GET /ready` to answer 200; default 30 s (a wasm filter compiles at
    /// start-up, and the machine is shared).
    pub ready_timeout: Duration,
}

impl Default for EnvoyOpts {
    fn default() -> Self {
        EnvoyOpts {
            concurrency: 2,
            node_id: None,
            cluster: None,
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// A running Envoy. Dropping it sends SIGTERM, then SIGKILL if Envoy has not exited after a
/// grace period, and removes its directory; if the thread is panicking (a failed assertion), the
/// tail of Envoy's log is printed first.
pub struct Envoy {
    process: Process,
    admin: SocketAddr,
    client: Client,
    log_path: PathBuf,
    stderr_path: PathBuf,
    // Last, so the directory goes after the process that writes into it.
    dir: TempDir,
}

impl Envoy {
    /// Starts Envoy with `bootstrap_yaml` and waits until it is ready.
    ///
    /// The bootstrap's admin must listen on `127.0.0.1` port 0 (the real address is read from
    /// `--admin-address-path`), and its listeners should bind port 0 too (see
    /// [`Envoy::listener_port`]). Fails, quoting the log, if Envoy exits or is not ready within
    /// [`EnvoyOpts::ready_timeout`].
    pub async fn start(bootstrap_yaml: &str, opts: EnvoyOpts) -> anyhow::Result<Envoy> {
        let bin = envoy_bin();
        let dir = tempfile::Builder::new()
            .prefix("shadowplane-envoy-")
            .tempdir()
            .context("envoy: cannot create its directory")?;
        let config_path = dir.path().join("envoy.yaml");
        let log_path = dir.path().join("envoy.log");
        let admin_path = dir.path().join("admin.txt");
        let stderr_path = dir.path().join("stderr.txt");
        fs::write(&config_path, bootstrap_yaml)
            .with_context(|| format!("envoy: cannot write {}", config_path.display()))?;
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("envoy: cannot create {}", stderr_path.display()))?;
        let stdout = stderr.try_clone().context("envoy: cannot dup stderr")?;

        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--concurrency")
            .arg(opts.concurrency.to_string())
            // Hot restart's shared memory is keyed by base id: a dynamic one lets tests run
            // several Envoys at once.
            .arg("--use-dynamic-base-id")
            .args(["--log-level", "info"])
            .arg("--log-path")
            .arg(&log_path)
            // The log file is flushed on this interval (default 10 s): short, so `log()` is
            // current when a test reads it.
            .args(["--file-flush-interval-msec", "100"])
            .arg("--admin-address-path")
            .arg(&admin_path);
        if let Some(node) = &opts.node_id {
            cmd.args(["--service-node", node]);
        }
        if let Some(cluster) = &opts.cluster {
            cmd.args(["--service-cluster", cluster]);
        }
        cmd.args(&opts.extra_args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd
            .spawn()
            .with_context(|| format!("envoy: cannot run {}", bin.display()))?;
        let process = Process {
            pid: child.id(),
            child: Mutex::new(child),
        };

        let client = Client::with_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + opts.ready_timeout;
        let mut admin = None;
        let mut last_ready = String::from("admin address not written yet");
        loop {
            if let Some(status) = process.try_wait()? {
                bail!(
                    "envoy exited ({status}) before it was ready\n{}",
                    tail(&log_path, &stderr_path)
                );
            }
            if admin.is_none() {
                admin = fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|s| s.trim().parse::<SocketAddr>().ok());
            }
            if let Some(addr) = admin {
                match client.get(&format!("http://{addr}/ready"), &[]).await {
                    Ok((200, _, _)) => break,
                    Ok((status, _, body)) => {
                        last_ready = format!("/ready: {status} {}", String::from_utf8_lossy(&body))
                    }
                    Err(e) => last_ready = format!("/ready: {e:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "envoy not ready after {:?} ({})\n{}",
                    opts.ready_timeout,
                    last_ready.trim(),
                    tail(&log_path, &stderr_path)
                );
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
        let admin = admin.ok_or_else(|| anyhow!("envoy: ready without an admin address"))?;
        Ok(Envoy {
            process,
            admin,
            client: Client::new(),
            log_path,
            stderr_path,
            dir,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// Whether the process is still alive.
    pub fn is_running(&self) -> bool {
        matches!(self.process.try_wait(), Ok(None))
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The directory holding the bootstrap, the log and anything else the test puts there
    /// (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// GETs an admin `path` (such as `/clusters` or `/stats?filter=wasm`) and returns the body.
    /// Panics unless the answer is 200: the admin API failing is fatal to any test.
    pub async fn admin_get(&self, path: &str) -> String {
        self.admin(hyper::Method::GET, path).await
    }

    /// POSTs to an admin `path` (the mutating endpoints, such as `/healthcheck/fail` or
    /// `/logging?wasm=debug`, take POST only) and returns the body; panics unless 200.
    pub async fn admin_post(&self, path: &str) -> String {
        self.admin(hyper::Method::POST, path).await
    }

    async fn admin(&self, method: hyper::Method, path: &str) -> String {
        let url = format!("http://{}{path}", self.admin);
        match self
            .client
            .request(method.clone(), &url, &[], bytes::Bytes::new())
            .await
        {
            Ok((200, _, body)) => String::from_utf8_lossy(&body).into_owned(),
            Ok((status, _, body)) => panic!(
                "envoy admin {method} {path}: status {status}: {}",
                String::from_utf8_lossy(&body)
            ),
            Err(e) => panic!(
                "envoy admin {method} {path}: {e:#} (envoy running: {})\n{}",
                self.is_running(),
                self.log_tail()
            ),
        }
    }

    /// The port the listener `name` is bound to (a bootstrap binds port 0, Envoy picks).
    /// Panics, listing the listeners there are, if there is none by that name.
    pub async fn listener_port(&self, name: &str) -> u16 {
        let body = self.admin_get("/listeners?format=json").await;
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("envoy /listeners is not JSON: {e}: {body}"));
        let listeners = json["listener_statuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let found = listeners.iter().find(|l| l["name"] == name);
        let Some(listener) = found else {
            let names: Vec<&str> = listeners
                .iter()
                .filter_map(|l| l["name"].as_str())
                .collect();
            panic!("envoy has no listener {name:?}; it has {names:?}");
        };
        let port = &listener["local_address"]["socket_address"]["port_value"];
        port.as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("envoy listener {name:?} has no port: {listener}"))
    }

    /// `http://127.0.0.1:PORT` of listener `name`, followed by `path`.
    pub async fn listener_url(&self, name: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.listener_port(name).await)
    }

    /// Every stat from `/stats`, by name. Counters and gauges are numbers; histograms are
    /// Envoy's text summary (`P0(...) P25(...) ...`).
    pub async fn stats(&self) -> BTreeMap<String, String> {
        parse_stats(&self.admin_get("/stats").await)
    }

    /// The value of counter or gauge `name`, `None` if Envoy has no such stat (yet).
    pub async fn stat_counter(&self, name: &str) -> Option<u64> {
        self.stats().await.get(name).and_then(|v| v.parse().ok())
    }

    /// Waits until counter `name` is at least `at_least`; false on timeout.
    pub async fn wait_for_counter(&self, name: &str, at_least: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stat_counter(name).await.unwrap_or(0) >= at_least {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
    }

    /// `/config_dump` as JSON.
    pub async fn config_dump(&self) -> serde_json::Value {
        let body = self.admin_get("/config_dump").await;
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("envoy /config_dump is not JSON: {e}"))
    }

    /// `/server_info` as JSON: the node as Envoy sees it (with `--service-node` and
    /// `--service-cluster` applied, unlike the bootstrap in [`Envoy::config_dump`]), state,
    /// uptime, command-line options.
    pub async fn server_info(&self) -> serde_json::Value {
        let body = self.admin_get("/server_info").await;
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("envoy /server_info is not JSON: {e}"))
    }

    /// Resident memory of the process, from `/proc/PID/status`. Panics if it has exited.
    pub fn rss_bytes(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("envoy: cannot read {path}: {e} (has it exited?)"));
        parse_vm_rss(&status).unwrap_or_else(|| panic!("envoy: no VmRSS in {path}"))
    }

    /// Envoy's log so far. Envoy writes it out every 100 ms (`--file-flush-interval-msec`), so
    /// the last lines may be missing: to look for a line, use [`Envoy::wait_for_log`].
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; false on timeout.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        crate::wait_until(timeout, || self.log().contains(needle)).await
    }

    /// The last lines of the log and whatever Envoy wrote to stderr.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path, &self.stderr_path)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.process.terminate();
        if std::thread::panicking() {
            eprintln!(
                "--- envoy (pid {}) log tail ---\n{}",
                self.pid(),
                self.log_tail()
            );
        }
    }
}

/// The child process; its own drop kills it, so an early return from [`Envoy::start`] leaves
/// nothing behind.
struct Process {
    pid: u32,
    child: Mutex<Child>,
}

impl Process {
    fn try_wait(&self) -> anyhow::Result<Option<ExitStatus>> {
        lock(&self.child)
            .try_wait()
            .context("envoy: cannot check the process")
    }

    fn terminate(&self) {
        let mut child = lock(&self.child);
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        let pid = i32::try_from(self.pid).ok().and_then(Pid::from_raw);
        if let Some(pid) = pid {
            let _ = kill_process(pid, Signal::TERM);
            let deadline = Instant::now() + TERM_GRACE;
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The Envoy binary: `$ENVOY_BIN`, else `target/bin/envoy` in the workspace. Panics with the
/// command that installs it if it is missing: a test that needs Envoy must not pass without it.
pub fn envoy_bin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new("/"));
    locate_envoy(std::env::var_os("ENVOY_BIN"), root).unwrap_or_else(|msg| panic!("{msg}"))
}

fn locate_envoy(from_env: Option<OsString>, root: &Path) -> Result<PathBuf, String> {
    let (path, origin) = match from_env.filter(|v| !v.is_empty()) {
        Some(v) => (PathBuf::from(v), "ENVOY_BIN"),
        None => (root.join("target/bin/envoy"), "the default location"),
    };
    let problem = match fs::metadata(&path) {
        Err(e) => e.to_string(),
        Ok(m) if !m.is_file() => "not a file".to_owned(),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => "not executable".to_owned(),
        Ok(_) => return Ok(path),
    };
    Err(format!(
        "no usable envoy at {} ({origin}): {problem}; run `cargo xtask setup` to install it \
         (or point ENVOY_BIN at an envoy binary)",
        path.display()
    ))
}

/// Fills `{{NAME}}` placeholders in a bootstrap template. Panics if a placeholder is left
/// unreplaced, naming it, so a typo fails loudly instead of reaching Envoy.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    let left = placeholders(&out);
    assert!(
        left.is_empty(),
        "render: placeholders left unreplaced: {left:?}"
    );
    out
}

/// Names between `{{` and `}}` that look like placeholders (letters, digits, `_`, `-`, `.`), so
/// braces in, say, an inline Lua script are not mistaken for one.
fn placeholders(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = &after[..end];
        let looks_like_one = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if looks_like_one {
            found.push(name.to_owned());
            rest = &after[end + 2..];
        } else {
            rest = after;
        }
    }
    found
}

fn parse_stats(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_owned(), value.trim().to_owned()))
        .collect()
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn tail(log_path: &Path, stderr_path: &Path) -> String {
    let last_lines = |path: &Path| {
        let text = fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    };
    format!(
        "--- {} ---\n{}\n--- {} ---\n{}",
        log_path.display(),
        last_lines(log_path),
        stderr_path.display(),
        last_lines(stderr_path)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Upstream;

    /// Admin and one listener, `ingress`: `/direct` answers 200 "ok" from Envoy itself, anything
    /// else goes to the cluster `primary` at `{{UPSTREAM_PORT}}`.
    const BOOTSTRAP: &str = r#"
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 0 }
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: { address: 127.0.0.1, port_value: 0 }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: "ok" } }
              - match: { prefix: "/" }
                route: { cluster: primary }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: primary
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: primary
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: {{UPSTREAM_PORT}} }
"#;

    #[tokio::test]
    async fn serves_through_a_listener_and_reports_stats() {
        let up = Upstream::start("primary").await;
        let bootstrap = render(BOOTSTRAP, &[("UPSTREAM_PORT", up.port().to_string())]);
        let opts = EnvoyOpts {
            node_id: Some("node-under-test".into()),
            ..EnvoyOpts::default()
        };
        let envoy = Envoy::start(&bootstrap, opts).await.unwrap();
        assert!(envoy.is_running());

        let port = envoy.listener_port("ingress").await;
        assert_ne!(port, 0);
        let direct = format!("http://127.0.0.1:{port}/direct");
        let proxied = format!("http://127.0.0.1:{port}/app");
        let client = Client::new();
        for _ in 0..10 {
            let (status, _, body) = client.get(&direct, &[]).await.unwrap();
            assert_eq!((status, &body[..]), (200, &b"ok"[..]));
        }
        let result = client.run(10, 2, move |_| (proxied.clone(), vec![])).await;
        assert_eq!(result.count(200), 10, "{result:?}");
        assert_eq!(result.served_by("primary"), 10);
        assert_eq!(up.served(), 10);

        let stats = envoy.stats().await;
        assert_eq!(
            stats
                .get("http.ingress.downstream_rq_completed")
                .map(String::as_str),
            Some("20"),
            "{:?}",
            stats
                .keys()
                .filter(|k| k.starts_with("http.ingress."))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            envoy.stat_counter("cluster.primary.upstream_rq_200").await,
            Some(10)
        );
        assert_eq!(envoy.stat_counter("no.such.stat").await, None);
        assert_eq!(
            envoy.stat_counter("server.concurrency").await,
            Some(2),
            "--concurrency"
        );

        // `--service-node` shows in /server_info; the bootstrap in /config_dump keeps the
        // file's node, without the override.
        let info = envoy.server_info().await;
        assert_eq!(info["node"]["id"], "node-under-test");
        let dump = envoy.config_dump().await;
        assert_eq!(
            dump["configs"][0]["bootstrap"]["node"]["id"],
            serde_json::Value::Null
        );
        assert!(dump["configs"][1]["static_clusters"][0]["cluster"]["name"] == "primary");
        assert!(envoy.rss_bytes() > 1 << 20);
        assert!(
            envoy
                .wait_for_log("starting main dispatch loop", Duration::from_secs(5))
                .await
        );

        let pid = envoy.pid();
        drop(envoy);
        // Drop reaps the process, so its /proc entry is gone.
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "envoy still running after drop"
        );
    }

    #[tokio::test]
    async fn a_bad_bootstrap_fails_with_the_log() {
        let err = Envoy::start(
            "static_resources: { clusters: [ { nme: x } ] }",
            EnvoyOpts::default(),
        )
        .await
        .err()
        .expect("envoy accepted a bad bootstrap");
        let msg = format!("{err:#}");
        assert!(msg.contains("exited"), "{msg}");
        assert!(
            msg.contains("nme"),
            "the log should name the bad field: {msg}"
        );
    }

    #[test]
    fn render_fills_and_refuses_leftovers() {
        let vars = [
            ("PORT", "8080".to_owned()),
            ("HOST", "127.0.0.1".to_owned()),
        ];
        assert_eq!(render("{{HOST}}:{{PORT}}", &vars), "127.0.0.1:8080");
        // Braces that are no placeholder name are left alone.
        assert_eq!(render("x {{ not one }}", &[]), "x {{ not one }}");
        let left = std::panic::catch_unwind(|| render("{{PORT}} {{PROT}}", &vars))
            .unwrap_err()
            .downcast::<String>()
            .unwrap();
        assert!(left.contains("PROT"), "{left}");
    }

    #[test]
    fn missing_envoy_names_the_setup_command() {
        let dir = tempfile::tempdir().unwrap();
        let err = locate_envoy(None, dir.path()).unwrap_err();
        assert!(err.contains("cargo xtask setup"), "{err}");
        assert!(err.contains("target/bin/envoy"), "{err}");

        let not_exec = dir.path().join("envoy");
        fs::write(&not_exec, "#!/bin/sh\n").unwrap();
        let err = locate_envoy(Some(not_exec.clone().into()), dir.path()).unwrap_err();
        assert!(
            err.contains("not executable") && err.contains("ENVOY_BIN"),
            "{err}"
        );

        fs::set_permissions(&not_exec, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            locate_envoy(Some(not_exec.clone().into()), dir.path()),
            Ok(not_exec)
        );
    }

    #[test]
    fn parses_stats_and_rss() {
        let stats = parse_stats(
            "cluster.a.upstream_rq: 3\nhttp.x.rq_time: P0(nan,1) P25(nan,2)\ngarbage\n",
        );
        assert_eq!(stats["cluster.a.upstream_rq"], "3");
        assert!(stats["http.x.rq_time"].starts_with("P0"));
        assert_eq!(stats.len(), 2);
        assert_eq!(
            parse_vm_rss("Name:\tenvoy\nVmRSS:\t   2048 kB\n"),
            Some(2 << 20)
        );
    }
}
