// Keel demo host: what a C++ database server does with Keel.
//
//   demo_host <demo dir>
//
// The demo dir (prepared by the build, see prepare_demo.cmake) holds a trust store, signed
// sample plugins under live/, a second greeter version under staging/, and bad inputs under
// bad/. The host loads the signed plugins, calls them, shows the error it gets for each bad
// input while it keeps serving, hot-reloads the greeter under load, and prints its metrics.
#include <keel/keel.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;

namespace {

std::string last_error() {
    const char *msg = "";
    keel_last_error_message(&msg);
    return msg;
}

std::string status_name(keel_status s) {
    const char *name = "?";
    keel_status_name(static_cast<uint32_t>(s), &name);
    return name;
}

// Minimal RAII over the C ABI (the full C++ API is a separate header).
struct Buffer {
    keel_buffer *b = nullptr;
    Buffer() { keel_buffer_new(&b); }
    ~Buffer() { keel_buffer_free(b); }
    Buffer(const Buffer &) = delete;
    Buffer &operator=(const Buffer &) = delete;
    std::string str() const {
        const uint8_t *d = nullptr;
        size_t n = 0;
        keel_buffer_data(b, &d, &n);
        return n ? std::string(reinterpret_cast<const char *>(d), n) : std::string();
    }
};

struct Plugin {
    keel_plugin *p = nullptr;
    ~Plugin() { keel_plugin_free(p); }
    keel_function fn(const char *name) const {
        keel_function f = 0;
        keel_status s = keel_plugin_function(p, name, &f);
        if (s != KEEL_OK) std::fprintf(stderr, "resolve %s: %s %s\n", name, status_name(s).c_str(), last_error().c_str());
        return f;
    }
    keel_status call(keel_function f, const std::string &in, Buffer &out) const {
        return keel_call(p, f, reinterpret_cast<const uint8_t *>(in.data()), in.size(), out.b);
    }
};

int failures = 0;

void expect_failure(keel_host *host, const char *what, const fs::path &manifest, keel_status want) {
    keel_status s = keel_host_load(host, manifest.c_str(), nullptr);
    std::printf("  %-34s -> %s (%u)\n      %s\n", what, status_name(s).c_str(), static_cast<unsigned>(s),
                last_error().c_str());
    if (s != want) {
        std::printf("      UNEXPECTED: wanted %s\n", status_name(want).c_str());
        failures++;
    }
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s <demo dir>\n", argv[0]);
        return 2;
    }
    const fs::path dir = argv[1];
    keel_host *host = nullptr;
    if (keel_host_new(&host) != KEEL_OK) return 1;

    std::printf("== Keel demo host\n");
    keel_status s = keel_host_set_trust_store_file(host, (dir / "trust.json").c_str());
    std::printf("trust store %s: %s\n", (dir / "trust.json").c_str(), status_name(s).c_str());
    if (s != KEEL_OK) {
        std::printf("  %s\n", last_error().c_str());
        return 1;
    }

    // 1. Load the signed native plugins.
    std::printf("\n== Loading signed plugins\n");
    Plugin greeter, wordstats;
    for (auto [name, plugin] : {std::pair{"greeter", &greeter}, std::pair{"wordstats", &wordstats}}) {
        fs::path m = dir / "live" / name / (std::string(name) + ".json");
        s = keel_host_load(host, m.c_str(), &plugin->p);
        std::printf("load %-10s %s %s\n", name, status_name(s).c_str(), s == KEEL_OK ? "" : last_error().c_str());
        if (s != KEEL_OK) return 1;
    }
    Plugin wasm;
    fs::path wasm_manifest = dir / "live" / "wasm-stats" / "wasm-stats.json";
    if (fs::exists(wasm_manifest)) {
        s = keel_host_load(host, wasm_manifest.c_str(), &wasm.p);
        std::printf("load %-10s %s %s\n", "wasm-stats", status_name(s).c_str(),
                    s == KEEL_OK ? "(WASM, sandboxed)" : last_error().c_str());
        if (s != KEEL_OK) failures++;
    }

