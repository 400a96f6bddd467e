//! Dependency planning and manifest parsing.
//!
//! * `deps::plan` for 100 and 10 000 plugins (random DAG, ~3 dependencies each, semver
//!   requirements checked), against a same-run baseline: `petgraph::algo::toposort` of the
//!   same graph already built from integer indices (no names, no versions).
//!   Targets: 100 plugins ≤ 1 ms, 10 000 plugins ≤ 50 ms.
//! * `manifest::parse` (JSON + schema validation + typed view) of a Keel manifest and of a
//!   ThemisDB `plugin.json` (its rules, conversion, then Keel's rules), against a same-run
//!   baseline: `serde_json::from_slice` of the same bytes into a `Value`.
//!   Target: ≤ 100 µs per manifest.
//!
//! The last lines (`ABS`, `RATIO`) are absolute medians and per-round ratios from interleaved
//! rounds in this run (benches/common).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use keel::deps::{self, Candidate};
use petgraph::graph::{DiGraph, NodeIndex};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use semver::Version;

const REQS: [&str; 4] = ["*", "^1", ">=1.0.0", ">=1.0.0, <2"];

/// `n` plugins; each depends on up to 3 distinct plugins placed earlier in a random
/// permutation (so the graph is acyclic), listed in shuffled order. Deterministic per seed.
fn random_dag(n: usize, seed: u64) -> (Vec<Candidate>, Vec<(u32, u32)>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut rng);
    let names: Vec<String> = (0..n).map(|i| format!("plugin-{i:05}")).collect();
    let mut cands: Vec<Candidate> = (0..n)
        .map(|i| Candidate::new(names[i].clone(), Version::new(1, (i % 10) as u64, 0), BTreeMap::new()))
        .collect();
    let mut edges = Vec::new();
    for pos in 1..n {
        let me = perm[pos];
        for _ in 0..3.min(pos) {
            let dep = perm[rng.gen_range(0..pos)];
            let req = REQS[rng.gen_range(0..REQS.len())];
            if cands[me]
                .dependencies
                .insert(names[dep].clone(), req.to_string())
                .is_none()
            {
                edges.push((me as u32, dep as u32));
            }
        }
    }
    cands.shuffle(&mut rng);
    // Re-map edges to the shuffled positions for the baseline graph.
    let pos_of: std::collections::HashMap<&str, u32> = cands
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i as u32))
        .collect();
    let edges = edges
        .into_iter()
        .map(|(a, b)| (pos_of[names[a as usize].as_str()], pos_of[names[b as usize].as_str()]))
        .collect();
    (cands, edges)
}

fn index_graph(n: usize, edges: &[(u32, u32)]) -> DiGraph<(), (), u32> {
    let mut g = DiGraph::with_capacity(n, edges.len());
    for _ in 0..n {
        g.add_node(());
    }
    for &(a, b) in edges {
        g.add_edge(NodeIndex::new(a as usize), NodeIndex::new(b as usize), ());
    }
    g
}

fn keel_manifest() -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "manifest_version": 1,
        "name": "vector_search",
        "version": "2.3.1",
        "description": "HNSW vector search over the storage engine's embeddings",
        "type": "compute_backend",
        "runtime": "native",
        "binary": {"linux-x86_64": "libvector_search.so", "linux-aarch64": "libvector_search_arm.so"},
        "sha256": {"linux-x86_64": "ab".repeat(32), "linux-aarch64": "cd".repeat(32)},
        "capabilities": ["log", "clock", "kv:read", "kv:write", "storage:read", "metrics:write"],
        "dependencies": {"embedding_core": "^1.4", "storage_bridge": ">=2.0, <3"},
        "config": {"ef_construction": 200, "m": 16, "metric": "cosine"},
        "limits": {"max_output_bytes": 1048576},
        "auto_load": true,
        "load_priority": 20
    }))
    .unwrap()
}

fn themis_manifest() -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "name": "postgres_importer",
        "version": "1.4.2",
        "type": "importer",
        "description": "Imports pg_dump plain-text and custom-format archives",
        "author": "Example Org",
        "license": "Apache-2.0",
        "binary": {"linux": "libpg.so", "windows": "pg.dll", "macos": "libpg.dylib"},
        "dependencies": ["nlohmann/json", "schema_mapper"],
        "capabilities": {"streaming": true, "batching": true, "transactions": false, "thread_safe": false, "gpu_accelerated": false},
        "config_schema": {"type": "object", "properties": {"batch_size": {"type": "integer", "default": 500}}},
        "supported_formats": ["pg_dump", "postgres"],
        "auto_load": true,
        "load_priority": 40,
        "expected_hash": "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
        "visibility": "public",
        "min_themisdb_version": "1.3.0"
    }))
    .unwrap()
}

