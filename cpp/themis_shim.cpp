// themis_shim.cpp — the only place where Keel calls into ThemisDB C++ plugin objects.
//
// Each extern "C" function below is noexcept and wraps its body in try/catch(...): an
// exception thrown by plugin code (or by std::string construction here) becomes
// KEEL_THEMIS_EXCEPTION with its message in the error sink and never unwinds into Rust.
// See themis_shim.h for the contract and src/runtime/legacy.rs for the caller.

#include "themis_shim.h"

#include <keel/themis/plugin_interface.hpp>
#include <keel/themis/self_healing_plugin.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

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

themis::plugins::ISelfHealingPlugin *as_self_healing(void *p) {
    return dynamic_cast<themis::plugins::ISelfHealingPlugin *>(as_plugin(p));
}

void json_string(std::string &o, const std::string &s) {
    o += '"';
    for (unsigned char c : s) {
        switch (c) {
        case '"': o += "\\\""; break;
        case '\\': o += "\\\\"; break;
        case '\n': o += "\\n"; break;
        case '\r': o += "\\r"; break;
        case '\t': o += "\\t"; break;
        default:
            if (c < 0x20) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04x", c);
                o += buf;
            } else {
                o += static_cast<char>(c);
            }
        }
    }
    o += '"';
}

void json_strings(std::string &o, const std::vector<std::string> &v) {
    o += '[';
    for (size_t i = 0; i < v.size(); i++) {
        if (i != 0) o += ',';
        json_string(o, v[i]);
    }
    o += ']';
}

const char *status_name(themis::plugins::PluginHealthStatus s) {
    switch (s) {
    case themis::plugins::PluginHealthStatus::HEALTHY: return "HEALTHY";
    case themis::plugins::PluginHealthStatus::DEGRADED: return "DEGRADED";
    case themis::plugins::PluginHealthStatus::UNHEALTHY: return "UNHEALTHY";
    case themis::plugins::PluginHealthStatus::CRITICAL: return "CRITICAL";
    case themis::plugins::PluginHealthStatus::RECOVERING: return "RECOVERING";
    }
    return "UNKNOWN";
}

// The diagnostics as JSON (numbers as JSON numbers; a non-finite double as null).
std::string diagnostics_json(const themis::plugins::PluginDiagnostics &d) {
    auto num = [](double v) {
        if (!std::isfinite(v)) return std::string("null");
        char buf[40];
        std::snprintf(buf, sizeof buf, "%.17g", v);
        return std::string(buf);
    };
    std::string o = "{\"status\":\"";
    o += status_name(d.status);
    o += "\",\"error_message\":";
    json_string(o, d.error_message);
    o += ",\"error_code\":";
    json_string(o, d.error_code);
    o += ",\"error_count\":" + std::to_string(d.error_count);
    o += ",\"recovery_attempts\":" + std::to_string(d.recovery_attempts);
    o += ",\"successful_recoveries\":" + std::to_string(d.successful_recoveries);
    o += ",\"failed_recoveries\":" + std::to_string(d.failed_recoveries);
    o += ",\"memory_usage_bytes\":" + std::to_string(d.memory_usage_bytes);
    o += ",\"cpu_usage_percent\":" + num(d.cpu_usage_percent);
    o += ",\"open_file_handles\":" + std::to_string(d.open_file_handles);
    o += ",\"active_connections\":" + std::to_string(d.active_connections);
    o += ",\"recent_errors\":";
    json_strings(o, d.recent_errors);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d.last_error_time.time_since_epoch()).count();
    o += ",\"last_error_time_ms\":" + std::to_string(ms);
    o += ",\"suggested_recovery_action\":";
    json_string(o, d.suggested_recovery_action);
    o += ",\"available_recovery_strategies\":";
    json_strings(o, d.available_recovery_strategies);
    o += ",\"average_response_time_ms\":" + num(d.average_response_time_ms);
    o += ",\"total_requests\":" + std::to_string(d.total_requests);
    o += ",\"failed_requests\":" + std::to_string(d.failed_requests);
    o += ",\"error_rate\":" + num(d.getErrorRate());
    o += ",\"needs_immediate_attention\":";
    o += d.needsImmediateAttention() ? "true" : "false";
    o += '}';
    return o;
}

