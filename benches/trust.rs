//! Trust costs, each against a baseline measured in the same run:
//!
//! 1. Ed25519: verifying one plugin's manifest signature (`TrustState::verify_signature_at`:
//!    parse the `.sig`, look up the key, check validity and name, `verify_strict`), against a
//!    SHA-256 of the same manifest bytes. Target: ≤ 100 µs per plugin.
//! 2. SHA-256 throughput of `keel::trust::digest::sha256_file` over a 64 MB file, against
//!    `openssl dgst -sha256` on the same (page-cached) file, its process start-up (timed on an
//!    empty file in the same round) subtracted; interleaved rounds. Target: ≥ 0.9× openssl's
//!    throughput.
//!
//! 3. Native load of a 1 MiB plugin (`Host::load`: manifest, open beneath its directory, copy
//!    into a sealed memfd, SHA-256 of the sealed bytes, ELF checks, `dlopen`, init), against
//!    the machine's floor for the same bytes: `std::fs::read` + SHA-256 in-process. Rounds
//!    interleave load, baseline and the artifact step alone (`artifact::read_sealed`);
//!    reported: min and median of the per-round ratios load / baseline, and medians.
//!    Target: load ≤ 1.2 ms median.
//!
//! Also prints whether the CPU has SHA-NI and whether sha2's run-time detection will use it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use rand::RngCore as _;

use keel::trust::{digest, store, KeelSignature, TrustState};

const FILE_BYTES: usize = 64 << 20;

/// A realistic manifest (~0.5 KB) and a TrustState holding its signer.
fn setup_signature() -> (Vec<u8>, Vec<u8>, TrustState) {
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "manifest_version": 1,
        "name": "acme-vector-search",
        "version": "2.4.1",
        "description": "Approximate nearest-neighbour search over embedding columns",
        "runtime": "native",
        "binary": {"linux-x86_64": "libacme_vs.so", "linux-aarch64": "libacme_vs_arm.so"},
        "sha256": {"linux-x86_64": "ab".repeat(32), "linux-aarch64": "cd".repeat(32)},
        "capabilities": ["log", "kv:read", "metrics:write"],
        "dependencies": {"acme-core": "^2.0"},
        "config": {"index": "hnsw", "m": 16, "ef_construction": 200}
    }))
    .unwrap();
    let key = SigningKey::from_bytes(&[42u8; 32]);
    let sig = KeelSignature::sign(&key, &manifest, "acme release 2.4.1")
        .unwrap()
        .to_file_text()
        .into_bytes();
    let entry = store::key_entry(&key.verifying_key(), "acme release key", &["acme-*".to_string()]).unwrap();
    let doc = serde_json::json!({"keel_trust_store": 1, "version": 1, "keys": [entry]});
    let ts = TrustState::new();
    ts.set_trust_store_bytes(&serde_json::to_vec(&doc).unwrap()).unwrap();
    (manifest, sig, ts)
}

fn verify_once(ts: &TrustState, sig: &[u8], manifest: &[u8], now: SystemTime) {
    let r = ts.verify_signature_at(Some(sig), manifest, "acme-vector-search", now);
    assert!(r.is_ok());
    std::hint::black_box(r.ok());
}

fn big_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("keel-bench-64mb.bin");
    let mut data = vec![0u8; FILE_BYTES];
    rand::thread_rng().fill_bytes(&mut data);
    std::fs::write(&path, &data).unwrap();
    path
}

/// `openssl dgst -sha256 -r` of a file (OpenSSL uses SHA-NI where the CPU has it): the hex
/// digest. A subprocess: its start-up is measured separately on an empty file and subtracted.
fn openssl_sha256(path: &Path) -> String {
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .arg(path)
        .output()
        .expect("run openssl");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn sha_ni_report() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let in_cpuinfo = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "sha_ni"));
    #[cfg(target_arch = "x86_64")]
    let used = std::arch::is_x86_feature_detected!("sha")
        && std::arch::is_x86_feature_detected!("sse2")
        && std::arch::is_x86_feature_detected!("ssse3")
        && std::arch::is_x86_feature_detected!("sse4.1");
    #[cfg(not(target_arch = "x86_64"))]
    let used = false;
    format!("cpuinfo_sha_ni={in_cpuinfo} sha2_uses_sha_ni={used}")
}

