//! SotW: initial sync, ACK and stale nonces, per-type streams, stream bookkeeping, shutdown.

use std::time::Duration;

use expect_test::expect;
use shadowplane_xds::{Error, Event, ResourceType, SnapshotCache, SyncState};

use crate::envoy::{Sotw, WAIT, line, node};
use crate::fixtures::{builder, snapshot};
use crate::{
    TestServer, drain, event, event_lines, events_until, serve_edge, sotw_sync_all, status_text,
};

#[tokio::test]
async fn initial_sync_serves_all_five_types_and_reports_synced() {
    let (cache, server) = serve_edge(snapshot("v1", &["a", "b"], &[("a", 90), ("b", 10)])).await;
    let mut events = cache.events();

    let mut e = Sotw::ads(server.addr, node("n1", "edge")).await;
    let transcript = sotw_sync_all(&mut e, &["a", "b"]).await;
    expect![[r#"
        CDS v1 [a b]
        EDS v1 [a b]
        ECDS v1 [weights]
        LDS v1 [ingress]
        RDS v1 [main]"#]]
    .assert_eq(&transcript);

    cache.wait_synced("edge", "v1", WAIT).await.expect("synced");
    expect![[r#"
        group edge version v1
        node n1 Synced connected=true target=v1
          CDS sent=v1 acked=v1
          EDS sent=v1 acked=v1
          ECDS sent=v1 acked=v1
          LDS sent=v1 acked=v1
          RDS sent=v1 acked=v1
    "#]]
    .assert_eq(&status_text(&cache, "edge"));
    let seen = drain(&mut events).await;
    assert_eq!(
        seen.first(),
        Some(&Event::Connected {
            group: "edge".into(),
            node: "n1".into()
        })
    );
    assert_eq!(
        seen.iter()
            .filter(|e| matches!(e, Event::Acked { .. }))
            .count(),
        5
    );
    assert_eq!(
        seen.iter()
            .filter(|e| matches!(e, Event::Synced { .. }))
            .collect::<Vec<_>>(),
        [&Event::Synced {
            group: "edge".into(),
            version: "v1".into()
        }],
        "synced once: {}",
        event_lines(&seen)
    );
    e.silent(200).await;
}

#[tokio::test]
async fn acks_are_recorded_and_stale_nonces_ignored() {
    let (cache, server) = serve_edge(snapshot("v1", &["a"], &[("a", 1)])).await;
    let mut events = cache.events();
    let mut e = Sotw::cds(server.addr, node("n1", "edge")).await;
    e.subscribe(ResourceType::Cluster, &[]);
    let r1 = e.recv_ack(ResourceType::Cluster).await;
    assert_eq!(line(&r1), "CDS v1 [a]");
    event(
        &mut events,
        |e| matches!(e, Event::Synced { version, .. } if version == "v1"),
    )
    .await;

    cache
        .set_snapshot("edge", snapshot("v2", &["a", "b"], &[("a", 1)]))
        .expect("set");
    let r2 = e.recv().await;
    assert_eq!(line(&r2), "CDS v2 [a b]");
    assert_ne!(r1.nonce, r2.nonce);

    // Answers to the older response, after the newer one went out: neither ACK nor NACK.
    let mut stale = envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest {
        type_url: ResourceType::Cluster.type_url().into(),
        version_info: "v1".into(),
        response_nonce: r1.nonce.clone(),
        ..Default::default()
    };
    e.send(stale.clone());
    stale.error_detail = Some(envoy_types::pb::google::rpc::Status {
        code: 3,
        message: "stale".into(),
        details: vec![],
    });
    e.send(stale);
    e.silent(200).await;
    let seen = drain(&mut events).await;
    assert!(
        !seen.iter().any(|e| matches!(
            e,
            Event::Acked { .. } | Event::Nacked { .. } | Event::RolledBack { .. }
        )),
        "{}",
        event_lines(&seen)
    );
    let status = &cache.status()[0].nodes[0];
    assert_eq!(status.state, SyncState::Stale);
    assert_eq!(status.last_nack, None);
    assert_eq!(
        cache.snapshot("edge").map(|s| s.version().to_owned()),
        Some("v2".into())
    );

    e.ack(&r2);
    let acked = event(&mut events, |e| matches!(e, Event::Acked { .. })).await;
    assert_eq!(
        acked,
        Event::Acked {
            group: "edge".into(),
            node: "n1".into(),
            type_url: ResourceType::Cluster.type_url().into(),
            version: "v2".into()
        }
    );
    cache.wait_synced("edge", "v2", WAIT).await.expect("synced");
    assert_eq!(cache.status()[0].nodes[0].state, SyncState::Synced);
}

#[tokio::test]
async fn a_per_type_stream_serves_its_type_and_streams_of_a_node_are_counted() {
    let (cache, server) = serve_edge(snapshot("v1", &["a", "b"], &[("a", 1)])).await;
    let mut events = cache.events();

    let mut cds = Sotw::cds(server.addr, node("n1", "edge")).await;
    cds.subscribe(ResourceType::Cluster, &[]);
    assert_eq!(
        line(&cds.recv_ack(ResourceType::Cluster).await),
        "CDS v1 [a b]"
    );
    let mut lds = Sotw::lds(server.addr, node("n1", "edge")).await;
    lds.subscribe(ResourceType::Listener, &[]);
    assert_eq!(
        line(&lds.recv_ack(ResourceType::Listener).await),
        "LDS v1 [ingress]"
    );
    cache.wait_synced("edge", "v1", WAIT).await.expect("synced");

    // A per-type stream sends the new set at once (there is no other type to order against).
    cache
        .set_snapshot("edge", snapshot("v2", &["a", "c"], &[("a", 1)]))
        .expect("set");
    assert_eq!(
        line(&cds.recv_ack(ResourceType::Cluster).await),
        "CDS v2 [a c]"
    );
    cache.wait_synced("edge", "v2", WAIT).await.expect("synced");
    lds.silent(200).await;

    drop(cds);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        cache.status()[0].nodes[0].connected,
        "the LDS stream is still open"
    );
    drop(lds);
    event(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    assert!(!cache.status()[0].nodes[0].connected);
}

#[tokio::test]
async fn connected_and_disconnected_are_emitted_once_per_node() {
    let (cache, server) = serve_edge(snapshot("v1", &["a"], &[("a", 1)])).await;
    let mut events = cache.events();
    let mut cds = Sotw::cds(server.addr, node("n1", "edge")).await;
    cds.subscribe(ResourceType::Cluster, &[]);
    cds.recv_ack(ResourceType::Cluster).await;
    let mut lds = Sotw::lds(server.addr, node("n1", "edge")).await;
    lds.subscribe(ResourceType::Listener, &[]);
    lds.recv_ack(ResourceType::Listener).await;
    drop(cds);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(lds);
    let mut seen = events_until(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    seen.extend(drain(&mut events).await);
    seen.retain(|e| matches!(e, Event::Connected { .. } | Event::Disconnected { .. }));
    expect![[r#"
        connected edge/n1
        disconnected edge/n1"#]]
    .assert_eq(&event_lines(&seen));
}

#[tokio::test]
async fn bad_streams_fail_with_invalid_argument() {
    let cache = SnapshotCache::new();
    let server = TestServer::start(cache.clone()).await;

    let mut e = Sotw::ads(server.addr, node("n1", "edge")).await;
    e.send(
        envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest {
            type_url: ResourceType::Cluster.type_url().into(),
            ..Default::default()
        },
    );
    let status = e.end().await.expect_err("a stream without a node fails");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    expect!["the first request on a stream must carry a node with an id"]
        .assert_eq(status.message());

    let mut cds = Sotw::cds(server.addr, node("n1", "edge")).await;
    cds.subscribe(ResourceType::Listener, &[]);
    let status = cds.end().await.expect_err("a CDS stream refuses LDS");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    expect!["this stream serves type.googleapis.com/envoy.config.cluster.v3.Cluster, not type.googleapis.com/envoy.config.listener.v3.Listener"]
        .assert_eq(status.message());
}

#[tokio::test]
async fn a_type_ads_does_not_serve_is_ignored() {
    let (_cache, server) = serve_edge(snapshot("v1", &["a"], &[("a", 1)])).await;
    let mut e = Sotw::ads(server.addr, node("n1", "edge")).await;
    e.send(
        envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest {
            node: Some(node("n1", "edge")),
            type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into(),
            ..Default::default()
        },
    );
    e.subscribe(ResourceType::Cluster, &[]);
    assert_eq!(line(&e.recv_ack(ResourceType::Cluster).await), "CDS v1 [a]");
}

#[tokio::test]
async fn a_refused_snapshot_never_reaches_envoy() {
    let (cache, server) = serve_edge(snapshot("v1", &["a"], &[("a", 1)])).await;
    let mut e = Sotw::ads(server.addr, node("n1", "edge")).await;
    sotw_sync_all(&mut e, &["a"]).await;

    let refused = builder("v2", &["a"], &[("a", 1), ("ghost", 1)]).build();
    match refused {
        Err(Error::MissingCluster {
            route_config,
            cluster,
        }) => {
            assert_eq!((route_config.as_str(), cluster.as_str()), ("main", "ghost"));
        }
        other => panic!("expected MissingCluster, got {other:?}"),
    }
    e.silent(300).await;
    assert_eq!(
        cache.snapshot("edge").map(|s| s.version().to_owned()),
        Some("v1".into())
    );
}

#[tokio::test]
async fn wait_synced_times_out_with_a_typed_error() {
    let (cache, server) = serve_edge(snapshot("v1", &["a"], &[("a", 1)])).await;
    let mut e = Sotw::ads(server.addr, node("n1", "edge")).await;
    e.subscribe(ResourceType::Cluster, &[]);
    let _unacked = e.recv().await;
    let err = cache
        .wait_synced("edge", "v1", Duration::from_millis(200))
        .await
        .expect_err("never ACKed");
    assert!(matches!(err, Error::Timeout { unsynced: 1, .. }), "{err:?}");
    let err = cache
        .wait_synced("edge", "nope", Duration::from_millis(200))
        .await
        .expect_err("unknown version");
    assert!(matches!(err, Error::UnknownVersion { .. }), "{err:?}");
}

#[tokio::test]
async fn shutdown_ends_the_streams_and_serve_returns() {
    let (_cache, server) = serve_edge(snapshot("v1", &["a"], &[("a", 1)])).await;
    let mut e = Sotw::ads(server.addr, node("n1", "edge")).await;
    e.subscribe(ResourceType::Cluster, &[]);
    e.recv_ack(ResourceType::Cluster).await;
    let (stopped, ended) = tokio::join!(server.stop(), e.end());
    stopped.expect("serve returns Ok");
    ended.expect("the stream ends cleanly");
}

#[tokio::test]
async fn a_node_that_subscribed_before_any_snapshot_gets_the_first_one() {
    let cache = SnapshotCache::new();
    let server = TestServer::start(cache.clone()).await;
    let mut e = Sotw::ads(server.addr, node("n1", "edge")).await;
    e.subscribe(ResourceType::Cluster, &[]);
    e.silent(200).await;
    assert_eq!(cache.status()[0].nodes[0].state, SyncState::Stale);
    cache
        .set_snapshot("edge", snapshot("v1", &["a"], &[("a", 1)]))
        .expect("set");
    assert_eq!(line(&e.recv_ack(ResourceType::Cluster).await), "CDS v1 [a]");
    cache.wait_synced("edge", "v1", WAIT).await.expect("v1");
}
