// ThemisDB's PluginManager::loadPluginFromOci (include/keel/themis/plugin_manager.hpp) against a
// real OCI registry (-Wall -Wextra -Werror, C++17): the ctest fixture tests/registry/fixture.sh
// pushed the legacy ThemisDB plugin (its plugin.json, signed) and the native echo plugin.
// Usage: test_oci_themis <registry.env written by the fixture> <work dir>
#include <keel/themis/plugin_manager.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

namespace fs = std::filesystem;
using themis::errors::ErrorCode;
using themis::plugins::PluginManager;

static int failures = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);          \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

#define CHECK_CODE(result, want)                                                                   \
    do {                                                                                           \
        const auto &r_ = (result);                                                                 \
        CHECK(!r_.has_value());                                                                    \
        if (!r_.has_value() && r_.error().code() != (want))                                        \
            std::fprintf(stderr, "  got code %d: %s\n", static_cast<int>(r_.error().code()),       \
                         r_.error().context().c_str());                                            \
        if (!r_.has_value()) CHECK(r_.error().code() == (want));                                   \
    } while (0)

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

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: test_oci_themis <registry.env> <work dir>\n");
        return 2;
    }
    auto env = read_env(argv[1]);
    const fs::path work = argv[2];
    fs::remove_all(work);
    fs::create_directories(work);
    if (env["legacy_ref"].empty() || env["trust"].empty()) {
        std::fprintf(stderr, "registry.env is incomplete (did the registry fixture run?)\n");
        return 1;
    }
    const std::string cache = (work / "cache").string();

    // The server trusts the fixture's key; signatures stay required (Keel's default).
    PluginManager pm;
    CHECK(keel_host_set_trust_store_file(pm.host(), env["trust"].c_str()) == KEEL_OK);

    // A ThemisDB plugin (plugin.json + createPlugin/destroyPlugin) pulled by tag, and by digest.
    auto legacy = pm.loadPluginFromOci(env["legacy_ref"], cache);
    CHECK(legacy.has_value());
    if (legacy.has_value()) {
        CHECK(legacy.value() != nullptr);
        if (legacy.value() != nullptr) CHECK(std::strcmp(legacy.value()->getName(), "legacy") == 0);
    } else {
        std::fprintf(stderr, "  loadPluginFromOci: %d %s\n", static_cast<int>(legacy.error().code()),
                     legacy.error().context().c_str());
    }
    PluginManager second;
    CHECK(keel_host_set_trust_store_file(second.host(), env["trust"].c_str()) == KEEL_OK);
    auto by_digest = second.loadPluginFromOci(env["addr"] + "/themis/legacy@" + env["legacy_digest"], cache);
    CHECK(by_digest.has_value());

    // ThemisDB's OCI codes: 6310 bad reference, 6308 manifest not found, 6307 pull failure.
    CHECK_CODE(pm.loadPluginFromOci("UPPER/Case::", cache), ErrorCode::ERR_PLUGIN_OCI_INVALID_REFERENCE);
    CHECK_CODE(pm.loadPluginFromOci(env["addr"] + "/themis/legacy:no-such-tag", cache),
               ErrorCode::ERR_PLUGIN_OCI_MANIFEST_NOT_FOUND);
    CHECK_CODE(pm.loadPluginFromOci("127.0.0.1:1/themis/legacy:1.0.0", (work / "empty").string()),
               ErrorCode::ERR_PLUGIN_OCI_PULL_FAILED);
    // A server that trusts no key: the pulled plugin is refused by the trust chain.
    PluginManager stranger;
    auto refused = stranger.loadPluginFromOci(env["echo_ref"], (work / "cache2").string());
    CHECK(!refused.has_value());

    if (failures != 0) {
        std::fprintf(stderr, "test_oci_themis: %d check(s) failed\n", failures);
        return 1;
    }
    std::printf("test_oci_themis: all checks passed\n");
    return 0;
}
