//! Delta: initial sync, reconnect with `initial_resource_versions`, subscribe and unsubscribe.

use expect_test::expect;
use shadowplane_xds::{Event, ResourceType};

use crate::envoy::{Delta, WAIT, delta_line, node};
use crate::fixtures::snapshot;
use crate::{delta_sync_all, event, serve_edge};

#[tokio::test]
async fn initial_sync_then_a_reconnect_gets_only_what_changed() {
    let (cache, server) = serve_edge(snapshot("v1", &["a", "b"], &[("a", 90), ("b", 10)])).await;
    let mut events = cache.events();

    let mut d = Delta::ads(server.addr, node("n1", "edge")).await;
    expect![[r#"
        CDS v1 +[a b] -[]
        EDS v1 +[a b] -[]
        ECDS v1 +[weights] -[]
        LDS v1 +[ingress] -[]
        RDS v1 +[main] -[]"#]]
    .assert_eq(&delta_sync_all(&mut d, &["a", "b"]).await);
    cache.wait_synced("edge", "v1", WAIT).await.expect("v1");
    let v = cache.snapshot("edge").expect("snapshot");
    assert_eq!(
        d.held[&ResourceType::Cluster].get("a").map(String::as_str),
        v.get(ResourceType::Cluster, "a").map(|r| r.version()),
        "per-resource versions are the resources' own"
    );

    // Reconnect with what it holds: nothing is resent.
    let held = d.held.clone();
    drop(d);
    event(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    let mut d = Delta::ads(server.addr, node("n1", "edge")).await;
    resubscribe_all(&mut d, &held);
    d.silent(300).await;
    cache
        .wait_synced("edge", "v1", WAIT)
        .await
        .expect("still v1");

    // Disconnected while v2 is pushed (a weight change): on reconnect only ECDS and RDS come.
    drop(d);
    event(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    cache
        .set_snapshot("edge", snapshot("v2", &["a", "b"], &[("a", 50), ("b", 50)]))
        .expect("set");
    let mut d = Delta::ads(server.addr, node("n1", "edge")).await;
    resubscribe_all(&mut d, &held);
    let mut got = [
        delta_line(&d.recv_ack(ResourceType::ExtensionConfig).await),
        delta_line(&d.recv_ack(ResourceType::Route).await),
    ];
    got.sort();
    expect![[r#"
        ECDS v2 +[weights] -[]
        RDS v2 +[main] -[]"#]]
    .assert_eq(&got.join("\n"));
    d.silent(300).await;
    cache.wait_synced("edge", "v2", WAIT).await.expect("v2");
}

fn resubscribe_all(
    d: &mut Delta,
    held: &std::collections::HashMap<ResourceType, std::collections::BTreeMap<String, String>>,
) {
    let names = |t: ResourceType| -> Vec<String> { held[&t].keys().cloned().collect() };
    for t in ResourceType::ALL {
        let subscribe = match t {
            ResourceType::Cluster | ResourceType::Listener => vec![],
            _ => names(t),
        };
        let subscribe: Vec<&str> = subscribe.iter().map(String::as_str).collect();
        d.resubscribe(t, &subscribe, &held[&t]);
    }
}

#[tokio::test]
async fn subscribe_and_unsubscribe_named_resources() {
    let (cache, server) = serve_edge(snapshot("v1", &["a", "b", "c"], &[("a", 1)])).await;
    let mut d = Delta::ads(server.addr, node("n1", "edge")).await;
    d.subscribe(ResourceType::Endpoint, &["a"]);
    assert_eq!(
        delta_line(&d.recv_ack(ResourceType::Endpoint).await),
        "EDS v1 +[a] -[]"
    );
    d.subscribe(ResourceType::Endpoint, &["b", "c"]);
    assert_eq!(
        delta_line(&d.recv_ack(ResourceType::Endpoint).await),
        "EDS v1 +[b c] -[]"
    );
    d.unsubscribe(ResourceType::Endpoint, &["a", "b"]);
    d.silent(200).await;
    cache.wait_synced("edge", "v1", WAIT).await.expect("v1");

    // Removing c from the snapshot while it is subscribed removes it from the node.
    cache
        .set_snapshot("edge", snapshot("v2", &["a", "b"], &[("a", 1)]))
        .expect("set");
    assert_eq!(
        delta_line(&d.recv_ack(ResourceType::Endpoint).await),
        "EDS v2 +[] -[c]"
    );
    cache.wait_synced("edge", "v2", WAIT).await.expect("v2");
    assert!(d.held[&ResourceType::Endpoint].is_empty());
}

#[tokio::test]
async fn the_per_type_delta_service_serves_its_type_and_follows_changes() {
    let (cache, server) = serve_edge(snapshot("v1", &["a", "b"], &[("a", 90), ("b", 10)])).await;
    let mut d = Delta::cds(server.addr, node("n1", "edge")).await;
    d.subscribe(ResourceType::Cluster, &[]);
    let r = d.recv_ack(ResourceType::Cluster).await;
    assert_eq!(delta_line(&r), "CDS v1 +[a b] -[]");
    // A new cluster set: only the difference comes, as a delta.
    cache
        .set_snapshot("edge", snapshot("v2", &["a", "c"], &[("a", 90), ("c", 10)]))
        .expect("set");
    let mut lines = Vec::new();
    while !d.held[&ResourceType::Cluster].contains_key("c")
        || d.held[&ResourceType::Cluster].contains_key("b")
    {
        let r = d.recv_ack(ResourceType::Cluster).await;
        lines.push(delta_line(&r));
    }
    assert_eq!(
        d.held[&ResourceType::Cluster]
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        ["a", "c"],
        "{lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains("+[a")),
        "unchanged a resent: {lines:?}"
    );
}
