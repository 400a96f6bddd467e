// Built against the installed package only: a host (Keel::keel, the C ABI from C++) loading,
// with keel_host_load_dir and signatures required, the plugins tests/consumer/CMakeLists.txt
// made with keel_add_plugin — a C++ native plugin and a WASM plugin that depends on it — signed
// with a key of `keel keygen`, and calling them.
//   plugin_host <plugins dir> <trust store>
#include <keel/keel.h>

#include <cstdio>
#include <cstring>
#include <string>

static int failures = 0;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            const char *m_ = "";                                                         \
            keel_last_error_message(&m_);                                                \
            std::fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, #cond, m_); \
            failures++;                                                                  \
        }                                                                                \
    } while (0)

static std::string text(const keel_buffer *b) {
    const uint8_t *data = nullptr;
    size_t len = 0;
    if (keel_buffer_data(b, &data, &len) != KEEL_OK || len == 0) return std::string();
    return std::string(reinterpret_cast<const char *>(data), len);
}

static keel_status call(keel_plugin *p, const char *fn, const std::string &in, keel_buffer *out) {
    keel_function f = 0;
    keel_status s = keel_plugin_function(p, fn, &f);
    if (s != KEEL_OK) return s;
    return keel_call(p, f, reinterpret_cast<const uint8_t *>(in.data()), in.size(), out);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s <plugins dir> <trust store>\n", argv[0]);
        return 2;
    }
    uint32_t major = 0, minor = 0, patch = 0;
    CHECK(keel_version(&major, &minor, &patch) == KEEL_OK);
    CHECK(major == KEEL_VERSION_MAJOR && minor == KEEL_VERSION_MINOR && patch == KEEL_VERSION_PATCH);

    keel_host *host = nullptr;
    keel_buffer *out = nullptr;
    CHECK(keel_host_new(&host) == KEEL_OK);
    CHECK(keel_buffer_new(&out) == KEEL_OK);
    // Signatures are required (the default): without the trust store nothing loads.
    CHECK(keel_host_load_dir(host, argv[1]) != KEEL_OK);
    CHECK(keel_host_set_trust_store_file(host, argv[2]) == KEEL_OK);
    CHECK(keel_host_load_dir(host, argv[1]) == KEEL_OK);

    keel_plugin *cxx = nullptr;
    keel_plugin *wasm = nullptr;
    CHECK(keel_plugin_get(host, "cxxplugin", &cxx) == KEEL_OK);
    CHECK(keel_plugin_get(host, "compute", &wasm) == KEEL_OK);
    if (cxx == nullptr || wasm == nullptr) {
        std::fprintf(stderr, "plugins not loaded\n");
        return 1;
    }
    CHECK(call(cxx, "upper", "from the package", out) == KEEL_OK);
    CHECK(text(out) == "FROM THE PACKAGE");
    CHECK(call(cxx, "throw", "installed", out) == KEEL_ERR_CALL_FAILED);
    {
        const char *m = "";
        keel_last_error_message(&m);
        CHECK(std::strstr(m, "boom: installed") != nullptr);
    }
    CHECK(call(wasm, "greet", "hi", out) == KEEL_OK);
    CHECK(text(out) == "hello");

    // The metrics as a server's own Prometheus endpoint would append them.
    CHECK(keel_host_metrics_text_format(host, KEEL_METRICS_FORMAT_PROMETHEUS, out) == KEEL_OK);
    std::string prom = text(out);
    CHECK(prom.find("# TYPE keel_plugin_calls_total counter") != std::string::npos);
    CHECK(prom.find("keel_plugin_calls_total{plugin=\"cxxplugin\",version=\"1.2.0\"} 2") != std::string::npos);
    CHECK(prom.find("# EOF") == std::string::npos);
    CHECK(std::strcmp(KEEL_METRICS_CONTENT_TYPE_PROMETHEUS, "text/plain; version=0.0.4; charset=utf-8") == 0);

    keel_plugin_free(cxx);
    keel_plugin_free(wasm);
    keel_buffer_free(out);
    keel_host_free(host);
    if (failures != 0) {
        std::fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    std::printf("plugin_host: keel_add_plugin plugins (C++ native, WASM) signed, loaded and called\n");
    return 0;
}