    // 2. Call them.
    std::printf("\n== Calls\n");
    Buffer out;
    keel_function greet = greeter.fn("greet");
    keel_function count = wordstats.fn("count");
    for (const char *who : {"ThemisDB", "operators"}) {
        s = greeter.call(greet, who, out);
        std::printf("greeter.greet(%s) = %s\n", who, s == KEEL_OK ? out.str().c_str() : last_error().c_str());
    }
    const std::string text = "SELECT plugins FROM keel\nWHERE verified AND sandboxed\n";
    s = wordstats.call(count, text, out);
    std::printf("wordstats.count(...) = %s\n", s == KEEL_OK ? out.str().c_str() : last_error().c_str());
    if (wasm.p) {
        keel_function wc = wasm.fn("count");
        s = wasm.call(wc, text, out);
        std::printf("wasm-stats.count(...) = %s\n", s == KEEL_OK ? out.str().c_str() : last_error().c_str());
        if (s != KEEL_OK) failures++;
    }

    // 3. Bad inputs: each gets its own code, and the host keeps serving.
    std::printf("\n== Bad inputs (the host keeps serving)\n");
    expect_failure(host, "tampered binary", dir / "bad" / "tampered" / "audit.json", KEEL_ERR_DIGEST_MISMATCH);
    expect_failure(host, "malformed manifest", dir / "bad" / "malformed" / "broken.json", KEEL_ERR_MANIFEST_PARSE);
    expect_failure(host, "schema violation", dir / "bad" / "schema" / "schema.json", KEEL_ERR_MANIFEST_SCHEMA);
    expect_failure(host, "unsigned plugin", dir / "bad" / "unsigned" / "audit.json", KEEL_ERR_NO_SIGNATURE);
    {
        keel_plugin *nope = nullptr;
        s = keel_plugin_get(host, "no-such-plugin", &nope);
        std::printf("  %-34s -> %s (%u)\n      %s\n", "unknown plugin name", status_name(s).c_str(),
                    static_cast<unsigned>(s), last_error().c_str());
        if (s != KEEL_ERR_PLUGIN_NOT_FOUND) failures++;
    }
    s = greeter.call(greet, "still serving", out);
    std::printf("greeter.greet(still serving) = %s\n", s == KEEL_OK ? out.str().c_str() : last_error().c_str());
    if (s != KEEL_OK) failures++;

    // 4. Hot reload under load: callers keep calling while the new generation swaps in.
    std::printf("\n== Hot reload of greeter (1.0.0 -> 1.1.0) while 2 threads keep calling\n");
    std::atomic<bool> stop{false};
    std::atomic<long> ok_calls{0}, failed_calls{0};
    std::vector<std::thread> callers;
    for (int t = 0; t < 2; t++) {
        callers.emplace_back([&] {
            Buffer b;
            while (!stop.load()) {
                if (greeter.call(greet, "load", b) == KEEL_OK) ok_calls++;
                else failed_calls++;
            }
        });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const fs::path live = dir / "live" / "greeter";
    for (const char *f : {"libgreeter.so", "greeter.json", "greeter.json.sig"}) {
        fs::copy_file(dir / "staging" / "greeter-v2" / f, live / f, fs::copy_options::overwrite_existing);
    }
    uint64_t generation = 0;
    s = keel_host_reload(host, "greeter", &generation);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    stop = true;
    for (auto &t : callers) t.join();
    std::printf("reload: %s, generation %llu; calls during reload: %ld ok, %ld failed\n", status_name(s).c_str(),
                static_cast<unsigned long long>(generation), ok_calls.load(), failed_calls.load());
    if (s != KEEL_OK) {
        std::printf("  %s\n", last_error().c_str());
        failures++;
    }
    if (failed_calls.load() != 0) failures++;
    s = greeter.call(greet, "ThemisDB", out);
    std::printf("greeter.greet(ThemisDB) = %s   <- new code, greeting count carried over\n",
                s == KEEL_OK ? out.str().c_str() : last_error().c_str());

    // 5. Metrics.
    std::printf("\n== Metrics (Prometheus text)\n");
    keel_host_metrics_text(host, out.b);
    std::printf("%s", out.str().c_str());

    keel_host_free(host);
    std::printf("\n== Demo %s\n", failures == 0 ? "finished: everything behaved" : "finished WITH UNEXPECTED RESULTS");
    return failures == 0 ? 0 : 1;
}
