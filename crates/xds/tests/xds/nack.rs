//! NACK safety: record, roll the group back to the last snapshot the node held, converge.

use expect_test::expect;
use shadowplane_xds::{Error, Event, ResourceType, SyncState};

use crate::envoy::{Delta, Sotw, WAIT, delta_line, line, node};
use crate::fixtures::snapshot;
use crate::{
    delta_sync_all, event, event_lines, events_until, serve_edge, status_text, two_synced_nodes,
};

#[tokio::test]
async fn a_nack_rolls_the_group_back_and_every_node_converges() {
    let (cache, _server, mut n1, mut n2) = two_synced_nodes().await;
    let mut events = cache.events();

    cache
        .set_snapshot("edge", snapshot("v2", &["a", "b"], &[("a", 50), ("b", 50)]))
        .expect("set");
    let bad1 = n1.recv().await;
    let bad2 = n2.recv().await;
    assert_eq!(line(&bad1), "ECDS v2 [weights]");
    assert_eq!(line(&bad2), "ECDS v2 [weights]");
    n1.nack(&bad1, "weights do not add up");
    let seen = events_until(&mut events, |e| matches!(e, Event::RolledBack { .. })).await;
    expect![[r#"
        nacked edge/n1 ECDS v2: weights do not add up
        rolled back edge v2 -> v1"#]]
    .assert_eq(&event_lines(&seen));
    assert_eq!(
        cache.snapshot("edge").map(|s| s.version().to_owned()),
        Some("v1".into())
    );

    // n1 gets v1's config again; n2, which had not answered yet, ACKs v2's and is sent v1's.
    assert_eq!(
        line(&n1.recv_ack(ResourceType::ExtensionConfig).await),
        "ECDS v1 [weights]"
    );
    n2.ack(&bad2);
    assert_eq!(
        line(&n2.recv_ack(ResourceType::ExtensionConfig).await),
        "ECDS v1 [weights]"
    );
    cache
        .wait_synced("edge", "v1", WAIT)
        .await
        .expect("back on v1");
    n1.silent(200).await;
    n2.silent(1).await;

    let err = cache
        .wait_synced("edge", "v2", WAIT)
        .await
        .expect_err("v2 was rolled back");
    assert!(
        matches!(&err, Error::RolledBack { version, to_version, .. } if version == "v2" && to_version == "v1"),
        "{err:?}"
    );
    // n1 stays NACKED after the rollback, so operators see it; n2 is synced.
    expect![[r#"
        group edge version v1
        node n1 Nacked connected=true target=v1
          last nack ECDS v2: weights do not add up
          CDS sent=v1 acked=v1
          EDS sent=v1 acked=v1
          ECDS sent=v1 acked=v1
          LDS sent=v1 acked=v1
          RDS sent=v1 acked=v1
        node n2 Synced connected=true target=v1
          CDS sent=v1 acked=v1
          EDS sent=v1 acked=v1
          ECDS sent=v1 acked=v1
          LDS sent=v1 acked=v1
          RDS sent=v1 acked=v1
    "#]]
    .assert_eq(&status_text(&cache, "edge"));

    // The next push clears NACKED.
    cache
        .set_snapshot("edge", snapshot("v3", &["a", "b"], &[("a", 80), ("b", 20)]))
        .expect("set");
    assert_eq!(
        line(&n1.recv_ack(ResourceType::ExtensionConfig).await),
        "ECDS v3 [weights]"
    );
    assert_eq!(
        line(&n1.recv_ack(ResourceType::Route).await),
        "RDS v3 [main]"
    );
    assert_eq!(
        line(&n2.recv_ack(ResourceType::ExtensionConfig).await),
        "ECDS v3 [weights]"
    );
    assert_eq!(
        line(&n2.recv_ack(ResourceType::Route).await),
        "RDS v3 [main]"
    );
    cache.wait_synced("edge", "v3", WAIT).await.expect("v3");
    let states: Vec<SyncState> = cache.status()[0].nodes.iter().map(|n| n.state).collect();
    assert_eq!(states, [SyncState::Synced, SyncState::Synced]);
}

#[tokio::test]
async fn a_nack_with_nothing_to_roll_back_to_is_recorded_and_not_resent() {
    let (cache, server) = serve_edge(snapshot("v1", &["a"], &[("a", 1)])).await;
    let mut events = cache.events();
    let mut e = Sotw::ads(server.addr, node("n1", "edge")).await;
    e.subscribe(ResourceType::Cluster, &[]);
    let r = e.recv().await;
    e.nack(&r, "no");
    let seen = events_until(&mut events, |e| matches!(e, Event::Nacked { .. })).await;
    expect![[r#"
        connected edge/n1
        nacked edge/n1 CDS v1: no"#]]
    .assert_eq(&event_lines(&seen));
    // The same rejected response is not sent again.
    e.silent(300).await;
    assert_eq!(
        cache.snapshot("edge").map(|s| s.version().to_owned()),
        Some("v1".into())
    );
    let err = cache
        .wait_synced("edge", "v1", WAIT)
        .await
        .expect_err("nacked");
    assert!(
        matches!(&err, Error::Nacked { node, error, .. } if node == "n1" && error == "no"),
        "{err:?}"
    );
    assert_eq!(cache.status()[0].nodes[0].state, SyncState::Nacked);

    // A new push goes out and can be ACKed.
    cache
        .set_snapshot("edge", snapshot("v2", &["a", "b"], &[("a", 1)]))
        .expect("set");
    assert_eq!(
        line(&e.recv_ack(ResourceType::Cluster).await),
        "CDS v2 [a b]"
    );
    cache.wait_synced("edge", "v2", WAIT).await.expect("v2");
    assert_eq!(cache.status()[0].nodes[0].state, SyncState::Synced);
}

#[tokio::test]
async fn a_delta_nack_rolls_back_and_resends_what_was_rejected() {
    let (cache, server) = serve_edge(snapshot("v1", &["a"], &[("a", 1)])).await;
    let mut d = Delta::ads(server.addr, node("n1", "edge")).await;
    delta_sync_all(&mut d, &["a"]).await;
    cache.wait_synced("edge", "v1", WAIT).await.expect("v1");
    let mut events = cache.events();

    cache
        .set_snapshot("edge", snapshot("v2", &["a", "b"], &[("a", 1)]))
        .expect("set");
    let cds = d.recv().await;
    assert_eq!(delta_line(&cds), "CDS v2 +[b] -[]");
    d.nack(&cds, "bad cluster b");
    event(&mut events, |e| matches!(e, Event::RolledBack { .. })).await;
    // Envoy may have kept part of a rejected response: b is removed to be sure.
    let again = d.recv_ack(ResourceType::Cluster).await;
    assert_eq!(delta_line(&again), "CDS v1 +[] -[b]");
    cache.wait_synced("edge", "v1", WAIT).await.expect("v1");
    d.silent(200).await;
}
