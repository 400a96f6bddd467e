//! A persistent (immutable, structurally shared) hash map from plugin name to slot: a
//! hash-array-mapped trie of 16-way branch nodes. Inserting or removing a name copies only
//! the nodes on its path (at most 16 levels of at most 16 pointers, in practice
//! log16(n) levels), so a registry of n plugins is changed in O(log n) instead of the
//! O(n) a copy of a whole `HashMap` costs. Reads walk one path; they allocate nothing and
//! take no lock (the registry publishes each new root through an `ArcSwap`).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

const BITS: u32 = 4;
const WIDTH: usize = 1 << BITS;
/// Levels of branching before the whole 64-bit hash is used up; below that, names whose
/// hashes are equal share a bucket.
const MAX_DEPTH: u32 = u64::BITS / BITS;

enum Node<V> {
    Branch([Option<Arc<Node<V>>>; WIDTH]),
    /// One or more entries whose hashes agree on every level above (several only once
    /// the hash is used up, or as the leaf of a single entry).
    Leaf(u64, Vec<(String, V)>),
}

/// The persistent map. `Clone` is O(1) (shares the root).
pub(crate) struct PMap<V> {
    root: Option<Arc<Node<V>>>,
    len: usize,
}

impl<V> Clone for PMap<V> {
    fn clone(&self) -> Self {
        PMap {
            root: self.root.clone(),
            len: self.len,
        }
    }
}

impl<V> Default for PMap<V> {
    fn default() -> Self {
        PMap { root: None, len: 0 }
    }
}

fn hash_of(key: &str) -> u64 {
    // A fixed-key hasher: the same name always lands on the same path.
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

fn digit(hash: u64, depth: u32) -> usize {
    ((hash >> (depth * BITS)) & (WIDTH as u64 - 1)) as usize
}

fn empty_branch<V>() -> [Option<Arc<Node<V>>>; WIDTH] {
    std::array::from_fn(|_| None)
}

impl<V: Clone> PMap<V> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, key: &str) -> Option<&V> {
        let hash = hash_of(key);
        let mut node = self.root.as_deref()?;
        let mut depth = 0;
        loop {
            match node {
                Node::Branch(children) => {
                    node = children[digit(hash, depth)].as_deref()?;
                    depth += 1;
                }
                Node::Leaf(h, entries) => {
                    if *h != hash {
                        return None;
                    }
                    return entries.iter().find(|(k, _)| k == key).map(|(_, v)| v);
                }
            }
        }
    }

    /// A new map with `key` set to `value` (replacing any previous value).
    pub(crate) fn insert(&self, key: String, value: V) -> PMap<V> {
        let hash = hash_of(&key);
        let (root, added) = insert_at(self.root.as_ref(), hash, key, value, 0);
        PMap {
            root: Some(root),
            len: self.len + added as usize,
        }
    }

    /// A new map without `key`, and the value it had.
    pub(crate) fn remove(&self, key: &str) -> (PMap<V>, Option<V>) {
        let Some(root) = self.root.as_ref() else {
            return (self.clone(), None);
        };
        match remove_at(root, hash_of(key), key, 0) {
            None => (self.clone(), None),
            Some((root, v)) => (
                PMap {
                    root,
                    len: self.len - 1,
                },
                Some(v),
            ),
        }
    }

    /// Every value (in no particular order).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&str, &V)) {
        fn walk<V>(n: &Node<V>, f: &mut impl FnMut(&str, &V)) {
            match n {
                Node::Branch(children) => children.iter().flatten().for_each(|c| walk(c, f)),
                Node::Leaf(_, entries) => entries.iter().for_each(|(k, v)| f(k, v)),
            }
        }
        if let Some(r) = &self.root {
            walk(r, &mut f);
        }
    }
}

/// Returns the new node and whether an entry was added (rather than replaced).
fn insert_at<V: Clone>(
    node: Option<&Arc<Node<V>>>,
    hash: u64,
    key: String,
    value: V,
    depth: u32,
) -> (Arc<Node<V>>, bool) {
    #[cfg(test)]
    test_counter::bump();
    let Some(node) = node else {
        return (Arc::new(Node::Leaf(hash, vec![(key, value)])), true);
    };
    match &**node {
        Node::Branch(children) => {
            let d = digit(hash, depth);
            let (child, added) = insert_at(children[d].as_ref(), hash, key, value, depth + 1);
            let mut copy = children.clone();
            copy[d] = Some(child);
            (Arc::new(Node::Branch(copy)), added)
        }
        Node::Leaf(h, entries) if *h == hash => {
            let mut copy = entries.clone();
            let added = match copy.iter_mut().find(|(k, _)| *k == key) {
                Some(e) => {
                    e.1 = value;
                    false
                }
                None => {
                    copy.push((key, value));
                    true
                }
            };
            (Arc::new(Node::Leaf(hash, copy)), added)
        }
        Node::Leaf(h, _) => {
            // Two different hashes meet: push the existing leaf one level down.
            debug_assert!(depth < MAX_DEPTH);
            let mut children = empty_branch();
            children[digit(*h, depth)] = Some(node.clone());
            let branch = Arc::new(Node::Branch(children));
            insert_at(Some(&branch), hash, key, value, depth)
        }
    }
}

