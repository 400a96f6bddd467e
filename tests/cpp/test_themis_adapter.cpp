// ThemisDB compatibility from C++ (-Wall -Wextra -Werror): cpp/themis_adapter.hpp shows a
// native Keel plugin (tests/fixtures/native/echo.c) and a legacy ThemisDB C++ plugin
// (tests/fixtures/themis/legacy_plugin.cpp, loaded from its ThemisDB plugin.json) to code
// written against themis::plugins::IThemisPlugin.
// Usage: test_themis_adapter <fixture dir>   (expects echo/echo.json and legacy/plugin.json)
#include "themis_adapter.hpp"

#include "legacy_fixture_api.h"

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>

// ThemisDB's spelling is the real one; Keel's earlier spelling names the very same types.
static_assert(std::is_same<themis::IThemisPlugin, themis::plugins::IThemisPlugin>::value, "one type, two spellings");
static_assert(std::is_same<themis::IStatefulPlugin, themis::plugins::IStatefulPlugin>::value, "one type, two spellings");

static int failures = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            std::fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, #cond, \
                         keel::detail::last_error_message().c_str());                              \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

// Code written for ThemisDB: sees only the interface.
static std::string describe(themis::plugins::IThemisPlugin &p) {
    std::string s = p.getName();
    s += "@";
    s += p.getVersion();
    return s;
}

// The status a helper call threw (KEEL_OK if it did not throw).
template <typename F> static keel_status thrown(F &&f) {
    try {
        f();
    } catch (const keel::Error &e) {
        return e.status();
    }
    return KEEL_OK;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s <fixture dir>\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    keel_host *host = nullptr;
    CHECK(keel_host_new(&host) == KEEL_OK);
    CHECK(keel_host_set_require_signature(host, false) == KEEL_OK);

    // ---- A native Keel plugin as an IThemisPlugin. ----
    keel_plugin *echo = nullptr;
    CHECK(keel_host_load(host, (dir + "/echo/echo.json").c_str(), &echo) == KEEL_OK);
    {
        auto adapter = std::make_unique<keel::ThemisAdapter>(echo);
        themis::plugins::IThemisPlugin &plugin = *adapter;
        CHECK(describe(plugin) == "echo@1.0.0");
        CHECK(plugin.getType() == themis::plugins::PluginType::CUSTOM); // the echo manifest names no type
        themis::plugins::PluginCapabilities caps = plugin.getCapabilities();
        CHECK(!caps.supports_streaming && !caps.thread_safe && !caps.provides_shard_policy);
        CHECK(plugin.initialize("{\"ignored\":true}"));
        CHECK(plugin.getInstance() == static_cast<void *>(adapter.get()));
        // Code that got the instance can reach call() through it.
        auto *back = static_cast<keel::ThemisAdapter *>(plugin.getInstance());
        CHECK(back->call("echo", "hello") == "hello");
        CHECK(back->call("echo", std::string_view()) == "");
        CHECK(adapter->generation() == 1);
        // Helpers throw keel::Error with the cause; the interface methods never throw.
        CHECK(thrown([&] { adapter->call("fail", "boom"); }) == KEEL_ERR_CALL_FAILED);
        CHECK(thrown([&] { adapter->call("no_such_function", ""); }) == KEEL_ERR_FUNCTION_NOT_FOUND);
        try {
            adapter->call("fail", "boom");
        } catch (const keel::Error &e) {
            CHECK(std::strstr(e.what(), "asked to fail") != nullptr);
        }
        // KeepLoaded (default): shutdown leaves the plugin to the host.
        plugin.shutdown();
        CHECK(adapter->lastShutdownStatus() == KEEL_OK);
        CHECK(plugin.initialize("{}"));
        CHECK(adapter->call("echo", "still here") == "still here");
        // Deleting through the interface (as ThemisDB's unique_ptr<IThemisPlugin> does).
        std::unique_ptr<themis::plugins::IThemisPlugin> owned(adapter.release());
        owned.reset();
    }
    CHECK(thrown([&] { keel::ThemisAdapter::open(host, "missing"); }) == KEEL_ERR_PLUGIN_NOT_FOUND);
    CHECK(thrown([&] { keel::ThemisAdapter a(nullptr); }) == KEEL_ERR_NULL_POINTER);

    // ---- A legacy ThemisDB plugin, loaded from its plugin.json, through the adapter. ----
    keel_plugin *loaded = nullptr;
    CHECK(keel_host_load(host, (dir + "/legacy/plugin.json").c_str(), &loaded) == KEEL_OK);
    keel_plugin_free(loaded);
    {
        std::unique_ptr<keel::ThemisAdapter> legacy;
        try {
            legacy = keel::ThemisAdapter::open(host, "legacy", keel::OnShutdown::Unload);
        } catch (const keel::Error &e) {
            std::fprintf(stderr, "open(legacy) threw %u: %s\n", static_cast<unsigned>(e.status()), e.what());
            return 1;
        }
        themis::plugins::IThemisPlugin &plugin = *legacy;
        CHECK(describe(plugin) == "legacy@1.0.0");
        CHECK(plugin.getType() == themis::plugins::PluginType::IMPORTER); // plugin.json "type": "importer"
        themis::plugins::PluginCapabilities caps = plugin.getCapabilities();
        CHECK(caps.supports_streaming && caps.thread_safe && !caps.supports_batching);
        // getInstance() is the legacy object's own getInstance(), cast by type as ThemisDB does.
        auto *api = static_cast<legacy_fixture_api *>(plugin.getInstance());
        CHECK(api != nullptr && api->magic == LEGACY_FIXTURE_MAGIC);
        if (api != nullptr && api->magic == LEGACY_FIXTURE_MAGIC) {
            CHECK(api->bump(api->self) == 1);
            CHECK(std::strcmp(api->tag(api->self), "v1") == 0);
            CHECK(std::strcmp(api->config(api->self), "{}") == 0);
        }
        const std::string info = legacy->call("info", "");
        CHECK(info.find("\"name\":\"legacy\"") != std::string::npos);
        CHECK(info.find("\"stateful\":true") != std::string::npos);
        CHECK(legacy->call("state", "") == "{\"count\":1,\"tag\":\"v1\"}");
        const char *version = plugin.getVersion();

        // OnShutdown::Unload: shutdown unloads the plugin from the host.
        plugin.shutdown();
        CHECK(legacy->lastShutdownStatus() == KEEL_OK);
        CHECK(!plugin.initialize("{}"));
        CHECK(plugin.getInstance() == nullptr);
        CHECK(std::strcmp(plugin.getVersion(), "1.0.0") == 0 && plugin.getVersion() == version);
        CHECK(thrown([&] { legacy->call("info", ""); }) == KEEL_ERR_PLUGIN_UNLOADED);
        CHECK(thrown([&] { legacy->generation(); }) == KEEL_ERR_PLUGIN_UNLOADED);
        plugin.shutdown(); // a second unload reports, never throws
        CHECK(legacy->lastShutdownStatus() == KEEL_ERR_PLUGIN_NOT_FOUND);
    }

    CHECK(keel_host_free(host) == KEEL_OK);
    if (failures != 0) {
        std::fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    std::printf("themis adapter: all checks passed\n");
    return 0;
}
