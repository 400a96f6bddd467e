//! The loaded plugins' dependency graph, kept up to date one plugin at a time.
//!
//! The lifecycle used to rebuild the whole graph (every loaded plugin's version and
//! dependencies) for every load, unload and reload, which made loading n plugins one at a
//! time cost O(n²). [`LoadedIndex`] keeps each loaded plugin's node and the reverse edges
//! ("who depends on me"), changed by O(dependencies) work per plugin loaded or unloaded; the
//! checks then read a [`LoadedGraph`] *view* of only the plugins they can involve:
//!
//! * a load set: the set's own names and direct dependencies (a loaded plugin cannot depend
//!   on one not yet loaded, so a cycle can only run through the new plugins, and the planner
//!   needs nothing else);
//! * an unload: the plugin and its direct dependents; a cascade: its transitive dependents;
//! * a reload: the new manifest's dependencies and everything below them (a cycle through the
//!   new edges), the plugin itself and its direct dependents;
//! * unload-all: everything, once.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::{LoadedGraph, LoadedNode};

/// Loaded plugins by name, with reverse edges. Changed only under the lifecycle lock.
#[derive(Default, Debug)]
pub struct LoadedIndex {
    nodes: HashMap<String, LoadedNode>,
    /// dependency name → loaded plugins that depend on it (self-dependencies left out).
    dependents: HashMap<String, BTreeSet<String>>,
    /// Nodes copied into views so far (a diagnostic: what each operation cost).
    visited: u64,
}

