// Consumer of the installed Keel package: load a plugin from a manifest and call it through
// the C ABI, the ThemisDB adapter and the C++ API (keel.hpp).
#include <keel/keel.h>
#include <keel/keel.hpp>
#include <keel/themis_adapter.hpp>

#include <cstdio>
#include <cstring>
#include <string>

static int fail(const char *what, keel_status s) {
    const char *msg = "";
    keel_last_error_message(&msg);
    std::fprintf(stderr, "%s failed: %u %s\n", what, static_cast<unsigned>(s), msg);
    return 1;
}

// The installed C++ API (keel.hpp, std types only): the same plugin through keel::Host and keel::Plugin.
static bool cxx_api(const char *manifest) {
    try {
        keel::Host host;
        host.set_require_signature(false);
        keel::Plugin plugin = host.load(manifest);
        keel::Buffer out;
        plugin.call(plugin.function("echo"), "via keel.hpp", out);
        bool ok = out.view() == "via keel.hpp" && plugin.generation() == 1;
        try {
            plugin.call(plugin.function("fail"), "boom", out);
            ok = false;
        } catch (const keel::Error &e) {
            ok = ok && e.status() == KEEL_ERR_CALL_FAILED;
            std::printf("C++ API error: %s\n", e.what());
        }
        std::printf("C++ API: %s %s\n", plugin.name().c_str(), ok ? "ok" : "WRONG");
        return ok;
    } catch (const keel::Error &e) {
        std::fprintf(stderr, "C++ API failed: %s\n", e.what());
        return false;
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: consumer <manifest>\n");
        return 2;
    }
    keel_host *host = nullptr;
    keel_status s = keel_host_new(&host);
    if (s != KEEL_OK) return fail("keel_host_new", s);
    if ((s = keel_host_set_require_signature(host, false)) != KEEL_OK) return fail("set_require_signature", s);
    keel_plugin *plugin = nullptr;
    if ((s = keel_host_load(host, argv[1], &plugin)) != KEEL_OK) return fail("keel_host_load", s);
    keel_function fn = 0;
    if ((s = keel_plugin_function(plugin, "echo", &fn)) != KEEL_OK) return fail("keel_plugin_function", s);
    keel_buffer *out = nullptr;
    if ((s = keel_buffer_new(&out)) != KEEL_OK) return fail("keel_buffer_new", s);
    const char *msg = "hello from an installed Keel";
    if ((s = keel_call(plugin, fn, reinterpret_cast<const uint8_t *>(msg), std::strlen(msg), out)) != KEEL_OK)
        return fail("keel_call", s);
    const uint8_t *data = nullptr;
    size_t len = 0;
    keel_buffer_data(out, &data, &len);
    std::string got(reinterpret_cast<const char *>(data), len);
    std::printf("consumer got: %s\n", got.c_str());
    keel_buffer_free(out);
    bool adapter_ok = false;
    {
        // The installed C++ adapter: the same plugin seen as a ThemisDB IThemisPlugin.
        keel::ThemisAdapter adapter(plugin);  // takes ownership of the handle
        themis::IThemisPlugin &legacy_view = adapter;
        adapter_ok = std::string(legacy_view.getName()) == "echo" && adapter.call("echo", "via adapter") == "via adapter";
        std::printf("adapter: %s %s\n", legacy_view.getName(), legacy_view.getVersion());
    }
    keel_host_free(host);
    return got == msg && adapter_ok && cxx_api(argv[1]) ? 0 : 1;
}
