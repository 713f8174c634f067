//! The `shadowplane-upstream` program, run as the local provisioner runs it: port and name
//! from the environment, behaviour changed over HTTP while it serves, a clean exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use rustix::process::{Pid, Signal, kill_process};
use shadowplane_e2e::Client;
use shadowplane_e2e::control_plane::free_port;
use shadowplane_e2e::upstream::SERVED_BY;

const BIN: &str = env!("CARGO_BIN_EXE_shadowplane-upstream");

/// The running program; killed on drop so a failing test leaves nothing behind.
struct Program(Child);

impl Program {
    /// Starts it with `args` and `env`, and reads the line that says where it listens.
    fn start(args: &[&str], env: &[(&str, String)]) -> (Program, String) {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("PORT")
            .env_remove("SHADOWPLANE_GROUP")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        (Program(child), line.trim_end().to_string())
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    fn terminate(mut self) -> ExitStatus {
        let pid = Pid::from_raw(self.0.id() as i32).unwrap();
        kill_process(pid, Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit 10 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn serves_on_port_from_the_environment_and_degrades_on_command() {
    let port = free_port();
    let (program, line) = Program::start(
        &[],
        &[
            ("PORT", port.to_string()),
            ("SHADOWPLANE_GROUP", "checkout-blue".into()),
        ],
    );
    assert_eq!(
        line,
        format!("shadowplane-upstream checkout-blue listening on 127.0.0.1:{port}")
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::with_timeout(Duration::from_secs(10));
    let (status, headers, body) = client.get(&format!("{base}/cart"), &[]).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers[SERVED_BY], "checkout-blue");
    assert_eq!(&body[..], b"checkout-blue\n");

    let put = |what: &str, body: &'static str| {
        let url = format!("{base}/_control/{what}");
        let client = client.clone();
        async move {
            client
                .request(Method::PUT, &url, &[], Bytes::from(body))
                .await
                .unwrap()
        }
    };
    // A creeping degradation: slower, then failing.
    assert_eq!(put("delay_ms", "200").await.0, 200);
    let started = Instant::now();
    let (status, _, _) = client.get(&format!("{base}/cart"), &[]).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(put("status", "503").await.0, 200);
    let (status, headers, _) = client.get(&format!("{base}/cart"), &[]).await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers[SERVED_BY], "checkout-blue");
    assert_eq!(put("status", "1000").await.0, 400);

    let (status, _, body) = client
        .get(&format!("{base}/_control/state"), &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["name"], "checkout-blue");
    assert_eq!(v["delay_ms"], 200);
    assert_eq!(v["status"], 503);
    assert_eq!(v["served"], 3, "control requests are not traffic: {v}");

    let status = program.terminate();
    assert!(status.success(), "{status}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still listening after exit"
    );
}

#[tokio::test]
async fn flags_win_over_the_environment() {
    let port = free_port();
    let (_program, line) = Program::start(
        &[
            "--port",
            &port.to_string(),
            "--name",
            "checkout-green",
            "--status",
            "201",
        ],
        &[
            ("PORT", "1".into()),
            ("SHADOWPLANE_GROUP", "checkout-blue".into()),
        ],
    );
    assert_eq!(
        line,
        format!("shadowplane-upstream checkout-green listening on 127.0.0.1:{port}")
    );
    let (status, headers, _) = Client::with_timeout(Duration::from_secs(10))
        .get(&format!("http://127.0.0.1:{port}/"), &[])
        .await
        .unwrap();
    assert_eq!(status, 201);
    assert_eq!(headers[SERVED_BY], "checkout-green");
}

#[test]
fn without_a_port_it_takes_a_free_one_and_says_which() {
    let (program, line) = Program::start(&[], &[]);
    let addr = line
        .strip_prefix("shadowplane-upstream upstream listening on ")
        .unwrap_or_else(|| panic!("{line}"));
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    assert!(std::net::TcpStream::connect(addr).is_ok());
    assert!(program.terminate().success());
}

#[test]
fn bad_arguments_exit_2_with_the_usage() {
    let out = Command::new(BIN).args(["--status", "42"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(
            "shadowplane-upstream: --status 42 is not an HTTP status (100 to 999)\nusage: "
        ),
        "{err}"
    );
}
