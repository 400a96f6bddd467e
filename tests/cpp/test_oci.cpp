// Loading plugins from a real OCI registry through the C++ API (include/keel/keel.hpp, C++17,
// -Wall -Wextra -Werror): the registry is Debian's docker-registry started by the ctest fixture
// tests/registry/fixture.sh, which pushed the echo fixture signed with a key of its run.
// Usage: test_oci <registry.env written by the fixture> <work dir>
#include <keel/keel.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

namespace fs = std::filesystem;
using namespace std::chrono_literals;

static int failures = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);         \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/** The status keel::Error carried out of f (KEEL_OK if nothing was thrown). */
template <typename F> static keel_status status_of(F &&f) {
    try {
        f();
    } catch (const keel::Error &e) {
        return e.status();
    }
    return KEEL_OK;
}

static std::map<std::string, std::string> read_env(const fs::path &p) {
    std::map<std::string, std::string> env;
    std::ifstream f(p);
    std::string line;
    while (std::getline(f, line)) {
        const auto eq = line.find('=');
        if (eq != std::string::npos) env[line.substr(0, eq)] = line.substr(eq + 1);
    }
    return env;
}

static std::string echo(const keel::Plugin &p, const std::string &in) {
    return p.call(p.function("echo"), keel::ByteView(in));
}

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: test_oci <registry.env> <work dir>\n");
        return 2;
    }
    auto env = read_env(argv[1]);
    const fs::path work = argv[2];
    fs::remove_all(work);
    fs::create_directories(work);
    for (const char *k : {"addr", "echo_ref", "echo_digest", "trust"}) {
        if (env[k].empty()) {
            std::fprintf(stderr, "registry.env lacks %s (did the registry fixture run?)\n", k);
            return 1;
        }
    }
    const std::string cache = (work / "cache").string();

    // By tag, trust chain on (the host requires signatures): resolved once, digest reported.
    keel::Host host;
    host.set_trust_store_file(env["trust"]);
    std::string digest;
    keel::Plugin p = host.load_oci(env["echo_ref"], cache, {}, &digest);
    CHECK(digest == env["echo_digest"]);
    CHECK(echo(p, "from the registry") == "from the registry");

    // By digest in a second host, through registry options: a cache hit, same plugin.
    keel::Host second;
    second.set_trust_store_file(env["trust"]);
    keel::RegistryOptions opts;
    opts.timeout(5s).insecure(false);
    const std::string by_digest = env["addr"] + "/plugins/echo@" + env["echo_digest"];
    std::string digest2;
    keel::Plugin q = second.load_oci_with(by_digest, cache, opts, &digest2);
    CHECK(digest2 == env["echo_digest"]);
    CHECK(echo(q, "by digest") == "by digest");

    // Pull without loading, then load the folder: the same trust chain.
    const keel::OciPull pulled = keel::oci_pull_with(env["echo_ref"], (work / "cache2").string(), keel::RegistryOptions());
    CHECK(pulled.digest == env["echo_digest"]);
    CHECK(fs::is_regular_file(pulled.manifest_path));
    CHECK(keel::oci_pull(env["echo_ref"], (work / "cache2").string(), {}).digest == env["echo_digest"]);

    // A host that does not trust the signing key refuses the pulled plugin (nothing loaded).
    keel::Host stranger;
    CHECK(status_of([&] { stranger.load_oci(env["echo_ref"], (work / "cache3").string()); }) == KEEL_ERR_UNKNOWN_KEY);
    CHECK(status_of([&] { stranger.get("echo"); }) == KEEL_ERR_PLUGIN_NOT_FOUND);

    // Each cause its code.
    CHECK(status_of([&] { host.load_oci("UPPER/Case::", cache); }) == KEEL_ERR_OCI_BAD_REFERENCE);
    CHECK(status_of([&] { host.load_oci(env["addr"] + "/plugins/echo:no-such-tag", cache); }) ==
          KEEL_ERR_OCI_MANIFEST_NOT_FOUND);
    CHECK(status_of([&] { keel::RegistryOptions().basic("", "pw"); }) == KEEL_ERR_INVALID_ARGUMENT);
    CHECK(status_of([&] { keel::RegistryOptions().timeout(0ms); }) == KEEL_ERR_INVALID_ARGUMENT);
    // Basic credentials the registry does not ask for are harmless; a bearer token it cannot
    // check is refused only where the registry checks tokens (this one has no authentication).
    keel::RegistryOptions creds;
    creds.basic("fleet", "unused");
    CHECK(status_of([&] { keel::oci_pull_with(env["echo_ref"], (work / "cache4").string(), creds); }) == KEEL_OK);

    // Eviction: the folder the loaded plugins came from stays; the unused pulls go.
    const auto pruned = host.prune_oci_cache((work / "cache2").string(), 0);
    CHECK(pruned.removed == 1 && pruned.kept_bytes == 0);
    const auto kept = host.prune_oci_cache(cache, 0);
    CHECK(kept.removed == 0 && kept.kept_bytes > 0);
    CHECK(echo(p, "still loaded") == "still loaded");
    CHECK(status_of([&] { host.prune_oci_cache((work / "no-such").string(), 0); }) == KEEL_ERR_FILE_NOT_FOUND);

    // Error messages name the cause once: what() is "<name> (<code>): <message>".
    try {
        host.load_oci("UPPER/Case::", cache);
    } catch (const keel::Error &e) {
        const std::string w = e.what();
        CHECK(w.rfind("KEEL_ERR_OCI_BAD_REFERENCE (", 0) == 0);
        CHECK(w.find("[KEEL_ERR_OCI_BAD_REFERENCE]") == std::string::npos);
    }

    if (failures != 0) {
        std::fprintf(stderr, "test_oci: %d check(s) failed\n", failures);
        return 1;
    }
    std::printf("test_oci: all checks passed\n");
    return 0;
}