/// `None` if `key` is absent; else the replacement node (`None` when it became empty).
#[allow(clippy::type_complexity)]
fn remove_at<V: Clone>(node: &Arc<Node<V>>, hash: u64, key: &str, depth: u32) -> Option<(Option<Arc<Node<V>>>, V)> {
    match &**node {
        Node::Branch(children) => {
            let d = digit(hash, depth);
            let (child, v) = remove_at(children[d].as_ref()?, hash, key, depth + 1)?;
            let mut copy = children.clone();
            copy[d] = child;
            let mut left = copy.iter().flatten();
            let replacement = match (left.next(), left.next()) {
                (None, _) => None,
                // A single leaf left: lift it (leaves carry their full hash).
                (Some(only), None) if matches!(&**only, Node::Leaf(..)) => Some(only.clone()),
                _ => Some(Arc::new(Node::Branch(copy))),
            };
            Some((replacement, v))
        }
        Node::Leaf(h, entries) => {
            if *h != hash {
                return None;
            }
            let i = entries.iter().position(|(k, _)| k == key)?;
            let mut copy = entries.clone();
            let (_, v) = copy.swap_remove(i);
            let replacement = if copy.is_empty() {
                None
            } else {
                Some(Arc::new(Node::Leaf(hash, copy)))
            };
            Some((replacement, v))
        }
    }
}

/// Nodes visited by inserts on this thread (tests only: an insert must copy O(log n) nodes).
#[cfg(test)]
pub(crate) mod test_counter {
    use std::cell::Cell;
    thread_local!(static VISITED: Cell<u64> = const { Cell::new(0) });
    pub(crate) fn bump() {
        VISITED.with(|v| v.set(v.get() + 1));
    }
    pub(crate) fn take() -> u64 {
        VISITED.with(|v| v.replace(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn behaves_like_a_hash_map_and_old_versions_stay_intact() {
        let mut m: PMap<u32> = PMap::default();
        let mut reference = HashMap::new();
        let mut versions = Vec::new();
        for i in 0..3000u32 {
            m = m.insert(format!("p{i}"), i);
            reference.insert(format!("p{i}"), i);
            if i % 500 == 0 {
                versions.push((m.clone(), reference.clone()));
            }
        }
        m = m.insert("p7".into(), 70_000);
        reference.insert("p7".into(), 70_000);
        for i in (0..3000u32).step_by(3) {
            let (next, v) = m.remove(&format!("p{i}"));
            assert_eq!(v, reference.remove(&format!("p{i}")));
            m = next;
        }
        assert_eq!(m.remove("absent").1, None);
        assert_eq!(m.len(), reference.len());
        for (k, v) in &reference {
            assert_eq!(m.get(k), Some(v));
        }
        let mut seen = 0;
        m.for_each(|k, v| {
            assert_eq!(reference.get(k), Some(v));
            seen += 1;
        });
        assert_eq!(seen, reference.len());
        for (old, r) in versions {
            assert_eq!(old.len(), r.len());
            for (k, v) in &r {
                assert_eq!(old.get(k), Some(v));
            }
        }
        // Remove everything: the map is empty again.
        let keys: Vec<String> = reference.keys().cloned().collect();
        for k in keys {
            m = m.remove(&k).0;
        }
        assert_eq!(m.len(), 0);
        assert!(m.root.is_none());
    }

    #[test]
    fn an_insert_copies_a_path_not_the_map() {
        let mut m: PMap<u32> = PMap::default();
        let mut worst = 0;
        for i in 0..20_000u32 {
            test_counter::take();
            m = m.insert(format!("plugin-{i}"), i);
            worst = worst.max(test_counter::take());
        }
        // 20 000 entries: about 4 levels of 16; a copy of the map would visit 20 000.
        assert!(worst <= 12, "an insert visited {worst} nodes");
    }
}
