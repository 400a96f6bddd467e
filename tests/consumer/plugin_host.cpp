// Built against the installed package only, with the C++ API (keel.hpp, Keel::keel_cxx) and
// standard types: a host that requires signatures loads, with load_dir, the plugins
// tests/consumer/CMakeLists.txt made with keel_add_plugin — a C++ native plugin and a WASM
// plugin that depends on it — signed with the key `keel trust init --key` made next to the
// trust store, and calls them.
//   plugin_host <plugins dir> <trust store>
#include <keel/keel.hpp>

#include <cstdio>
#include <string>

static int failures = 0;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
            failures++;                                                                  \
        }                                                                                \
    } while (0)

/** The status a call throws (KEEL_OK if it does not). */
template <typename F>
static keel_status status_of(F f, std::string *what = nullptr) {
    try {
        f();
        return KEEL_OK;
    } catch (const keel::Error &e) {
        if (what != nullptr) *what = e.what();
        return e.status();
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s <plugins dir> <trust store>\n", argv[0]);
        return 2;
    }
    try {
        const keel::Version v = keel::version();
        CHECK(v.major == KEEL_VERSION_MAJOR && v.minor == KEEL_VERSION_MINOR && v.patch == KEEL_VERSION_PATCH);

        keel::Host host;
        // Signatures are required (the default): without the trust store nothing loads.
        CHECK(status_of([&] { host.load_dir(argv[1]); }) != KEEL_OK);
        host.set_trust_store_file(argv[2]);
        host.load_dir(argv[1]);

        keel::Plugin cxx = host.get("cxxplugin");
        keel::Plugin wasm = host.get("compute");
        CHECK(cxx.call(cxx.function("upper"), std::string("from the package")) == "FROM THE PACKAGE");
        std::string what;
        CHECK(status_of([&] { (void)cxx.call(cxx.function("throw"), std::string("installed")); }, &what) ==
              KEEL_ERR_CALL_FAILED);
        CHECK(what.find("boom: installed") != std::string::npos);
        CHECK(wasm.call(wasm.function("greet"), std::string("hi")) == "hello");

        // The metrics as a server's own Prometheus endpoint would append them.
        const std::string prom = host.metrics_text(keel::MetricsFormat::Prometheus);
        CHECK(prom.find("# TYPE keel_plugin_calls_total counter") != std::string::npos);
        CHECK(prom.find("keel_plugin_calls_total{plugin=\"cxxplugin\",version=\"1.2.0\"} 2") != std::string::npos);
        CHECK(prom.find("# EOF") == std::string::npos);
        CHECK(keel::prometheus_content_type == "text/plain; version=0.0.4; charset=utf-8");
    } catch (const keel::Error &e) {
        std::fprintf(stderr, "unexpected keel::Error: %s\n", e.what());
        return 1;
    }
    if (failures != 0) {
        std::fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    std::printf("plugin_host: keel_add_plugin plugins (C++ native, WASM) signed, loaded and called through keel.hpp\n");
    return 0;
}
