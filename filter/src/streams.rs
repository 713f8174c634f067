//! The per-VM table of live HTTP streams, keyed by the context id Envoy gives each stream.
//!
//! Envoy numbers the contexts of a VM one after the other, so the streams alive at any moment
//! have ids close together: a direct-mapped array indexed by the id's low bits finds a stream
//! with one compare, where a hash map (even with a cheap hasher) probes and compares on every
//! one of the three or four lookups a request makes. An id whose slot is taken by a
//! longer-lived stream (a slow download, a websocket) goes to an overflow map instead, so the
//! table is correct for any mix of ids and only fast for the usual one.

use rustc_hash::FxHashMap;

/// Slots in the direct-mapped part: the streams a worker has in flight at once, with room to
/// spare. A power of two, so the slot is the id's low bits.
pub const SLOTS: usize = 512;
const _: () = assert!(SLOTS.is_power_of_two());

/// Live streams by context id.
#[derive(Debug)]
pub struct Streams<T> {
    slots: Box<[Option<(u32, T)>]>,
    overflow: FxHashMap<u32, T>,
    len: usize,
}

impl<T> Default for Streams<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Streams<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| None).collect(),
            overflow: FxHashMap::default(),
            len: 0,
        }
    }

    fn slot(id: u32) -> usize {
        id as usize & (SLOTS - 1)
    }

    /// Streams in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds stream `id`, replacing (and returning) any stream already under that id.
    pub fn insert(&mut self, id: u32, value: T) -> Option<T> {
        let old = self.remove(id);
        match self.slots.get_mut(Self::slot(id)) {
            Some(slot @ None) => *slot = Some((id, value)),
            _ => {
                self.overflow.insert(id, value);
            }
        }
        self.len += 1;
        old
    }

    /// Stream `id`, if live.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut T> {
        match self.slots.get_mut(Self::slot(id)) {
            Some(Some((at, value))) if *at == id => Some(value),
            _ if self.overflow.is_empty() => None,
            _ => self.overflow.get_mut(&id),
        }
    }

    /// Takes stream `id` out of the table.
    pub fn remove(&mut self, id: u32) -> Option<T> {
        let removed = match self.slots.get_mut(Self::slot(id)) {
            Some(slot @ Some(_)) if slot.as_ref().is_some_and(|(at, _)| *at == id) => {
                slot.take().map(|(_, value)| value)
            }
            _ if self.overflow.is_empty() => None,
            _ => self.overflow.remove(&id),
        };
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn ids_that_share_a_slot_are_kept_apart() {
        let mut t = Streams::new();
        let a = 7;
        let b = 7 + SLOTS as u32;
        assert_eq!(t.insert(a, "a"), None);
        assert_eq!(t.insert(b, "b"), None, "b goes to the overflow map");
        assert_eq!(t.len(), 2);
        assert_eq!(t.get_mut(a), Some(&mut "a"));
        assert_eq!(t.get_mut(b), Some(&mut "b"));
        assert_eq!(t.remove(a), Some("a"));
        assert_eq!(t.get_mut(a), None);
        assert_eq!(
            t.get_mut(b),
            Some(&mut "b"),
            "still found after its slot emptied"
        );
        assert_eq!(t.remove(b), Some("b"));
        assert!(t.is_empty());
        assert_eq!(t.remove(b), None);
    }

    #[test]
    fn inserting_an_id_again_replaces_its_stream_and_counts_it_once() {
        let mut t = Streams::new();
        t.insert(3, 1);
        assert_eq!(t.insert(3, 2), Some(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove(3), Some(2));
        assert!(t.is_empty());
    }

    proptest! {
        /// The table behaves as a map under any sequence of operations.
        #[test]
        fn behaves_as_a_map(ops in proptest::collection::vec((0u8..3, 0u32..2048), 0..400)) {
            let mut t = Streams::new();
            let mut m = HashMap::new();
            for (n, (op, id)) in ops.into_iter().enumerate() {
                match op {
                    0 => prop_assert_eq!(t.insert(id, n), m.insert(id, n)),
                    1 => prop_assert_eq!(t.remove(id), m.remove(&id)),
                    _ => prop_assert_eq!(t.get_mut(id).copied(), m.get(&id).copied()),
                }
                prop_assert_eq!(t.len(), m.len());
            }
        }
    }
}