fn bench(c: &mut Criterion) {
    // ---- 1. Ed25519 per plugin vs SHA-256 of the manifest
    let (manifest, sig, ts) = setup_signature();
    let now = SystemTime::now();
    let mut g = c.benchmark_group("signature");
    g.bench_function("sha256_of_manifest_baseline", |b| {
        b.iter(|| std::hint::black_box(digest::sha256(&manifest)))
    });
    g.bench_function("verify_plugin_signature", |b| {
        b.iter(|| verify_once(&ts, &sig, &manifest, now))
    });
    g.finish();

    // ---- 2. SHA-256 of a 64 MB file: sha256_file vs openssl dgst -sha256
    let dir = tempfile::tempdir().unwrap();
    let file = big_file(dir.path());
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let expected = hex::encode(digest::sha256_file(&file).unwrap());
    assert_eq!(openssl_sha256(&file), expected, "openssl and keel disagree");
    let mut g = c.benchmark_group("sha256_64mb");
    g.throughput(Throughput::Bytes(FILE_BYTES as u64)).sample_size(10);
    g.bench_function("keel_sha256_file", |b| {
        b.iter(|| std::hint::black_box(digest::sha256_file(&file).unwrap()))
    });
    g.bench_function("openssl_dgst_baseline", |b| {
        b.iter(|| std::hint::black_box(openssl_sha256(&file)))
    });
    g.finish();

    // ---- The figures the issue names, from one interleaved measurement in this run.
    const N: u32 = 2_000;
    let r = common::interleave(
        common::rounds(),
        &mut [
            ("verify_signature", &mut || {
                let t = Instant::now();
                for _ in 0..N {
                    verify_once(&ts, &sig, &manifest, now);
                }
                t.elapsed().as_secs_f64() * 1e6 / N as f64
            }),
            ("sha256_manifest", &mut || {
                let t = Instant::now();
                for _ in 0..N {
                    std::hint::black_box(digest::sha256(&manifest));
                }
                t.elapsed().as_secs_f64() * 1e6 / N as f64
            }),
        ],
    );
    r.ratio(
        "verify one manifest signature / sha256 of the manifest",
        "verify_signature",
        "sha256_manifest",
        "us",
    );
    let (v_best, h_best) = (
        common::median(r.of("verify_signature")),
        common::median(r.of("sha256_manifest")),
    );
    let ms = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64() * 1e3
    };
    let r = common::interleave(
        common::rounds(),
        &mut [
            ("keel_sha256_file", &mut || {
                ms(&mut || {
                    std::hint::black_box(digest::sha256_file(&file).unwrap());
                })
            }),
            ("openssl_64mb", &mut || {
                ms(&mut || {
                    std::hint::black_box(openssl_sha256(&file));
                })
            }),
            ("openssl_empty", &mut || {
                ms(&mut || {
                    std::hint::black_box(openssl_sha256(&empty));
                })
            }),
        ],
    );
    // openssl's hashing time per round: the 64 MB run minus the process start-up (the
    // empty-file run of the same round). Ratio = keel's throughput / openssl's.
    let net: Vec<f64> = r
        .of("openssl_64mb")
        .iter()
        .zip(r.of("openssl_empty"))
        .map(|(a, b)| a - b)
        .collect();
    let per_round: Vec<f64> = net.iter().zip(r.of("keel_sha256_file")).map(|(o, k)| o / k).collect();
    common::report_ratio(
        "sha256 64 MB throughput keel sha256_file / openssl dgst -sha256 (start-up subtracted) (goal >= 0.9)",
        &per_round,
        &[
            ("keel_sha256_file", common::median(r.of("keel_sha256_file")), "ms"),
            ("openssl net", common::median(&net), "ms"),
            ("openssl start-up", common::median(r.of("openssl_empty")), "ms"),
        ],
    );
    let (ours, theirs) = (
        common::median(r.of("keel_sha256_file")) / 1e3,
        common::median(&net) / 1e3,
    );
    let mb = FILE_BYTES as f64 / 1e6;
    println!(
        "\nKEEL-TRUST-FIGURES verify_per_plugin={:.1}us (median; target <= 100) sha256_manifest={:.2}us ({} bytes) \
         verify/sha256_manifest={:.0}x",
        v_best,
        h_best,
        manifest.len(),
        v_best / h_best
    );
    println!(
        "KEEL-TRUST-FIGURES sha256_file={:.0}MB/s openssl_dgst={:.0}MB/s ratio={:.2}x (medians; target >= 0.9) {}",
        mb / ours,
        mb / theirs,
        theirs / ours,
        sha_ni_report()
    );
    native_load_1mb();
}

