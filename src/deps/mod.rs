//! Dependency graph, semver constraints and load order.
//!
//! A manifest's `dependencies` map a plugin name to a semver requirement (`semver::VersionReq`
//! syntax: `^1.2`, `>=1.0, <2`, `*`). This module decides, for a set of plugins about to be
//! loaded together, whether every requirement is satisfied (by an already-loaded plugin or by
//! another member of the set) and in which order to load them; and, for plugins already
//! loaded, who depends on whom (unload refusal, cascade order, reload checks). It never loads
//! anything itself.
//!
//! # Rules
//!
//! * **Load order** ([`plan`]): dependencies before their dependents. Among plugins whose
//!   dependencies are all placed, the one with the smallest name (byte order) goes first, so
//!   the order depends only on the set, never on the order the caller listed it in or on
//!   hashing. `load_priority` is *not* used: ThemisDB does not use it for ordering either
//!   (compat notes §7), and a name order is easier to predict from a directory listing.
//! * **Arrows**: `a -> b` always reads "a depends on b", in cycle reports as in the graph.
//! * **Errors**, checked in this order, first one wins:
//!   1. a name twice in the set, or a member already loaded: `KEEL_ERR_ALREADY_LOADED`;
//!   2. per plugin in name order, per dependency in name order: an unparsable requirement
//!      (`KEEL_ERR_BAD_VERSION`), a dependency neither loaded nor in the set
//!      (`KEEL_ERR_DEPENDENCY_MISSING`), a dependency whose version is outside the range
//!      (`KEEL_ERR_DEPENDENCY_VERSION`);
//!   3. cycles (`KEEL_ERR_DEPENDENCY_CYCLE`): one cycle per strongly connected group, each
//!      the shortest cycle through the group's smallest name, e.g. `a -> b -> c -> a`; a
//!      plugin that depends on itself is the cycle `a -> a`.
//! * **Pre-releases**: a requirement matches a pre-release version only if one of its
//!   comparators names the same `major.minor.patch` with a pre-release (Cargo's rule), except
//!   `*`, which matches every version including pre-releases: `*` is what "any version" means
//!   in a manifest (ThemisDB's array-form dependencies become `*`).

pub mod discover;
pub mod index;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;
use semver::{Version, VersionReq};

use crate::error::Result;
use crate::{bail, err};

/// One plugin of a set about to be loaded, as the dependency rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub version: Version,
    /// Dependency name → semver requirement (manifest `dependencies`).
    pub dependencies: BTreeMap<String, String>,
}

impl Candidate {
    pub fn new(name: impl Into<String>, version: Version, dependencies: BTreeMap<String, String>) -> Candidate {
        Candidate {
            name: name.into(),
            version,
            dependencies,
        }
    }
}

/// A loaded plugin as the dependency rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedNode {
    pub version: Version,
    /// Dependency name → semver requirement, as in the manifest it was loaded from.
    pub dependencies: BTreeMap<String, String>,
}

/// Loaded plugins by name: the registry's dependency view.
pub type LoadedGraph = BTreeMap<String, LoadedNode>;

/// The versions of the plugins in `graph`, the shape [`plan`] takes.
pub fn versions(graph: &LoadedGraph) -> BTreeMap<String, Version> {
    graph
        .iter()
        .map(|(n, node)| (n.clone(), node.version.clone()))
        .collect()
}

/// Parse a dependency requirement, naming the plugin and the dependency on failure.
pub fn parse_requirement(plugin: &str, dependency: &str, requirement: &str) -> Result<VersionReq> {
    VersionReq::parse(requirement).map_err(|e| {
        err!(
            KEEL_ERR_BAD_VERSION,
            "plugin '{plugin}': dependency '{dependency}' has requirement '{requirement}', which is not a semver requirement: {e}"
        )
    })
}

/// Whether `version` satisfies `req`; `*` (no comparators) matches every version, including
/// pre-releases (see the module documentation).
pub fn satisfies(req: &VersionReq, version: &Version) -> bool {
    req.comparators.is_empty() || req.matches(version)
}