/// Best per-iteration time of `f` over `rounds` rounds of `iters` iterations.
fn best(rounds: usize, iters: u32, mut f: impl FnMut()) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        best = best.min(t.elapsed() / iters);
    }
    best
}

fn bench(c: &mut Criterion) {
    let none = BTreeMap::new();
    // (size, candidates, the same graph for petgraph's toposort, edge count)
    type Set = (usize, Vec<Candidate>, DiGraph<(), (), u32>, usize);
    let sets: Vec<Set> = [100usize, 10_000]
        .into_iter()
        .map(|n| {
            let (cands, edges) = random_dag(n, 0x6b65_656c ^ n as u64);
            let g = index_graph(n, &edges);
            (n, cands, g, edges.len())
        })
        .collect();
    for (_, cands, _, _) in &sets {
        assert_eq!(deps::plan(cands, &none).unwrap().len(), cands.len());
    }

    let mut g = c.benchmark_group("deps");
    for (n, cands, graph, _) in &sets {
        g.bench_with_input(BenchmarkId::new("plan", n), cands, |b, cands| {
            b.iter(|| std::hint::black_box(deps::plan(cands, &none).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("baseline_petgraph_toposort", n), graph, |b, graph| {
            b.iter(|| std::hint::black_box(petgraph::algo::toposort(graph, None).unwrap()))
        });
    }
    g.finish();

    let keel_bytes = keel_manifest();
    let themis_bytes = themis_manifest();
    assert_eq!(
        keel::manifest::parse(&keel_bytes).unwrap().0,
        keel::manifest::ManifestFormat::Keel
    );
    assert_eq!(
        keel::manifest::parse(&themis_bytes).unwrap().0,
        keel::manifest::ManifestFormat::ThemisDb
    );
    let mut g = c.benchmark_group("manifest");
    for (label, bytes) in [("keel", &keel_bytes), ("themisdb", &themis_bytes)] {
        g.bench_with_input(BenchmarkId::new("parse_validate", label), bytes, |b, bytes| {
            b.iter(|| std::hint::black_box(keel::manifest::parse(bytes).unwrap()))
        });
        g.bench_with_input(
            BenchmarkId::new("baseline_serde_json_value", label),
            bytes,
            |b, bytes| b.iter(|| std::hint::black_box(serde_json::from_slice::<serde_json::Value>(bytes).unwrap())),
        );
    }
    g.finish();

    // The figures the issue names: interleaved rounds (benches/common), per-round ratios.
    println!("\n{}", common::conditions());
    for (n, cands, graph, edges) in &sets {
        let iters = if *n > 1000 { 5 } else { 500 };
        let us = |f: &mut dyn FnMut()| best(1, iters, f).as_secs_f64() * 1e6;
        let r = common::interleave(
            common::rounds(),
            &mut [
                ("plan", &mut || {
                    us(&mut || {
                        std::hint::black_box(deps::plan(cands, &none).unwrap());
                    })
                }),
                ("toposort", &mut || {
                    us(&mut || {
                        std::hint::black_box(petgraph::algo::toposort(graph, None).unwrap());
                    })
                }),
            ],
        );
        let target = if *n > 1000 { 50_000.0 } else { 1_000.0 };
        r.absolute("plan", &format!("us, n={n} edges={edges} (goal <= {target:.0} us)"));
        r.ratio(
            &format!("load order n={n}: keel deps::plan / petgraph toposort of the prebuilt graph"),
            "plan",
            "toposort",
            "us",
        );
    }
    for (label, bytes) in [("keel", &keel_bytes), ("themisdb", &themis_bytes)] {
        let us = |f: &mut dyn FnMut()| best(1, 2000, f).as_secs_f64() * 1e6;
        let r = common::interleave(
            common::rounds(),
            &mut [
                ("parse", &mut || {
                    us(&mut || {
                        std::hint::black_box(keel::manifest::parse(bytes).unwrap());
                    })
                }),
                ("json", &mut || {
                    us(&mut || {
                        std::hint::black_box(serde_json::from_slice::<serde_json::Value>(bytes).unwrap());
                    })
                }),
            ],
        );
        r.absolute(
            "parse",
            &format!("us, {label} manifest of {} bytes (goal <= 100 us)", bytes.len()),
        );
        r.ratio(
            &format!("manifest {label}: parse + validate / serde_json::from_slice to Value"),
            "parse",
            "json",
            "us",
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(20);
    targets = bench
}
criterion_main!(benches);
