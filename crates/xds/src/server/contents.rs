//! Sets of resources a stream holds or should hold, and the subscriptions that select them.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::resource::Resource;

/// What a stream asked for on one type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub wildcard: bool,
    pub names: BTreeSet<String>,
}

impl Subscription {
    pub fn is_active(&self) -> bool {
        self.wildcard || !self.names.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// The part of `list` (sorted by name) this subscription selects; shares `list` for a
    /// wildcard, so every wildcard stream points at the snapshot's own list.
    pub fn select(&self, list: &Arc<[Resource]>) -> Contents {
        if self.wildcard {
            return Contents(list.clone());
        }
        let picked: Vec<Resource> = self
            .names
            .iter()
            .filter_map(|n| {
                list.binary_search_by(|r| r.name().cmp(n))
                    .ok()
                    .map(|i| list[i].clone())
            })
            .collect();
        Contents(picked.into())
    }
}

/// Resources sorted by name, names unique. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Contents(Arc<[Resource]>);

impl Default for Contents {
    fn default() -> Self {
        Contents(Arc::from(Vec::new()))
    }
}

impl Contents {
    pub fn iter(&self) -> std::slice::Iter<'_, Resource> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, name: &str) -> Option<&Resource> {
        self.0
            .binary_search_by(|r| r.name().cmp(name))
            .ok()
            .map(|i| &self.0[i])
    }

    /// Same names at the same versions.
    pub fn same(&self, other: &Contents) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.len() == other.len()
                && self
                    .iter()
                    .zip(other.iter())
                    .all(|(a, b)| a.name() == b.name() && a.version() == b.version()))
    }

    /// Every resource of `other` is here at the same version.
    pub fn covers(&self, other: &Contents) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || other.iter().all(|r| {
                self.get(r.name())
                    .is_some_and(|h| h.version() == r.version())
            })
    }

    /// Some name here is not in `other`.
    pub fn has_names_outside(&self, other: &Contents) -> bool {
        !Arc::ptr_eq(&self.0, &other.0) && self.iter().any(|r| other.get(r.name()).is_none())
    }

    /// Keeps the resources whose names satisfy `keep`.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Contents {
        if self.iter().all(|r| keep(r.name())) {
            return self.clone();
        }
        Contents(self.iter().filter(|r| keep(r.name())).cloned().collect())
    }

    /// The union of `self` and `newer`, taking `newer`'s resource where both have a name.
    pub fn merged(&self, newer: &Contents) -> Contents {
        let mut out = Vec::with_capacity(self.len() + newer.len());
        let (mut a, mut b) = (self.iter().peekable(), newer.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => match x.name().cmp(y.name()) {
                    std::cmp::Ordering::Less => out.extend(a.next().cloned()),
                    std::cmp::Ordering::Greater => out.extend(b.next().cloned()),
                    std::cmp::Ordering::Equal => {
                        a.next();
                        out.extend(b.next().cloned());
                    }
                },
                (Some(_), None) => out.extend(a.next().cloned()),
                (None, Some(_)) => out.extend(b.next().cloned()),
                (None, None) => break,
            }
        }
        Contents(out.into())
    }

    /// Identifies a response built from `generation` with these resources (to recognise a rejected one).
    pub fn fingerprint(&self, generation: u64) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&generation.to_le_bytes());
        for r in self.iter() {
            h.update(r.name().as_bytes());
            h.update(&[0]);
            h.update(r.version().as_bytes());
            h.update(&[0]);
        }
        h.digest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn res(name: &str, alt: &str) -> Resource {
        Resource::encode(
            name,
            &Cluster {
                name: name.into(),
                alt_stat_name: alt.into(),
                ..Default::default()
            },
        )
    }

    fn contents(items: &[(&str, &str)]) -> Contents {
        Contents(items.iter().map(|(n, a)| res(n, a)).collect())
    }

    fn names(c: &Contents) -> Vec<String> {
        c.iter()
            .map(|r| format!("{}@{}", r.name(), &r.version()[..4]))
            .collect()
    }

    #[test]
    fn merged_prefers_the_newer_version_and_keeps_both_sides() {
        let held = contents(&[("a", "1"), ("b", "1"), ("d", "1")]);
        let desired = contents(&[("b", "2"), ("c", "1")]);
        let m = held.merged(&desired);
        let got: Vec<&str> = m.iter().map(|r| r.name()).collect();
        assert_eq!(got, ["a", "b", "c", "d"]);
        assert_eq!(
            m.get("b").map(|r| r.version()),
            desired.get("b").map(|r| r.version())
        );
        assert!(m.covers(&desired));
        assert!(!held.covers(&desired));
        assert!(m.has_names_outside(&desired));
        assert!(!desired.has_names_outside(&m));
        assert!(!m.same(&desired));
        assert!(m.same(&m.clone()));
        assert_eq!(names(&m.retain(|n| n != "a")).len(), 3);
    }

    #[test]
    fn select_picks_subscribed_names_and_shares_wildcard_lists() {
        let list: Arc<[Resource]> = vec![res("a", ""), res("b", ""), res("c", "")].into();
        let wildcard = Subscription {
            wildcard: true,
            names: BTreeSet::new(),
        };
        assert!(Arc::ptr_eq(&wildcard.select(&list).0, &list));
        let named = Subscription {
            wildcard: false,
            names: ["c", "a", "zz"].iter().map(|s| s.to_string()).collect(),
        };
        let picked = named.select(&list);
        let got: Vec<&str> = picked.iter().map(|r| r.name()).collect();
        assert_eq!(got, ["a", "c"]);
        assert!(!Subscription::default().is_active());
    }

    #[test]
    fn fingerprints_tell_generations_and_contents_apart() {
        let a = contents(&[("a", "1")]);
        let b = contents(&[("a", "2")]);
        assert_eq!(a.fingerprint(1), a.clone().fingerprint(1));
        assert_ne!(a.fingerprint(1), a.fingerprint(2));
        assert_ne!(a.fingerprint(1), b.fingerprint(1));
    }
}
