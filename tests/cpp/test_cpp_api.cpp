// The C++ API of include/keel/keel.hpp with standard types only (C++17, -Wall -Wextra -Werror):
// keel::Host, keel::Plugin, keel::Buffer, keel::Error and every group of methods, against the
// fixtures built by the test build. No rust:: type and no keel_* C function is used here.
// Usage: test_cpp_api <fixture dir>
//   (echo/, evil/tampered.json, legacy/, compute/, hostfn/, capmetrics/)
#include <keel/keel.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <unistd.h>

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
template <typename F> static keel_status status_of(F &&f, std::string *what = nullptr) {
    try {
        f();
    } catch (const keel::Error &e) {
        if (what) *what = e.what();
        return e.status();
    }
    return KEEL_OK;
}

static bool contains(const std::string &s, const std::string &needle) { return s.find(needle) != std::string::npos; }
static bool starts_with(const std::string &s, const std::string &p) { return s.rfind(p, 0) == 0; }

static std::string read_file(const fs::path &p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}
static void write_file(const fs::path &p, const std::string &text) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f << text;
}

/** The "sha256" value of a Keel manifest. */
static std::string pinned_sha(const std::string &manifest) {
    const std::string key = "\"sha256\": \"";
    const auto at = manifest.find(key);
    if (at == std::string::npos) return "";
    return manifest.substr(at + key.size(), 64);
}

/** A plugin folder `<root>/<name>/keel.json` running the echo fixture's binary. */
static void echo_folder(const fs::path &root, const std::string &dir, const std::string &name,
                        const std::string &deps_json = "") {
    const fs::path folder = root / name;
    fs::create_directories(folder);
    fs::copy_file(fs::path(dir) / "echo" / "libecho.so", folder / "libecho.so", fs::copy_options::overwrite_existing);
    const std::string sha = pinned_sha(read_file(fs::path(dir) / "echo" / "echo.json"));
    std::string m = "{\"manifest_version\": 1, \"name\": \"" + name + "\", \"version\": \"1.2.3\", \"description\": \"x\", "
                    "\"runtime\": \"native\", \"binary\": {\"linux\": \"libecho.so\"}, \"sha256\": \"" + sha +
                    "\", \"capabilities\": [\"log\", \"kv:read\", \"kv:write\"]";
    if (!deps_json.empty()) m += ", \"dependencies\": " + deps_json;
    m += "}";
    write_file(folder / "keel.json", m);
}

template <typename Pred> static bool eventually(Pred &&p) {
    for (int i = 0; i < 1000; i++) { // up to ~10 s: a waiting bound, not a timing assertion
        if (p()) return true;
        std::this_thread::sleep_for(10ms);
    }
    return false;
}

/** A storage sink over a std::map (the server's table). */
class MapStorage : public keel::StorageSink {
public:
    std::optional<std::string> get(const keel::StorageRequest &r, std::string_view k) override {
        std::lock_guard<std::mutex> g(mu);
        auto it = rows.find(key(r, k));
        if (it == rows.end()) return std::nullopt;
        return it->second;
    }
    void put(const keel::StorageRequest &r, std::string_view k, std::string_view v) override {
        std::lock_guard<std::mutex> g(mu);
        rows[key(r, k)] = std::string(v);
    }
    bool remove(const keel::StorageRequest &r, std::string_view k) override {
        std::lock_guard<std::mutex> g(mu);
        return rows.erase(key(r, k)) > 0;
    }
    void scan(const keel::StorageRequest &, std::string_view,
              const std::function<bool(std::string_view, std::string_view)> &) override {}
    static std::string key(const keel::StorageRequest &r, std::string_view k) {
        return std::string(r.plugin) + "/" + std::string(r.table.value_or("kv")) + "/" + std::string(k);
    }
    std::mutex mu;
    std::map<std::string, std::string> rows;
};

