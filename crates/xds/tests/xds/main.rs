//! Integration tests: the xDS server over real gRPC on loopback, driven by a scripted Envoy.

mod canary;
mod delta;
mod envoy;
mod fixtures;
mod nack;
mod rollout;
mod sotw;

use std::net::SocketAddr;
use std::time::Duration;

use shadowplane_xds::{Event, GroupStatus, ResourceType, Snapshot, SnapshotCache, serve};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use envoy::{Delta, Sotw, WAIT, node};
use fixtures::snapshot;

/// `serve` on 127.0.0.1:0 in a task.
pub struct TestServer {
    /// The cache being served.
    pub cache: SnapshotCache,
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<shadowplane_xds::Result<()>>>,
}

impl TestServer {
    /// Binds 127.0.0.1:0 and serves `cache` there.
    pub async fn start(cache: SnapshotCache) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(cache.clone(), listener, async move {
            let _ = stopped.await;
        }));
        TestServer {
            cache,
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and returns what `serve` returned.
    pub async fn stop(mut self) -> shadowplane_xds::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(WAIT, task)
            .await
            .expect("serve returned in time")
            .expect("serve did not panic")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A server whose cache holds `snapshot` for the group "edge".
pub async fn serve_edge(snapshot: Snapshot) -> (SnapshotCache, TestServer) {
    let cache = SnapshotCache::new();
    cache.set_snapshot("edge", snapshot).expect("set");
    let server = TestServer::start(cache.clone()).await;
    (cache, server)
}

/// Nodes n1 and n2 of "edge" over SotW ADS, both synced on v1 (clusters a and b, weights
/// 90/10).
pub async fn two_synced_nodes() -> (SnapshotCache, TestServer, Sotw, Sotw) {
    let (cache, server) = serve_edge(snapshot("v1", &["a", "b"], &[("a", 90), ("b", 10)])).await;
    let mut n1 = Sotw::ads(server.addr, node("n1", "edge")).await;
    let mut n2 = Sotw::ads(server.addr, node("n2", "edge")).await;
    sotw_sync_all(&mut n1, &["a", "b"]).await;
    sotw_sync_all(&mut n2, &["a", "b"]).await;
    cache.wait_synced("edge", "v1", WAIT).await.expect("v1");
    (cache, server, n1, n2)
}

/// Waits for the first event matching `pred`, skipping others.
pub async fn event(rx: &mut broadcast::Receiver<Event>, pred: impl Fn(&Event) -> bool) -> Event {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) => {}
                Err(e) => panic!("event channel: {e}"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("the event arrived in time")
}

/// Every event up to and including the first matching `pred`.
pub async fn events_until(
    rx: &mut broadcast::Receiver<Event>,
    pred: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let mut out = Vec::new();
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    let done = pred(&e);
                    out.push(e);
                    if done {
                        return;
                    }
                }
                Err(e) => panic!("event channel: {e}"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("the event arrived in time");
    out
}

/// Every event received so far (waits a moment for stragglers).
pub async fn drain(rx: &mut broadcast::Receiver<Event>) -> Vec<Event> {
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

/// One line per event, for expect-test transcripts.
pub fn event_lines(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| match e {
            Event::Connected { group, node } => format!("connected {group}/{node}"),
            Event::Disconnected { group, node } => format!("disconnected {group}/{node}"),
            Event::Acked {
                group,
                node,
                type_url,
                version,
            } => format!("acked {group}/{node} {} {version}", envoy::short(type_url)),
            Event::Nacked {
                group,
                node,
                type_url,
                version,
                error,
            } => format!(
                "nacked {group}/{node} {} {version}: {error}",
                envoy::short(type_url)
            ),
            Event::RolledBack {
                group,
                from_version,
                to_version,
            } => format!("rolled back {group} {from_version} -> {to_version}"),
            Event::CanaryPromoted { group, version } => format!("promoted {group} {version}"),
            Event::Synced { group, version } => format!("synced {group} {version}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A group's status without timestamps, for expect-test.
pub fn status_text(cache: &SnapshotCache, group: &str) -> String {
    let all = cache.status();
    let Some(g) = all.iter().find(|g| g.group == group) else {
        return format!("no group {group}");
    };
    render(g)
}

fn render(g: &GroupStatus) -> String {
    let mut out = format!("group {} version {}\n", g.group, g.version);
    if let Some(c) = &g.canary {
        out += &format!(
            "canary {} nodes {:?} pending {:?}\n",
            c.version, c.nodes, c.pending
        );
    }
    for n in &g.nodes {
        out += &format!(
            "node {} {:?} connected={} target={}\n",
            n.node_id, n.state, n.connected, n.target_version
        );
        if let Some(nack) = &n.last_nack {
            out += &format!(
                "  last nack {} {}: {}\n",
                envoy::short(&nack.type_url),
                nack.version,
                nack.error
            );
        }
        for t in &n.types {
            out += &format!(
                "  {} sent={} acked={}\n",
                envoy::short(&t.type_url),
                t.last_sent_version.as_deref().unwrap_or("-"),
                t.last_acked_version.as_deref().unwrap_or("-"),
            );
        }
    }
    out
}

/// Subscribes to all five types over SotW ADS and ACKs the five first responses; returns
/// their lines in type order.
pub async fn sotw_sync_all(e: &mut Sotw, eds: &[&str]) -> String {
    e.subscribe(ResourceType::Cluster, &[]);
    e.subscribe(ResourceType::Endpoint, eds);
    e.subscribe(ResourceType::Listener, &[]);
    e.subscribe(ResourceType::ExtensionConfig, &[fixtures::WEIGHTS]);
    e.subscribe(ResourceType::Route, &[fixtures::ROUTE]);
    let mut got = Vec::new();
    for _ in 0..5 {
        let r = e.recv().await;
        e.ack(&r);
        let t = ResourceType::from_type_url(&r.type_url).expect("a served type");
        got.push((t, envoy::line(&r)));
    }
    got.sort();
    got.into_iter()
        .map(|(_, l)| l)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The same over delta ADS.
pub async fn delta_sync_all(d: &mut Delta, eds: &[&str]) -> String {
    d.subscribe(ResourceType::Cluster, &[]);
    d.subscribe(ResourceType::Endpoint, eds);
    d.subscribe(ResourceType::Listener, &[]);
    d.subscribe(ResourceType::ExtensionConfig, &[fixtures::WEIGHTS]);
    d.subscribe(ResourceType::Route, &[fixtures::ROUTE]);
    let mut got = Vec::new();
    for _ in 0..5 {
        let r = d.recv().await;
        d.ack(&r);
        let t = ResourceType::from_type_url(&r.type_url).expect("a served type");
        got.push((t, envoy::delta_line(&r)));
    }
    got.sort();
    got.into_iter()
        .map(|(_, l)| l)
        .collect::<Vec<_>>()
        .join("\n")
}
