//! `shadowplane-upstream`: the test upstream ([`shadowplane_e2e::upstream`]) as a program, for
//! the control plane's local provisioner to run as a group's instances.
//!
//! ```text
//! shadowplane-upstream [--port N] [--name NAME] [--delay-ms N] [--status N]
//! ```
//!
//! It listens on `127.0.0.1:PORT` (`--port`, else `$PORT`, else a free port), names itself in
//! `x-served-by` (`--name`, else `$SHADOWPLANE_GROUP`, else `upstream`), prints
//! `shadowplane-upstream NAME listening on ADDR`, and serves until SIGTERM or SIGINT (then
//! exits 0; bad arguments exit 2). Latency and status change at run time through
//! `PUT /_control/delay_ms` and `PUT /_control/status` (`GET /_control/state` shows them), so
//! a test can make a running primary degrade step by step.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use shadowplane_e2e::upstream::{Upstream, UpstreamOptions};

const USAGE: &str =
    "usage: shadowplane-upstream [--port N] [--name NAME] [--delay-ms N] [--status N]";

#[derive(Debug, PartialEq, Eq)]
struct Args {
    port: u16,
    name: String,
    delay_ms: u64,
    status: u16,
    help: bool,
}

/// Reads the command line, falling back on `env` for the port and the name.
fn parse(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Args, String> {
    let mut port = None;
    let mut name = None;
    let mut delay_ms = 0;
    let mut status = 200;
    let mut help = false;
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (flag, None),
        };
        if flag == "--help" || flag == "-h" {
            help = true;
            continue;
        }
        let value = match inline.or_else(|| args.next()) {
            Some(v) => v,
            None => return Err(format!("{flag} needs a value")),
        };
        match flag.as_str() {
            "--port" => port = Some(number::<u16>(&flag, &value)?),
            "--name" => name = Some(value),
            "--delay-ms" => delay_ms = number(&flag, &value)?,
            "--status" => status = number(&flag, &value)?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let port = match port {
        Some(p) => p,
        None => match env("PORT") {
            Some(p) => number("$PORT", &p)?,
            None => 0,
        },
    };
    let name = name
        .or_else(|| env("SHADOWPLANE_GROUP"))
        .unwrap_or_else(|| "upstream".to_string());
    if name.is_empty() || hyper::header::HeaderValue::from_str(&name).is_err() {
        return Err(format!(
            "name {name:?} cannot be an x-served-by header value"
        ));
    }
    if !(100..=999).contains(&status) {
        return Err(format!(
            "--status {status} is not an HTTP status (100 to 999)"
        ));
    }
    Ok(Args {
        port,
        name,
        delay_ms,
        status,
        help,
    })
}

fn number<T: std::str::FromStr>(what: &str, value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{what} \"{value}\" is not a valid number"))
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("shadowplane-upstream: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.help {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shadowplane-upstream: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let opts = UpstreamOptions {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)),
        control: true,
    };
    let up = match Upstream::start_with(&args.name, opts).await {
        Ok(u) => u,
        Err(e) => {
            eprintln!("shadowplane-upstream: {e}");
            return ExitCode::FAILURE;
        }
    };
    up.set_delay(Duration::from_millis(args.delay_ms));
    up.set_status(args.status);
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("shadowplane-upstream: cannot watch for SIGTERM and SIGINT: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Only now, with the signals handled: whoever waits for this line may stop us at once.
    println!(
        "shadowplane-upstream {} listening on {}",
        args.name,
        up.addr()
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    drop(up);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn flags_win_over_the_environment() {
        let vars = env(&[("PORT", "8081"), ("SHADOWPLANE_GROUP", "checkout-blue")]);
        let a = parse(args(""), &vars).unwrap();
        assert_eq!((a.port, a.name.as_str()), (8081, "checkout-blue"));
        let a = parse(
            args("--port 9000 --name=other --delay-ms 25 --status 503"),
            &vars,
        )
        .unwrap();
        assert_eq!(
            a,
            Args {
                port: 9000,
                name: "other".into(),
                delay_ms: 25,
                status: 503,
                help: false,
            }
        );
        let a = parse(args(""), env(&[])).unwrap();
        assert_eq!((a.port, a.name.as_str(), a.status), (0, "upstream", 200));
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        let cases = [
            ("--port", "--port needs a value"),
            ("--port 70000", "--port \"70000\" is not a valid number"),
            (
                "--status 42",
                "--status 42 is not an HTTP status (100 to 999)",
            ),
            ("--colour red", "unknown argument --colour"),
        ];
        for (line, want) in cases {
            assert_eq!(parse(args(line), env(&[])).unwrap_err(), want);
        }
        assert_eq!(
            parse(args(""), env(&[("PORT", "eighty")])).unwrap_err(),
            "$PORT \"eighty\" is not a valid number"
        );
    }
}
