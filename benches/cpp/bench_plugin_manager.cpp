// bench_plugin_manager — the cost of ThemisDB's PluginManager façade
// (include/keel/themis/plugin_manager.hpp) over the C ABI it is built on.
//
//  1. A call the ThemisDB way — PluginManager::getPlugin(name), the returned IThemisPlugin's
//     getInstance() (a keel::ThemisAdapter for a native plugin), adapter->call(function,
//     input) — against the same call through keel_call with a resolved plugin and function
//     and a reused buffer (the fair baseline: what a server that resolves once does). Rounds
//     alternate A and B (A first in even rounds, B first in odd ones) in one process; the
//     figure is the per-round ratio A/B, min and median.
//  2. Listing N loaded plugins (default 1000 copies of the echo fixture):
//     PluginManager::listPlugins() and listLoadedPlugins(), and keel_host_list_plugins (the C
//     call they are built on): time per plugin, min and median over rounds.
//
// Usage: bench_plugin_manager <fixture dir (with echo/libecho.so, echo/echo.json)> [N plugins]
// Run through benches/facade.sh (Release build). Reports; asserts nothing about speed.
#include <keel/themis/plugin_manager.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace fs = std::filesystem;
using themis::plugins::PluginManager;
using Clock = std::chrono::steady_clock;

static std::string read(const fs::path &p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

static void write(const fs::path &p, const std::string &text) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f << text;
}

static std::string renamed(std::string json, const std::string &name) {
    const std::string from = "\"name\": \"echo\"";
    const size_t at = json.find(from);
    if (at != std::string::npos) json.replace(at, from.size(), "\"name\": \"" + name + "\"");
    return json;
}

