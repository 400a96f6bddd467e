// themis_shim.cpp — the only place where Keel calls into ThemisDB C++ plugin objects.
//
// Each extern "C" function below is noexcept and wraps its body in try/catch(...): an
// exception thrown by plugin code (or by std::string construction here) becomes
// KEEL_THEMIS_EXCEPTION with its message in the error sink and never unwinds into Rust.
// See themis_shim.h for the contract and src/runtime/legacy.rs for the caller.

#include "themis_shim.h"

#include <keel/themis/plugin_interface.hpp>

#include <cstring>
#include <exception>
#include <string>

namespace {

themis::plugins::IThemisPlugin *as_plugin(void *p) noexcept { return static_cast<themis::plugins::IThemisPlugin *>(p); }

bool put(const keel_themis_sink *sink, const char *data, size_t len) noexcept {
    if (sink == nullptr || sink->write == nullptr) return true;
    return sink->write(sink->ctx, reinterpret_cast<const uint8_t *>(data), len) == 0;
}

bool put_str(const keel_themis_sink *sink, const char *s) noexcept {
    return put(sink, s, s == nullptr ? 0 : std::strlen(s));
}

// Describe the exception being handled (call only inside a catch block).
int32_t exception_rc(const keel_themis_sink *err, const char *where) noexcept {
    put_str(err, where);
    try {
        throw;
    } catch (const std::exception &e) {
        put_str(err, " threw: ");
        put_str(err, e.what());
    } catch (...) {
        put_str(err, " threw an exception not derived from std::exception");
    }
    return KEEL_THEMIS_EXCEPTION;
}

} // namespace

extern "C" {

int32_t keel_themis_shim_create(void *create_fn, void **out, const keel_themis_sink *err) noexcept {
    if (create_fn == nullptr || out == nullptr) return KEEL_THEMIS_BAD_ARGUMENT;
    try {
        auto create = reinterpret_cast<themis::plugins::CreatePluginFunc>(create_fn);
        themis::plugins::IThemisPlugin *p = create();
        if (p == nullptr) {
            put_str(err, "createPlugin returned NULL");
            return KEEL_THEMIS_NULL;
        }
        *out = static_cast<void *>(p);
        return KEEL_THEMIS_OK;
    } catch (...) {
        return exception_rc(err, "createPlugin");
    }
}

int32_t keel_themis_shim_info(void *plugin, keel_themis_info *info, const keel_themis_sink *name,
                              const keel_themis_sink *version, const keel_themis_sink *err) noexcept {
    if (plugin == nullptr || info == nullptr) return KEEL_THEMIS_BAD_ARGUMENT;
    themis::plugins::IThemisPlugin *p = as_plugin(plugin);
    const char *step = "getName";
    try {
        const char *n = p->getName();
        step = "getVersion";
        const char *v = p->getVersion();
        step = "getType";
        info->type = static_cast<int32_t>(p->getType());
        step = "getCapabilities";
        themis::plugins::PluginCapabilities caps = p->getCapabilities();
        // Read the flags as bytes: a plugin may hand back bytes other than 0/1.
        unsigned char raw[sizeof caps];
        std::memcpy(raw, &caps, sizeof caps);
        for (size_t i = 0; i < sizeof caps && i < sizeof info->capabilities; i++) {
            info->capabilities[i] = raw[i] != 0 ? 1 : 0;
        }
        info->stateful = dynamic_cast<themis::plugins::IStatefulPlugin *>(p) != nullptr ? 1 : 0;
        info->name_null = n == nullptr ? 1 : 0;
        info->version_null = v == nullptr ? 1 : 0;
        if (!put_str(name, n) || !put_str(version, v)) return KEEL_THEMIS_SINK_FULL;
        return KEEL_THEMIS_OK;
    } catch (...) {
        return exception_rc(err, step);
    }
}

int32_t keel_themis_shim_initialize(void *plugin, const char *config_json, const keel_themis_sink *err) noexcept {
    if (plugin == nullptr || config_json == nullptr) return KEEL_THEMIS_BAD_ARGUMENT;
    try {
        if (as_plugin(plugin)->initialize(config_json)) return KEEL_THEMIS_OK;
        put_str(err, "initialize returned false");
        return KEEL_THEMIS_FALSE;
    } catch (...) {
        return exception_rc(err, "initialize");
    }
}

int32_t keel_themis_shim_shutdown(void *plugin, const keel_themis_sink *err) noexcept {
    if (plugin == nullptr) return KEEL_THEMIS_BAD_ARGUMENT;
    try {
        as_plugin(plugin)->shutdown();
        return KEEL_THEMIS_OK;
    } catch (...) {
        return exception_rc(err, "shutdown");
    }
}

int32_t keel_themis_shim_destroy(void *destroy_fn, void *plugin, const keel_themis_sink *err) noexcept {
    if (destroy_fn == nullptr || plugin == nullptr) return KEEL_THEMIS_BAD_ARGUMENT;
    try {
        auto destroy = reinterpret_cast<themis::plugins::DestroyPluginFunc>(destroy_fn);
        destroy(as_plugin(plugin));
        return KEEL_THEMIS_OK;
    } catch (...) {
        return exception_rc(err, "destroyPlugin");
    }
}

int32_t keel_themis_shim_get_instance(void *plugin, void **out, const keel_themis_sink *err) noexcept {
    if (plugin == nullptr || out == nullptr) return KEEL_THEMIS_BAD_ARGUMENT;
    try {
        *out = as_plugin(plugin)->getInstance();
        return KEEL_THEMIS_OK;
    } catch (...) {
        return exception_rc(err, "getInstance");
    }
}

int32_t keel_themis_shim_save_state(void *plugin, const keel_themis_sink *out, const keel_themis_sink *err) noexcept {
    if (plugin == nullptr) return KEEL_THEMIS_BAD_ARGUMENT;
    try {
        auto *stateful = dynamic_cast<themis::plugins::IStatefulPlugin *>(as_plugin(plugin));
        if (stateful == nullptr) return KEEL_THEMIS_UNSUPPORTED;
        const std::string state = stateful->saveState();
        if (!put(out, state.data(), state.size())) return KEEL_THEMIS_SINK_FULL;
        return KEEL_THEMIS_OK;
    } catch (...) {
        return exception_rc(err, "saveState");
    }
}

int32_t keel_themis_shim_restore_state(void *plugin, const uint8_t *data, size_t len,
                                       const keel_themis_sink *err) noexcept {
    if (plugin == nullptr || (data == nullptr && len != 0)) return KEEL_THEMIS_BAD_ARGUMENT;
    try {
        auto *stateful = dynamic_cast<themis::plugins::IStatefulPlugin *>(as_plugin(plugin));
        if (stateful == nullptr) return KEEL_THEMIS_UNSUPPORTED;
        const std::string state(reinterpret_cast<const char *>(data), len);
        if (stateful->restoreState(state)) return KEEL_THEMIS_OK;
        put_str(err, "restoreState returned false");
        return KEEL_THEMIS_FALSE;
    } catch (...) {
        return exception_rc(err, "restoreState");
    }
}

} // extern "C"
