// ThemisDB's PluginManager over Keel (include/keel/themis/plugin_manager.hpp), driven by code
// written against the PluginManager API only (-Wall -Wextra -Werror, C++17): a legacy ThemisDB
// C++ plugin (tests/fixtures/themis/legacy_plugin.cpp, built against a header laid out as
// ThemisDB's) and the native echo plugin side by side, in ThemisDB's nested layout.
// Usage: test_plugin_manager <fixture dir>   (expects echo/echo.json and legacy/plugin.json)
#include <keel/themis/plugin_manager.hpp>

#include "legacy_fixture_api.h"

#include <cstdio>
#include <cstring>
#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using themis::errors::ErrorCode;
using themis::plugins::PluginManager;
using themis::plugins::PluginReloadPhase;

static int failures = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);          \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

#define CHECK_ERR(result, want, needle)                                                            \
    do {                                                                                           \
        const auto &r_ = (result);                                                                 \
        CHECK(!r_.has_value());                                                                    \
        if (!r_.has_value()) {                                                                     \
            if (r_.error().code() != (want))                                                       \
                std::fprintf(stderr, "  got code %d: %s\n", static_cast<int>(r_.error().code()),   \
                             r_.error().context().c_str());                                        \
            CHECK(r_.error().code() == (want));                                                    \
            CHECK(r_.error().context().find(needle) != std::string::npos);                         \
        }                                                                                          \
    } while (0)