/// The order in which to load `candidates`: indices into `candidates`, each plugin after
/// every candidate it depends on, ties broken by name.
///
/// A dependency is satisfied by a member of the set or by a plugin in `loaded` (name →
/// version). See the module documentation for which error is reported when several apply.
///
/// Cost: O((V + E) log V) with one hash lookup per edge and one requirement parse per
/// distinct requirement string; strings are only allocated to build an error message.
pub fn plan(candidates: &[Candidate], loaded: &BTreeMap<String, Version>) -> Result<Vec<usize>> {
    let n = candidates.len();
    if n > u32::MAX as usize {
        bail!(
            KEEL_ERR_INVALID_ARGUMENT,
            "{n} plugins in one set is more than Keel plans at once"
        );
    }

    // Name order: `by_name[rank] = index`, `rank_of[index] = rank`.
    let mut by_name: Vec<u32> = (0..n as u32).collect();
    by_name.sort_unstable_by(|&a, &b| candidates[a as usize].name.cmp(&candidates[b as usize].name));
    let mut rank_of = vec![0u32; n];
    for (rank, &i) in by_name.iter().enumerate() {
        rank_of[i as usize] = rank as u32;
    }

    // 1. Duplicates and members that are already loaded.
    for w in by_name.windows(2) {
        let (a, b) = (&candidates[w[0] as usize], &candidates[w[1] as usize]);
        if a.name == b.name {
            bail!(
                KEEL_ERR_ALREADY_LOADED,
                "plugin '{}' appears twice in the set being loaded (versions {} and {})",
                a.name,
                a.version,
                b.version
            );
        }
    }
    for &i in &by_name {
        let c = &candidates[i as usize];
        if let Some(v) = loaded.get(&c.name) {
            bail!(
                KEEL_ERR_ALREADY_LOADED,
                "plugin '{}' is already loaded (version {v}); unload or reload it instead",
                c.name
            );
        }
    }

    // Intern names to indices: from here on the graph works on integers.
    let index: HashMap<&str, u32> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i as u32))
        .collect();

    // 2. Requirements, resolved edge by edge. Edge i -> j: i depends on j.
    let edge_hint = candidates.iter().map(|c| c.dependencies.len()).sum();
    let mut graph: DiGraph<(), (), u32> = DiGraph::with_capacity(n, edge_hint);
    for _ in 0..n {
        graph.add_node(());
    }
    let mut pending = vec![0u32; n];
    let mut reqs: HashMap<&str, VersionReq> = HashMap::new();
    for &i in &by_name {
        let c = &candidates[i as usize];
        for (dep, req_text) in &c.dependencies {
            if *dep == c.name {
                // Self-dependency: reported as the cycle `a -> a` below.
                graph.add_edge(NodeIndex::new(i as usize), NodeIndex::new(i as usize), ());
                pending[i as usize] += 1;
                continue;
            }
            let req = match reqs.get(req_text.as_str()) {
                Some(r) => r,
                None => {
                    let r = parse_requirement(&c.name, dep, req_text)?;
                    reqs.entry(req_text.as_str()).or_insert(r)
                }
            };
            if let Some(&j) = index.get(dep.as_str()) {
                let found = &candidates[j as usize].version;
                if !satisfies(req, found) {
                    bail!(
                        KEEL_ERR_DEPENDENCY_VERSION,
                        "plugin '{}' {} requires '{dep}' {req_text}, but the set being loaded has '{dep}' {found}",
                        c.name,
                        c.version
                    );
                }
                graph.add_edge(NodeIndex::new(i as usize), NodeIndex::new(j as usize), ());
                pending[i as usize] += 1;
            } else if let Some(found) = loaded.get(dep) {
                if !satisfies(req, found) {
                    bail!(
                        KEEL_ERR_DEPENDENCY_VERSION,
                        "plugin '{}' {} requires '{dep}' {req_text}, but the loaded '{dep}' is version {found}",
                        c.name,
                        c.version
                    );
                }
            } else {
                bail!(
                    KEEL_ERR_DEPENDENCY_MISSING,
                    "plugin '{}' {} requires '{dep}' {req_text}, which is neither loaded nor in the set being loaded",
                    c.name,
                    c.version
                );
            }
        }
    }

    // 3. Kahn's algorithm; the ready set is ordered by name rank.
    let mut ready: BinaryHeap<Reverse<u32>> = (0..n)
        .filter(|&i| pending[i] == 0)
        .map(|i| Reverse(rank_of[i]))
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(rank)) = ready.pop() {
        let i = by_name[rank as usize] as usize;
        order.push(i);
        for d in graph.neighbors_directed(NodeIndex::new(i), Direction::Incoming) {
            let d = d.index();
            if d == i {
                continue;
            }
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.push(Reverse(rank_of[d]));
            }
        }
    }
    if order.len() < n {
        let cycles = find_cycles(&graph, &rank_of);
        let names = |cycle: &Vec<usize>| {
            let mut s: Vec<&str> = cycle.iter().map(|&i| candidates[i].name.as_str()).collect();
            s.push(&candidates[cycle[0]].name);
            s.join(" -> ")
        };
        const SHOWN: usize = 8;
        let mut text: Vec<String> = cycles.iter().take(SHOWN).map(names).collect();
        if cycles.len() > SHOWN {
            text.push(format!("and {} more", cycles.len() - SHOWN));
        }
        let noun = if cycles.len() == 1 { "cycle" } else { "cycles" };
        bail!(KEEL_ERR_DEPENDENCY_CYCLE, "dependency {noun}: {}", text.join("; "));
    }
    Ok(order)
}

