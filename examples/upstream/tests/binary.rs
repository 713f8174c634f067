//! The `example-upstream` program on loopback: measured latency and errors match its profile,
//! control changes take effect, scenario time runs at the time scale, memory is really held,
//! bad arguments exit 2 naming the field, and SIGTERM exits 0.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustix::process::{Pid, Signal, kill_process};

const BIN: &str = env!("CARGO_BIN_EXE_example-upstream");

/// The running program; killed on drop so a failing test leaves nothing behind.
struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("PORT")
            .env_remove("SHADOWPLANE_GROUP")
            .env_remove("SHADOWPLANE_INSTANCE")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout is piped");
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in its first line: {line:?}"));
        assert!(line.starts_with("example-upstream "), "{line:?}");
        Running { child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and returns the exit code.
    fn terminate(mut self) -> Option<i32> {
        let pid = Pid::from_raw(self.pid() as i32).expect("a child's pid is positive");
        kill_process(pid, Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "still running 5 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Conn(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn(sender)
    }

    /// Status, `x-served-by`, body and how long it took.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: &str,
    ) -> (u16, String, String, Duration) {
        self.0.ready().await.unwrap();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "upstream")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let started = Instant::now();
        let resp = self.0.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let served_by = resp
            .headers()
            .get("x-served-by")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let took = started.elapsed();
        (
            status,
            served_by,
            String::from_utf8_lossy(&body).into_owned(),
            took,
        )
    }

    async fn state(&mut self) -> serde_json::Value {
        let (status, _, body, _) = self.send(Method::GET, "/_control/state", "").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// `n` GETs over `conns` connections at once: each request's status and latency in ms.
async fn load(addr: SocketAddr, n: usize, conns: usize) -> Vec<(u16, f64)> {
    let mut tasks = Vec::new();
    for c in 0..conns {
        let count = n / conns + usize::from(c < n % conns);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut out = Vec::new();
            for _ in 0..count {
                let (status, served_by, _, took) = conn.send(Method::GET, "/", "").await;
                assert_eq!(served_by, "probe");
                out.push((status, took.as_secs_f64() * 1000.0));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), n);
    all
}

fn median_ms(results: &[(u16, f64)]) -> f64 {
    let mut v: Vec<f64> = results.iter().map(|r| r.1).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn error_rate(results: &[(u16, f64)]) -> f64 {
    results.iter().filter(|r| r.0 != 200).count() as f64 / results.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_its_profile_and_follows_control_changes() {
    let up = Running::start(&[
        "--port",
        "0",
        "--name",
        "probe",
        "--seed",
        "5",
        "--profile-json",
        r#"{"base": {"latency_median_ms": 20, "latency_sigma": 0.2, "error_rate": 0.1}}"#,
    ]);
    let results = load(up.addr, 200, 8).await;
    let (median, errors) = (median_ms(&results), error_rate(&results));
    eprintln!("profile 20 ms / 10%: measured median {median:.1} ms, error rate {errors:.3}");
    // Never faster than drawn; slower only by scheduling on a busy machine.
    assert!(
        (18.5..28.0).contains(&median),
        "median {median} ms against 20"
    );
    assert!(
        (0.05..0.16).contains(&errors),
        "error rate {errors} against 0.1"
    );
    assert!(results.iter().all(|r| r.0 == 200 || r.0 == 503));

    let mut control = Conn::open(up.addr).await;
    let state = control.state().await;
    assert_eq!(state["name"], "probe");
    assert_eq!(state["received"], 200, "control requests are not traffic");
    assert_eq!(
        state["errors"].as_u64(),
        Some(results.iter().filter(|r| r.0 == 503).count() as u64)
    );
    assert_eq!(state["params"]["error_rate"], 0.1);
    assert_eq!(state["params"]["latency_median_ms"], 20.0);

    // A slower, error-free profile from now on.
    let (status, _, body, _) = control
        .send(
            Method::PUT,
            "/_control/profile",
            "base: {latency_median_ms: 60, latency_sigma: 0.1}",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let after = load(up.addr, 40, 4).await;
    let median = median_ms(&after);
    assert!(
        (57.0..80.0).contains(&median),
        "median {median} ms against 60"
    );
    assert_eq!(error_rate(&after), 0.0);

    // A fault injected at run time.
    let (status, _, body, _) = control
        .send(
            Method::POST,
            "/_control/effects",
            r#"{"kind": "step_failure", "at_s": 0, "error_rate": 1}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["active"], serde_json::json!(["step_failure"]));
    let failing = load(up.addr, 20, 2).await;
    assert!(failing.iter().all(|r| r.0 == 503), "{failing:?}");

    // Bad changes say where and change nothing.
    let (status, _, body, _) = control
        .send(Method::PUT, "/_control/profile", "base:\n  error_rate: 3\n")
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        "profile:2:3: base.error_rate: must be from 0 to 1, got 3\n"
    );
    let (status, _, body, _) = control
        .send(
            Method::POST,
            "/_control/effects",
            r#"{"kind": "memory_leak", "at_s": 1}"#,
        )
        .await;
    assert_eq!(status, 400);
    assert!(body.contains("missing field `mb_per_hour`"), "{body}");
    let (status, _, _, _) = control.send(Method::GET, "/_control/colour", "").await;
    assert_eq!(status, 404);
    assert_eq!(control.state().await["params"]["error_rate"], 1.0);

    assert_eq!(up.terminate(), Some(0));
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"));
    kb / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_time_runs_at_the_time_scale_and_memory_is_held() {
    // 1000 scenario seconds per wall second: the step failure at 3000 s comes 3 s in.
    let up = Running::start(&[
        "--name",
        "probe",
        "--time-scale",
        "1000",
        "--profile-json",
        r#"{"base": {"latency_median_ms": 2, "memory_mb": 64},
            "effects": [{"kind": "step_failure", "at_s": 3000, "error_rate": 1}]}"#,
    ]);
    let mut conn = Conn::open(up.addr).await;
    let (s1, t1) = (conn.state().await, Instant::now());
    assert!(s1["scenario_s"].as_f64().unwrap() < 3000.0, "{s1}");
    let (status, served_by, body, _) = conn.send(Method::GET, "/", "").await;
    assert_eq!(
        (status, served_by.as_str(), body.as_str()),
        (200, "probe", "probe\n")
    );
    assert_eq!(s1["memory_held_mb"], 64);
    let rss = rss_mib(up.pid());
    assert!(rss >= 64.0, "RSS {rss:.1} MiB with 64 MiB held");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s2, t2) = (conn.state().await, Instant::now());
    let rate = (s2["scenario_s"].as_f64().unwrap() - s1["scenario_s"].as_f64().unwrap())
        / (t2 - t1).as_secs_f64();
    assert!(
        (850.0..1150.0).contains(&rate),
        "{rate} scenario s per wall s"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    while conn.state().await["scenario_s"].as_f64().unwrap() < 3000.0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, served_by, _, _) = conn.send(Method::GET, "/", "").await;
    assert_eq!((status, served_by.as_str()), (503, "probe"));

    // Memory given back is returned to the system, as after a leak's `until_s`, and again
    // after growing once more (where memory freed in pieces would stay in glibc's heap).
    let mut v = serde_json::Value::Null;
    for mb in [8, 64, 8] {
        let (status, _, body, _) = conn
            .send(
                Method::PUT,
                "/_control/profile",
                &format!("base: {{memory_mb: {mb}}}"),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        v = serde_json::from_str(&body).unwrap();
    }
    assert_eq!(v["memory_held_mb"], 8);
    let rss = rss_mib(up.pid());
    assert!(rss < 40.0, "RSS {rss:.1} MiB with 8 MiB held");
    assert_eq!(up.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epoch_aligns_instances_and_the_environment_names_them() {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let epoch = (now_ms - 10_000).to_string();
    let mut child = Command::new(BIN)
        .args([
            "--time-scale",
            "2",
            "--start-s",
            "100",
            "--epoch-unix-ms",
            &epoch,
        ])
        .env("PORT", "0")
        .env("SHADOWPLANE_GROUP", "checkout-blue")
        .env("SHADOWPLANE_INSTANCE", "3")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let up = Running {
        addr: line.trim().rsplit(' ').next().unwrap().parse().unwrap(),
        child,
    };
    assert!(line.starts_with("example-upstream checkout-blue listening on 127.0.0.1:"));
    let state = Conn::open(up.addr).await.state().await;
    // Ten wall seconds after the epoch at twice the speed: 120 s, plus the start-up time.
    let t = state["scenario_s"].as_f64().unwrap();
    assert!((120.0..126.0).contains(&t), "scenario time {t}");
    assert_eq!(state["instance"], 3);
    assert_eq!(state["name"], "checkout-blue");
}

#[test]
fn bad_arguments_exit_2_naming_the_field() {
    let out = Command::new(BIN)
        .args(["--profile-json", r#"{"base": {"error_rate": 3}}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "example-upstream: --profile-json:1:11: base.error_rate: must be from 0 to 1, got 3"
    );
    let out = Command::new(BIN)
        .args(["--port", "seventy"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, "effects:\n  - {kind: noise, amplitude: 2}\n").unwrap();
    let out = Command::new(BIN)
        .arg("--profile")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:2:19: effects[0].amplitude: must be from 0 to below 1, got 2",
            path.display()
        )),
        "{stderr}"
    );
}

/// The CPU time the process has used (user and system), from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which ends at the last ')': utime and stime are the
    // 12th and 13th of them, in clock ticks (100 a second on Linux).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipped_scenario_launches_as_xtask_will_run_it() {
    use shadowplane_example_upstream::scenario::{self, LaunchContext};
    let s = scenario::find(&scenario::shipped_dir(), "cpu-contention").unwrap();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // The run started 150 wall seconds ago, so the contention is at full strength now.
    let ctx = LaunchContext {
        upstream: BIN.into(),
        epoch_unix_ms: now_ms - 150_000,
        whole_profile: true,
    };
    let launch = s.launch(&s.primary, &ctx);
    assert_eq!(launch.program, BIN);
    let mut args: Vec<&str> = launch.args.iter().map(String::as_str).collect();
    args.extend(["--name", "probe"]);
    let up = Running::start(&args);
    let mut conn = Conn::open(up.addr).await;
    let state = conn.state().await;
    assert_eq!(
        state["profile"],
        serde_json::to_value(s.primary.profile.profile()).unwrap()
    );
    // 150 wall seconds at 20x: 3000 s, 1800 s into the contention: full strength.
    let t = state["scenario_s"].as_f64().unwrap();
    assert!((3000.0..3060.0).contains(&t), "scenario time {t}");
    assert_eq!(
        state["active"],
        serde_json::json!(["noise", "cpu_contention"])
    );
    assert_eq!(state["params"]["background_cores"], 0.2);
    assert_eq!(state["params"]["cpu_ms"], 3.0);
    let want = s.params_at(&s.primary, t).latency_median_ms;
    let got = state["params"]["latency_median_ms"].as_f64().unwrap();
    assert!(
        (got / want - 1.0).abs() < 0.05,
        "median {got} against {want}"
    );

    // The background thread really burns CPU: 0.2 cores, so about 0.2 s a second.
    let before = cpu_seconds(up.pid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_seconds(up.pid()) - before;
    eprintln!("background CPU: {used:.2} s in 2 s at 0.2 cores");
    assert!((0.2..0.8).contains(&used), "{used} s of CPU in 2 s");
    assert_eq!(up.terminate(), Some(0));
}