static int run(const std::string &dir) {
    const fs::path tmp = fs::temp_directory_path() / ("keel-cpp-api-" + std::to_string(::getpid()));
    fs::remove_all(tmp);
    fs::create_directories(tmp);

    // ---- library-level functions ----
    const keel::Version v = keel::version();
    CHECK(v.major == KEEL_VERSION_MAJOR && v.minor == KEEL_VERSION_MINOR && v.patch == KEEL_VERSION_PATCH);
    CHECK(keel::status_name(KEEL_ERR_DIGEST_MISMATCH) == "KEEL_ERR_DIGEST_MISMATCH");
    CHECK(keel::capability_bit("kv:read") != 0 && keel::capability_bit("kv:read") != keel::capability_bit("log"));
    CHECK(status_of([] { keel::capability_bit("no:such"); }) == KEEL_ERR_CAPABILITY_UNKNOWN);
    CHECK(status_of([] { keel::capability_bit(std::string("lo\0g", 4)); }) == KEEL_ERR_INVALID_ARGUMENT);
    CHECK(contains(keel::manifest_read(dir + "/echo/echo.json"), "\"name\":\"echo\""));
    CHECK(!keel::openmetrics_content_type.empty() && contains(std::string(keel::prometheus_content_type), "0.0.4"));

    keel::Host host;
    CHECK(host.c_handle() != nullptr);
    host.set_require_signature(false);
    host.set_allow_unpinned(false); // turning it off always succeeds
    host.set_latency_sampling(1);
    host.set_drain_timeout(2s);

    // ---- errors: one keel::Error with status(), a std::exception; older names are aliases ----
    std::string what;
    CHECK(status_of([&] { host.get("nope"); }, &what) == KEEL_ERR_PLUGIN_NOT_FOUND);
    CHECK(starts_with(what, "KEEL_ERR_PLUGIN_NOT_FOUND (" + std::to_string(unsigned(KEEL_ERR_PLUGIN_NOT_FOUND)) + "): "));
    try {
        host.load(dir + "/missing.json");
        CHECK(false);
    } catch (const std::exception &e) { // catchable as std::exception and as the old names
        CHECK(dynamic_cast<const keel::CallError *>(&e) != nullptr);
        CHECK(dynamic_cast<const keel::RpcError *>(&e) != nullptr);
    }

    // ---- verify, load, plugin metadata, calls ----
    host.verify(dir + "/echo/echo.json");
    CHECK(status_of([&] { host.verify(dir + "/evil/tampered.json"); }) == KEEL_ERR_DIGEST_MISMATCH);

    std::mutex ev_mu;
    std::vector<std::tuple<std::string, keel::Event, std::uint64_t>> events;
    keel::ListenerHandle listening = host.add_listener([&](std::string_view name, keel::Event e, std::uint64_t g) {
        std::lock_guard<std::mutex> lock(ev_mu);
        events.emplace_back(std::string(name), e, g);
    });
    CHECK(listening.id() != 0);
    // A listener that throws: swallowed, the other listener still sees every event.
    keel::ListenerHandle thrower = host.add_listener([](std::string_view, keel::Event, std::uint64_t) {
        throw std::runtime_error("listener down");
    });

    keel::Plugin echo = host.load(dir + "/echo/echo.json");
    CHECK(echo.name() == "echo" && echo.version() == "1.0.0" && echo.type().empty());
    CHECK(echo.generation() == 1 && echo.state() == KEEL_STATE_ACTIVE);
    CHECK(!echo.has_trait("streaming"));
    const std::vector<std::string> fns = echo.functions();
    CHECK(!fns.empty() && fns[0] == "echo" && std::find(fns.begin(), fns.end(), "kv_put") != fns.end());
    CHECK(echo.has_capability("kv:read") && !echo.has_capability("random"));
    CHECK((echo.capabilities() & keel::capability_bit("log")) != 0);
    CHECK(status_of([&] { echo.themis_lease(); }) == KEEL_ERR_UNSUPPORTED);
    const keel::HealthReport before = echo.health();
    CHECK(before.generation == 1 && before.score == 1.0);

    const keel_function fecho = echo.function("echo");
    CHECK(status_of([&] { echo.function("no_such_fn"); }) == KEEL_ERR_FUNCTION_NOT_FOUND);
    keel::Buffer out;
    echo.call(fecho, "from a literal", out);
    CHECK(out.view() == "from a literal" && out.size() == 14 && out.str() == "from a literal");
    const std::string s("a std::string");
    echo.call(fecho, s, out);
    CHECK(out.view() == s);
    const std::vector<std::uint8_t> raw{0, 1, 2, 255};
    echo.call(fecho, raw, out);
    CHECK(out.bytes() == raw);
    CHECK(echo.call_bytes(fecho, raw) == raw);
    CHECK(echo.call(fecho, std::string_view("returned")) == "returned");
    CHECK(echo.call(fecho, keel::ByteView(raw.data(), 2)) == std::string("\0\1", 2));
    CHECK(status_of([&] { echo.call(echo.function("fail"), "boom", out); }, &what) == KEEL_ERR_CALL_FAILED);
    CHECK(out.empty() && contains(what, "asked to fail"));

    // Two threads, each with its own buffer, through one Plugin.
    {
        std::atomic<int> wrong{0};
        auto worker = [&](int id) {
            keel::Buffer mine;
            const std::string in = "thread " + std::to_string(id);
            for (int i = 0; i < 200; i++) {
                echo.call(fecho, in, mine);
                if (mine.view() != in) wrong++;
            }
        };
        std::thread a(worker, 1), b(worker, 2);
        a.join();
        b.join();
        CHECK(wrong == 0);
    }

    // ---- call options and cancel tokens ----
    {
        keel::CallOptions opts;
        opts.deadline = 5s;
        opts.tenant = "tenant-7";
        opts.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        echo.call(fecho, "with options", opts, out);
        CHECK(out.view() == "with options");
        CHECK(echo.call(fecho, "again", opts) == "again");
        opts.traceparent = "not-a-traceparent";
        CHECK(status_of([&] { echo.call(fecho, "x", opts, out); }) == KEEL_ERR_INVALID_ARGUMENT);
        opts.traceparent.clear();
        keel::CancelToken token;
        opts.cancel = token; // another reference to the same token
        token.cancel();
        CHECK(opts.cancel->cancelled());
        CHECK(status_of([&] { echo.call(fecho, "x", opts, out); }) == KEEL_ERR_CANCELLED);
    }

    // ---- reload, listeners, unload ----
    CHECK(host.reload("echo") == 2);
    CHECK(echo.generation() == 2 && echo.call(fecho, "after reload") == "after reload");
    {
        std::lock_guard<std::mutex> lock(ev_mu);
        CHECK(events.size() >= 3);
        if (events.size() >= 3) {
            CHECK(std::get<0>(events[0]) == "echo" && std::get<1>(events[0]) == KEEL_EVENT_LOADED &&
                  std::get<2>(events[0]) == 1);
            CHECK(std::get<1>(events.back()) == KEEL_EVENT_AFTER_SWAP && std::get<2>(events.back()) == 2);
        }
    }
    listening.remove(); // no event after this
    thrower.remove();
    std::size_t seen = 0;
    {
        std::lock_guard<std::mutex> lock(ev_mu);
        seen = events.size();
    }

    // ---- metrics (both formats) ----
    const std::string om = host.metrics_text();
    CHECK(contains(om, "keel_plugin_calls") && om.size() > 6 && om.substr(om.size() - 6) == "# EOF\n");
    const std::string prom = host.metrics_text(keel::MetricsFormat::Prometheus);
    CHECK(contains(prom, "keel_plugin_calls") && !contains(prom, "# EOF"));
    CHECK(contains(host.list_plugins_json(), "\"name\":\"echo\""));

    host.unload("echo");
    CHECK(echo.state() == KEEL_STATE_UNLOADED);
    CHECK(status_of([&] { echo.call(fecho, "x", out); }) == KEEL_ERR_PLUGIN_UNLOADED);
    CHECK(echo.name() == "echo"); // works after unload
    {
        std::lock_guard<std::mutex> lock(ev_mu);
        CHECK(events.size() == seen);
    }

    // ---- capability allowlist ----
    host.set_capability_allowlist({"log", "kv:read"});
    CHECK(host.capability_allowlist() == (keel::capability_bit("log") | keel::capability_bit("kv:read")));
    CHECK(host.allows("log") && !host.allows("kv:write"));
    CHECK(status_of([&] { host.set_capability_allowlist({"log", "no:such"}); }) == KEEL_ERR_CAPABILITY_UNKNOWN);
    CHECK(host.allows("kv:read")); // unchanged by the refused list
    CHECK(status_of([&] { host.verify(dir + "/echo/echo.json"); }) == KEEL_ERR_CAPABILITY_DENIED);
    CHECK(status_of([&] { host.load(dir + "/echo/echo.json"); }) == KEEL_ERR_CAPABILITY_DENIED);
    host.set_capability_allowlist({"log", "clock", "random", "kv:read", "kv:write", "metrics:write", "storage:read",
                                   "storage:write", "rpc:register"});

    // ---- trust store and signature policy ----
    CHECK(status_of([&] { host.set_trust_store_bytes("not a trust store"); }) == KEEL_ERR_TRUST_STORE_MALFORMED);
    const std::string store = "{\"keel_trust_store\": 1, \"version\": 1, \"keys\": []}";
    host.set_trust_store_bytes(store);
    write_file(tmp / "trust.json", store);
    host.set_trust_store_file((tmp / "trust.json").string()); // the same content again: fine
    CHECK(status_of([&] { host.set_trust_store_file((tmp / "none.json").string()); }) == KEEL_ERR_FILE_NOT_FOUND);
    CHECK(status_of([&] { host.set_trust_store_bytes("{\"keel_trust_store\": 1, \"version\": 0, \"keys\": []}"); }) ==
          KEEL_ERR_TRUST_STORE_ROLLBACK);
    CHECK(status_of([&] { host.set_require_signature(false); }) == KEEL_OK); // already off
    host.set_require_signature(true);
    CHECK(status_of([&] { host.set_require_signature(false); }) == KEEL_ERR_POLICY_DOWNGRADE);
    CHECK(status_of([&] { host.set_allow_unpinned(true); }) == KEEL_ERR_POLICY_DOWNGRADE);
    CHECK(status_of([&] { host.verify(dir + "/echo/echo.json"); }) == KEEL_ERR_NO_SIGNATURE);

    // ---- a plugin directory: load_dir (one set), dependencies, cascade, unload_all ----
    {
        keel::Host h;
        h.set_require_signature(false);
        const fs::path plugins = tmp / "plugins";
        echo_folder(plugins, dir, "base");
        echo_folder(plugins, dir, "top", "{\"base\": \"^1\"}");
        const std::vector<std::string> found = keel::discover_manifests(plugins.string());
        CHECK(found.size() == 2 && contains(found[0], "base") && contains(found[1], "top"));
        h.load_dir(plugins.string());
        keel::Plugin top = h.get("top");
        CHECK(top.version() == "1.2.3");
        CHECK(status_of([&] { h.unload("base"); }) == KEEL_ERR_HAS_DEPENDENTS);
        h.unload_cascade("base");
        CHECK(top.state() == KEEL_STATE_UNLOADED);
        CHECK(status_of([&] { h.get("base"); }) == KEEL_ERR_PLUGIN_NOT_FOUND);
        h.load_dir(plugins.string());
        CHECK(status_of([&] { h.load_dir(plugins.string()); }) == KEEL_ERR_ALREADY_LOADED);
        h.unload_all();
        CHECK(h.list_plugins_json() == "[]");

        // The health monitor.
        keel::Plugin b = h.load((plugins / "base" / "keel.json").string());
        keel::HealthMonitorConfig hc;
        hc.interval = 20ms;
        h.start_health_monitor(hc);
        CHECK(eventually([&] { return b.health().checks > 0; }));
        h.stop_health_monitor();
        CHECK(b.health().generation == 1);
        hc.interval = 0ms;
        CHECK(status_of([&] { h.start_health_monitor(hc); }) == KEEL_ERR_INVALID_ARGUMENT);
    }

    // ---- directory watch ----
    {
        keel::Host h;
        h.set_require_signature(false);
        const fs::path watched = tmp / "watched";
        echo_folder(watched, dir, "watched_echo");
        CHECK(status_of([&] { h.watch_dir((tmp / "no-dir").string()); }) == KEEL_ERR_FILE_NOT_FOUND);
        h.watch_dir(watched.string(), 50ms);
        CHECK(status_of([&] { h.watch_dir(watched.string(), 50ms); }) == KEEL_ERR_BUSY);
        CHECK(eventually([&] { return contains(h.watch_events(), "\"action\":\"load\""); }));
        CHECK(h.get("watched_echo").generation() == 1);
        h.stop_watching();
        h.stop_watching(); // idempotent
    }

    // ---- WASM configuration, cache ----
    {
        keel::Host h;
        h.set_require_signature(false);
        keel::WasmConfig cfg;
        CHECK(cfg.defaults.memory_mb > 0 && cfg.pool_size > 0); // Keel's defaults
        cfg.pool_size = 2;
        cfg.cache_dir = (tmp / "wasm-cache").string();
        fs::create_directories(cfg.cache_dir);
        cfg.cache_key.fill(7);
        keel::WasmConfig zero = cfg;
        zero.cache_key.fill(0);
        CHECK(status_of([&] { h.set_wasm_config(zero); }) == KEEL_ERR_INVALID_ARGUMENT);
        CHECK(h.wasm_memory_mode() == keel::WasmMemoryMode::Capped); // the default
        h.set_wasm_memory_mode(keel::WasmMemoryMode::Dynamic);
        CHECK(status_of([&] { h.set_wasm_memory_mode(static_cast<keel::WasmMemoryMode>(7)); }) ==
              KEEL_ERR_INVALID_ARGUMENT);
        // The engine (the default is wasmer unless KEEL_WASM_ENGINE says otherwise).
        CHECK(h.wasm_engine() == keel::WasmEngine::Wasmer && !h.wasm_manifest_may_choose_engine());
        h.set_wasm_engine(keel::WasmEngine::Wasmtime, true);
        CHECK(status_of([&] { h.set_wasm_engine(static_cast<keel::WasmEngine>(9)); }) ==
              KEEL_ERR_INVALID_ARGUMENT);
        h.set_wasm_config(cfg);
        CHECK(h.wasm_memory_mode() == keel::WasmMemoryMode::Dynamic); // kept by set_wasm_config
        CHECK(h.wasm_engine() == keel::WasmEngine::Wasmtime && h.wasm_manifest_may_choose_engine()); // kept too
        keel::Plugin compute = h.load(dir + "/compute/compute.json");
        CHECK(compute.call(compute.function("greet"), "wasm") == "hello");
        CHECK(h.wasm_cache_stats().compiles + h.wasm_cache_stats().hits == 1);
        CHECK(status_of([&] { h.set_wasm_config(cfg); }) == KEEL_ERR_INVALID_ARGUMENT); // runtime runs
        CHECK(status_of([&] { h.set_wasm_memory_mode(keel::WasmMemoryMode::Static); }) ==
              KEEL_ERR_INVALID_ARGUMENT);
        CHECK(status_of([&] { h.set_wasm_engine(keel::WasmEngine::Wasmer); }) == KEEL_ERR_INVALID_ARGUMENT);
    }

    // ---- ThemisDB legacy plugin: type, traits, lease ----
    {
        keel::Host h;
        h.set_require_signature(false);
        keel::Plugin legacy = h.load(dir + "/legacy/plugin.json");
        CHECK(legacy.type() == "importer" && legacy.has_trait("streaming"));
        keel::ThemisLease lease = legacy.themis_lease();
        CHECK(lease.generation() == 1 && lease.plugin() != nullptr);
    }

    // ---- host services: log sink, storage sink, host functions, RPC ----
    {
        keel::Host h;
        h.set_require_signature(false);
        h.set_capability_allowlist({"log", "kv:read", "kv:write", "storage:read", "storage:write", "metrics:write",
                                    "rpc:register"});
        std::mutex log_mu;
        std::vector<std::string> lines;
        h.set_log_sink([&](const keel::LogRecord &r) {
            std::lock_guard<std::mutex> g(log_mu);
            lines.push_back(std::string(r.plugin) + ": " + std::string(r.message));
        });
        auto storage = std::make_shared<MapStorage>();
        h.set_storage_sink(storage);
        keel::Plugin e = h.load(dir + "/echo/echo.json");
        e.call(e.function("log"), "a line for the sink");
        {
            std::lock_guard<std::mutex> g(log_mu);
            CHECK(std::find(lines.begin(), lines.end(), "echo: a line for the sink") != lines.end());
        }
        e.call(e.function("kv_put"), "k=v");
        {
            std::lock_guard<std::mutex> g(storage->mu);
            CHECK(storage->rows["echo/kv/k"] == "v");
        }
        CHECK(e.call(e.function("kv_get"), "k") == "v");
        h.set_log_sink(nullptr);
        h.set_storage_sink(nullptr);

        h.define_function("db", "get_row", "storage:read", [](const keel::CallContext &ctx, std::string_view key) {
            if (key == "missing") throw std::runtime_error("no such row");
            return std::string(ctx.plugin()) + ":" + std::string(key);
        });
        h.define_function("db", "put_row", "storage:write",
                          [](const keel::CallContext &, std::string_view) { return std::string(); });
        CHECK(status_of([&] {
                  h.define_function("keel", "x", "log", [](const keel::CallContext &, std::string_view) {
                      return std::string();
                  });
              }) == KEEL_ERR_INVALID_ARGUMENT);
        keel::Plugin hf = h.load(dir + "/hostfn/hostfn.json");
        CHECK(hf.call(hf.function("get"), "k0") == "hostfn:k0");
        CHECK(status_of([&] { hf.call(hf.function("get"), "missing"); }, &what) != KEEL_OK);
        CHECK(contains(what, "no such row"));
        h.remove_function("db", "put_row");
        CHECK(status_of([&] { h.remove_function("db", "put_row"); }) == KEEL_ERR_HOST_FN_NOT_FOUND);

        keel::Plugin cm = h.load(dir + "/capmetrics/capmetrics.json");
        CHECK(h.rpc_list().empty());
        CHECK(cm.call(cm.function("register"), "cpp.greet hello") == "0");
        const std::vector<keel::RpcEndpoint> eps = h.rpc_list();
        CHECK(eps.size() == 1 && eps[0].endpoint == "cpp.greet" && eps[0].plugin == "capmetrics");
        CHECK(contains(h.rpc_list_json(), "\"cpp.greet\""));
        CHECK(h.rpc_call("cpp.greet", "C++") == "hello from v1: C++");
        CHECK(keel::rpc_call(h, "cpp.greet", "free") == "hello from v1: free"); // the older free form
        keel::RpcTarget target = h.rpc_resolve("cpp.greet");
        CHECK(target.plugin.call(target.function, "resolved") == "hello from v1: resolved");
        keel::Buffer rb;
        h.rpc_call("cpp.greet", "buffered", rb);
        CHECK(rb.view() == "hello from v1: buffered");
        CHECK(status_of([&] { h.rpc_call("no.such", ""); }) == KEEL_ERR_RPC_ENDPOINT_NOT_FOUND);
    }

    // ---- RAII and moves ----
    {
        keel::ListenerHandle outlives;
        keel::Plugin survivor;
        {
            keel::Host a;
            a.set_require_signature(false);
            survivor = a.load(dir + "/echo/echo.json");
            keel::Host b = std::move(a);
            CHECK(a.c_handle() == nullptr && b.c_handle() != nullptr);
            CHECK(status_of([&] { a.get("echo"); }) == KEEL_ERR_NULL_POINTER);
            CHECK(b.get("echo").generation() == 1);
            outlives = b.add_listener([](std::string_view, keel::Event, std::uint64_t) {});
        } // the host is freed: the plugin unloaded, the listener handle left harmless
        CHECK(survivor.state() == KEEL_STATE_UNLOADED);
        outlives.remove(); // no-op on a freed host
        keel::Plugin empty;
        CHECK(!empty && status_of([&] { empty.generation(); }) != KEEL_OK);
    }

    fs::remove_all(tmp);
    return failures;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: test_cpp_api <fixture dir>\n");
        return 2;
    }
    try {
        const int f = run(argv[1]);
        if (f != 0) {
            std::fprintf(stderr, "%d check(s) failed\n", f);
            return 1;
        }
    } catch (const std::exception &e) {
        std::fprintf(stderr, "unexpected exception: %s\n", e.what());
        return 1;
    }
    std::printf("test_cpp_api: ok\n");
    return 0;
}