/// One cycle per non-trivial strongly connected component (or self-loop), as node indices
/// without the closing repetition: the shortest cycle through the component's smallest-ranked
/// node, neighbours explored in rank order. Sorted by that node's rank.
fn find_cycles(graph: &DiGraph<(), (), u32>, rank_of: &[u32]) -> Vec<Vec<usize>> {
    let mut cycles = Vec::new();
    for scc in petgraph::algo::tarjan_scc(graph) {
        let start = match scc.iter().min_by_key(|v| rank_of[v.index()]) {
            Some(&s) => s,
            None => continue,
        };
        if scc.len() == 1 {
            if graph.contains_edge(start, start) {
                cycles.push(vec![start.index()]);
            }
            continue;
        }
        let members: BTreeSet<usize> = scc.iter().map(|v| v.index()).collect();
        // Breadth-first search inside the component for the shortest way back to `start`.
        let mut parent: HashMap<usize, usize> = HashMap::new();
        let mut queue = VecDeque::from([start.index()]);
        let mut closing = None;
        'search: while let Some(u) = queue.pop_front() {
            let mut next: Vec<usize> = graph
                .neighbors_directed(NodeIndex::new(u), Direction::Outgoing)
                .map(|v| v.index())
                .filter(|v| members.contains(v))
                .collect();
            next.sort_unstable_by_key(|&v| rank_of[v]);
            next.dedup();
            for v in next {
                if v == start.index() {
                    closing = Some(u);
                    break 'search;
                }
                if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(v) {
                    e.insert(u);
                    queue.push_back(v);
                }
            }
        }
        // A strongly connected component of two or more nodes always has a way back.
        let Some(mut u) = closing else { continue };
        let mut path = vec![u];
        while u != start.index() {
            u = parent[&u];
            path.push(u);
        }
        path.reverse();
        cycles.push(path);
    }
    cycles.sort_by_key(|c| rank_of[c[0]]);
    cycles
}