#define CHECK_OK(result)                                                                           \
    do {                                                                                           \
        const auto &r_ = (result);                                                                 \
        if (!r_.has_value()) {                                                                     \
            std::fprintf(stderr, "%s:%d: unexpected error %d: %s\n", __FILE__, __LINE__,           \
                         static_cast<int>(r_.error().code()), r_.error().context().c_str());       \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static std::string read(const fs::path &p) {
    std::ifstream f(p);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

static void write(const fs::path &p, const std::string &text) {
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
}

static std::string replace(std::string s, const std::string &from, const std::string &to) {
    size_t p = s.find(from);
    if (p != std::string::npos) s.replace(p, from.size(), to);
    return s;
}

static void error_mapping() {
    // Every keel_status (enumerated through keel_status_name) maps to one code in 6300..6313
    // (the switch in toErrorCode has no default: a new status does not compile unmapped).
    int statuses = 0;
    for (uint32_t v = 1; v < 2000; v++) {
        const char *name = nullptr;
        if (keel_status_name(v, &name) != KEEL_OK) continue;
        statuses++;
        int code = static_cast<int>(themis::errors::toErrorCode(static_cast<keel_status>(v)));
        if (code < 6300 || code > 6313) std::fprintf(stderr, "%s -> %d\n", name, code);
        CHECK(code >= 6300 && code <= 6313);
        // OCI codes (6307-6310) only for the KEEL_ERR_OCI_* causes; edition/licence codes come
        // from the gates.
        const bool oci = std::string(name).rfind("KEEL_ERR_OCI_", 0) == 0;
        CHECK(oci ? (code >= 6307 && code <= 6310) : (code < 6307 || code == 6311));
    }
    CHECK(statuses >= 60);
    CHECK(themis::errors::toErrorCode(KEEL_ERR_DEPENDENCY_CYCLE) == ErrorCode::ERR_PLUGIN_CIRCULAR_DEPENDENCY);
    CHECK(themis::errors::toErrorCode(KEEL_ERR_DEPENDENCY_MISSING) == ErrorCode::ERR_PLUGIN_MISSING_DEPENDENCY);
    CHECK(themis::errors::toErrorCode(KEEL_ERR_HAS_DEPENDENTS) == ErrorCode::ERR_PLUGIN_DEPENDENCY_CONFLICT);
    CHECK(themis::errors::toErrorCode(KEEL_ERR_DIGEST_MISMATCH) == ErrorCode::ERR_PLUGIN_INVALID_SIGNATURE);
    CHECK(themis::errors::toErrorCode(KEEL_ERR_CAPABILITY_DENIED) == ErrorCode::ERR_PLUGIN_CAPABILITY_ESCALATION);
    CHECK(themis::errors::toErrorCode(KEEL_ERR_PLUGIN_NOT_FOUND) == ErrorCode::ERR_PLUGIN_NOT_FOUND);
    CHECK(themis::errors::toErrorCode(KEEL_ERR_MANIFEST_SCHEMA) == ErrorCode::ERR_PLUGIN_INCOMPATIBLE);
    CHECK(themis::errors::toErrorCode(KEEL_ERR_OCI_PULL_FAILED) == ErrorCode::ERR_PLUGIN_OCI_PULL_FAILED);
    CHECK(themis::errors::toErrorCode(KEEL_ERR_OCI_AUTH_FAILED) == ErrorCode::ERR_PLUGIN_OCI_PULL_FAILED);
    CHECK(themis::errors::toErrorCode(KEEL_ERR_OCI_MANIFEST_NOT_FOUND) == ErrorCode::ERR_PLUGIN_OCI_MANIFEST_NOT_FOUND);
    CHECK(themis::errors::toErrorCode(KEEL_ERR_OCI_DIGEST_MISMATCH) == ErrorCode::ERR_PLUGIN_OCI_HASH_MISMATCH);
    CHECK(themis::errors::toErrorCode(KEEL_ERR_OCI_BAD_REFERENCE) == ErrorCode::ERR_PLUGIN_OCI_INVALID_REFERENCE);
}

// A WASM plugin, a native plugin and a self-healing ThemisDB plugin under one manager.
static void side_by_side(const fs::path &fixtures, const fs::path &root) {
    const fs::path plugins = root / "plugins";
    fs::create_directories(plugins / "functions" / "compute");
    fs::copy_file(fixtures / "compute" / "compute.wasm", plugins / "functions" / "compute" / "compute.wasm");
    write(plugins / "functions" / "compute" / "keel.json", read(fixtures / "compute" / "compute.json"));
    fs::create_directories(plugins / "native" / "echo");
    fs::copy_file(fixtures / "echo" / "libecho.so", plugins / "native" / "echo" / "libecho.so");
    write(plugins / "native" / "echo" / "keel.json", read(fixtures / "echo" / "echo.json"));
    fs::create_directories(plugins / "importers" / "healer");
    fs::copy_file(fixtures / "healer" / "liblegacy.so", plugins / "importers" / "healer" / "liblegacy.so");
    write(plugins / "importers" / "healer" / "plugin.json", read(fixtures / "healer" / "plugin.json"));

    PluginManager pm;
    CHECK(keel_host_set_require_signature(pm.host(), false) == KEEL_OK);
    CHECK(pm.scanPluginDirectory(plugins.string()).value_or(0) == 3);
    CHECK_OK(pm.loadPlugin("compute"));
    CHECK_OK(pm.loadPlugin("echo"));
    CHECK_OK(pm.loadPlugin("healer"));
    CHECK(pm.listLoadedPlugins() == (std::vector<std::string>{"compute", "echo", "healer"}));

    // The WASM plugin through its IThemisPlugin adapter, as ThemisDB code would get it.
    auto compute = pm.getPlugin("compute");
    CHECK_OK(compute);
    if (compute) {
        themis::plugins::IThemisPlugin *p = *compute;
        CHECK(std::strcmp(p->getName(), "compute") == 0 && std::strcmp(p->getVersion(), "1.0.0") == 0);
        auto *adapter = static_cast<keel::ThemisAdapter *>(p->getInstance());
        CHECK(adapter != nullptr);
        if (adapter != nullptr) {
            const std::string sum = adapter->call("sum", std::string("\x01\x02\x03", 3));
            CHECK(sum == std::string("\x06\0\0\0\0\0\0\0", 8)); // 8-byte little-endian 6
        }
    }
    auto cm = pm.getManifest("compute");
    CHECK(cm && cm->runtime == "wasm" && cm->generation == 1);
    auto cfns = pm.listFunctions("compute");
    CHECK(cfns && cfns->size() == 5 && (*cfns)[0] == "sum");
    CHECK_OK(pm.reloadPlugin("compute"));
    auto cm2 = pm.getManifest("compute");
    CHECK(cm2 && cm2->generation == 2);

    // The ThemisDB plugin's own mix-in, reached by ThemisDB code through getPlugin, and its
    // PluginDiagnostics in the manager's diagnostics.
    auto healer = pm.getPlugin("healer");
    CHECK_OK(healer);
    if (healer) {
        auto *h = dynamic_cast<themis::plugins::ISelfHealingPlugin *>(static_cast<themis::plugins::IThemisPlugin *>(*healer));
        CHECK(h != nullptr);
        if (h != nullptr) CHECK(h->performHealthCheck().status == themis::plugins::PluginHealthStatus::HEALTHY);
    }
    const std::string diag = pm.getDiagnosticsForPlugin("healer");
    CHECK(diag.find("\"plugin_diagnostics\":{\"status\":\"HEALTHY\"") != std::string::npos);
    CHECK(pm.getDiagnosticsForPlugin("echo").find("plugin_diagnostics") == std::string::npos);
    CHECK_OK(pm.unloadAllPlugins());
    CHECK(pm.listLoadedPlugins().empty());
}

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s <fixture dir>\n", argv[0]);
        return 2;
    }
    error_mapping();
    const fs::path fixtures = argv[1];

    // ThemisDB's layout: plugins/<category>/<name>/plugin.json, plus a stray JSON file.
    const fs::path root = fs::temp_directory_path() / ("keel-pm-" + std::to_string(::getpid()));
    fs::remove_all(root);
    const fs::path plugins = root / "plugins";
    fs::create_directories(plugins / "importers" / "legacy");
    fs::copy_file(fixtures / "legacy" / "liblegacy.so", plugins / "importers" / "legacy" / "liblegacy.so");
    write(plugins / "importers" / "legacy" / "plugin.json", read(fixtures / "legacy" / "plugin.json"));
    fs::create_directories(plugins / "native" / "echo");
    fs::copy_file(fixtures / "echo" / "libecho.so", plugins / "native" / "echo" / "libecho.so");
    const std::string echo_json = read(fixtures / "echo" / "echo.json");
    write(plugins / "native" / "echo" / "keel.json", echo_json);
    // echo2 depends on the legacy plugin.
    fs::create_directories(plugins / "native" / "echo2");
    fs::copy_file(fixtures / "echo" / "libecho.so", plugins / "native" / "echo2" / "libecho.so");
    write(plugins / "native" / "echo2" / "keel.json",
          replace(replace(echo_json, "\"name\": \"echo\"", "\"name\": \"echo2\""), "\"capabilities\"",
                  "\"dependencies\": {\"legacy\": \">=1.0.0\"}, \"auto_load\": true, \"capabilities\""));
    write(plugins / "notes.json", "{\"not\": \"a manifest\"}");

    {
        PluginManager pm;
        CHECK(keel_host_set_require_signature(pm.host(), false) == KEEL_OK);

        // ---- scan ----
        CHECK_ERR(pm.scanPluginDirectory((root / "missing").string()), ErrorCode::ERR_PLUGIN_NOT_FOUND,
                  "KEEL_ERR_FILE_NOT_FOUND");
        auto scanned = pm.scanPluginDirectory(plugins.string());
        CHECK_OK(scanned);
        CHECK(scanned && *scanned == 3); // notes.json is not a manifest
        CHECK(pm.listPlugins().size() == 3);
        CHECK(pm.listLoadedPlugins().empty());
        CHECK(!pm.isPluginLoaded("legacy"));
        CHECK_ERR(pm.getPlugin("legacy"), ErrorCode::ERR_PLUGIN_NOT_FOUND, "legacy");

        // ---- loadPluginFromOci: its codes without a registry (tests/fleet.rs pulls from one) ----
        CHECK_ERR(pm.loadPluginFromOci("Not A Reference", (root / "oci-cache").string()),
                  ErrorCode::ERR_PLUGIN_OCI_INVALID_REFERENCE, "KEEL_ERR_OCI_BAD_REFERENCE");
        CHECK_ERR(pm.loadPluginFromOci("127.0.0.1:1/plugins/echo:1.0.0", (root / "oci-cache").string()),
                  ErrorCode::ERR_PLUGIN_OCI_PULL_FAILED, "KEEL_ERR_OCI_PULL_FAILED");
        CHECK(!pm.isPluginLoaded("echo"));
        CHECK_ERR(pm.unloadPlugin("legacy"), ErrorCode::ERR_PLUGIN_NOT_FOUND, "legacy");
        CHECK_ERR(pm.loadPlugin("nope"), ErrorCode::ERR_PLUGIN_NOT_FOUND, "nope");
        auto m2 = pm.getManifest("echo2");
        CHECK(m2 && m2->dependencies == std::vector<std::string>{"legacy"} && m2->auto_load);
        CHECK_ERR(pm.getManifest("nope"), ErrorCode::ERR_PLUGIN_NOT_FOUND, "nope");

        // ---- load in dependency order ----
        auto e2 = pm.loadPlugin("echo2");
        CHECK_OK(e2);
        CHECK(pm.isPluginLoaded("legacy") && pm.isPluginLoaded("echo2") && !pm.isPluginLoaded("echo"));
        auto again = pm.loadPlugin("echo2");
        CHECK(again && e2 && *again == *e2); // already loaded: the same instance

        // getPlugin: the legacy plugin's own IThemisPlugin, its getInstance() as in ThemisDB.
        auto legacy = pm.getPlugin("legacy");
        CHECK_OK(legacy);
        int64_t count_before = 0;
        if (legacy) {
            themis::plugins::IThemisPlugin *p = *legacy;
            CHECK(std::strcmp(p->getName(), "legacy") == 0);
            // The plugin's own object answers for itself (the fixture says CUSTOM); the manager's
            // type index uses the manifest's "type" (importer), as ThemisDB's does.
            CHECK(p->getType() == themis::plugins::PluginType::CUSTOM);
            CHECK(p->getCapabilities().provides_shard_policy && !p->getCapabilities().supports_streaming);
            CHECK(dynamic_cast<keel::ThemisAdapter *>(p) == nullptr); // not an adapter
            auto *api = static_cast<legacy_fixture_api *>(p->getInstance());
            CHECK(api != nullptr && api->magic == LEGACY_FIXTURE_MAGIC);
            if (api != nullptr && api->magic == LEGACY_FIXTURE_MAGIC) {
                api->bump(api->self);
                count_before = api->bump(api->self);
                CHECK(count_before == 2);
            }
        }
        // A native plugin: an IThemisPlugin adapter.
        auto echo = pm.loadPlugin("echo");
        CHECK_OK(echo);
        if (echo) {
            CHECK(std::strcmp((*echo)->getName(), "echo") == 0);
            auto *adapter = static_cast<keel::ThemisAdapter *>((*echo)->getInstance());
            CHECK(adapter != nullptr && adapter->call("echo", "hi") == "hi");
        }
        auto byType = pm.getPluginsByType(themis::plugins::PluginType::IMPORTER);
        CHECK(byType.size() == 1 && legacy && byType[0] == *legacy);
        CHECK(pm.listLoadedPlugins() == (std::vector<std::string>{"echo", "echo2", "legacy"}));
        auto lm = pm.getManifest("legacy");
        CHECK(lm && lm->runtime == "themis" && lm->generation == 1 && lm->binary_sha256.size() == 64);
        CHECK(lm && lm->state == themis::plugins::PluginState::Active);
        auto fns = pm.listFunctions("echo");
        CHECK(fns && !fns->empty() && (*fns)[0] == "echo");
        CHECK(pm.getPluginState("echo") == themis::plugins::PluginState::Active);
        CHECK(pm.getPluginState("nope") == themis::plugins::PluginState::Unloaded);

        // ---- unload blocked by dependents, with their names ----
        CHECK_ERR(pm.unloadPlugin("legacy"), ErrorCode::ERR_PLUGIN_DEPENDENCY_CONFLICT, "echo2");
        CHECK(pm.isPluginLoaded("legacy"));

        // ---- reload with listeners and state ----
        std::vector<std::pair<std::string, PluginReloadPhase>> phases;
        pm.registerReloadListener([&](const std::string &n, PluginReloadPhase ph) { phases.emplace_back(n, ph); });
        pm.registerReloadListener([](const std::string &, PluginReloadPhase) { throw 42; }); // swallowed
        CHECK_OK(pm.reloadPlugin("legacy"));
        CHECK(phases.size() == 3);
        if (phases.size() == 3) {
            CHECK(phases[0].first == "legacy" && phases[0].second == PluginReloadPhase::BEFORE_UNLOAD);
            CHECK(phases[1].second == PluginReloadPhase::AFTER_UNLOAD);
            CHECK(phases[2].second == PluginReloadPhase::AFTER_LOAD);
        }
        auto reloaded = pm.getPlugin("legacy");
        CHECK_OK(reloaded);
        if (reloaded) {
            auto *api = static_cast<legacy_fixture_api *>((*reloaded)->getInstance());
            CHECK(api != nullptr && api->count(api->self) == count_before); // state carried over
        }
        auto lm2 = pm.getManifest("legacy");
        CHECK(lm2 && lm2->generation == 2);
        CHECK_ERR(pm.reloadPlugin("nope"), ErrorCode::ERR_PLUGIN_NOT_FOUND, "nope");
        pm.clearReloadListeners();
        CHECK_OK(pm.reloadPlugin("echo"));
        CHECK(phases.size() == 3);
        // A listener may call the manager, lifecycle operations included (no deadlock: Keel
        // delivers outside its lock, the manager holds none of its own while calling out).
        int inner = 0;
        pm.registerReloadListener([&](const std::string &n, PluginReloadPhase ph) {
            if (n != "legacy" || ph != PluginReloadPhase::AFTER_LOAD) return;
            if (pm.getPlugin("legacy").has_value() && pm.unloadPlugin("echo").has_value() &&
                pm.loadPlugin("echo").has_value())
                inner++;
        });
        CHECK_OK(pm.reloadPlugin("legacy"));
        CHECK(inner == 1);
        CHECK(pm.isPluginLoaded("echo"));
        auto echo_again = pm.getPlugin("echo");
        CHECK(echo_again && static_cast<keel::ThemisAdapter *>((*echo_again)->getInstance())->call("echo", "x") == "x");
        pm.clearReloadListeners();

        // ---- capabilities ----
        using themis::plugins::PluginCapabilityRequirement;
        auto ok = pm.negotiateCapabilities("legacy", {PluginCapabilityRequirement{"provides_shard_policy", {"1.0.0", "2.0.0"}}});
        CHECK(ok.success && ok.satisfied == std::vector<std::string>{"provides_shard_policy"});
        auto bad = pm.negotiateCapabilities(
            "legacy", {PluginCapabilityRequirement{"batching", {}}, PluginCapabilityRequirement{"provides_shard_policy", {"2.0.0", ""}}});
        CHECK(!bad.success && bad.unsatisfied.size() == 2);
        CHECK(bad.error_message ==
              "capability 'batching' not supported; plugin version '1.0.0' out of range [2.0.0, ] for 'provides_shard_policy'");
        auto missing = pm.negotiateCapabilities("nope", {});
        CHECK(!missing.success && missing.error_message == "Plugin 'nope' not found or not loaded");
        CHECK_OK(pm.checkCapabilityEscalation("legacy"));
        CHECK(!pm.isPluginRestricted("legacy"));
        CHECK_ERR(pm.checkCapabilityEscalation("nope"), ErrorCode::ERR_PLUGIN_NOT_FOUND, "nope");

        // ---- metrics and diagnostics ----
        const auto &metrics = pm.getMetrics();
        CHECK(metrics.getStats("echo").function_calls >= 1);
        CHECK(metrics.getStats("legacy").reload_count == 2);
        CHECK(metrics.exposition().find("plugin_function_calls{plugin=\"echo\"}") != std::string::npos);
        const std::string diag = pm.getDiagnosticsForPlugin("legacy");
        CHECK(diag.find("\"plugin_name\":\"legacy\"") != std::string::npos);
        CHECK(diag.find("\"loaded\":true") != std::string::npos);
        CHECK(diag.find("\"lifecycle_state\":\"LOADED\"") != std::string::npos);
        CHECK(diag.find("\"streaming\":false") != std::string::npos);
        CHECK(diag.find("\"is_restricted\":false") != std::string::npos);
        CHECK(pm.getDiagnosticsForPlugin("nope").find("\"status\":\"not_found\"") != std::string::npos);

        // ---- hot plug over Keel's watcher ----
        CHECK(!pm.isHotPlugEnabled());
        themis::plugins::HotPlugConfig no_unload;
        no_unload.auto_unload = false;
        CHECK(!pm.enableHotPlug(plugins.string(), no_unload));
        CHECK(!pm.enableHotPlug((root / "missing").string()));
        CHECK(pm.enableHotPlug(plugins.string()));
        CHECK(pm.isHotPlugEnabled());
        CHECK(!pm.enableHotPlug(plugins.string())); // second enable
        pm.disableHotPlug();
        CHECK(!pm.isHotPlugEnabled());

        // ---- unload in order; unload-all; auto-load ----
        CHECK_OK(pm.unloadPlugin("echo2"));
        CHECK_OK(pm.unloadPlugin("legacy"));
        CHECK_ERR(pm.unloadPlugin("legacy"), ErrorCode::ERR_PLUGIN_NOT_FOUND, "legacy");
        CHECK(pm.listPlugins().size() == 3); // entries stay registered, unloaded
        CHECK_OK(pm.unloadAllPlugins());
        CHECK(pm.listLoadedPlugins().empty() && pm.listPlugins().empty());
        CHECK(pm.scanPluginDirectory(plugins.string()).value_or(0) == 3);
        auto autoloaded = pm.autoLoadPlugins();
        CHECK_OK(autoloaded);
        CHECK(autoloaded && *autoloaded == 1); // echo2 (legacy loaded as its dependency)
        CHECK(pm.isPluginLoaded("echo2") && pm.isPluginLoaded("legacy") && !pm.isPluginLoaded("echo"));
        CHECK_OK(pm.unloadAllPlugins());

        // ---- load from a path; errors keep Keel's code name and message ----
        CHECK_ERR(pm.loadPluginFromPath((plugins / "native" / "echo").string(), "{\"x\":1}"),
                  ErrorCode::ERR_PLUGIN_LOAD_FAILED, "manifest");
        auto fromPath = pm.loadPluginFromPath((plugins / "native" / "echo").string());
        CHECK_OK(fromPath);
        CHECK_ERR(pm.loadPluginFromPath((root / "missing" / "plugin.json").string()), ErrorCode::ERR_PLUGIN_NOT_FOUND,
                  "KEEL_ERR_FILE_NOT_FOUND");
        CHECK_OK(pm.unloadPlugin("echo"));

        // A tampered binary: the ThemisDB code for a failed integrity check, Keel's name kept.
        {
            std::ofstream f(plugins / "importers" / "legacy" / "liblegacy.so", std::ios::app | std::ios::binary);
            f << "tampered";
        }
        CHECK(pm.scanPluginDirectory(plugins.string()).value_or(0) == 3);
        CHECK_ERR(pm.loadPlugin("legacy"), ErrorCode::ERR_PLUGIN_INVALID_SIGNATURE, "KEEL_ERR_DIGEST_MISMATCH");
        CHECK(pm.getDiagnosticsForPlugin("legacy").find("\"error_count\":1") != std::string::npos);
        CHECK_ERR(pm.loadPlugin("echo2"), ErrorCode::ERR_PLUGIN_INVALID_SIGNATURE, "KEEL_ERR_DIGEST_MISMATCH");
        CHECK(!pm.isPluginLoaded("echo2"));

        // ---- edition and licence gates: off by default, configuration of the façade ----
        write(plugins / "importers" / "gated" / "plugin.json",
              replace(replace(read(fixtures / "legacy" / "plugin.json"), "\"name\": \"legacy\"", "\"name\": \"gated\""),
                      "\"type\"", "\"license_feature\": \"enterprise_plugins\", \"type\""));
        fs::copy_file(fixtures / "legacy" / "liblegacy.so", plugins / "importers" / "gated" / "liblegacy.so");
        CHECK(PluginManager::isEditionSupported() && PluginManager::isLicensed());
        PluginManager::editionConfig().enforce = true;
        CHECK(!PluginManager::isLicensed());
        CHECK(pm.scanPluginDirectory(plugins.string()).has_value());
        CHECK_ERR(pm.loadPlugin("gated"), ErrorCode::ERR_PLUGIN_LICENSE_CLAIM_REJECTED, "enterprise_plugins");
        PluginManager::editionConfig().licensed_features.insert("enterprise_plugins");
        CHECK_OK(pm.loadPlugin("gated"));
        PluginManager::editionConfig() = themis::plugins::EditionConfig();
    }
    side_by_side(fixtures, root / "side-by-side");
    fs::remove_all(root);
    if (failures != 0) {
        std::fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    std::printf("test_plugin_manager: all checks passed\n");
    return 0;
}
