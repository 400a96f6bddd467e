//! Fleet distribution against a real OCI registry: Debian's `docker-registry` (Distribution
//! 2.8), started by each test on a free loopback port with its own storage directory and
//! killed when the test ends. Plugins are the echo fixture built by the test, signed with a
//! real Ed25519 key and pushed with `keel push`; hosts load them through the Rust API and the
//! C ABI and call them.

#[path = "common/mod.rs"]
mod common;

use std::ffi::CString;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::ptr;
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::SigningKey;
use serde_json::{json, Value};

use keel::ffi::fleet::{
    keel_host_load_oci, keel_host_load_oci_with, keel_host_prune_oci_cache, keel_oci_pull_with, keel_registry_options,
    keel_registry_options_free, keel_registry_options_new, keel_registry_options_set_basic,
    keel_registry_options_set_bearer, keel_registry_options_set_insecure, keel_registry_options_set_timeout_ms,
};
use keel::ffi::host::{keel_host_new, keel_plugin, keel_plugin_free};
use keel::fleet::{Credentials, RegistryOptions};
use keel::keel_status::{self, *};
use keel::trust::{self, store, KeelSignature};
use keel::Host;

use common::capi::{call, cstr, function, last_error, Buf, TestHost};

// ---------------------------------------------------------------------------------------------
// The registry fixture

/// The `docker-registry` binary of the Debian package (`.ci/run` installs it).
fn registry_binary() -> PathBuf {
    let listed = Command::new("dpkg").args(["-L", "docker-registry"]).output();
    if let Ok(o) = listed {
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if l.ends_with("/bin/docker-registry") && Path::new(l).is_file() {
                return PathBuf::from(l);
            }
        }
    }
    let p = PathBuf::from("/usr/bin/docker-registry");
    assert!(
        p.is_file(),
        "the docker-registry Debian package is required (apt-get install docker-registry; .ci/run installs it)"
    );
    p
}

/// A running registry: `docker-registry serve` on 127.0.0.1:<port>, storage in `root`.
struct Registry {
    child: Option<Child>,
    host: String,
    port: u16,
    root: PathBuf,
    dir: PathBuf,
}

/// How a test registry authenticates.
enum Auth {
    /// Basic authentication against an htpasswd file (user `fleet`, password `s3cret`).
    Htpasswd,
    /// Bearer tokens (JWT) issued by the token server at `realm`, signed by the key of the
    /// certificate `cert` (Distribution's `auth: token`).
    Token { realm: String, cert: PathBuf },
}

/// bcrypt("s3cret"), for the htpasswd registry.
const HTPASSWD: &str = "fleet:$2b$12$dj/RoX2ya40zMoThJIBSR.sixIjO8WNEjzW.DsESYCtluJKLurt2.\n";

impl Registry {
    fn start(tag: &str) -> Registry {
        Registry::start_with(tag, false)
    }

    /// A registry that requires basic authentication (user `fleet`, password `s3cret`).
    fn start_with(tag: &str, htpasswd: bool) -> Registry {
        let auth = htpasswd.then_some(Auth::Htpasswd);
        Registry::start_cfg(tag, auth, "127.0.0.1", None)
    }

    /// A registry with `auth` (none if `None`) listening on `bind`:<free port>.
    /// With `tls` = (certificate, key) PEM files the registry speaks HTTPS only.
    fn start_cfg(tag: &str, auth: Option<Auth>, bind: &str, tls: Option<(&Path, &Path)>) -> Registry {
        let dir = common::tempdir(tag);
        let root = dir.join("storage");
        std::fs::create_dir_all(&root).unwrap();
        for _attempt in 0..5 {
            // A free port: bind, read it, release it (retried if the registry loses the race).
            let port = TcpListener::bind((bind, 0)).unwrap().local_addr().unwrap().port();
            let mut config = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {bind}:{port}\n",
                root.display()
            );
            if let Some((cert, key)) = tls {
                config.push_str(&format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                ));
            }
            match &auth {
                None => {}
                Some(Auth::Htpasswd) => {
                    let pw = dir.join("htpasswd");
                    std::fs::write(&pw, HTPASSWD).unwrap();
                    config.push_str(&format!(
                        "auth:\n  htpasswd:\n    realm: keel-test\n    path: {}\n",
                        pw.display()
                    ));
                }
                Some(Auth::Token { realm, cert }) => config.push_str(&format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    cert.display()
                )),
            }
            let cfg = dir.join("config.yml");
            std::fs::write(&cfg, config).unwrap();
            let child = Command::new(registry_binary())
                .arg("serve")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
                .spawn()
                .expect("start docker-registry");
            let mut r = Registry {
                child: Some(child),
                host: bind.to_string(),
                port,
                root: root.clone(),
                dir: dir.clone(),
            };
            if r.wait_ready() {
                return r;
            }
            r.stop();
        }
        panic!(
            "docker-registry did not start; see {}",
            dir.join("registry.log").display()
        );
    }

    /// Wait until `GET /v2/` answers (200, or 401 with authentication on).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false; // exited (e.g. the port was taken meanwhile)
            }
            if let Ok(mut s) = TcpStream::connect((self.host.as_str(), self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n");
                let mut resp = String::new();
                let _ = s.read_to_string(&mut resp);
                // (a TLS registry answers plain HTTP with 400 "HTTP request to an HTTPS server")
                if resp.starts_with("HTTP/1.0 200")
                    || resp.starts_with("HTTP/1.1 200")
                    || resp.contains(" 401 ")
                    || resp.contains("HTTPS server")
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr())
    }

    /// Kill the registry and wait for it (idempotent).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The stored blob of `digest` (Distribution's filesystem layout).
    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.root
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// A token server (the Docker/OCI token flow): the registry answers 401 with
// `WWW-Authenticate: Bearer realm=...`, the client asks the realm for a token with its basic
// credentials, and presents the token. Tokens are JWTs (RS256) signed with a key made by
// `openssl` for the test, whose self-signed certificate is the registry's `rootcertbundle`
// and travels in the token's `x5c` header, as Distribution verifies them.

const TOKEN_SERVICE: &str = "keel-test-registry";
const TOKEN_ISSUER: &str = "keel-test-issuer";

