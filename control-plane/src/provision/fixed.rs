//! The fixed provisioner (the "static" one; `static` is a keyword): groups whose
//! endpoints exist already, such as the configuration file's static groups.
//!
//! Nothing is started or stopped: `ensure` checks the spec against the endpoints it knows and
//! records it, `release` forgets the record. It cannot see the machines behind the
//! endpoints, so every system metric is `None`, and it does not probe them: Envoy's health
//! checks do.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use super::{
    BoxFuture, GroupHandle, GroupSpec, GroupStatus, InstanceState, InstanceStatus, ProvisionError,
    Provisioner, RecordedConfig, Result, SystemSample, now_ms,
};

/// This provisioner's [`Provisioner::kind`].
pub const KIND: &str = "fixed";

/// Groups with fixed endpoints.
pub struct FixedProvisioner {
    endpoints: BTreeMap<String, Vec<SocketAddr>>,
    recorded: Mutex<BTreeMap<String, RecordedConfig>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FixedProvisioner {
    /// A provisioner for these groups, by name, with their endpoints.
    pub fn new(groups: impl IntoIterator<Item = (String, Vec<SocketAddr>)>) -> FixedProvisioner {
        FixedProvisioner {
            endpoints: groups.into_iter().collect(),
            recorded: Mutex::new(BTreeMap::new()),
        }
    }

    fn known(&self, name: &str) -> Result<&[SocketAddr]> {
        self.endpoints
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| ProvisionError::UnknownGroup {
                group: name.to_string(),
            })
    }
}

impl Provisioner for FixedProvisioner {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn ensure<'a>(&'a self, spec: &'a GroupSpec) -> BoxFuture<'a, Result<GroupHandle>> {
        Box::pin(async move {
            spec.check()?;
            let endpoints = self.known(&spec.name)?;
            if endpoints.is_empty() {
                return Err(ProvisionError::InvalidSpec {
                    group: spec.name.clone(),
                    field: "endpoints".into(),
                    message: "a fixed group needs at least one endpoint".into(),
                });
            }
            if spec.config.instances as usize != endpoints.len() {
                return Err(ProvisionError::InvalidSpec {
                    group: spec.name.clone(),
                    field: "config.instances".into(),
                    message: format!(
                        "the spec asks for {} instances, the group has {} fixed endpoints",
                        spec.config.instances,
                        endpoints.len()
                    ),
                });
            }
            lock(&self.recorded).insert(spec.name.clone(), spec.config.clone());
            Ok(GroupHandle::new(spec.name.clone()))
        })
    }

    fn endpoints(&self, group: &GroupHandle) -> Vec<SocketAddr> {
        self.endpoints.get(&group.name).cloned().unwrap_or_default()
    }

    fn system_metrics<'a>(&'a self, group: &'a GroupHandle) -> BoxFuture<'a, Result<SystemSample>> {
        Box::pin(async move {
            self.known(&group.name)?;
            Ok(SystemSample {
                at_ms: now_ms(),
                ..SystemSample::default()
            })
        })
    }

    fn release<'a>(&'a self, group: &'a GroupHandle) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            lock(&self.recorded).remove(&group.name);
            Ok(())
        })
    }

    fn recorded(&self, group: &GroupHandle) -> Option<RecordedConfig> {
        lock(&self.recorded).get(&group.name).cloned()
    }

    fn status(&self, group: &GroupHandle) -> Option<GroupStatus> {
        let config = self.recorded(group)?;
        let endpoints = self.endpoints.get(&group.name)?;
        Some(GroupStatus {
            name: group.name.clone(),
            provisioner: KIND,
            config,
            instances: endpoints
                .iter()
                .enumerate()
                .map(|(i, addr)| InstanceStatus {
                    index: i as u32,
                    state: InstanceState::External,
                    addr: Some(*addr),
                    pid: None,
                    restarts: 0,
                    last_exit: None,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Workload;
    use super::*;

    fn spec(name: &str, instances: u32) -> GroupSpec {
        GroupSpec {
            name: name.into(),
            config: RecordedConfig {
                workload: Workload::Image("ghcr.io/acme/checkout:1".into()),
                version: "1".into(),
                instances,
                instance_type: "standard".into(),
                price_class: "standard".into(),
                env: BTreeMap::new(),
                ports: vec![8080],
            },
        }
    }

    fn provisioner() -> FixedProvisioner {
        let a: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        FixedProvisioner::new([
            ("checkout-blue".to_string(), vec![a, b]),
            ("empty".to_string(), vec![]),
        ])
    }

    #[tokio::test]
    async fn ensure_checks_and_records_and_release_forgets() {
        let p = provisioner();
        let g = p.ensure(&spec("checkout-blue", 2)).await.unwrap();
        assert_eq!(g, GroupHandle::new("checkout-blue"));
        assert_eq!(p.endpoints(&g).len(), 2);
        assert_eq!(p.recorded(&g).unwrap(), spec("checkout-blue", 2).config);
        let st = p.status(&g).unwrap();
        assert_eq!(st.provisioner, "fixed");
        assert_eq!(st.instances[1].addr, Some("10.0.0.2:8080".parse().unwrap()));
        assert!(
            st.instances
                .iter()
                .all(|i| i.state == InstanceState::External)
        );

        p.release(&g).await.unwrap();
        assert!(p.recorded(&g).is_none());
        assert!(p.status(&g).is_none());
        // The endpoints are not the provisioner's to remove.
        assert_eq!(p.endpoints(&g).len(), 2);
    }

    #[tokio::test]
    async fn metrics_are_unknown_not_zero() {
        let p = provisioner();
        let g = GroupHandle::new("checkout-blue");
        let s = p.system_metrics(&g).await.unwrap();
        assert!(s.at_ms > 0);
        assert_eq!(s.processes, 0);
        assert_eq!(
            (s.cpu_cores, s.rss_bytes, s.page_faults, s.net_rx_bytes),
            (None, None, None, None)
        );
        let e = p
            .system_metrics(&GroupHandle::new("nope"))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "no group named \"nope\"");
    }

    #[tokio::test]
    async fn ensure_refuses_what_does_not_match() {
        let p = provisioner();
        let cases = [
            (spec("nope", 2), "no group named \"nope\""),
            (
                spec("checkout-blue", 3),
                "group \"checkout-blue\": config.instances: the spec asks for 3 instances, \
                 the group has 2 fixed endpoints",
            ),
            (
                spec("empty", 0),
                "group \"empty\": endpoints: a fixed group needs at least one endpoint",
            ),
            (spec("bad name", 2), "group \"bad name\": name: not a valid"),
        ];
        for (s, want) in cases {
            let e = p.ensure(&s).await.unwrap_err().to_string();
            assert!(e.starts_with(want), "want {want}\n got {e}");
        }
        assert!(p.recorded(&GroupHandle::new("checkout-blue")).is_none());
    }
}