/// The loaded plugins that depend directly on `name`, sorted by name. Non-empty means an
/// unload of `name` must be refused (`KEEL_ERR_HAS_DEPENDENTS`) unless it cascades.
pub fn dependents_of(name: &str, graph: &LoadedGraph) -> Vec<String> {
    graph
        .iter()
        .filter(|(n, node)| *n != name && node.dependencies.contains_key(name))
        .map(|(n, _)| n.clone())
        .collect()
}

/// The error an unload of `name` gets while others depend on it, or `Ok` if none do.
pub fn check_unload(name: &str, graph: &LoadedGraph) -> Result<()> {
    let deps = dependents_of(name, graph);
    if deps.is_empty() {
        return Ok(());
    }
    bail!(
        KEEL_ERR_HAS_DEPENDENTS,
        "cannot unload plugin '{name}': {} loaded plugin{} depend on it: {} (unload those first, or cascade)",
        deps.len(),
        if deps.len() == 1 { "" } else { "s" },
        deps.join(", ")
    )
}

/// `name` and everything that depends on it, directly or transitively, in the order to unload
/// them: every plugin before the plugins it depends on (reverse topological), ties by name;
/// `name` itself comes last. `name` need not be in `graph` (then the result is `[name]` plus
/// whatever names it as a dependency).
pub fn cascade_unload_order(name: &str, graph: &LoadedGraph) -> Vec<String> {
    // Transitive dependents, by a breadth-first walk over "who depends on me".
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (n, node) in graph {
        for d in node.dependencies.keys() {
            if d != n {
                dependents.entry(d.as_str()).or_default().push(n.as_str());
            }
        }
    }
    let mut set: BTreeSet<&str> = BTreeSet::from([name]);
    let mut queue = VecDeque::from([name]);
    while let Some(u) = queue.pop_front() {
        for &d in dependents.get(u).map(|v| v.as_slice()).unwrap_or(&[]) {
            if set.insert(d) {
                queue.push_back(d);
            }
        }
    }
    unload_order_of(&set, graph)
}

/// Every plugin in `graph` in the order to unload them all (dependents first, ties by name).
pub fn unload_all_order(graph: &LoadedGraph) -> Vec<String> {
    let set: BTreeSet<&str> = graph.keys().map(String::as_str).collect();
    unload_order_of(&set, graph)
}

/// Reverse topological order of `set` within `graph`: a plugin is unloaded once nothing left
/// in the set depends on it. A loaded graph has no cycles (loading refuses them); should one
/// exist anyway, its members are appended in name order rather than dropped.
fn unload_order_of(set: &BTreeSet<&str>, graph: &LoadedGraph) -> Vec<String> {
    // blockers[x] = members of the set (other than x) that depend on x.
    let mut blockers: BTreeMap<&str, usize> = set.iter().map(|&n| (n, 0)).collect();
    for &n in set {
        if let Some(node) = graph.get(n) {
            for d in node.dependencies.keys() {
                if d != n {
                    if let Some(c) = blockers.get_mut(d.as_str()) {
                        *c += 1;
                    }
                }
            }
        }
    }
    let mut ready: BTreeSet<&str> = blockers.iter().filter(|(_, &c)| c == 0).map(|(&n, _)| n).collect();
    let mut order = Vec::with_capacity(set.len());
    while let Some(n) = ready.pop_first() {
        order.push(n.to_string());
        blockers.remove(n);
        if let Some(node) = graph.get(n) {
            for d in node.dependencies.keys() {
                if d != n {
                    if let Some(c) = blockers.get_mut(d.as_str()) {
                        *c -= 1;
                        if *c == 0 {
                            ready.insert(d.as_str());
                        }
                    }
                }
            }
        }
    }
    order.extend(blockers.keys().map(|n| n.to_string()));
    order
}