bool serving(themis::plugins::PluginHealthStatus s) {
    return s == themis::plugins::PluginHealthStatus::HEALTHY || s == themis::plugins::PluginHealthStatus::DEGRADED;
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
        info->self_healing = dynamic_cast<themis::plugins::ISelfHealingPlugin *>(p) != nullptr ? 1 : 0;
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

int32_t keel_themis_shim_health_check(void *plugin, int32_t *status, const keel_themis_sink *diag,
                                      const keel_themis_sink *err) noexcept {
    if (plugin == nullptr || status == nullptr) return KEEL_THEMIS_BAD_ARGUMENT;
    try {
        auto *healing = as_self_healing(plugin);
        if (healing == nullptr) return KEEL_THEMIS_UNSUPPORTED;
        const themis::plugins::PluginDiagnostics d = healing->performHealthCheck();
        *status = static_cast<int32_t>(d.status);
        if (diag != nullptr) {
            const std::string j = diagnostics_json(d);
            if (!put(diag, j.data(), j.size())) return KEEL_THEMIS_SINK_FULL;
        }
        return KEEL_THEMIS_OK;
    } catch (...) {
        return exception_rc(err, "performHealthCheck");
    }
}

int32_t keel_themis_shim_self_repair(void *plugin, int32_t *recovered, const keel_themis_sink *log,
                                     const keel_themis_sink *err) noexcept {
    if (plugin == nullptr || recovered == nullptr) return KEEL_THEMIS_BAD_ARGUMENT;
    *recovered = 0;
    const char *step = "getRecoveryStrategies";
    try {
        auto *healing = as_self_healing(plugin);
        if (healing == nullptr) return KEEL_THEMIS_UNSUPPORTED;
        using themis::plugins::RecoveryAction;
        const std::vector<RecoveryAction> declared = healing->getRecoveryStrategies();
        static const RecoveryAction order[] = {RecoveryAction::CLEANUP_RESOURCES, RecoveryAction::RECONNECT,
                                               RecoveryAction::RELOAD_CONFIG, RecoveryAction::ROLLBACK_STATE,
                                               RecoveryAction::RESTART_PLUGIN};
        static const char *names[] = {"CLEANUP_RESOURCES", "RECONNECT", "RELOAD_CONFIG", "ROLLBACK_STATE",
                                      "RESTART_PLUGIN"};
        for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
            bool has = false;
            for (RecoveryAction a : declared) has = has || a == order[i];
            if (!has) continue;
            step = "executeRecoveryAction";
            const bool ok = healing->executeRecoveryAction(order[i]);
            put_str(log, names[i]);
            if (!ok) {
                put_str(log, ": returned false\n");
                continue;
            }
            step = "performHealthCheck";
            const themis::plugins::PluginHealthStatus s = healing->performHealthCheck().status;
            put_str(log, ": done, health ");
            put_str(log, status_name(s));
            put_str(log, "\n");
            if (serving(s)) {
                *recovered = 1;
                return KEEL_THEMIS_OK;
            }
        }
        step = "performHealthCheck";
        const themis::plugins::PluginDiagnostics d = healing->performHealthCheck();
        if (serving(d.status)) {
            put_str(log, "healthy again before attemptSelfRepair\n");
            *recovered = 1;
            return KEEL_THEMIS_OK;
        }
        step = "attemptSelfRepair";
        const bool repaired = healing->attemptSelfRepair(d);
        put_str(log, repaired ? "attemptSelfRepair: returned true" : "attemptSelfRepair: returned false");
        if (repaired) {
            step = "performHealthCheck";
            const themis::plugins::PluginHealthStatus s = healing->performHealthCheck().status;
            put_str(log, ", health ");
            put_str(log, status_name(s));
            *recovered = serving(s) ? 1 : 0;
        }
        put_str(log, "\n");
        return KEEL_THEMIS_OK;
    } catch (...) {
        return exception_rc(err, step);
    }
}

} // extern "C"
