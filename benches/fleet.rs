//! Fleet distribution costs, against a local load of the same plugin folder measured in the
//! same rounds (interleaved):
//!
//! 1. Pull + verify + load of a 1 MiB signed native plugin from a loopback OCI registry
//!    (Debian's `docker-registry`, started here on a free port) into an empty cache
//!    (`Host::load_oci` by digest: manifest request, blobs checked against their digests,
//!    written and synced, renamed into the cache, then the whole local load: signature,
//!    pin, sealed copy, ELF checks, `dlopen`, init), against `Host::load` of the local
//!    folder. Reported: min and median of the per-round ratios.
//! 2. A cache-hit load by digest (no network) against the local load. Target: ≤ 1.1×.
//!
//! Each variant loads into a fresh host (signatures required, the signer trusted) that is
//! dropped after the timed load; only the load is timed.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::SigningKey;
use rand::RngCore as _;

use keel::fleet::RegistryOptions;
use keel::trust::{digest, store, KeelSignature};
use keel::Host;

/// `docker-registry serve` on 127.0.0.1:<free port>, killed when dropped.
struct Registry {
    child: Child,
    port: u16,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let root = dir.join("storage");
        std::fs::create_dir_all(&root).unwrap();
        let cfg = dir.join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                root.display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/bin/docker-registry (apt-get install docker-registry)");
        let r = Registry { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut resp = String::new();
                let _ = s.read_to_string(&mut resp);
                if resp.contains(" 200 ") {
                    return r;
                }
            }
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The echo fixture padded to 1 MiB (bytes past its last segment: still a loadable ELF),
/// in a plugin folder `keel.json` + `.sig` signed by `key`.
fn signed_1mb_folder(dir: &Path, key: &SigningKey) -> PathBuf {
    let (so, _) = common::echo_fixture("bench-fleet-echo");
    let mut bytes = std::fs::read(&so).unwrap();
    let mut pad = vec![0u8; (1 << 20) - bytes.len()];
    rand::thread_rng().fill_bytes(&mut pad);
    bytes.extend_from_slice(&pad);
    let folder = dir.join("echo1m");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("libecho1m.so"), &bytes).unwrap();
    let manifest = folder.join("keel.json");
    std::fs::write(
        &manifest,
        serde_json::json!({
            "manifest_version": 1, "name": "echo1m", "version": "1.0.0", "runtime": "native",
            "binary": {"linux": "libecho1m.so"}, "sha256": digest::sha256_hex(&bytes)
        })
        .to_string(),
    )
    .unwrap();
    let sig = KeelSignature::sign(key, &std::fs::read(&manifest).unwrap(), "bench").unwrap();
    keel::trust::write_signature_file(&manifest, &sig).unwrap();
    folder
}

fn bench(_c: &mut Criterion) {
    println!("{}", common::conditions());
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start(dir.path());
    let key = SigningKey::from_bytes(&[77u8; 32]);
    let trust = serde_json::to_vec(&serde_json::json!({
        "keel_trust_store": 1, "version": 1,
        "keys": [store::key_entry(&key.verifying_key(), "bench", &[]).unwrap()]
    }))
    .unwrap();
    let folder = signed_1mb_folder(dir.path(), &key);
    let manifest = folder.join("keel.json");
    let opts = RegistryOptions::default();
    let pushed = keel::fleet::push_dir(&folder, &format!("127.0.0.1:{}/bench/echo1m:1", reg.port), &opts).unwrap();
    let digest_ref = format!("127.0.0.1:{}/bench/echo1m@{}", reg.port, pushed.digest);
    let warm = dir.path().join("warm-cache");
    let host = || {
        let h = Host::new();
        h.trust().set_trust_store_bytes(&trust).unwrap();
        h
    };
    host().load_oci(&digest_ref, &warm, &opts).unwrap();

    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let mut cold_n = 0u32;
    let r = common::interleave(
        common::rounds(),
        &mut [
            ("local_load", &mut || {
                let h = host();
                let t = Instant::now();
                h.load(&manifest).unwrap();
                ms(t)
            }),
            ("pull_verify_load", &mut || {
                cold_n += 1;
                let cache = dir.path().join(format!("cold-{cold_n}"));
                let h = host();
                let t = Instant::now();
                let l = h.load_oci(&digest_ref, &cache, &opts).unwrap();
                let v = ms(t);
                assert!(!l.pulled.cache_hit);
                drop(h);
                let _ = std::fs::remove_dir_all(&cache);
                v
            }),
            ("cache_hit_load", &mut || {
                let h = host();
                let t = Instant::now();
                let l = h.load_oci(&digest_ref, &warm, &opts).unwrap();
                let v = ms(t);
                assert!(l.pulled.cache_hit);
                v
            }),
        ],
    );
    let (_, pull) = r.ratio(
        "pull + verify + load 1 MiB from a loopback registry / local load",
        "pull_verify_load",
        "local_load",
        "ms",
    );
    let (_, hit) = r.ratio(
        "cache-hit load by digest / local load (target <= 1.1)",
        "cache_hit_load",
        "local_load",
        "ms",
    );
    println!(
        "\nKEEL-FLEET-FIGURES local_load={:.3}ms pull_verify_load={:.3}ms cache_hit_load={:.3}ms (medians) \
         pull/local={pull:.2}x cache_hit/local={hit:.3}x (median of per-round ratios; target <= 1.1)",
        common::median(r.of("local_load")),
        common::median(r.of("pull_verify_load")),
        common::median(r.of("cache_hit_load")),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