/// Check that `new` may replace the loaded plugin of the same name (reload with a possibly
/// changed manifest): its own requirements are met by the other loaded plugins, every loaded
/// dependent still accepts its version, and its dependencies do not lead back to it.
pub fn check_replacement(new: &Candidate, graph: &LoadedGraph) -> Result<()> {
    let name = new.name.as_str();
    for (dep, req_text) in &new.dependencies {
        if dep == name {
            bail!(KEEL_ERR_DEPENDENCY_CYCLE, "dependency cycle: {name} -> {name}");
        }
        let req = parse_requirement(name, dep, req_text)?;
        match graph.get(dep) {
            None => bail!(
                KEEL_ERR_DEPENDENCY_MISSING,
                "plugin '{name}' {} requires '{dep}' {req_text}, which is not loaded",
                new.version
            ),
            Some(node) if !satisfies(&req, &node.version) => bail!(
                KEEL_ERR_DEPENDENCY_VERSION,
                "plugin '{name}' {} requires '{dep}' {req_text}, but the loaded '{dep}' is version {}",
                new.version,
                node.version
            ),
            Some(_) => {}
        }
    }
    for dependent in dependents_of(name, graph) {
        let req_text = &graph[&dependent].dependencies[name];
        let req = parse_requirement(&dependent, name, req_text)?;
        if !satisfies(&req, &new.version) {
            bail!(
                KEEL_ERR_DEPENDENCY_VERSION,
                "loaded plugin '{dependent}' requires '{name}' {req_text}, which the new version {} does not satisfy",
                new.version
            );
        }
    }
    // A cycle through the new edges: some dependency of `new` (transitively) depends on `name`.
    for dep in new.dependencies.keys() {
        if let Some(path) = path_between(dep, name, graph) {
            let mut text = vec![name];
            text.extend(path.iter().map(String::as_str));
            bail!(KEEL_ERR_DEPENDENCY_CYCLE, "dependency cycle: {}", text.join(" -> "));
        }
    }
    Ok(())
}

