//! Config canary: only the canary nodes get the candidate until they all ACKed it.

use std::collections::BTreeSet;

use expect_test::expect;
use shadowplane_xds::{Error, Event, ResourceType, SyncState};

use crate::envoy::{WAIT, line};
use crate::fixtures::snapshot;
use crate::{event, event_lines, events_until, status_text, two_synced_nodes};

fn canary(nodes: &[&str]) -> BTreeSet<String> {
    nodes.iter().map(|s| s.to_string()).collect()
}

fn v2() -> shadowplane_xds::Snapshot {
    snapshot("v2", &["a", "b"], &[("a", 50), ("b", 50)])
}

#[tokio::test]
async fn the_others_get_the_candidate_only_after_the_canary_acked_it() {
    let (cache, _server, mut n1, mut n2) = two_synced_nodes().await;
    let mut events = cache.events();

    cache
        .set_snapshot_canary("edge", v2(), canary(&["n1"]))
        .expect("canary");
    assert_eq!(
        cache.snapshot("edge").map(|s| s.version().to_owned()),
        Some("v1".into())
    );
    let ecds = n1.recv().await;
    assert_eq!(line(&ecds), "ECDS v2 [weights]");
    n2.silent(200).await;
    n1.ack(&ecds);
    let rds = n1.recv().await;
    assert_eq!(line(&rds), "RDS v2 [main]");
    n2.silent(200).await;
    expect![[r#"
        group edge version v1
        canary v2 nodes ["n1"] pending ["n1"]
        node n1 Stale connected=true target=v2
          CDS sent=v1 acked=v1
          EDS sent=v1 acked=v1
          ECDS sent=v2 acked=v2
          LDS sent=v1 acked=v1
          RDS sent=v2 acked=v1
        node n2 Synced connected=true target=v1
          CDS sent=v1 acked=v1
          EDS sent=v1 acked=v1
          ECDS sent=v1 acked=v1
          LDS sent=v1 acked=v1
          RDS sent=v1 acked=v1
    "#]]
    .assert_eq(&status_text(&cache, "edge"));

    n1.ack(&rds);
    let promoted = event(&mut events, |e| matches!(e, Event::CanaryPromoted { .. })).await;
    assert_eq!(
        promoted,
        Event::CanaryPromoted {
            group: "edge".into(),
            version: "v2".into()
        }
    );
    assert_eq!(
        line(&n2.recv_ack(ResourceType::ExtensionConfig).await),
        "ECDS v2 [weights]"
    );
    assert_eq!(
        line(&n2.recv_ack(ResourceType::Route).await),
        "RDS v2 [main]"
    );
    cache
        .wait_synced("edge", "v2", WAIT)
        .await
        .expect("v2 everywhere");
    assert_eq!(
        cache.snapshot("edge").map(|s| s.version().to_owned()),
        Some("v2".into())
    );
    n1.silent(200).await;
}

#[tokio::test]
async fn a_canary_nack_discards_the_candidate_and_the_others_never_see_it() {
    let (cache, _server, mut n1, mut n2) = two_synced_nodes().await;
    let mut events = cache.events();

    cache
        .set_snapshot_canary("edge", v2(), canary(&["n1"]))
        .expect("canary");
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.wait_synced("edge", "v2", WAIT).await })
    };
    let ecds = n1.recv().await;
    assert_eq!(line(&ecds), "ECDS v2 [weights]");
    n1.nack(&ecds, "canary says no");
    let seen = events_until(&mut events, |e| matches!(e, Event::RolledBack { .. })).await;
    expect![[r#"
        nacked edge/n1 ECDS v2: canary says no
        rolled back edge v2 -> v1"#]]
    .assert_eq(&event_lines(&seen));
    assert_eq!(
        line(&n1.recv_ack(ResourceType::ExtensionConfig).await),
        "ECDS v1 [weights]"
    );
    n2.silent(300).await;
    n1.silent(1).await;

    let err = waiter.await.expect("joined").expect_err("discarded");
    assert!(
        matches!(&err, Error::RolledBack { version, .. } if version == "v2"),
        "{err:?}"
    );
    let status = &cache.status()[0];
    assert_eq!(status.canary, None);
    assert_eq!(status.version, "v1");
    let states: Vec<(String, SyncState)> = status
        .nodes
        .iter()
        .map(|n| (n.node_id.clone(), n.state))
        .collect();
    assert_eq!(
        states,
        [
            ("n1".to_owned(), SyncState::Nacked),
            ("n2".to_owned(), SyncState::Synced)
        ]
    );
}

#[tokio::test]
async fn a_canary_is_refused_for_unknown_or_missing_nodes() {
    let (cache, _server, _n1, _n2) = two_synced_nodes().await;
    let err = cache
        .set_snapshot_canary("edge", v2(), canary(&[]))
        .expect_err("empty");
    assert!(matches!(err, Error::EmptyCanary { .. }), "{err:?}");
    let err = cache
        .set_snapshot_canary("edge", v2(), canary(&["n1", "n9"]))
        .expect_err("n9 is not connected");
    assert!(
        matches!(&err, Error::CanaryNodeNotConnected { group, node } if group == "edge" && node == "n9"),
        "{err:?}"
    );
    let err = cache
        .set_snapshot_canary("elsewhere", v2(), canary(&["n1"]))
        .expect_err("n1 is not in that group");
    assert!(matches!(err, Error::NoSnapshot { .. }), "{err:?}");
    assert!(cache.status()[0].canary.is_none());
}

#[tokio::test]
async fn a_plain_push_during_a_canary_replaces_it() {
    let (cache, _server, mut n1, mut n2) = two_synced_nodes().await;
    cache
        .set_snapshot_canary("edge", v2(), canary(&["n1"]))
        .expect("canary");
    assert_eq!(
        line(&n1.recv_ack(ResourceType::ExtensionConfig).await),
        "ECDS v2 [weights]"
    );
    cache
        .set_snapshot("edge", snapshot("v3", &["a", "b"], &[("a", 10), ("b", 90)]))
        .expect("set");
    let err = cache
        .wait_synced("edge", "v2", WAIT)
        .await
        .expect_err("replaced");
    assert!(matches!(err, Error::Superseded { .. }), "{err:?}");
    // n1 is mid-way (its RDS for v2 may be out); both end on v3.
    let mut n1_lines = Vec::new();
    loop {
        let r = n1.recv().await;
        n1.ack(&r);
        n1_lines.push(line(&r));
        if r.version_info == "v3" && r.type_url == ResourceType::Route.type_url() {
            break;
        }
    }
    assert!(
        n1_lines.contains(&"ECDS v3 [weights]".to_owned()),
        "{n1_lines:?}"
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
    assert_eq!(cache.status()[0].canary, None);
}
