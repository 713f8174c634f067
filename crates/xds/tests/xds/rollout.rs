//! Make-before-break over ADS: clusters before the routes naming them, removals after.

use expect_test::expect;
use shadowplane_xds::ResourceType;

use crate::envoy::{Delta, Sotw, WAIT, delta_line, line, node, routed_clusters};
use crate::fixtures::snapshot;
use crate::{delta_sync_all, serve_edge, sotw_sync_all};

/// v1 routes to a and b; v2 replaces b by c.
fn v1() -> shadowplane_xds::Snapshot {
    snapshot("v1", &["a", "b"], &[("a", 50), ("b", 50)])
}

fn v2() -> shadowplane_xds::Snapshot {
    snapshot("v2", &["a", "c"], &[("a", 50), ("c", 50)])
}

#[tokio::test]
async fn sotw_adds_clusters_before_routes_and_removes_them_after() {
    let (cache, server) = serve_edge(v1()).await;
    let mut e = Sotw::ads(server.addr, node("n1", "edge")).await;
    sotw_sync_all(&mut e, &["a", "b"]).await;
    cache.wait_synced("edge", "v1", WAIT).await.expect("v1");

    cache.set_snapshot("edge", v2()).expect("set");
    let mut transcript = Vec::new();

    // Phase 1: clusters a, b and the new c; Envoy asks for c's endpoints before it ACKs.
    let cds = e.recv().await;
    transcript.push(line(&cds));
    e.subscribe(ResourceType::Endpoint, &["a", "b", "c"]);
    e.ack(&cds);
    let eds = e.recv().await;
    transcript.push(line(&eds));
    // Nothing else until the endpoints are ACKed too.
    e.silent(200).await;
    e.ack(&eds);

    // Phase 2: the filter config, then the route now naming c (the listener did not change).
    let ecds = e.recv_ack(ResourceType::ExtensionConfig).await;
    transcript.push(line(&ecds));
    let rds = e.recv().await;
    transcript.push(format!(
        "{} -> {}",
        line(&rds),
        routed_clusters(&rds.resources[0]).join(" ")
    ));
    // The route naming c came only after c and its endpoints were ACKed.
    e.silent(200).await;
    e.ack(&rds);

    // Phase 3: b goes, once no route names it; Envoy then drops b's endpoints itself.
    let cds = e.recv().await;
    transcript.push(line(&cds));
    e.subscribe(ResourceType::Endpoint, &["a", "c"]);
    e.ack(&cds);
    cache.wait_synced("edge", "v2", WAIT).await.expect("v2");
    e.silent(200).await;

    expect![[r#"
        CDS v2+mbb [a b c]
        EDS v2+mbb [a b c]
        ECDS v2 [weights]
        RDS v2 [main] -> a c
        CDS v2 [a c]"#]]
    .assert_eq(&transcript.join("\n"));
}

#[tokio::test]
async fn delta_adds_clusters_before_routes_and_removes_them_after() {
    let (cache, server) = serve_edge(v1()).await;
    let mut d = Delta::ads(server.addr, node("n1", "edge")).await;
    delta_sync_all(&mut d, &["a", "b"]).await;
    cache.wait_synced("edge", "v1", WAIT).await.expect("v1");

    cache.set_snapshot("edge", v2()).expect("set");
    let mut transcript = Vec::new();
    let cds = d.recv().await;
    transcript.push(delta_line(&cds));
    d.subscribe(ResourceType::Endpoint, &["c"]);
    d.ack(&cds);
    let eds = d.recv().await;
    transcript.push(delta_line(&eds));
    d.silent(200).await;
    d.ack(&eds);
    let ecds = d.recv_ack(ResourceType::ExtensionConfig).await;
    transcript.push(delta_line(&ecds));
    let rds = d.recv().await;
    transcript.push(delta_line(&rds));
    d.silent(200).await;
    d.ack(&rds);
    let cds = d.recv().await;
    transcript.push(delta_line(&cds));
    d.unsubscribe(ResourceType::Endpoint, &["b"]);
    d.ack(&cds);
    cache.wait_synced("edge", "v2", WAIT).await.expect("v2");
    d.silent(200).await;

    expect![[r#"
        CDS v2+mbb +[c] -[]
        EDS v2+mbb +[c] -[]
        ECDS v2 +[weights] -[]
        RDS v2 +[main] -[]
        CDS v2 +[] -[b]"#]]
    .assert_eq(&transcript.join("\n"));
    let held: Vec<&String> = d.held[&ResourceType::Cluster].keys().collect();
    assert_eq!(held, ["a", "c"]);
}

#[tokio::test]
async fn a_weight_change_sends_only_the_filter_config_then_the_route() {
    let (cache, server) = serve_edge(snapshot("v1", &["a", "b"], &[("a", 90), ("b", 10)])).await;
    let mut e = Sotw::ads(server.addr, node("n1", "edge")).await;
    sotw_sync_all(&mut e, &["a", "b"]).await;
    cache.wait_synced("edge", "v1", WAIT).await.expect("v1");

    cache
        .set_snapshot("edge", snapshot("v2", &["a", "b"], &[("a", 50), ("b", 50)]))
        .expect("set");
    let ecds = e.recv().await;
    assert_eq!(line(&ecds), "ECDS v2 [weights]");
    // The route waits for the filter config's ACK.
    e.silent(150).await;
    e.ack(&ecds);
    assert_eq!(
        line(&e.recv_ack(ResourceType::Route).await),
        "RDS v2 [main]"
    );
    cache.wait_synced("edge", "v2", WAIT).await.expect("v2");
    e.silent(200).await;
}