static double secs(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

struct Stats {
    double min, median;
};

static Stats stats(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return {v.front(), v[v.size() / 2]};
}

static volatile size_t g_sink;

static const char *last_error() {
    const char *m = nullptr;
    return keel_last_error_message(&m) == KEEL_OK && m != nullptr ? m : "(no message)";
}

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s <fixture dir> [plugins to list]\n", argv[0]);
        return 2;
    }
    const fs::path fixtures = argv[1];
    const int n_plugins = argc > 2 ? std::atoi(argv[2]) : 1000;
    const fs::path root = fs::temp_directory_path() / ("keel-bench-pm-" + std::to_string(::getpid()));
    fs::remove_all(root);
    const std::string echo_json = read(fixtures / "echo" / "echo.json");

    // ---- 1. getPlugin + call vs keel_call ----
    {
        const fs::path dir = root / "one" / "native" / "echo";
        fs::create_directories(dir);
        fs::copy_file(fixtures / "echo" / "libecho.so", dir / "libecho.so");
        write(dir / "keel.json", echo_json);
        PluginManager pm;
        if (keel_host_set_require_signature(pm.host(), false) != KEEL_OK || !pm.scanPluginDirectory((root / "one").string()) ||
            !pm.loadPlugin("echo")) {
            std::fprintf(stderr, "setup failed: %s\n", last_error());
            return 1;
        }
        keel_plugin *plugin = nullptr;
        keel_function fn = 0;
        keel_buffer *buf = nullptr;
        if (keel_plugin_get(pm.host(), "echo", &plugin) != KEEL_OK || keel_plugin_function(plugin, "echo", &fn) != KEEL_OK ||
            keel_buffer_new(&buf) != KEEL_OK) {
            std::fprintf(stderr, "setup failed: %s\n", last_error());
            return 1;
        }
        const std::string input = "a 32-byte input for the echo fn.";
        const int calls = 200000, rounds = 31;
        auto facade = [&] {
            for (int i = 0; i < calls; i++) {
                auto p = pm.getPlugin("echo");
                auto *adapter = static_cast<keel::ThemisAdapter *>((*p)->getInstance());
                g_sink = g_sink + adapter->call("echo", input).size();
            }
        };
        auto direct = [&] {
            for (int i = 0; i < calls; i++) {
                keel_call(plugin, fn, reinterpret_cast<const uint8_t *>(input.data()), input.size(), buf);
                const uint8_t *data = nullptr;
                size_t len = 0;
                keel_buffer_data(buf, &data, &len);
                g_sink = g_sink + len;
            }
        };
        facade();
        direct(); // warm up
        std::vector<double> ratios, a_ns, b_ns;
        for (int r = 0; r < rounds; r++) {
            double ta = 0, tb = 0;
            for (int k = 0; k < 2; k++) {
                const bool a_now = (k == 0) == (r % 2 == 0);
                const auto t0 = Clock::now();
                a_now ? facade() : direct();
                const double t = secs(t0, Clock::now());
                (a_now ? ta : tb) = t;
            }
            ratios.push_back(ta / tb);
            a_ns.push_back(ta / calls * 1e9);
            b_ns.push_back(tb / calls * 1e9);
        }
        const Stats r = stats(ratios), a = stats(a_ns), b = stats(b_ns);
        std::printf("getPlugin+IThemisPlugin call / keel_call: ratio min %.2f median %.2f "
                    "(%d rounds x %d calls, 32-byte echo; facade median %.0f ns, keel_call median %.0f ns)\n",
                    r.min, r.median, rounds, calls, a.median, b.median);
        keel_buffer_free(buf);
        keel_plugin_free(plugin);
    }

    // ---- 2. listing N loaded plugins ----
    {
        const fs::path plugins = root / "many";
        for (int i = 0; i < n_plugins; i++) {
            char name[32];
            std::snprintf(name, sizeof name, "echo%04d", i);
            const fs::path dir = plugins / "native" / name;
            fs::create_directories(dir);
            fs::copy_file(fixtures / "echo" / "libecho.so", dir / "libecho.so");
            write(dir / "keel.json", renamed(echo_json, name));
        }
        PluginManager pm;
        keel_host_set_require_signature(pm.host(), false);
        auto scanned = pm.scanPluginDirectory(plugins.string());
        if (!scanned || *scanned != static_cast<size_t>(n_plugins)) {
            std::fprintf(stderr, "scan found %zu of %d\n", scanned ? *scanned : 0, n_plugins);
            return 1;
        }
        const auto t_load = Clock::now();
        for (int i = 0; i < n_plugins; i++) {
            char name[32];
            std::snprintf(name, sizeof name, "echo%04d", i);
            if (!pm.loadPlugin(name)) {
                std::fprintf(stderr, "loading %s failed: %s\n", name, last_error());
                return 1;
            }
        }
        const double load_s = secs(t_load, Clock::now());
        const int rounds = 21;
        std::vector<double> list_all, list_loaded, c_list;
        keel_buffer *buf = nullptr;
        keel_buffer_new(&buf);
        for (int r = 0; r < rounds; r++) {
            auto t0 = Clock::now();
            g_sink = g_sink + pm.listPlugins().size();
            list_all.push_back(secs(t0, Clock::now()) / n_plugins * 1e9);
            t0 = Clock::now();
            g_sink = g_sink + pm.listLoadedPlugins().size();
            list_loaded.push_back(secs(t0, Clock::now()) / n_plugins * 1e9);
            t0 = Clock::now();
            keel_host_list_plugins(pm.host(), buf);
            c_list.push_back(secs(t0, Clock::now()) / n_plugins * 1e9);
        }
        keel_buffer_free(buf);
        const Stats la = stats(list_all), ll = stats(list_loaded), cl = stats(c_list);
        std::printf("listing %d loaded plugins, ns per plugin (min / median of %d rounds): listPlugins %.0f / %.0f, "
                    "listLoadedPlugins %.0f / %.0f, keel_host_list_plugins %.0f / %.0f (loading them took %.2f s)\n",
                    n_plugins, rounds, la.min, la.median, ll.min, ll.median, cl.min, cl.median, load_s);
        pm.unloadAllPlugins();
    }
    fs::remove_all(root);
    return 0;
}