struct TokenServer {
    dir: PathBuf,
    port: u16,
    /// Requests served, and how many of them carried the right credentials.
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TokenServer {
    fn start(tag: &str) -> TokenServer {
        let dir = common::tempdir(tag);
        let o = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=keel-test-token",
            ])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .output()
            .expect("openssl (Debian's openssl package) is needed for the token tests");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (d, n) = (dir.clone(), served.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                serve_token_request(conn, &d);
            }
        });
        TokenServer { dir, port, served }
    }

    fn auth(&self) -> Auth {
        Auth::Token {
            realm: format!("http://127.0.0.1:{}/token", self.port),
            cert: self.dir.join("cert.pem"),
        }
    }

    /// A token for `repository` with `actions`, valid from now for `valid_s` seconds (negative:
    /// already expired), issued by `issuer`.
    fn mint(&self, repository: &str, actions: &[&str], valid_s: i64, issuer: &str) -> String {
        mint_token(&self.dir, repository, actions, valid_s, issuer)
    }
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn mint_token(dir: &Path, repository: &str, actions: &[&str], valid_s: i64, issuer: &str) -> String {
    use base64::Engine as _;
    let pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let header = json!({"typ": "JWT", "alg": "RS256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&der)]});
    let claims = json!({"iss": issuer, "sub": "fleet", "aud": TOKEN_SERVICE,
        "exp": now + valid_s, "nbf": now - 10, "iat": now, "jti": format!("keel-{now}-{repository}"),
        "access": [{"type": "repository", "name": repository, "actions": actions}]});
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(dir.join("key.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(signing_input.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    format!("{signing_input}.{}", b64url(&o.stdout))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let v = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16);
                match v {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One token request: `GET /token?scope=repository:<name>:<actions>&service=...` with basic
/// credentials `fleet:s3cret` gets a token for what it asked; anything else a 401.
fn serve_token_request(mut conn: TcpStream, dir: &Path) {
    use base64::Engine as _;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let mut scope = String::new();
    let mut service = String::new();
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("scope", v)) => scope = percent_decode(v),
            Some(("service", v)) => service = percent_decode(v),
            _ => {}
        }
    }
    let expected = format!(
        "basic {}",
        base64::engine::general_purpose::STANDARD.encode("fleet:s3cret")
    );
    let authed = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .any(|(k, v)| k.eq_ignore_ascii_case("authorization") && v.trim().eq_ignore_ascii_case(&expected));
    let mut parts = scope.splitn(3, ':');
    let (kind, repo, actions) = (parts.next(), parts.next(), parts.next());
    let granted = match repo {
        Some(repo) if authed && service == TOKEN_SERVICE && kind == Some("repository") => Some(repo),
        _ => None,
    };
    let response = if let Some(repo) = granted {
        let actions: Vec<&str> = actions.unwrap_or("").split(',').filter(|a| !a.is_empty()).collect();
        let token = mint_token(dir, repo, &actions, 300, TOKEN_ISSUER);
        let body = json!({"token": token, "expires_in": 300}).to_string();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        let body = "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}";
        format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = conn.write_all(response.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Signed fixture plugins

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn trust_store(keys: &[&SigningKey]) -> Vec<u8> {
    let entries: Vec<Value> = keys
        .iter()
        .map(|k| store::key_entry(&k.verifying_key(), "fleet test", &[]).unwrap())
        .collect();
    serde_json::to_vec(&json!({"keel_trust_store": 1, "version": 1, "keys": entries})).unwrap()
}

/// The echo fixture in a plugin folder (`keel.json`, `libecho.so`), signed by `signer`
/// unless `None`.
fn echo_folder(tag: &str, signer: Option<&SigningKey>) -> PathBuf {
    echo_folder_version(tag, signer, "1.0.0")
}

/// [`echo_folder`] with the manifest's `version`.
fn echo_folder_version(tag: &str, signer: Option<&SigningKey>, version: &str) -> PathBuf {
    let dir = common::tempdir(tag);
    let so = common::build_native("echo", &[], &dir, "libecho.so");
    let m = common::write_manifest(&dir, "echo", version, &so, json!({}));
    let manifest = dir.join("keel.json");
    std::fs::rename(&m, &manifest).unwrap();
    if let Some(k) = signer {
        let sig = KeelSignature::sign(k, &std::fs::read(&manifest).unwrap(), "fleet").unwrap();
        trust::write_signature_file(&manifest, &sig).unwrap();
    }
    dir
}

/// A host that requires signatures (the default) and trusts `keys`.
fn host_trusting(keys: &[&SigningKey]) -> Host {
    let h = Host::new();
    h.trust().set_trust_store_bytes(&trust_store(keys)).unwrap();
    h
}

/// `keel trust publish`: `doc` written to `store_file`, signed with the root key in
/// `root_file`, pushed to `store_ref`; the digest on stdout.
fn publish_trust_store(store_file: &Path, store_ref: &str, root_file: &Path, doc: &[u8]) {
    std::fs::write(store_file, doc).unwrap();
    let (code, out, err) = keel_cli(&[
        "trust",
        "publish",
        store_file.to_str().unwrap(),
        store_ref,
        "--key",
        root_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.trim().starts_with("sha256:"), "{out}");
}

fn keel_cli(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_keel")).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `keel push DIR REF --json`: the digest it reports.
fn push(dir: &Path, reference: &str) -> String {
    let (code, out, err) = keel_cli(&["push", dir.to_str().unwrap(), reference, "--json"]);
    assert_eq!(code, 0, "keel push: {out}\n{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    let d = v["digest"].as_str().unwrap().to_string();
    assert!(d.starts_with("sha256:") && d.len() == 71, "{d}");
    d
}

fn echo_call(host: &Host, input: &[u8]) -> Vec<u8> {
    let slot = host.get("echo").unwrap();
    let f = slot.resolve("echo").unwrap();
    let mut out = Vec::new();
    slot.call(f, input, &mut out).unwrap();
    out
}

fn opts() -> RegistryOptions {
    RegistryOptions::default()
}

/// `keel_host_load_oci` through the C ABI: the status, the digest buffer's text and the
/// plugin handle (NULL on failure).
fn load_oci_c(
    host: &TestHost,
    reference: &str,
    cache: &Path,
    bearer: Option<&str>,
) -> (keel_status, String, *mut keel_plugin) {
    let r = cstr(reference);
    let c = cstr(cache.to_str().unwrap());
    let b = bearer.map(cstr);
    let digest = Buf::new();
    let mut p = ptr::null_mut();
    let s = keel_host_load_oci(
        host.0,
        r.as_ptr(),
        c.as_ptr(),
        b.as_ref().map_or(ptr::null(), |b| b.as_ptr()),
        &mut p,
        digest.0,
    );
    (s, digest.text(), p)
}

/// A C ABI host that requires signatures (the default) and trusts `keys`.
fn c_host_trusting(keys: &[&SigningKey]) -> TestHost {
    let mut raw = ptr::null_mut();
    assert_eq!(keel_host_new(&mut raw), KEEL_OK);
    let t = TestHost(raw);
    let trust = trust_store(keys);
    assert_eq!(
        keel::ffi::trust::keel_host_set_trust_store_bytes(t.0, trust.as_ptr(), trust.len()),
        KEEL_OK
    );
    t
}

/// Call the echo fixture's `echo` through the C ABI handle `p` and release the handle.
fn c_echo_and_free(p: *mut keel_plugin, input: &[u8]) -> Vec<u8> {
    let f = function(p, "echo").unwrap();
    let out = Buf::new();
    assert_eq!(call(p, f, input, &out), KEEL_OK, "{}", last_error());
    assert_eq!(keel_plugin_free(p), KEEL_OK);
    out.bytes()
}

/// Registry options made through the C ABI (freed on drop).
struct COptions(*mut keel_registry_options);

impl COptions {
    fn new() -> COptions {
        let mut o = ptr::null_mut();
        assert_eq!(keel_registry_options_new(&mut o), KEEL_OK);
        COptions(o)
    }
    fn basic(self, user: &str, password: &str) -> COptions {
        let (u, p) = (cstr(user), cstr(password));
        assert_eq!(keel_registry_options_set_basic(self.0, u.as_ptr(), p.as_ptr()), KEEL_OK);
        self
    }
    fn bearer(self, token: &str) -> COptions {
        let t = cstr(token);
        assert_eq!(keel_registry_options_set_bearer(self.0, t.as_ptr()), KEEL_OK);
        self
    }
    fn insecure(self, on: bool) -> COptions {
        assert_eq!(keel_registry_options_set_insecure(self.0, on), KEEL_OK);
        self
    }
}

impl Drop for COptions {
    fn drop(&mut self) {
        assert_eq!(keel_registry_options_free(self.0), KEEL_OK);
    }
}

/// `keel_host_load_oci_with`: status, digest text, plugin handle (NULL on failure).
fn load_oci_with(
    host: &TestHost,
    reference: &str,
    cache: &Path,
    options: Option<&COptions>,
) -> (keel_status, String, *mut keel_plugin) {
    let r = cstr(reference);
    let c = cstr(cache.to_str().unwrap());
    let digest = Buf::new();
    let mut p = ptr::null_mut();
    let s = keel_host_load_oci_with(
        host.0,
        r.as_ptr(),
        c.as_ptr(),
        options.map_or(ptr::null(), |o| o.0.cast_const()),
        &mut p,
        digest.0,
    );
    (s, digest.text(), p)
}

fn err_status<T>(r: keel::Result<T>) -> keel_status {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.status(),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn pushed_with_the_cli_loads_by_tag_and_by_digest_in_two_hosts_and_runs() {
    let reg = Registry::start("fleet-load");
    let k = key(1);
    let folder = echo_folder("fleet-load", Some(&k));
    let tag_ref = reg.reference("plugins/echo:1.0.0");
    let digest = push(&folder, &tag_ref);
    let digest_ref = reg.reference(&format!("plugins/echo@{digest}"));

    // Host A (Rust API) by tag: resolved once, the digest reported, blobs downloaded.
    let cache_a = common::tempdir("fleet-load-cache-a");
    let a = host_trusting(&[&k]);
    let loaded = a.load_oci(&tag_ref, &cache_a, &opts()).unwrap();
    assert_eq!(loaded.pulled.digest, digest);
    assert!(!loaded.pulled.cache_hit);
    assert!(loaded.pulled.dir.starts_with(&cache_a));
    assert_eq!(
        loaded.pulled.dir,
        cache_a.join("sha256").join(digest.strip_prefix("sha256:").unwrap())
    );
    assert_eq!(echo_call(&a, b"from A"), b"from A");

    // Host B (C ABI) by digest, its own cache: the digest buffer names it, the plugin runs.
    let cache_b = common::tempdir("fleet-load-cache-b");
    let mut raw = ptr::null_mut();
    assert_eq!(keel_host_new(&mut raw), KEEL_OK);
    let b = TestHost(raw);
    let trust = trust_store(&[&k]);
    assert_eq!(
        keel::ffi::trust::keel_host_set_trust_store_bytes(b.0, trust.as_ptr(), trust.len()),
        KEEL_OK
    );
    let (s, d, p) = load_oci_c(&b, &digest_ref, &cache_b, None);
    assert_eq!(s, KEEL_OK, "{}", last_error());
    assert_eq!(d, digest);
    let f = function(p, "echo").unwrap();
    let out = Buf::new();
    assert_eq!(call(p, f, b"from B", &out), KEEL_OK);
    assert_eq!(out.bytes(), b"from B");
    keel_plugin_free(p);

    // A third host on A's cache: by digest a cache hit, by tag too (one manifest request,
    // no blob), both reporting the same digest.
    let c = host_trusting(&[&k]);
    let hit = c.load_oci(&digest_ref, &cache_a, &opts()).unwrap();
    assert!(hit.pulled.cache_hit);
    assert_eq!(hit.pulled.digest, digest);
    c.unload("echo").unwrap();
    let hit = c.load_oci(&tag_ref, &cache_a, &opts()).unwrap();
    assert!(hit.pulled.cache_hit);
    assert_eq!(hit.pulled.digest, digest);
    assert_eq!(echo_call(&c, b"from C"), b"from C");

    // `keel pull` is the reverse of push: the same files, and `keel verify` accepts them.
    let pulled = common::tempdir("fleet-load-pull").join("echo");
    let (code, out, err) = keel_cli(&["pull", &tag_ref, pulled.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), digest);
    for f in ["keel.json", "keel.json.sig", "libecho.so"] {
        assert_eq!(
            std::fs::read(pulled.join(f)).unwrap(),
            std::fs::read(folder.join(f)).unwrap(),
            "{f}"
        );
    }
    let store_file = pulled.parent().unwrap().join("trust.json");
    std::fs::write(&store_file, trust_store(&[&k])).unwrap();
    let m = pulled.join("keel.json");
    let (code, out, err) = keel_cli(&[
        "verify",
        m.to_str().unwrap(),
        "--trust-store",
        store_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    drop(b);
}

#[test]
fn a_pulled_plugin_goes_through_the_same_trust_chain_as_a_local_one() {
    let reg = Registry::start("fleet-trust");
    let trusted = key(2);
    let stranger = key(3);
    // Unsigned: refused by a host that requires signatures, like the local folder.
    let unsigned = echo_folder("fleet-trust-unsigned", None);
    let r_unsigned = reg.reference("plugins/echo:unsigned");
    push(&unsigned, &r_unsigned);
    let h = host_trusting(&[&trusted]);
    let cache = common::tempdir("fleet-trust-cache");
    assert_eq!(
        err_status(h.load_oci(&r_unsigned, &cache, &opts())),
        KEEL_ERR_NO_SIGNATURE
    );
    assert_eq!(err_status(h.load(&unsigned.join("keel.json"))), KEEL_ERR_NO_SIGNATURE);
    // Signed by a key the host does not trust.
    let foreign = echo_folder("fleet-trust-foreign", Some(&stranger));
    let r_foreign = reg.reference("plugins/echo:foreign");
    push(&foreign, &r_foreign);
    assert_eq!(
        err_status(h.load_oci(&r_foreign, &cache, &opts())),
        KEEL_ERR_UNKNOWN_KEY
    );
    // A pinned binary that differs from the manifest (a re-signed manifest with a stale
    // pin): pushed as is, refused on load with the local code.
    let stale = echo_folder("fleet-trust-stale", None);
    let m = stale.join("keel.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    doc["sha256"] = json!("00".repeat(32));
    std::fs::write(&m, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let sig = KeelSignature::sign(&trusted, &std::fs::read(&m).unwrap(), "stale").unwrap();
    trust::write_signature_file(&m, &sig).unwrap();
    let r_stale = reg.reference("plugins/echo:stale");
    push(&stale, &r_stale);
    assert_eq!(
        err_status(h.load_oci(&r_stale, &cache, &opts())),
        KEEL_ERR_DIGEST_MISMATCH
    );
    assert!(h.plugin_names().is_empty());
    // The trusted, correct one loads.
    let good = echo_folder("fleet-trust-good", Some(&trusted));
    let r_good = reg.reference("plugins/echo:good");
    push(&good, &r_good);
    h.load_oci(&r_good, &cache, &opts()).unwrap();
    assert_eq!(echo_call(&h, b"ok"), b"ok");
}

#[test]
fn a_tampered_blob_in_the_registry_storage_is_a_digest_mismatch_and_nothing_is_cached() {
    let reg = Registry::start("fleet-tamper");
    let k = key(4);
    let folder = echo_folder("fleet-tamper", Some(&k));
    let (code, out, err) = keel_cli(&[
        "push",
        folder.to_str().unwrap(),
        &reg.reference("plugins/echo:1"),
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let digest = v["digest"].as_str().unwrap().to_string();
    let binary_layer = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["title"] == "libecho.so")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    // Flip one byte of the stored binary blob (same size: only the digest can tell).
    let blob = reg.blob_path(&binary_layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0x55;
    std::fs::write(&blob, &bytes).unwrap();

    let digest_ref = reg.reference(&format!("plugins/echo@{digest}"));
    let cache = common::tempdir("fleet-tamper-cache");
    let h = host_trusting(&[&k]);
    let e = h.load_oci(&digest_ref, &cache, &opts()).unwrap_err();
    assert_eq!(e.status(), KEEL_ERR_OCI_DIGEST_MISMATCH, "{e}");
    assert!(h.plugin_names().is_empty());
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert!(
        !cache.join("sha256").join(hex).exists(),
        "a refused pull left a cache entry"
    );
    assert_eq!(
        std::fs::read_dir(cache.join("tmp")).unwrap().count(),
        0,
        "temporary files left"
    );

    // The C ABI: the same code, the digest buffer empty, no handle.
    let t = TestHost::new();
    let (s, d, p) = load_oci_c(&t, &digest_ref, &cache, None);
    assert_eq!(s, KEEL_ERR_OCI_DIGEST_MISMATCH, "{}", last_error());
    assert!(d.is_empty());
    assert!(p.is_null());
    // And `keel pull`: exit code 62, no folder.
    let dest = common::tempdir("fleet-tamper-pull").join("echo");
    let (code, _, err) = keel_cli(&["pull", &digest_ref, dest.to_str().unwrap()]);
    assert_eq!(code, 62, "{err}");
    assert!(!dest.exists());
}

#[test]
fn with_the_registry_stopped_a_cache_hit_still_loads_and_a_miss_is_a_pull_failure() {
    let mut reg = Registry::start("fleet-offline");
    let k = key(5);
    let folder = echo_folder("fleet-offline", Some(&k));
    let digest = push(&folder, &reg.reference("plugins/echo:1"));
    let digest_ref = reg.reference(&format!("plugins/echo@{digest}"));
    let tag_ref = reg.reference("plugins/echo:1");
    let warm = common::tempdir("fleet-offline-warm");
    host_trusting(&[&k]).load_oci(&digest_ref, &warm, &opts()).unwrap();
    reg.stop();

    // Cache hit: no network needed.
    let h = host_trusting(&[&k]);
    let hit = h.load_oci(&digest_ref, &warm, &opts()).unwrap();
    assert!(hit.pulled.cache_hit);
    assert_eq!(echo_call(&h, b"offline"), b"offline");
    // A tag must be resolved: that needs the registry.
    let h2 = host_trusting(&[&k]);
    assert_eq!(
        err_status(h2.load_oci(&tag_ref, &warm, &opts())),
        KEEL_ERR_OCI_PULL_FAILED
    );
    // Cache miss: the pull-failure code, through the Rust API and the C ABI.
    let cold = common::tempdir("fleet-offline-cold");
    assert_eq!(
        err_status(h2.load_oci(&digest_ref, &cold, &opts())),
        KEEL_ERR_OCI_PULL_FAILED
    );
    let t = TestHost::new();
    let (s, d, p) = load_oci_c(&t, &digest_ref, &cold, None);
    assert_eq!(s, KEEL_ERR_OCI_PULL_FAILED);
    assert!(
        last_error().contains("refused") || last_error().contains("connect"),
        "{}",
        last_error()
    );
    assert!(d.is_empty() && p.is_null());
    assert!(h2.plugin_names().is_empty());
}

#[test]
fn bad_references_unknown_manifests_and_bad_arguments_get_their_codes() {
    let reg = Registry::start("fleet-codes");
    let cache = common::tempdir("fleet-codes-cache");
    let h = Host::new();
    for bad in [
        "",
        "Plugins/Echo:1",
        "plugins/echo@sha256:1234",
        "plugins echo",
        "plugins/echo:bad tag",
    ] {
        let r = if bad.is_empty() {
            String::new()
        } else {
            reg.reference(bad)
        };
        assert_eq!(
            err_status(h.load_oci(&r, &cache, &opts())),
            KEEL_ERR_OCI_BAD_REFERENCE,
            "{r:?}"
        );
    }
    assert_eq!(
        err_status(h.load_oci(&reg.reference("plugins/none:1"), &cache, &opts())),
        KEEL_ERR_OCI_MANIFEST_NOT_FOUND
    );
    let missing = format!("plugins/none@sha256:{}", "ab".repeat(32));
    assert_eq!(
        err_status(h.load_oci(&reg.reference(&missing), &cache, &opts())),
        KEEL_ERR_OCI_MANIFEST_NOT_FOUND
    );
    // Push wants a tag: the digest is its result.
    let (code, _, err) = keel_cli(&["push", cache.to_str().unwrap(), &reg.reference(&missing)]);
    assert_eq!(code, 60, "{err}");
    let (code, _, err) = keel_cli(&["pull", "Bad Ref", cache.join("x").to_str().unwrap()]);
    assert_eq!(code, 60, "{err}");
    let (code, _, err) = keel_cli(&[
        "pull",
        &reg.reference("plugins/none:1"),
        cache.join("x").to_str().unwrap(),
    ]);
    assert_eq!(code, 61, "{err}");

    // The C ABI: NULL and invalid arguments, each its code; the out-parameters untouched.
    let t = TestHost::new();
    let r = cstr(&reg.reference("plugins/none:1"));
    let c = cstr(cache.to_str().unwrap());
    let digest = Buf::new();
    let sentinel = ptr::dangling_mut::<keel_plugin>();
    let mut p = sentinel;
    assert_eq!(
        keel_host_load_oci(ptr::null(), r.as_ptr(), c.as_ptr(), ptr::null(), &mut p, digest.0),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_host_load_oci(t.0, ptr::null(), c.as_ptr(), ptr::null(), &mut p, digest.0),
        KEEL_ERR_NULL_POINTER
    );
    assert!(last_error().contains("reference"));
    assert_eq!(
        keel_host_load_oci(t.0, r.as_ptr(), ptr::null(), ptr::null(), &mut p, digest.0),
        KEEL_ERR_NULL_POINTER
    );
    let empty = cstr("");
    assert_eq!(
        keel_host_load_oci(t.0, r.as_ptr(), empty.as_ptr(), ptr::null(), &mut p, digest.0),
        KEEL_ERR_INVALID_ARGUMENT
    );
    let bad_utf8 = CString::new(vec![b'a', 0xff, b'b']).unwrap();
    assert_eq!(
        keel_host_load_oci(t.0, bad_utf8.as_ptr(), c.as_ptr(), ptr::null(), &mut p, digest.0),
        KEEL_ERR_INVALID_UTF8
    );
    assert_eq!(
        keel_host_load_oci(t.0, r.as_ptr(), c.as_ptr(), bad_utf8.as_ptr(), &mut p, digest.0),
        KEEL_ERR_INVALID_UTF8
    );
    let bad_ref = cstr("no such:ref:at all");
    assert_eq!(
        keel_host_load_oci(t.0, bad_ref.as_ptr(), c.as_ptr(), ptr::null(), &mut p, digest.0),
        KEEL_ERR_OCI_BAD_REFERENCE
    );
    assert_eq!(
        keel_host_load_oci(t.0, r.as_ptr(), c.as_ptr(), ptr::null(), &mut p, digest.0),
        KEEL_ERR_OCI_MANIFEST_NOT_FOUND
    );
    assert_eq!(p, sentinel, "out written on failure");
    assert!(digest.bytes().is_empty());
    // NULL `out` and `digest` are allowed (the caller wants neither).
    let folder = echo_folder("fleet-codes", None);
    push(&folder, &reg.reference("plugins/echo:1"));
    let ok_ref = cstr(&reg.reference("plugins/echo:1"));
    assert_eq!(
        keel_host_load_oci(
            t.0,
            ok_ref.as_ptr(),
            c.as_ptr(),
            ptr::null(),
            ptr::null_mut(),
            ptr::null_mut()
        ),
        KEEL_OK,
        "{}",
        last_error()
    );
    assert!(t.get("echo").is_ok());
}

#[test]
fn basic_auth_works_and_missing_or_wrong_credentials_are_auth_failures() {
    let reg = Registry::start_with("fleet-auth", true);
    let k = key(7);
    let folder = echo_folder("fleet-auth", Some(&k));
    let r = reg.reference("plugins/echo:1");
    let good = RegistryOptions {
        credentials: Credentials::Basic {
            username: "fleet".into(),
            password: "s3cret".into(),
        },
        ..opts()
    };
    // Push without credentials: refused; with them (the CLI reads the password from the
    // environment): the digest.
    let (code, _, err) = keel_cli(&["push", folder.to_str().unwrap(), &r]);
    assert_eq!(code, 64, "{err}");
    let o = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["push", folder.to_str().unwrap(), &r, "--username", "fleet"])
        .env("KEEL_REGISTRY_PASSWORD", "s3cret")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cache = common::tempdir("fleet-auth-cache");
    let h = host_trusting(&[&k]);
    assert_eq!(err_status(h.load_oci(&r, &cache, &opts())), KEEL_ERR_OCI_AUTH_FAILED);
    let wrong = RegistryOptions {
        credentials: Credentials::Basic {
            username: "fleet".into(),
            password: "wrong".into(),
        },
        ..opts()
    };
    assert_eq!(err_status(h.load_oci(&r, &cache, &wrong)), KEEL_ERR_OCI_AUTH_FAILED);
    // A bearer token the registry does not accept (C ABI).
    let t = TestHost::new();
    let (s, _, _) = load_oci_c(&t, &r, &cache, Some("not-a-token"));
    assert_eq!(s, KEEL_ERR_OCI_AUTH_FAILED, "{}", last_error());
    let loaded = h.load_oci(&r, &cache, &good).unwrap();
    assert!(!loaded.pulled.cache_hit);
    assert_eq!(echo_call(&h, b"authed"), b"authed");
}

#[test]
fn concurrent_pulls_of_one_digest_download_it_once() {
    let reg = Registry::start("fleet-concurrent");
    let k = key(8);
    let folder = echo_folder("fleet-concurrent", Some(&k));
    let digest = push(&folder, &reg.reference("plugins/echo:1"));
    let digest_ref = reg.reference(&format!("plugins/echo@{digest}"));
    let cache = common::tempdir("fleet-concurrent-cache");
    let results: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let h = host_trusting(&[&k]);
                    let l = h.load_oci(&digest_ref, &cache, &opts()).unwrap();
                    assert_eq!(echo_call(&h, b"x"), b"x");
                    l.pulled.cache_hit
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|hit| !**hit).count(), 1, "{results:?}");
}

#[test]
fn an_interrupted_pull_leaves_nothing_a_later_load_trusts() {
    let reg = Registry::start("fleet-interrupt");
    let k = key(9);
    let folder = echo_folder("fleet-interrupt", Some(&k));
    let digest = push(&folder, &reg.reference("plugins/echo:1"));
    let hex = digest.strip_prefix("sha256:").unwrap();
    let cache = common::tempdir("fleet-interrupt-cache");
    // What a pull killed half-way leaves: its temporary folder, with a truncated binary.
    let leftover = cache.join("tmp").join(format!("{hex}.4242"));
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("libecho.so"), b"\x7fELF truncated").unwrap();
    std::fs::write(leftover.join(".keel-manifest"), b"keel.json").unwrap();
    // And a folder under the digest's cache name without the completion marker (made by
    // hand, or by something other than a finished pull): not a cache entry either.
    let fake = cache.join("sha256").join(hex);
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("keel.json"), b"{}").unwrap();
    let h = host_trusting(&[&k]);
    let l = h
        .load_oci(&reg.reference(&format!("plugins/echo@{digest}")), &cache, &opts())
        .unwrap();
    assert!(!l.pulled.cache_hit, "a temporary folder counted as cached");
    assert!(!leftover.exists(), "the leftover was not cleared");
    assert_eq!(l.pulled.dir, fake);
    assert_eq!(
        std::fs::read(l.pulled.dir.join("libecho.so")).unwrap(),
        std::fs::read(folder.join("libecho.so")).unwrap()
    );
    assert_eq!(echo_call(&h, b"whole"), b"whole");
}

#[test]
fn keel_oci_pull_fetches_without_loading_and_a_load_of_its_path_verifies() {
    let reg = Registry::start("fleet-pullonly");
    let k = key(10);
    let folder = echo_folder("fleet-pullonly", Some(&k));
    let digest = push(&folder, &reg.reference("plugins/echo:1"));
    let cache = common::tempdir("fleet-pullonly-cache");
    let r = cstr(&reg.reference("plugins/echo:1"));
    let c = cstr(cache.to_str().unwrap());
    let (path, d) = (Buf::new(), Buf::new());
    assert_eq!(
        keel::ffi::fleet::keel_oci_pull(r.as_ptr(), c.as_ptr(), ptr::null(), path.0, d.0),
        KEEL_OK,
        "{}",
        last_error()
    );
    assert_eq!(d.text(), digest);
    let manifest = PathBuf::from(path.text());
    assert!(
        manifest.starts_with(&cache) && manifest.ends_with("keel.json"),
        "{manifest:?}"
    );
    // Nothing loaded yet; a host that does not trust the signer refuses the path, one that
    // does loads it.
    let stranger = host_trusting(&[&key(11)]);
    assert_eq!(err_status(stranger.load(&manifest)), KEEL_ERR_UNKNOWN_KEY);
    let h = host_trusting(&[&k]);
    h.load(&manifest).unwrap();
    assert_eq!(echo_call(&h, b"pulled"), b"pulled");
    // NULL manifest_path buffer: refused; bad reference: its code, both buffers empty.
    assert_eq!(
        keel::ffi::fleet::keel_oci_pull(r.as_ptr(), c.as_ptr(), ptr::null(), ptr::null_mut(), d.0),
        KEEL_ERR_NULL_POINTER
    );
    let bad = cstr("Bad Ref");
    assert_eq!(
        keel::ffi::fleet::keel_oci_pull(bad.as_ptr(), c.as_ptr(), ptr::null(), path.0, d.0),
        KEEL_ERR_OCI_BAD_REFERENCE
    );
    assert!(path.bytes().is_empty() && d.bytes().is_empty());
}

#[test]
fn an_artifact_that_is_not_a_keel_plugin_is_refused_before_anything_is_cached() {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::secrets::RegistryAuth;
    let reg = Registry::start("fleet-foreign");
    // An ordinary artifact (another tool's media types), pushed with the OCI client itself;
    // and one whose layer path leaves the plugin folder.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let push = |tag: &str, layer_type: &str, title: &str| {
        let r: oci_client::Reference = reg.reference(&format!("other/thing:{tag}")).parse().unwrap();
        let mut ann = std::collections::BTreeMap::new();
        ann.insert("org.opencontainers.image.title".to_string(), title.to_string());
        let layer = ImageLayer::new(b"payload".to_vec(), layer_type.to_string(), Some(ann));
        let config = Config::new(
            b"{}".to_vec(),
            "application/vnd.keel.plugin.config.v1+json".into(),
            None,
        );
        rt.block_on(client.push(&r, &[layer], config, &RegistryAuth::Anonymous, None))
            .unwrap();
    };
    push("foreign", "application/vnd.example.layer.v1", "keel.json");
    push(
        "escape",
        "application/vnd.keel.plugin.manifest.v1+json",
        "../../keel.json",
    );
    let cache = common::tempdir("fleet-foreign-cache");
    let h = Host::new();
    for tag in ["foreign", "escape"] {
        let e = h
            .load_oci(&reg.reference(&format!("other/thing:{tag}")), &cache, &opts())
            .unwrap_err();
        assert_eq!(e.status(), KEEL_ERR_OCI_NOT_A_PLUGIN, "{tag}: {e}");
    }
    assert!(!cache.join("sha256").exists());
    assert!(!cache.parent().unwrap().join("keel.json").exists());
}

#[test]
fn three_following_hosts_refuse_a_revoked_key_within_one_interval() {
    use keel::ffi::fleet::{
        keel_host_follow_trust_store, keel_host_stop_following_trust_store, keel_host_trust_check_now,
    };
    use keel::fleet::FollowConfig;
    const INTERVAL: Duration = Duration::from_millis(1000);

    let reg = Registry::start("fleet-rotate");
    let dir = common::tempdir("fleet-rotate-keys");
    let (root, signer, other) = (key(20), key(21), key(22));
    let root_file = dir.join("root.key");
    keel::trust::signature::write_secret_key_file(&root_file, &root).unwrap();
    let roots = trust_store(&[&root]);
    let store_ref = reg.reference("fleet/trust:current");
    let store_file = dir.join("store.json");
    let publish = |doc: &[u8]| publish_trust_store(&store_file, &store_ref, &root_file, doc);
    let entry = |k: &SigningKey| store::key_entry(&k.verifying_key(), "signer", &[]).unwrap();
    let v1 = store::new_document(1, vec![entry(&signer), entry(&other)]).unwrap();
    publish(&v1);

    let folder = echo_folder("fleet-rotate", Some(&signer));
    let digest = push(&folder, &reg.reference("plugins/echo:1"));
    let plugin_ref = reg.reference(&format!("plugins/echo@{digest}"));
    let config = || FollowConfig {
        reference: store_ref.clone(),
        roots: roots.clone(),
        interval: INTERVAL,
        registry: opts(),
    };

    // Two hosts through the Rust API, one through the C ABI: each follows, then loads the
    // plugin signed by `signer` (trusted by version 1) and runs it.
    let hosts: Vec<Host> = (0..2).map(|_| Host::new()).collect();
    let mut manifests = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h.follow_trust_store(config()).unwrap(), 1);
        let cache = common::tempdir(&format!("fleet-rotate-cache{i}"));
        let l = h.load_oci(&plugin_ref, &cache, &opts()).unwrap();
        manifests.push(l.pulled.manifest_path);
        assert_eq!(echo_call(h, b"v1"), b"v1");
        assert!(h.metrics_text().contains("keel_trust_store_version 1\n"));
    }
    let mut raw = ptr::null_mut();
    assert_eq!(keel_host_new(&mut raw), KEEL_OK);
    let c_host = TestHost(raw);
    let r = cstr(&store_ref);
    let mut version = 0u64;
    assert_eq!(
        keel_host_follow_trust_store(
            c_host.0,
            r.as_ptr(),
            roots.as_ptr(),
            roots.len(),
            1000,
            ptr::null(),
            &mut version
        ),
        KEEL_OK,
        "{}",
        last_error()
    );
    assert_eq!(version, 1);
    let c_cache = common::tempdir("fleet-rotate-cache-c");
    let (s, _, p) = load_oci_c(&c_host, &plugin_ref, &c_cache, None);
    assert_eq!(s, KEEL_OK, "{}", last_error());
    keel_plugin_free(p);
    // Unloaded again: this host shows "stops loads" (keel_verify runs a load's checks).
    assert_eq!(c_host.unload("echo"), KEEL_OK);
    let c_manifest = c_cache
        .join("sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
        .join("keel.json");

    // Revoke `signer` (version 2) and publish; then watch every host until it refuses.
    let id = keel::trust::signature::key_id_hex(&keel::trust::signature::key_id(&signer.verifying_key()));
    let v2 = store::revoke_key(
        &v1,
        &id,
        "rotated",
        std::time::SystemTime::now() - Duration::from_secs(1),
    )
    .unwrap();
    publish(&v2);
    let t0 = Instant::now();
    let deadline = t0 + INTERVAL + Duration::from_secs(10);
    let mut refused_after = Vec::new();
    for (h, m) in hosts.iter().zip(&manifests) {
        loop {
            // The host's own verification (what its load and reload run first).
            match h.trust().verify_plugin(m) {
                Err(e) if e.status() == KEEL_ERR_KEY_REVOKED => break,
                Err(e) => panic!("{e}"),
                Ok(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "a following host still accepts the revoked key"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        refused_after.push(t0.elapsed());
    }
    let cm = cstr(c_manifest.to_str().unwrap());
    loop {
        if keel::ffi::trust::keel_verify(c_host.0, cm.as_ptr()) == KEEL_ERR_KEY_REVOKED {
            break;
        }
        assert!(Instant::now() < deadline, "the C host still accepts the revoked key");
        std::thread::sleep(Duration::from_millis(10));
    }
    refused_after.push(t0.elapsed());
    assert_eq!(c_host.load(&c_manifest).unwrap_err(), KEEL_ERR_KEY_REVOKED);
    eprintln!("time from publication to refusal (interval {INTERVAL:?}): {refused_after:?}");
    for t in &refused_after {
        // Within one interval plus the registry round trip and this loop's granularity.
        assert!(*t <= INTERVAL + Duration::from_secs(3), "{refused_after:?}");
    }
    // A reload is refused too; the running generation keeps serving.
    for h in &hosts {
        assert_eq!(err_status(h.reload("echo")), KEEL_ERR_KEY_REVOKED);
        assert_eq!(echo_call(h, b"still"), b"still");
        assert!(h.metrics_text().contains("keel_trust_store_version 2\n"));
        assert_eq!(h.trust_follow_status().unwrap().version, 2);
    }

    // Rollback: version 1 published again is refused; the node keeps version 2.
    publish(&v1);
    for h in &hosts {
        assert_eq!(err_status(h.trust_check_now()), KEEL_ERR_TRUST_STORE_ROLLBACK);
        assert_eq!(h.trust().store().version(), 2);
    }
    let mut v = 0;
    assert_eq!(
        keel_host_trust_check_now(c_host.0, &mut v),
        KEEL_ERR_TRUST_STORE_ROLLBACK
    );
    // A store signed by a key that is not a root (even one the store trusts): refused.
    let v3 = store::new_document(3, vec![entry(&other)]).unwrap();
    let forged = KeelSignature::sign(&other, &v3, "not a root").unwrap();
    keel::fleet::push_trust_store(&v3, forged.to_file_text().as_bytes(), &store_ref, &opts()).unwrap();
    for h in &hosts {
        assert_eq!(err_status(h.trust_check_now()), KEEL_ERR_UNKNOWN_KEY);
        assert_eq!(h.trust().store().version(), 2);
        let st = h.trust_follow_status().unwrap();
        assert!(st.failures >= 2 && st.last_error.is_some(), "{st:?}");
        assert!(h.metrics_text().contains("keel_trust_follow_failures_total"));
    }
    // Stop following: the store stays, the families go.
    assert!(hosts[0].stop_following_trust_store());
    assert!(!hosts[0].metrics_text().contains("keel_trust_store_version"));
    assert_eq!(err_status(hosts[0].trust_check_now()), KEEL_ERR_INVALID_ARGUMENT);
    let mut was = false;
    assert_eq!(keel_host_stop_following_trust_store(c_host.0, &mut was), KEEL_OK);
    assert!(was);
    assert_eq!(
        keel_host_trust_check_now(c_host.0, ptr::null_mut()),
        KEEL_ERR_INVALID_ARGUMENT
    );
}

#[test]
fn following_refuses_bad_arguments_and_an_unsigned_store_without_changing_anything() {
    use keel::ffi::fleet::keel_host_follow_trust_store;
    use keel::fleet::FollowConfig;
    let reg = Registry::start("fleet-follow-bad");
    let root = key(30);
    let roots = trust_store(&[&root]);
    let store_ref = reg.reference("fleet/trust:current");
    let h = host_trusting(&[&key(31)]);
    let cfg = |reference: &str, roots: &[u8], ms: u64| FollowConfig {
        reference: reference.to_string(),
        roots: roots.to_vec(),
        interval: Duration::from_millis(ms),
        registry: opts(),
    };
    assert_eq!(
        err_status(h.follow_trust_store(cfg(&store_ref, &roots, 10))),
        KEEL_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        err_status(h.follow_trust_store(cfg("Bad Ref", &roots, 1000))),
        KEEL_ERR_OCI_BAD_REFERENCE
    );
    assert_eq!(
        err_status(h.follow_trust_store(cfg(&store_ref, b"{", 1000))),
        KEEL_ERR_TRUST_STORE_MALFORMED
    );
    let no_roots = store::new_document(1, vec![]).unwrap();
    assert_eq!(
        err_status(h.follow_trust_store(cfg(&store_ref, &no_roots, 1000))),
        KEEL_ERR_INVALID_ARGUMENT
    );
    // Nothing published yet.
    assert_eq!(
        err_status(h.follow_trust_store(cfg(&store_ref, &roots, 1000))),
        KEEL_ERR_OCI_MANIFEST_NOT_FOUND
    );
    // Published with a hash-only signature: refused; the host's own store stays.
    let doc = store::new_document(5, vec![store::key_entry(&key(32).verifying_key(), "x", &[]).unwrap()]).unwrap();
    let hash_line = format!("{}\n", keel::digest::sha256_hex(&doc));
    keel::fleet::push_trust_store(&doc, hash_line.as_bytes(), &store_ref, &opts()).unwrap();
    assert_eq!(
        err_status(h.follow_trust_store(cfg(&store_ref, &roots, 1000))),
        KEEL_ERR_HASH_ONLY_SIGNATURE
    );
    assert_eq!(h.trust().store().version(), 1);
    assert!(h.trust_follow_status().is_none());
    // The C ABI: NULL arguments.
    let t = TestHost::new();
    let r = cstr(&store_ref);
    assert_eq!(
        keel_host_follow_trust_store(
            ptr::null(),
            r.as_ptr(),
            roots.as_ptr(),
            roots.len(),
            1000,
            ptr::null(),
            ptr::null_mut()
        ),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_host_follow_trust_store(
            t.0,
            ptr::null(),
            roots.as_ptr(),
            roots.len(),
            1000,
            ptr::null(),
            ptr::null_mut()
        ),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_host_follow_trust_store(t.0, r.as_ptr(), ptr::null(), 5, 1000, ptr::null(), ptr::null_mut()),
        KEEL_ERR_NULL_POINTER
    );
}

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

#[test]
fn no_runtime_thread_outlives_a_pull_and_following_starts_exactly_one() {
    // Run alone in a child process: the other tests of this binary pull concurrently.
    if std::env::var_os("KEEL_FLEET_THREAD_CHILD").is_none() {
        let o = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "no_runtime_thread_outlives_a_pull_and_following_starts_exactly_one",
                "--test-threads=1",
                "--nocapture",
            ])
            .env("KEEL_FLEET_THREAD_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && text.contains("1 passed"), "{text}");
        return;
    }
    let reg = Registry::start("fleet-threads");
    let k = key(40);
    let folder = echo_folder("fleet-threads", Some(&k));
    let digest = push(&folder, &reg.reference("plugins/echo:1"));
    let is_runtime = |n: &String| n.starts_with("tokio") || n.starts_with("keel-trust-f");
    let h = host_trusting(&[&k]);
    assert!(!thread_names().iter().any(is_runtime), "{:?}", thread_names());
    let cache = common::tempdir("fleet-threads-cache");
    h.load_oci(&reg.reference(&format!("plugins/echo@{digest}")), &cache, &opts())
        .unwrap();
    h.load_oci(&reg.reference("plugins/echo:1"), &cache, &opts())
        .unwrap_err(); // already loaded
                       // Any thread still alive has had time to name itself (an unnamed one would carry this
                       // test thread's name: exactly one thread may).
    std::thread::sleep(Duration::from_millis(300));
    let names = thread_names();
    assert!(!names.iter().any(is_runtime), "{names:?}");
    assert_eq!(
        names.iter().filter(|n| n.starts_with("no_runtime")).count(),
        1,
        "{names:?}"
    );
    // Following starts one thread of its own, and stopping ends it.
    let root = key(41);
    let root_file = common::tempdir("fleet-threads-root").join("root.key");
    keel::trust::signature::write_secret_key_file(&root_file, &root).unwrap();
    let doc = trust_store(&[&k]);
    let sig = KeelSignature::sign(&root, &doc, "").unwrap();
    keel::fleet::push_trust_store(&doc, sig.to_file_text().as_bytes(), &reg.reference("t/s:1"), &opts()).unwrap();
    h.follow_trust_store(keel::fleet::FollowConfig {
        reference: reg.reference("t/s:1"),
        roots: trust_store(&[&root]),
        interval: Duration::from_secs(60),
        registry: opts(),
    })
    .unwrap();
    // A new thread names itself when it first runs (Linux keeps 15 bytes of the name:
    // "keel-trust-foll"): wait for that.
    let named = Instant::now() + Duration::from_secs(10);
    while !thread_names().iter().any(|n| n.starts_with("keel-trust-f")) && Instant::now() < named {
        std::thread::sleep(Duration::from_millis(10));
    }
    let names = thread_names();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("keel-trust-f")).count(),
        1,
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.starts_with("tokio")), "{names:?}");
    assert!(h.stop_following_trust_store());
    assert!(!thread_names().iter().any(is_runtime), "{:?}", thread_names());
}

/// The child side of [`three_host_processes_refuse_a_revoked_key_within_one_interval`]: a host
/// that follows the trust store, loads the plugin, says READY, then reports (as Unix
/// milliseconds) when its own verification first refuses the revoked key.
fn follower_process(store_ref: &str, roots: &Path, manifest: &Path, interval_ms: u64) {
    use std::time::UNIX_EPOCH;
    let h = Host::new();
    h.follow_trust_store(keel::fleet::FollowConfig {
        reference: store_ref.to_string(),
        roots: std::fs::read(roots).unwrap(),
        interval: Duration::from_millis(interval_ms),
        registry: opts(),
    })
    .unwrap();
    h.load(manifest).unwrap();
    assert_eq!(echo_call(&h, b"child"), b"child");
    h.unload("echo").unwrap();
    println!("READY");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match h.trust().verify_plugin(manifest) {
            Err(e) if e.status() == KEEL_ERR_KEY_REVOKED => break,
            Err(e) => panic!("{e}"),
            Ok(_) => {}
        }
        assert!(Instant::now() < deadline, "never refused");
        std::thread::sleep(Duration::from_millis(5));
    }
    let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
    // A load is refused too, with the same code.
    assert_eq!(err_status(h.load(manifest)), KEEL_ERR_KEY_REVOKED);
    println!("REFUSED {at}");
}

#[test]
fn three_host_processes_refuse_a_revoked_key_within_one_interval() {
    use std::io::BufRead as _;
    use std::time::UNIX_EPOCH;
    const NAME: &str = "three_host_processes_refuse_a_revoked_key_within_one_interval";
    const INTERVAL_MS: u64 = 1000;
    if let Ok(args) = std::env::var("KEEL_FLEET_FOLLOWER") {
        let a: Vec<&str> = args.split('\n').collect();
        follower_process(a[0], Path::new(a[1]), Path::new(a[2]), INTERVAL_MS);
        return;
    }
    let reg = Registry::start("fleet-procs");
    let dir = common::tempdir("fleet-procs-keys");
    let (root, signer) = (key(50), key(51));
    let root_file = dir.join("root.key");
    keel::trust::signature::write_secret_key_file(&root_file, &root).unwrap();
    let roots_file = dir.join("roots.json");
    std::fs::write(&roots_file, trust_store(&[&root])).unwrap();
    let store_ref = reg.reference("fleet/trust:current");
    let store_file = dir.join("store.json");
    let publish = |doc: &[u8]| publish_trust_store(&store_file, &store_ref, &root_file, doc);
    let v1 = store::new_document(
        1,
        vec![store::key_entry(&signer.verifying_key(), "signer", &[]).unwrap()],
    )
    .unwrap();
    publish(&v1);
    let folder = echo_folder("fleet-procs", Some(&signer));
    let digest = push(&folder, &reg.reference("plugins/echo:1"));
    let pulled = keel::fleet::pull_to_cache(
        &reg.reference(&format!("plugins/echo@{digest}")),
        &common::tempdir("fleet-procs-cache"),
        &opts(),
    )
    .unwrap();

    /// The follower processes, killed if the test fails half-way (none is left behind).
    struct Kids(Vec<Child>);
    impl Drop for Kids {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut children = Kids(
        (0..3)
            .map(|_| {
                Command::new(std::env::current_exe().unwrap())
                    .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
                    .env(
                        "KEEL_FLEET_FOLLOWER",
                        format!(
                            "{store_ref}\n{}\n{}",
                            roots_file.display(),
                            pulled.manifest_path.display()
                        ),
                    )
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    let mut lines: Vec<_> = children
        .0
        .iter_mut()
        .map(|c| std::io::BufReader::new(c.stdout.take().unwrap()).lines())
        .collect();
    let mut next_line = |i: usize, want: &str| -> String {
        for l in lines[i].by_ref() {
            // (libtest may print "test <name> ... " before it on the same line.)
            let l = l.unwrap();
            if let Some(at) = l.find(want) {
                return l[at..].to_string();
            }
        }
        panic!("follower process {i} ended without {want}");
    };
    for i in 0..3 {
        next_line(i, "READY");
    }
    let id = keel::trust::signature::key_id_hex(&keel::trust::signature::key_id(&signer.verifying_key()));
    let v2 = store::revoke_key(&v1, &id, "rotated", SystemTime::now() - Duration::from_secs(1)).unwrap();
    publish(&v2);
    let published = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
    let mut after_ms = Vec::new();
    for i in 0..3 {
        let l = next_line(i, "REFUSED ");
        let at: u128 = l["REFUSED ".len()..].trim().parse().unwrap();
        after_ms.push(at as i128 - published as i128);
    }
    for c in &mut children.0 {
        assert!(c.wait().unwrap().success());
    }
    eprintln!("three host processes: time from publication to refusal (interval {INTERVAL_MS} ms): {after_ms:?} ms");
    for t in &after_ms {
        assert!(*t <= INTERVAL_MS as i128 + 3000, "{after_ms:?}");
    }
}

#[test]
fn the_token_flow_gets_tokens_with_basic_credentials_and_a_preissued_bearer_token_loads() {
    let ts = TokenServer::start("fleet-token-server");
    let reg = Registry::start_cfg("fleet-token", Some(ts.auth()), "127.0.0.1", None);
    let k = key(21);
    let folder = echo_folder("fleet-token", Some(&k));
    let r = reg.reference("plugins/echo:1");

    // `keel push` with basic credentials: the registry sends it to the token server.
    let (code, _, err) = keel_cli(&["push", folder.to_str().unwrap(), &r]);
    assert_eq!(code, 64, "anonymous push must be refused: {err}");
    let o = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["push", folder.to_str().unwrap(), &r, "--username", "fleet"])
        .env("KEEL_REGISTRY_PASSWORD", "s3cret")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let t = c_host_trusting(&[&k]);
    let cache = common::tempdir("fleet-token-cache");
    // Anonymous, a wrong password: the token server refuses, nothing is loaded or cached.
    let (s, d, p) = load_oci_with(&t, &r, &cache, None);
    assert_eq!(
        (s, d.as_str(), p.is_null()),
        (KEEL_ERR_OCI_AUTH_FAILED, "", true),
        "{}",
        last_error()
    );
    let wrong = COptions::new().basic("fleet", "wrong");
    let (s, _, p) = load_oci_with(&t, &r, &cache, Some(&wrong));
    assert_eq!((s, p.is_null()), (KEEL_ERR_OCI_AUTH_FAILED, true), "{}", last_error());
    assert!(std::fs::read_dir(cache.join("sha256")).map_or(true, |mut d| d.next().is_none()));

    // Basic credentials through the C ABI's options: a token is obtained, the plugin loads.
    let asked = ts.served.load(std::sync::atomic::Ordering::SeqCst);
    let good = COptions::new().basic("fleet", "s3cret");
    let (s, digest, p) = load_oci_with(&t, &r, &cache, Some(&good));
    assert_eq!(s, KEEL_OK, "{}", last_error());
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert!(
        ts.served.load(std::sync::atomic::Ordering::SeqCst) > asked,
        "the token server was asked"
    );
    assert_eq!(c_echo_and_free(p, b"token flow"), b"token flow");

    // A token issued beforehand (by the same authority, for pull of this repository), given
    // as the bearer: loads into a fresh cache without asking the token server.
    let token = ts.mint("plugins/echo", &["pull"], 300, TOKEN_ISSUER);
    let asked = ts.served.load(std::sync::atomic::Ordering::SeqCst);
    let t2 = c_host_trusting(&[&k]);
    let cache2 = common::tempdir("fleet-token-cache2");
    let (s, digest2, p) = load_oci_c(&t2, &r, &cache2, Some(&token));
    assert_eq!(s, KEEL_OK, "{}", last_error());
    assert_eq!(digest2, digest);
    assert_eq!(c_echo_and_free(p, b"bearer"), b"bearer");
    assert_eq!(
        ts.served.load(std::sync::atomic::Ordering::SeqCst),
        asked,
        "a bearer token is used as given"
    );

    // The same through the options, and `keel_oci_pull_with`.
    let bearer = COptions::new().bearer(&token);
    let (rr, cc) = (cstr(&r), cstr(common::tempdir("fleet-token-pull").to_str().unwrap()));
    let (path, dig) = (Buf::new(), Buf::new());
    assert_eq!(
        keel_oci_pull_with(rr.as_ptr(), cc.as_ptr(), bearer.0, path.0, dig.0),
        KEEL_OK,
        "{}",
        last_error()
    );
    assert_eq!(dig.text(), digest);
    assert!(Path::new(&path.text()).is_file());

    // Tokens the registry must not accept: another repository's, expired (beyond
    // Distribution's 60 s leeway), from another issuer.
    for (what, bad) in [
        (
            "another repository",
            ts.mint("plugins/other", &["pull"], 300, TOKEN_ISSUER),
        ),
        ("expired", ts.mint("plugins/echo", &["pull"], -3600, TOKEN_ISSUER)),
        (
            "foreign issuer",
            ts.mint("plugins/echo", &["pull"], 300, "someone-else"),
        ),
    ] {
        let c = common::tempdir("fleet-token-bad");
        let (s, d, p) = load_oci_c(&t2, &r, &c, Some(&bad));
        assert_eq!(
            (s, d.as_str(), p.is_null()),
            (KEEL_ERR_OCI_AUTH_FAILED, "", true),
            "{what}: {}",
            last_error()
        );
    }
}

/// An IPv4 address of this machine that is not loopback (the one a route to a TEST-NET
/// address would leave from; `connect` on UDP sends nothing).
fn non_loopback_ipv4() -> String {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    if s.connect("192.0.2.1:9").is_ok() {
        if let Ok(a) = s.local_addr() {
            if !a.ip().is_loopback() && !a.ip().is_unspecified() {
                return a.ip().to_string();
            }
        }
    }
    let o = Command::new("hostname").arg("-I").output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback()))
        .expect("this test needs a non-loopback IPv4 address on the machine")
        .to_string()
}

#[test]
fn plain_http_off_loopback_only_when_explicitly_allowed_through_the_c_options() {
    let ip = non_loopback_ipv4();
    let reg = Registry::start_cfg("fleet-insecure", None, &ip, None);
    let k = key(22);
    let folder = echo_folder("fleet-insecure", Some(&k));
    let r = reg.reference("plugins/echo:1");
    assert!(!ip.starts_with("127."), "{ip}");

    // The CLI: TLS only (the plain-HTTP registry cannot answer it) unless --insecure.
    let (code, _, err) = keel_cli(&["push", folder.to_str().unwrap(), &r]);
    assert_ne!(code, 0, "a plain-HTTP push off loopback without --insecure: {err}");
    let (code, out, err) = keel_cli(&["push", folder.to_str().unwrap(), &r, "--insecure"]);
    assert_eq!(code, 0, "{out}{err}");

    let t = c_host_trusting(&[&k]);
    let cache = common::tempdir("fleet-insecure-cache");
    // Default options (and the plain function): TLS, which fails against plain HTTP.
    let (s, d, p) = load_oci_with(&t, &r, &cache, None);
    assert_eq!(
        (s, d.as_str(), p.is_null()),
        (KEEL_ERR_OCI_PULL_FAILED, "", true),
        "{}",
        last_error()
    );
    let (s, _, p) = load_oci_c(&t, &r, &cache, None);
    assert_eq!((s, p.is_null()), (KEEL_ERR_OCI_PULL_FAILED, true), "{}", last_error());
    let secure = COptions::new().insecure(false);
    let (s, _, _) = load_oci_with(&t, &r, &cache, Some(&secure));
    assert_eq!(s, KEEL_ERR_OCI_PULL_FAILED);
    // Explicitly allowed: plain HTTP, loads and runs.
    let insecure = COptions::new().insecure(true);
    let (s, digest, p) = load_oci_with(&t, &r, &cache, Some(&insecure));
    assert_eq!(s, KEEL_OK, "{}", last_error());
    assert!(digest.starts_with("sha256:"));
    assert_eq!(c_echo_and_free(p, b"plain"), b"plain");
}

#[test]
fn registry_options_refuse_bad_arguments() {
    let mut o = ptr::null_mut();
    assert_eq!(keel_registry_options_new(ptr::null_mut()), KEEL_ERR_NULL_POINTER);
    assert_eq!(keel_registry_options_new(&mut o), KEEL_OK);
    let (u, p, empty) = (cstr("fleet"), cstr("pw"), cstr(""));
    assert_eq!(
        keel_registry_options_set_basic(ptr::null_mut(), u.as_ptr(), p.as_ptr()),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_registry_options_set_basic(o, ptr::null(), p.as_ptr()),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_registry_options_set_basic(o, u.as_ptr(), ptr::null()),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_registry_options_set_basic(o, empty.as_ptr(), p.as_ptr()),
        KEEL_ERR_INVALID_ARGUMENT
    );
    let bad_utf8 = CString::new(vec![0xffu8, 0xfe]).unwrap();
    assert_eq!(
        keel_registry_options_set_bearer(o, bad_utf8.as_ptr()),
        KEEL_ERR_INVALID_UTF8
    );
    assert_eq!(
        keel_registry_options_set_bearer(ptr::null_mut(), ptr::null()),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(keel_registry_options_set_bearer(o, ptr::null()), KEEL_OK);
    assert_eq!(
        keel_registry_options_set_insecure(ptr::null_mut(), true),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(keel_registry_options_set_timeout_ms(o, 0), KEEL_ERR_INVALID_ARGUMENT);
    assert_eq!(keel_registry_options_set_timeout_ms(o, 1500), KEEL_OK);
    assert_eq!(keel_registry_options_free(o), KEEL_OK);
    assert_eq!(keel_registry_options_free(ptr::null_mut()), KEEL_OK);
    // A bad reference with options: its own code, before any network.
    let t = TestHost::new();
    let opts = COptions::new().basic("fleet", "pw");
    let (s, _, p) = load_oci_with(&t, "UPPER/Case::", &common::tempdir("fleet-opts-bad"), Some(&opts));
    assert_eq!((s, p.is_null()), (KEEL_ERR_OCI_BAD_REFERENCE, true), "{}", last_error());
}

#[test]
fn the_cache_downloads_only_this_platforms_binary_and_keel_pull_the_whole_folder() {
    let reg = Registry::start("fleet-platforms");
    let k = key(23);
    // One plugin folder with binaries for two platforms: this one (the echo fixture) and a
    // foreign one (bytes no host here could load; pinned all the same).
    let dir = common::tempdir("fleet-platforms");
    let so = common::build_native("echo", &[], &dir, "libecho.so");
    std::fs::create_dir_all(dir.join("arm")).unwrap();
    let foreign = dir.join("arm/libecho.so");
    std::fs::write(&foreign, vec![0x7fu8; 200_000]).unwrap();
    let this = format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH);
    let other = if std::env::consts::ARCH == "aarch64" {
        "linux-x86_64"
    } else {
        "linux-aarch64"
    };
    let manifest = dir.join("keel.json");
    std::fs::write(
        &manifest,
        serde_json::to_vec_pretty(&json!({
            "manifest_version": 1, "name": "echo", "version": "1.0.0", "runtime": "native",
            "binary": {this.as_str(): "libecho.so", other: "arm/libecho.so"},
            "sha256": {this.as_str(): common::sha256_file(&so), other: common::sha256_file(&foreign)},
        }))
        .unwrap(),
    )
    .unwrap();
    let sig = KeelSignature::sign(&k, &std::fs::read(&manifest).unwrap(), "fleet").unwrap();
    trust::write_signature_file(&manifest, &sig).unwrap();
    let r = reg.reference("plugins/echo:multi");
    let digest = push(&dir, &r);

    // The cache: manifest, signature and this platform's binary; the foreign one not fetched.
    let cache = common::tempdir("fleet-platforms-cache");
    let h = host_trusting(&[&k]);
    let loaded = h.load_oci(&r, &cache, &opts()).unwrap();
    assert_eq!(loaded.pulled.digest, digest);
    assert!(loaded.pulled.dir.join("libecho.so").is_file());
    assert!(loaded.pulled.dir.join("keel.json.sig").is_file());
    assert!(
        !loaded.pulled.dir.join("arm").exists(),
        "the foreign binary was downloaded"
    );
    assert_eq!(echo_call(&h, b"one platform"), b"one platform");
    // Reload reads the cached folder again: still complete for this platform.
    h.reload("echo").unwrap();
    assert_eq!(echo_call(&h, b"reloaded"), b"reloaded");

    // `keel pull`: the folder as pushed, every platform's binary.
    let out = common::tempdir("fleet-platforms-pull").join("echo");
    let (code, o, e) = keel_cli(&["pull", &r, out.to_str().unwrap()]);
    assert_eq!(code, 0, "{o}{e}");
    assert_eq!(
        std::fs::read(out.join("arm/libecho.so")).unwrap(),
        std::fs::read(&foreign).unwrap()
    );
    assert!(out.join("libecho.so").is_file());
}

/// Bytes of the files under `p`.
fn tree_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .flatten()
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                tree_bytes(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

#[test]
fn pruning_the_cache_evicts_least_recently_used_folders_never_one_a_loaded_plugin_came_from() {
    let reg = Registry::start("fleet-prune");
    let k = key(24);
    let mut refs = Vec::new();
    for v in ["1.0.0", "1.0.1", "1.0.2"] {
        let folder = echo_folder_version("fleet-prune", Some(&k), v);
        let r = reg.reference(&format!("plugins/echo:{v}"));
        let d = push(&folder, &r);
        refs.push((r, d));
    }
    let cache = common::tempdir("fleet-prune-cache");
    let entry = |d: &str| cache.join("sha256").join(d.strip_prefix("sha256:").unwrap());
    // Used 3, 2 and 1 hours ago (0, 1, 2: the last-use time is the marker's modification
    // time, rewritten by a use only when older than a minute), then 0 again (a cache hit): 1 is
    // the least recently used.
    for (i, (r, d)) in refs.iter().enumerate() {
        keel::fleet::pull_to_cache(r, &cache, &opts()).unwrap();
        let marker = std::fs::OpenOptions::new()
            .write(true)
            .open(entry(d).join(".keel-manifest"))
            .unwrap();
        marker
            .set_modified(SystemTime::now() - Duration::from_secs(3600 * (3 - i as u64)))
            .unwrap();
    }
    assert!(
        keel::fleet::pull_to_cache(&refs[0].0, &cache, &opts())
            .unwrap()
            .cache_hit
    );
    let one = tree_bytes(&entry(&refs[0].1));

    let h = host_trusting(&[&k]);
    let p = h.prune_oci_cache(&cache, 2 * one + one / 2).unwrap();
    assert_eq!(p.removed, vec![refs[1].1.clone()]);
    assert_eq!((p.kept, p.busy), (2, 0));
    assert!(p.kept_bytes <= 2 * one + one / 2);
    assert!(!entry(&refs[1].1).exists() && entry(&refs[0].1).exists() && entry(&refs[2].1).exists());

    // A plugin loaded from version 1.0.2's folder holds it: pruning everything from another
    // process (the CLI) removes 1.0.0 only.
    h.load_oci(&refs[2].0, &cache, &opts()).unwrap();
    let (code, out, err) = keel_cli(&["cache-prune", cache.to_str().unwrap(), "--max-bytes", "0", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["removed"], json!([refs[0].1]));
    assert_eq!((v["kept"].as_u64(), v["busy"].as_u64()), (Some(1), Some(1)));
    // ... and the loaded plugin still reloads from its folder.
    h.reload("echo").unwrap();
    assert_eq!(echo_call(&h, b"held"), b"held");

    // Unloaded, the folder is no longer held: the next prune (C ABI) removes it.
    h.unload("echo").unwrap();
    let t = c_host_trusting(&[&k]);
    let c = cstr(cache.to_str().unwrap());
    let (mut removed, mut kept) = (usize::MAX, u64::MAX);
    // (h still has its stale hold until its own next load_oci or prune)
    assert_eq!(h.prune_oci_cache(&cache, 0).unwrap().removed, vec![refs[2].1.clone()]);
    assert_eq!(
        keel_host_prune_oci_cache(t.0, c.as_ptr(), 0, &mut removed, &mut kept),
        KEEL_OK
    );
    assert_eq!((removed, kept), (0, 0));
    // Loading again pulls again.
    let again = h.load_oci(&refs[2].0, &cache, &opts()).unwrap();
    assert!(!again.pulled.cache_hit);
    assert_eq!(echo_call(&h, b"again"), b"again");

    // Bad arguments: their codes, nothing removed.
    let missing = cstr(cache.join("no-such").to_str().unwrap());
    assert_eq!(
        keel_host_prune_oci_cache(t.0, missing.as_ptr(), 0, ptr::null_mut(), ptr::null_mut()),
        KEEL_ERR_FILE_NOT_FOUND
    );
    assert_eq!(
        keel_host_prune_oci_cache(ptr::null(), c.as_ptr(), 0, ptr::null_mut(), ptr::null_mut()),
        KEEL_ERR_NULL_POINTER
    );
    assert_eq!(
        keel_host_prune_oci_cache(t.0, ptr::null(), 0, ptr::null_mut(), ptr::null_mut()),
        KEEL_ERR_NULL_POINTER
    );
    let empty = cstr("");
    assert_eq!(
        keel_host_prune_oci_cache(t.0, empty.as_ptr(), 0, ptr::null_mut(), ptr::null_mut()),
        KEEL_ERR_INVALID_ARGUMENT
    );
    assert!(entry(&refs[2].1).exists());
}

fn openssl(args: &[&str], dir: &Path) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_remote_registry_is_reached_over_verified_tls() {
    // A registry speaking HTTPS on this machine's non-loopback address, its certificate
    // issued by a CA made for the test (not in the system's roots).
    let ip = non_loopback_ipv4();
    let pki = common::tempdir("fleet-tls-pki");
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=keel-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        &pki,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={ip}"),
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
        ],
        &pki,
    );
    std::fs::write(
        pki.join("srv.ext"),
        format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "srv.ext",
            "-out",
            "srv.pem",
        ],
        &pki,
    );
    let reg = Registry::start_cfg(
        "fleet-tls",
        None,
        &ip,
        Some((&pki.join("srv.pem"), &pki.join("srv.key"))),
    );
    let k = key(25);
    let folder = echo_folder("fleet-tls", Some(&k));
    let r = reg.reference("plugins/echo:1");
    let cli = |args: &[&str], ca: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keel"));
        c.args(args).env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
        if let Some(ca) = ca {
            c.env("SSL_CERT_FILE", ca);
        }
        let o = c.output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    // The certificate is checked: unknown issuer, no push, no pull.
    let (code, out) = cli(&["push", folder.to_str().unwrap(), &r], None);
    assert_ne!(code, 0, "{out}");
    let dest = common::tempdir("fleet-tls-pull");
    let (code, out) = cli(&["pull", &r, dest.join("a").to_str().unwrap(), "--json"], None);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("KEEL_ERR_OCI_PULL_FAILED"), "{out}");
    assert!(!dest.join("a").exists());
    // With the CA trusted (SSL_CERT_FILE, read by the system-roots loader): push and pull
    // over TLS, the pulled folder is the pushed one.
    let ca = pki.join("ca.pem");
    let (code, out) = cli(&["push", folder.to_str().unwrap(), &r], Some(&ca));
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&["pull", &r, dest.join("b").to_str().unwrap()], Some(&ca));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        std::fs::read(dest.join("b/libecho.so")).unwrap(),
        std::fs::read(folder.join("libecho.so")).unwrap()
    );
    // --insecure allows plain HTTP, which a TLS registry does not speak: still no pull.
    let (code, out) = cli(&["pull", &r, dest.join("c").to_str().unwrap(), "--insecure"], Some(&ca));
    assert_ne!(code, 0, "{out}");
}