/// The echo fixture padded to exactly 1 MiB with bytes past its last segment (still a valid,
/// loadable ELF image: the checks only require every segment inside the file) and a manifest
/// pinning it. Returns (library, manifest).
fn padded_fixture() -> (std::path::PathBuf, std::path::PathBuf) {
    let (so, _) = common::echo_fixture("bench-load-1mb");
    let mut bytes = std::fs::read(&so).unwrap();
    assert!(bytes.len() < 1 << 20);
    let mut pad = vec![0u8; (1 << 20) - bytes.len()];
    rand::thread_rng().fill_bytes(&mut pad);
    bytes.extend_from_slice(&pad);
    let big = so.with_file_name("libecho1m.so");
    std::fs::write(&big, &bytes).unwrap();
    let manifest = so.with_file_name("echo1m.json");
    std::fs::write(
        &manifest,
        serde_json::json!({
            "manifest_version": 1, "name": "echo1m", "version": "1.0.0", "runtime": "native",
            "binary": {"linux": "libecho1m.so"}, "sha256": digest::sha256_hex(&bytes)
        })
        .to_string(),
    )
    .unwrap();
    (big, manifest)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Figure 3: load of a 1 MiB native plugin against read + SHA-256 of the same file.
fn native_load_1mb() {
    let (so, manifest) = padded_fixture();
    let host = keel::Host::new();
    host.trust().set_require_signature(false).unwrap();
    let floor = || {
        let b = std::fs::read(&so).unwrap();
        std::hint::black_box(digest::sha256(&b));
    };
    let load = || {
        let t = Instant::now();
        let slot = host.load(&manifest).unwrap();
        let e = t.elapsed().as_secs_f64();
        drop(slot);
        host.unload("echo1m").unwrap();
        e
    };
    let seal = || {
        let t = Instant::now();
        std::hint::black_box(keel::artifact::read_sealed(&so, "bench").unwrap());
        t.elapsed().as_secs_f64()
    };
    for _ in 0..10 {
        load();
        floor();
        seal();
    }
    const ROUNDS: usize = 300;
    let (mut ratios, mut loads, mut floors, mut seals) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let l = load();
        let t = Instant::now();
        floor();
        let f = t.elapsed().as_secs_f64();
        seals.push(seal());
        ratios.push(l / f);
        loads.push(l);
        floors.push(f);
    }
    let min_ratio = ratios.iter().cloned().fold(f64::MAX, f64::min);
    println!(
        "KEEL-TRUST-FIGURES native_load_1MiB median={:.3}ms min={:.3}ms (target <= 1.2ms median) \
         read+sha256_floor median={:.3}ms sealed_copy+hash median={:.3}ms \
         load/floor ratio min={:.2} median={:.2} ({ROUNDS} interleaved rounds)",
        median(&mut loads.clone()) * 1e3,
        loads.iter().cloned().fold(f64::MAX, f64::min) * 1e3,
        median(&mut floors) * 1e3,
        median(&mut seals) * 1e3,
        min_ratio,
        median(&mut ratios),
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