impl LoadedIndex {
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.nodes.contains_key(name)
    }

    /// Nodes copied into views since the index was made: the work the dependency checks did.
    /// Loading one plugin with d dependencies adds at most 1 + d, whatever the number loaded.
    pub fn visited(&self) -> u64 {
        self.visited
    }

    /// Record a loaded plugin (or its new manifest after a reload).
    pub fn insert(&mut self, name: &str, node: LoadedNode) {
        self.remove(name);
        for d in node.dependencies.keys() {
            if d != name {
                self.dependents.entry(d.clone()).or_default().insert(name.to_string());
            }
        }
        self.nodes.insert(name.to_string(), node);
    }

    /// Forget an unloaded plugin.
    pub fn remove(&mut self, name: &str) {
        let Some(old) = self.nodes.remove(name) else {
            return;
        };
        for d in old.dependencies.keys() {
            if let Some(set) = self.dependents.get_mut(d.as_str()) {
                set.remove(name);
                if set.is_empty() {
                    self.dependents.remove(d.as_str());
                }
            }
        }
    }

    /// The loaded plugins that depend directly on `name`, sorted by name.
    pub fn dependents_of(&self, name: &str) -> impl Iterator<Item = &str> {
        self.dependents.get(name).into_iter().flatten().map(String::as_str)
    }

    /// The loaded plugins among `names`, as a graph.
    pub fn view<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) -> LoadedGraph {
        let mut g = LoadedGraph::new();
        for n in names {
            if g.contains_key(n) {
                continue;
            }
            if let Some(node) = self.nodes.get(n) {
                self.visited += 1;
                g.insert(n.to_string(), node.clone());
            }
        }
        g
    }

    /// `name` and its direct dependents.
    pub fn view_for_unload(&mut self, name: &str) -> LoadedGraph {
        let names: Vec<String> = std::iter::once(name)
            .chain(self.dependents_of(name))
            .map(str::to_string)
            .collect();
        self.view(names.iter().map(String::as_str))
    }

    /// `name` and every plugin that depends on it, directly or transitively.
    pub fn view_for_cascade(&mut self, name: &str) -> LoadedGraph {
        let mut set: BTreeSet<String> = BTreeSet::from([name.to_string()]);
        let mut queue = VecDeque::from([name.to_string()]);
        while let Some(u) = queue.pop_front() {
            let next: Vec<String> = self.dependents_of(&u).map(str::to_string).collect();
            for d in next {
                if set.insert(d.clone()) {
                    queue.push_back(d);
                }
            }
        }
        self.view(set.iter().map(String::as_str))
    }

    /// What a reload of `name` with new dependencies `deps` is checked against: everything
    /// reachable from `deps`, `name` itself and its direct dependents.
    pub fn view_for_replacement<'a>(&mut self, name: &str, deps: impl IntoIterator<Item = &'a str>) -> LoadedGraph {
        let mut below: BTreeSet<String> = BTreeSet::new();
        let mut queue: VecDeque<String> = deps.into_iter().map(str::to_string).collect();
        while let Some(u) = queue.pop_front() {
            if !below.insert(u.clone()) || u == name {
                continue;
            }
            if let Some(node) = self.nodes.get(&u) {
                queue.extend(node.dependencies.keys().cloned());
            }
        }
        let dependents: Vec<String> = self.dependents_of(name).map(str::to_string).collect();
        let names: Vec<&str> = below
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(name))
            .chain(dependents.iter().map(String::as_str))
            .collect();
        self.view(names)
    }

    /// Every loaded plugin (unload-all: once, not per plugin).
    pub fn view_all(&mut self) -> LoadedGraph {
        self.visited += self.nodes.len() as u64;
        self.nodes.iter().map(|(n, node)| (n.clone(), node.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use semver::Version;
    use std::collections::BTreeMap;

    fn node(deps: &[&str]) -> LoadedNode {
        LoadedNode {
            version: Version::new(1, 0, 0),
            dependencies: deps
                .iter()
                .map(|d| (d.to_string(), "^1".to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn reverse_edges_follow_inserts_replacements_and_removals() {
        let mut ix = LoadedIndex::default();
        ix.insert("base", node(&[]));
        ix.insert("a", node(&["base"]));
        ix.insert("b", node(&["base", "a"]));
        assert_eq!(ix.dependents_of("base").collect::<Vec<_>>(), ["a", "b"]);
        // A reload of b without the dependency on a.
        ix.insert("b", node(&["base"]));
        assert_eq!(ix.dependents_of("a").count(), 0);
        ix.remove("a");
        assert_eq!(ix.dependents_of("base").collect::<Vec<_>>(), ["b"]);
        assert_eq!(ix.view_for_cascade("base").keys().collect::<Vec<_>>(), ["b", "base"]);
        assert_eq!(ix.view_for_unload("base").len(), 2);
        assert_eq!(ix.len(), 2);
    }

    #[test]
    fn the_view_for_one_more_plugin_does_not_grow_with_the_number_loaded() {
        let mut ix = LoadedIndex::default();
        ix.insert("base", node(&[]));
        let mut worst = 0;
        for i in 0..5000 {
            let name = format!("p{i}");
            let before = ix.visited();
            // What a load of a plugin depending on `base` looks at: its name and its dependency.
            let g = ix.view([name.as_str(), "base"]);
            assert_eq!(g.len(), 1);
            worst = worst.max(ix.visited() - before);
            ix.insert(&name, node(&["base"]));
        }
        assert_eq!(worst, 1, "one dependency: one node looked at per load");
        // Unloading a plugin nobody depends on looks at that plugin only.
        let before = ix.visited();
        assert_eq!(ix.view_for_unload("p17").len(), 1);
        assert_eq!(ix.visited() - before, 1);
    }

    #[test]
    fn a_replacement_view_reaches_what_could_close_a_cycle() {
        let mut ix = LoadedIndex::default();
        ix.insert("c", node(&[]));
        ix.insert("b", node(&["c"]));
        ix.insert("a", node(&["b"]));
        ix.insert("other", node(&[]));
        // c reloaded with a dependency on a: a -> b -> c must all be in the view.
        let g = ix.view_for_replacement("c", ["a"]);
        assert_eq!(g.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    }
}