/// The shortest dependency path `from -> … -> to` in `graph` (inclusive), if any; neighbours
/// in name order.
fn path_between(from: &str, to: &str, graph: &LoadedGraph) -> Option<Vec<String>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([from]);
    let mut seen = BTreeSet::from([from]);
    while let Some(u) = queue.pop_front() {
        if u == to {
            let mut path = vec![u.to_string()];
            let mut cur = u;
            while let Some(&p) = parent.get(cur) {
                path.push(p.to_string());
                cur = p;
            }
            path.reverse();
            return Some(path);
        }
        if let Some(node) = graph.get(u) {
            for d in node.dependencies.keys() {
                if seen.insert(d.as_str()) {
                    parent.insert(d.as_str(), u);
                    queue.push_back(d.as_str());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::keel_status::{self, *};

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn c(name: &str, version: &str, deps: &[(&str, &str)]) -> Candidate {
        Candidate::new(
            name,
            v(version),
            deps.iter().map(|(n, r)| (n.to_string(), r.to_string())).collect(),
        )
    }

    fn names(cands: &[Candidate], order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| cands[i].name.clone()).collect()
    }

    fn none() -> BTreeMap<String, Version> {
        BTreeMap::new()
    }

    fn plan_err(cands: &[Candidate], loaded: &BTreeMap<String, Version>) -> crate::Error {
        match plan(cands, loaded) {
            Ok(order) => panic!("expected an error, got order {:?}", names(cands, &order)),
            Err(e) => e,
        }
    }

    /// (name, version, [(dependency, requirement)]).
    type Entry<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

    fn graph(entries: &[Entry<'_>]) -> LoadedGraph {
        entries
            .iter()
            .map(|(n, ver, deps)| {
                let node = LoadedNode {
                    version: v(ver),
                    dependencies: deps.iter().map(|(d, r)| (d.to_string(), r.to_string())).collect(),
                };
                (n.to_string(), node)
            })
            .collect()
    }

    #[test]
    fn empty_set_plans_to_nothing() {
        assert_eq!(plan(&[], &none()).unwrap(), Vec::<usize>::new());
    }

    #[test]
    fn independent_plugins_load_in_name_order() {
        let cands = [
            c("zeta", "1.0.0", &[]),
            c("alpha", "1.0.0", &[]),
            c("mid", "1.0.0", &[]),
        ];
        assert_eq!(names(&cands, &plan(&cands, &none()).unwrap()), ["alpha", "mid", "zeta"]);
    }

    #[test]
    fn chain_loads_dependencies_first() {
        let cands = [
            c("a", "1.0.0", &[("b", "^1")]),
            c("b", "1.2.0", &[("c", ">=0.5")]),
            c("c", "0.9.0", &[]),
        ];
        assert_eq!(names(&cands, &plan(&cands, &none()).unwrap()), ["c", "b", "a"]);
    }

    #[test]
    fn diamond() {
        // top -> left, right; left, right -> base.
        let cands = [
            c("top", "1.0.0", &[("left", "^1"), ("right", "^1")]),
            c("right", "1.0.0", &[("base", "^2")]),
            c("left", "1.0.0", &[("base", "^2.1")]),
            c("base", "2.3.0", &[]),
        ];
        let order = names(&cands, &plan(&cands, &none()).unwrap());
        assert_eq!(order, ["base", "left", "right", "top"]);
    }

    #[test]
    fn order_does_not_depend_on_input_order() {
        let mut cands = vec![
            c("d", "1.0.0", &[("a", "*")]),
            c("c", "1.0.0", &[("a", "*")]),
            c("b", "1.0.0", &[]),
            c("a", "1.0.0", &[]),
        ];
        let first = names(&cands, &plan(&cands, &none()).unwrap());
        cands.reverse();
        let second = names(&cands, &plan(&cands, &none()).unwrap());
        assert_eq!(first, second);
        assert_eq!(first, ["a", "b", "c", "d"]);
    }

    #[test]
    fn cycle_of_two() {
        let cands = [c("a", "1.0.0", &[("b", "*")]), c("b", "1.0.0", &[("a", "*")])];
        let e = plan_err(&cands, &none());
        assert_eq!(e.status(), KEEL_ERR_DEPENDENCY_CYCLE);
        assert_eq!(e.message(), "dependency cycle: a -> b -> a");
    }

    #[test]
    fn cycle_of_three() {
        let cands = [
            c("c", "1.0.0", &[("a", "*")]),
            c("b", "1.0.0", &[("c", "*")]),
            c("a", "1.0.0", &[("b", "*")]),
        ];
        let e = plan_err(&cands, &none());
        assert_eq!(e.status(), KEEL_ERR_DEPENDENCY_CYCLE);
        assert_eq!(e.message(), "dependency cycle: a -> b -> c -> a");
    }

    #[test]
    fn cycle_of_four_with_bystanders() {
        // w -> x -> y -> z -> w, plus "app" depending on the cycle and a free "util".
        let cands = [
            c("app", "1.0.0", &[("x", "*"), ("util", "*")]),
            c("util", "1.0.0", &[]),
            c("w", "1.0.0", &[("x", "^1")]),
            c("x", "1.0.0", &[("y", "^1"), ("util", "*")]),
            c("y", "1.0.0", &[("z", "^1")]),
            c("z", "1.0.0", &[("w", "^1")]),
        ];
        let e = plan_err(&cands, &none());
        assert_eq!(e.status(), KEEL_ERR_DEPENDENCY_CYCLE);
        assert_eq!(e.message(), "dependency cycle: w -> x -> y -> z -> w");
    }

    #[test]
    fn shortest_cycle_through_smallest_name_is_reported() {
        // One strongly connected group with a long and a short way back to "a".
        let cands = [
            c("a", "1.0.0", &[("b", "*"), ("d", "*")]),
            c("b", "1.0.0", &[("c", "*")]),
            c("c", "1.0.0", &[("a", "*")]),
            c("d", "1.0.0", &[("a", "*")]),
        ];
        assert_eq!(plan_err(&cands, &none()).message(), "dependency cycle: a -> d -> a");
    }

    #[test]
    fn several_cycles_are_all_named() {
        let cands = [
            c("a", "1.0.0", &[("b", "*")]),
            c("b", "1.0.0", &[("a", "*")]),
            c("m", "1.0.0", &[("m", "*")]),
            c("x", "1.0.0", &[("y", "*")]),
            c("y", "1.0.0", &[("x", "*")]),
        ];
        let e = plan_err(&cands, &none());
        assert_eq!(e.status(), KEEL_ERR_DEPENDENCY_CYCLE);
        assert_eq!(e.message(), "dependency cycles: a -> b -> a; m -> m; x -> y -> x");
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let cands = [c("solo", "1.0.0", &[("solo", "^1")])];
        let e = plan_err(&cands, &none());
        assert_eq!(e.status(), KEEL_ERR_DEPENDENCY_CYCLE);
        assert_eq!(e.message(), "dependency cycle: solo -> solo");
    }

    #[test]
    fn version_conflict_names_plugin_range_and_found_version() {
        let cands = [c("app", "1.0.0", &[("base", ">=2.0, <3")]), c("base", "1.4.2", &[])];
        let e = plan_err(&cands, &none());
        assert_eq!(e.status(), KEEL_ERR_DEPENDENCY_VERSION);
        assert!(e.message().contains("'app'"), "{e}");
        assert!(e.message().contains(">=2.0, <3"), "{e}");
        assert!(e.message().contains("1.4.2"), "{e}");
    }

    #[test]
    fn version_conflict_with_loaded_plugin() {
        let loaded = BTreeMap::from([("base".to_string(), v("3.0.0"))]);
        let cands = [c("app", "1.0.0", &[("base", "^2")])];
        let e = plan_err(&cands, &loaded);
        assert_eq!(e.status(), KEEL_ERR_DEPENDENCY_VERSION);
        assert!(e.message().contains("loaded 'base' is version 3.0.0"), "{e}");
        assert!(e.message().contains("^2"), "{e}");
    }

    #[test]
    fn missing_dependency_names_plugin_dependency_and_range() {
        let cands = [c("app", "1.0.0", &[("ghost", "^1.2")])];
        let e = plan_err(&cands, &none());
        assert_eq!(e.status(), KEEL_ERR_DEPENDENCY_MISSING);
        assert!(e.message().contains("'app'"), "{e}");
        assert!(e.message().contains("'ghost'"), "{e}");
        assert!(e.message().contains("^1.2"), "{e}");
    }

    #[test]
    fn satisfied_by_loaded_plugin() {
        let loaded = BTreeMap::from([("base".to_string(), v("2.5.0"))]);
        let cands = [
            c("app", "1.0.0", &[("base", "^2.1"), ("lib", "~1.0")]),
            c("lib", "1.0.7", &[("base", "2")]),
        ];
        assert_eq!(names(&cands, &plan(&cands, &loaded).unwrap()), ["lib", "app"]);
    }

    #[test]
    fn bad_requirement_is_bad_version() {
        let cands = [c("app", "1.0.0", &[("base", "about two")]), c("base", "2.0.0", &[])];
        let e = plan_err(&cands, &none());
        assert_eq!(e.status(), KEEL_ERR_BAD_VERSION);
        assert!(
            e.message().contains("about two") && e.message().contains("'app'"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_names_and_already_loaded() {
        let cands = [c("a", "1.0.0", &[]), c("a", "1.1.0", &[])];
        assert_eq!(plan_err(&cands, &none()).status(), KEEL_ERR_ALREADY_LOADED);
        let loaded = BTreeMap::from([("a".to_string(), v("0.1.0"))]);
        let e = plan_err(&[c("a", "1.0.0", &[])], &loaded);
        assert_eq!(e.status(), KEEL_ERR_ALREADY_LOADED);
        assert!(e.message().contains("already loaded"), "{e}");
    }

    #[test]
    fn star_matches_prereleases_other_ranges_follow_cargo() {
        let cands = [c("app", "1.0.0", &[("base", "*")]), c("base", "2.0.0-rc.1", &[])];
        assert_eq!(names(&cands, &plan(&cands, &none()).unwrap()), ["base", "app"]);
        let cands = [c("app", "1.0.0", &[("base", ">=1.0.0")]), c("base", "2.0.0-rc.1", &[])];
        assert_eq!(plan_err(&cands, &none()).status(), KEEL_ERR_DEPENDENCY_VERSION);
        let cands = [
            c("app", "1.0.0", &[("base", ">=2.0.0-rc.0")]),
            c("base", "2.0.0-rc.1", &[]),
        ];
        assert!(plan(&cands, &none()).is_ok());
    }

    #[test]
    fn first_error_by_name_order() {
        // "b" has a missing dependency, "a" a version conflict: "a" is reported.
        let cands = [
            c("b", "1.0.0", &[("nope", "*")]),
            c("a", "1.0.0", &[("c", "^2")]),
            c("c", "1.0.0", &[]),
        ];
        assert_eq!(plan_err(&cands, &none()).status(), KEEL_ERR_DEPENDENCY_VERSION);
    }

    #[test]
    fn dependents_and_unload_refusal() {
        let g = graph(&[
            ("base", "1.0.0", &[]),
            ("left", "1.0.0", &[("base", "^1")]),
            ("right", "1.0.0", &[("base", "^1")]),
            ("top", "1.0.0", &[("left", "*"), ("right", "*")]),
        ]);
        assert_eq!(dependents_of("base", &g), ["left", "right"]);
        assert!(dependents_of("top", &g).is_empty());
        let e = check_unload("base", &g).unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_HAS_DEPENDENTS);
        assert!(e.message().contains("left, right"), "{e}");
        assert!(check_unload("top", &g).is_ok());
    }

    #[test]
    fn cascade_unloads_dependents_first() {
        let g = graph(&[
            ("base", "1.0.0", &[]),
            ("left", "1.0.0", &[("base", "^1")]),
            ("right", "1.0.0", &[("base", "^1")]),
            ("top", "1.0.0", &[("left", "*"), ("right", "*")]),
            ("other", "1.0.0", &[]),
        ]);
        assert_eq!(cascade_unload_order("base", &g), ["top", "left", "right", "base"]);
        assert_eq!(cascade_unload_order("left", &g), ["top", "left"]);
        assert_eq!(cascade_unload_order("other", &g), ["other"]);
        assert_eq!(unload_all_order(&g), ["other", "top", "left", "right", "base"]);
    }

    #[test]
    fn replacement_checks() {
        let g = graph(&[
            ("base", "1.5.0", &[]),
            ("app", "1.0.0", &[("base", "^1.2")]),
            ("tool", "1.0.0", &[("app", "*")]),
        ]);
        // Compatible upgrade.
        assert!(check_replacement(&c("base", "1.9.0", &[]), &g).is_ok());
        // Breaks a dependent's range.
        let e = check_replacement(&c("base", "2.0.0", &[]), &g).unwrap_err();
        assert_eq!(e.status(), KEEL_ERR_DEPENDENCY_VERSION);
        assert!(e.message().contains("'app'") && e.message().contains("^1.2"), "{e}");
        // New dependency on something that depends on it.
        let e = check_replacement(&c("base", "1.6.0", &[("tool", "*")]), &g).unwrap_err();
        assert_eq!(e.status(), KEEL_ERR_DEPENDENCY_CYCLE);
        assert_eq!(e.message(), "dependency cycle: base -> tool -> app -> base");
        // Missing and self.
        assert_eq!(
            check_replacement(&c("base", "1.6.0", &[("ghost", "*")]), &g)
                .unwrap_err()
                .status(),
            KEEL_ERR_DEPENDENCY_MISSING
        );
        assert_eq!(
            check_replacement(&c("base", "1.6.0", &[("base", "*")]), &g)
                .unwrap_err()
                .status(),
            KEEL_ERR_DEPENDENCY_CYCLE
        );
    }
}
