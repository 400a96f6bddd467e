/*
 * keel/themis/plugin_manager.hpp — ThemisDB's PluginManager, over a Keel host.
 *
 * Header-only, C++17, over the C ABI (keel/keel.h) and cpp/themis_adapter.hpp (installed as
 * keel/themis_adapter.hpp); link Keel::keel. A ThemisDB server keeps its code written against
 * `themis::plugins::PluginManager`: the public methods of ThemisDB's manager are here with the
 * same names, parameters and return shapes (`themis::Result<T>`, an expected-style type holding
 * a value or a `themis::Error` = `themis::errors::ErrorCode` 6300–6313 + context string).
 * Behaviour is what ThemisDB's documentation intends, not its bugs (docs/themis.md lists both).
 *
 * Plugins: every plugin Keel loads — ThemisDB C++ plugins (`plugin.json`, runtime `themis`),
 * Keel native and WASM plugins (`keel.json`) — is loaded, verified (signatures, digests,
 * capabilities, dependencies) and hot-reloaded by Keel. `getPlugin` returns:
 *  - for a ThemisDB C++ plugin, the plugin's own `IThemisPlugin*` (the object its
 *    `createPlugin` returned), held by a keel_themis_lease the manager keeps: valid until the
 *    plugin is unloaded or reloaded (as in ThemisDB). Do not call initialize/shutdown on it.
 *  - for a native or WASM plugin, a `keel::ThemisAdapter` (an IThemisPlugin whose getInstance()
 *    returns the adapter; `static_cast<keel::ThemisAdapter*>(p->getInstance())->call(...)`),
 *    valid until the plugin is unloaded (it follows reloads).
 *
 * Signature differences from ThemisDB (and why):
 *  - `loadPluginFromOci(ref, cache_dir, bearer)` pulls with `keel_oci_pull` into Keel's
 *    content-addressed cache (default `<temp>/themis-plugins`; every blob checked against its
 *    digest), then loads the pulled folder as `loadPluginFromPath` does: the whole trust chain
 *    (signature, pin) runs as for a local plugin. ThemisDB pulls a bare binary; Keel pulls the
 *    plugin folder `keel push` published (manifest, `.sig`, binaries; docs/fleet.md).
 *  - `loadPluginFromPath(path, config)`: `path` is a manifest (`plugin.json`/`keel.json`) or a
 *    plugin folder, not a bare binary (Keel verifies a binary against its manifest); `config`
 *    must be "{}" (the config comes from the manifest, validated against its config_schema);
 *    anything else fails with ERR_PLUGIN_LOAD_FAILED rather than being ignored.
 *  - `attachHealthMonitor(PluginHealthMonitor*)` is absent: Keel's own health monitor
 *    (keel_host_start_health_monitor) watches every plugin; the lifecycle state and the
 *    diagnostics report its verdict.
 *  - `getMetricsMutable()` is absent: the metrics are Keel's (read-only counters).
 *  - The constructor takes an optional `keel_host*`; `instance()` is the process-wide manager
 *    over a host of its own. `host()` gives the host for Keel settings (trust store etc.).
 *  - Reload listeners are called after Keel's atomic swap, in the order BEFORE_UNLOAD,
 *    AFTER_UNLOAD, AFTER_LOAD, for every reload (also those of the hot-plug watcher), outside
 *    every lock (a listener may call the manager).
 *
 * Error codes: `toErrorCode(keel_status)` maps every Keel status to exactly one ErrorCode
 * (table in docs/themis.md); the context string is "<KEEL_STATUS_NAME>: <Keel's message>".
 * Never thrown: every method returns its result (or, where ThemisDB's returns bool / vector,
 * an empty / false value).
 *
 * Thread-safety: every method may be called from any thread.
 */
#ifndef KEEL_THEMIS_PLUGIN_MANAGER_HPP
#define KEEL_THEMIS_PLUGIN_MANAGER_HPP

#include <keel/keel.h>
#include <keel/themis/plugin_interface.hpp>
#include <keel/themis/self_healing_plugin.hpp>
#if __has_include(<keel/themis_adapter.hpp>)
#include <keel/themis_adapter.hpp>
#else
#include "themis_adapter.hpp"
#endif

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace themis {
namespace errors {

/** ThemisDB's plugin error codes. */
enum class ErrorCode : int32_t {
    ERR_PLUGIN_NOT_FOUND = 6300,
    ERR_PLUGIN_LOAD_FAILED = 6301,
    ERR_PLUGIN_INCOMPATIBLE = 6302,
    ERR_PLUGIN_INVALID_SIGNATURE = 6303,
    ERR_PLUGIN_CIRCULAR_DEPENDENCY = 6304,
    ERR_PLUGIN_MISSING_DEPENDENCY = 6305,
    ERR_PLUGIN_DEPENDENCY_CONFLICT = 6306,
    ERR_PLUGIN_OCI_PULL_FAILED = 6307,
    ERR_PLUGIN_OCI_MANIFEST_NOT_FOUND = 6308,
    ERR_PLUGIN_OCI_HASH_MISMATCH = 6309,
    ERR_PLUGIN_OCI_INVALID_REFERENCE = 6310,
    ERR_PLUGIN_CAPABILITY_ESCALATION = 6311,
    ERR_PLUGIN_EDITION_CEILING_EXCEEDED = 6312,
    ERR_PLUGIN_LICENSE_CLAIM_REJECTED = 6313,
};

/** The ThemisDB code for a Keel status (KEEL_OK is not an error: ERR_PLUGIN_LOAD_FAILED is
 *  returned for it only so the function is total; the manager never reports KEEL_OK as an
 *  error). Exhaustive switch without default: a new keel_status fails to compile
 *  (-Wswitch -Werror) until it is mapped here and in docs/themis.md. */
inline ErrorCode toErrorCode(keel_status s) noexcept {
    switch (s) {
    case KEEL_ERR_PLUGIN_NOT_FOUND:
    case KEEL_ERR_FUNCTION_NOT_FOUND:
    case KEEL_ERR_FILE_NOT_FOUND:
    case KEEL_ERR_PLUGIN_UNLOADED:
    case KEEL_ERR_HOST_FN_NOT_FOUND:
    case KEEL_ERR_NO_MANIFEST:
    case KEEL_ERR_RPC_ENDPOINT_NOT_FOUND:
        return ErrorCode::ERR_PLUGIN_NOT_FOUND;
    case KEEL_OK:
    case KEEL_ERR_NULL_POINTER:
    case KEEL_ERR_INVALID_UTF8:
    case KEEL_ERR_INVALID_ARGUMENT:
    case KEEL_ERR_IO:
    case KEEL_ERR_FILE_TOO_LARGE:
    case KEEL_ERR_NOT_REGULAR_FILE:
    case KEEL_ERR_ALREADY_LOADED:
    case KEEL_ERR_LIBRARY_LOAD:
    case KEEL_ERR_SYMBOL_MISSING:
    case KEEL_ERR_INIT_FAILED:
    case KEEL_ERR_CALL_FAILED:
    case KEEL_ERR_WASM_COMPILE:
    case KEEL_ERR_WASM_TRAP:
    case KEEL_ERR_WASM_INSTANTIATE:
    case KEEL_ERR_LIBRARY_MALFORMED:
    case KEEL_ERR_MEMORY_LIMIT:
    case KEEL_ERR_CPU_BUDGET:
    case KEEL_ERR_DEADLINE:
    case KEEL_ERR_OUTPUT_TOO_LARGE:
    case KEEL_ERR_CANCELLED:
    case KEEL_ERR_DRAIN_TIMEOUT:
    case KEEL_ERR_STATE_SAVE:
    case KEEL_ERR_STATE_RESTORE:
    case KEEL_ERR_BUSY:
    case KEEL_ERR_PANIC:
    case KEEL_ERR_INTERNAL:
    case KEEL_ERR_METRIC_INVALID:
    case KEEL_ERR_METRIC_CONFLICT:
    case KEEL_ERR_METRIC_SERIES_LIMIT:
    case KEEL_ERR_RPC_ENDPOINT_TAKEN:
    case KEEL_ERR_SANDBOX_START:
    case KEEL_ERR_SANDBOX_CRASHED:
    case KEEL_ERR_SANDBOX_EXITED:
    case KEEL_ERR_SANDBOX_SYSCALL_REFUSED:
    case KEEL_ERR_SANDBOX_BACKOFF:
    case KEEL_ERR_SANDBOX_INPUT_TOO_LARGE:
        return ErrorCode::ERR_PLUGIN_LOAD_FAILED;
    case KEEL_ERR_MANIFEST_PARSE:
    case KEEL_ERR_MANIFEST_SCHEMA:
    case KEEL_ERR_MANIFEST_NO_BINARY:
    case KEEL_ERR_MANIFEST_BAD_PATH:
    case KEEL_ERR_MANIFEST_INVALID:
    case KEEL_ERR_MANIFEST_UNKNOWN_FORMAT:
    case KEEL_ERR_BAD_VERSION:
    case KEEL_ERR_ABI_MISMATCH:
    case KEEL_ERR_UNSUPPORTED:
    case KEEL_ERR_PLUGIN_ABI_VIOLATION:
    case KEEL_ERR_ISOLATION_UNSUPPORTED:
        return ErrorCode::ERR_PLUGIN_INCOMPATIBLE;
    case KEEL_ERR_SYMLINK_REFUSED:
    case KEEL_ERR_DIGEST_MISMATCH:
    case KEEL_ERR_NO_SIGNATURE:
    case KEEL_ERR_MALFORMED_SIGNATURE:
    case KEEL_ERR_UNKNOWN_KEY:
    case KEEL_ERR_KEY_NOT_YET_VALID:
    case KEEL_ERR_KEY_EXPIRED:
    case KEEL_ERR_KEY_REVOKED:
    case KEEL_ERR_KEY_NOT_ALLOWED:
    case KEEL_ERR_BAD_SIGNATURE:
    case KEEL_ERR_TRUST_STORE_MALFORMED:
    case KEEL_ERR_TRUST_STORE_ROLLBACK:
    case KEEL_ERR_POLICY_DOWNGRADE:
    case KEEL_ERR_HASH_ONLY_SIGNATURE:
    case KEEL_ERR_UNPINNED_BINARY:
        return ErrorCode::ERR_PLUGIN_INVALID_SIGNATURE;
    case KEEL_ERR_DEPENDENCY_CYCLE:
        return ErrorCode::ERR_PLUGIN_CIRCULAR_DEPENDENCY;
    case KEEL_ERR_DEPENDENCY_MISSING:
        return ErrorCode::ERR_PLUGIN_MISSING_DEPENDENCY;
    case KEEL_ERR_DEPENDENCY_VERSION:
    case KEEL_ERR_HAS_DEPENDENTS:
        return ErrorCode::ERR_PLUGIN_DEPENDENCY_CONFLICT;
    case KEEL_ERR_CAPABILITY_UNKNOWN:
    case KEEL_ERR_CAPABILITY_DENIED:
    case KEEL_ERR_IMPORT_NOT_GRANTED:
    case KEEL_ERR_IMPORT_UNDEFINED:
        return ErrorCode::ERR_PLUGIN_CAPABILITY_ESCALATION;
    case KEEL_ERR_OCI_PULL_FAILED:
    case KEEL_ERR_OCI_AUTH_FAILED:
    case KEEL_ERR_OCI_NOT_A_PLUGIN:
    case KEEL_ERR_OCI_PUSH_FAILED:
        return ErrorCode::ERR_PLUGIN_OCI_PULL_FAILED;
    case KEEL_ERR_OCI_MANIFEST_NOT_FOUND:
        return ErrorCode::ERR_PLUGIN_OCI_MANIFEST_NOT_FOUND;
    case KEEL_ERR_OCI_DIGEST_MISMATCH:
        return ErrorCode::ERR_PLUGIN_OCI_HASH_MISMATCH;
    case KEEL_ERR_OCI_BAD_REFERENCE:
        return ErrorCode::ERR_PLUGIN_OCI_INVALID_REFERENCE;
    }
    return ErrorCode::ERR_PLUGIN_LOAD_FAILED; // a value outside the enum (not a keel_status)
}

} // namespace errors

/** An error: a ThemisDB code and a context string. */
class Error {
public:
    Error(errors::ErrorCode code, std::string context) : code_(code), context_(std::move(context)) {}
    errors::ErrorCode code() const noexcept { return code_; }
    const std::string &context() const noexcept { return context_; }
    const std::string &message() const noexcept { return context_; }

private:
    errors::ErrorCode code_;
    std::string context_;
};

/** A value or an Error (the subset of tl::expected ThemisDB code uses). */
template <typename T> class Result {
public:
    Result(T value) : v_(std::move(value)) {}
    Result(Error error) : v_(std::move(error)) {}
    bool has_value() const noexcept { return v_.index() == 0; }
    explicit operator bool() const noexcept { return has_value(); }
    T &value() & { return std::get<0>(v_); }
    const T &value() const & { return std::get<0>(v_); }
    T &operator*() { return value(); }
    const T &operator*() const { return value(); }
    T *operator->() { return &value(); }
    const T *operator->() const { return &value(); }
    template <typename U> T value_or(U &&u) const { return has_value() ? value() : static_cast<T>(std::forward<U>(u)); }
    const Error &error() const { return std::get<1>(v_); }

private:
    std::variant<T, Error> v_;
};

template <> class Result<void> {
public:
    Result() = default;
    Result(Error error) : e_(std::make_shared<Error>(std::move(error))) {}
    bool has_value() const noexcept { return e_ == nullptr; }
    explicit operator bool() const noexcept { return has_value(); }
    void value() const {}
    const Error &error() const { return *e_; }

private:
    std::shared_ptr<Error> e_;
};

namespace plugins {

namespace detail {

/** A small JSON reader for the documents Keel writes (objects, arrays, strings, numbers,
 *  booleans, null). Malformed input gives null values, never an exception escaping. */
struct Json {
    enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
    bool b = false;
    double n = 0;
    std::string s;
    std::vector<Json> a;
    std::vector<std::pair<std::string, Json>> o;

    const Json &operator[](const std::string &key) const {
        static const Json null;
        for (const auto &kv : o)
            if (kv.first == key) return kv.second;
        return null;
    }
    std::string str() const { return kind == String ? s : std::string(); }
    uint64_t u64() const { return kind == Number && n > 0 ? static_cast<uint64_t>(n) : 0; }

    static Json parse(const std::string &text) {
        size_t i = 0;
        Json j;
        if (!value(text, i, j, 0)) return Json();
        return j;
    }

private:
    static void ws(const std::string &t, size_t &i) {
        while (i < t.size() && (t[i] == ' ' || t[i] == '\n' || t[i] == '\r' || t[i] == '\t')) i++;
    }
    static bool string(const std::string &t, size_t &i, std::string &out) {
        if (i >= t.size() || t[i] != '"') return false;
        i++;
        while (i < t.size() && t[i] != '"') {
            char c = t[i++];
            if (c != '\\') {
                out += c;
                continue;
            }
            if (i >= t.size()) return false;
            char e = t[i++];
            switch (e) {
            case 'n': out += '\n'; break;
            case 't': out += '\t'; break;
            case 'r': out += '\r'; break;
            case 'b': out += '\b'; break;
            case 'f': out += '\f'; break;
            case 'u': {
                if (i + 4 > t.size()) return false;
                unsigned cp = static_cast<unsigned>(std::stoul(t.substr(i, 4), nullptr, 16));
                i += 4;
                if (cp < 0x80) {
                    out += static_cast<char>(cp);
                } else if (cp < 0x800) {
                    out += static_cast<char>(0xC0 | (cp >> 6));
                    out += static_cast<char>(0x80 | (cp & 0x3F));
                } else {
                    out += static_cast<char>(0xE0 | (cp >> 12));
                    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
                    out += static_cast<char>(0x80 | (cp & 0x3F));
                }
                break;
            }
            default: out += e;
            }
        }
        if (i >= t.size()) return false;
        i++;
        return true;
    }
    static bool value(const std::string &t, size_t &i, Json &j, int depth) {
        if (depth > 64) return false;
        ws(t, i);
        if (i >= t.size()) return false;
        char c = t[i];
        if (c == '{') {
            j.kind = Object;
            i++;
            ws(t, i);
            if (i < t.size() && t[i] == '}') return ++i, true;
            for (;;) {
                std::string k;
                ws(t, i);
                if (!string(t, i, k)) return false;
                ws(t, i);
                if (i >= t.size() || t[i] != ':') return false;
                i++;
                Json v;
                if (!value(t, i, v, depth + 1)) return false;
                j.o.emplace_back(std::move(k), std::move(v));
                ws(t, i);
                if (i < t.size() && t[i] == ',') { i++; continue; }
                if (i < t.size() && t[i] == '}') return ++i, true;
                return false;
            }
        }
        if (c == '[') {
            j.kind = Array;
            i++;
            ws(t, i);
            if (i < t.size() && t[i] == ']') return ++i, true;
            for (;;) {
                Json v;
                if (!value(t, i, v, depth + 1)) return false;
                j.a.push_back(std::move(v));
                ws(t, i);
                if (i < t.size() && t[i] == ',') { i++; continue; }
                if (i < t.size() && t[i] == ']') return ++i, true;
                return false;
            }
        }
        if (c == '"') {
            j.kind = String;
            return string(t, i, j.s);
        }
        if (t.compare(i, 4, "true") == 0) return j.kind = Bool, j.b = true, i += 4, true;
        if (t.compare(i, 5, "false") == 0) return j.kind = Bool, i += 5, true;
        if (t.compare(i, 4, "null") == 0) return i += 4, true;
        size_t start = i;
        while (i < t.size() && (std::isdigit(static_cast<unsigned char>(t[i])) || t[i] == '-' || t[i] == '+' ||
                                t[i] == '.' || t[i] == 'e' || t[i] == 'E'))
            i++;
        if (i == start) return false;
        j.kind = Number;
        j.n = std::strtod(t.substr(start, i - start).c_str(), nullptr);
        return true;
    }
};

inline std::string quote(const std::string &s) {
    std::string o = "\"";
    for (char c : s) {
        switch (c) {
        case '"': o += "\\\""; break;
        case '\\': o += "\\\\"; break;
        case '\n': o += "\\n"; break;
        default:
            if (static_cast<unsigned char>(c) < 0x20) {
                char b[8];
                std::snprintf(b, sizeof b, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
                o += b;
            } else {
                o += c;
            }
        }
    }
    return o + "\"";
}

inline std::string status_name(keel_status s) {
    const char *n = nullptr;
    if (keel_status_name(static_cast<uint32_t>(s), &n) != KEEL_OK || n == nullptr) return "KEEL_STATUS_" + std::to_string(static_cast<unsigned>(s));
    return n;
}

/** The Error for a failed Keel call: "<KEEL_NAME>: <message>". */
inline Error keel_error(keel_status s, const std::string &what = std::string()) {
    std::string ctx = status_name(s) + ": " + keel::detail::last_error_message();
    if (!what.empty()) ctx = what + ": " + ctx;
    return Error(errors::toErrorCode(s), ctx);
}

inline int version_part(const std::string &v, int idx) {
    int p[3] = {0, 0, 0};
    std::sscanf(v.c_str(), "%d.%d.%d", &p[0], &p[1], &p[2]);
    return p[idx];
}

inline int compare_versions(const std::string &a, const std::string &b) {
    for (int i = 0; i < 3; i++) {
        int x = version_part(a, i), y = version_part(b, i);
        if (x != y) return x < y ? -1 : 1;
    }
    return 0;
}

} // namespace detail

/** ThemisDB's reload phases. */
enum class PluginReloadPhase { BEFORE_UNLOAD, AFTER_UNLOAD, AFTER_LOAD };

/** ThemisDB's lifecycle states (plugins_api_contract.h), with Keel's Draining as Unloading. */
enum class PluginState { Unloaded = 0, Loading = 1, Active = 2, Degraded = 3, Unloading = 4 };

/** What the manager knows of a plugin (from its manifest, and from Keel once loaded). */
struct PluginManifest {
    std::string name;
    std::string version;
    std::string description;
    PluginType type = PluginType::CUSTOM;
    std::string type_name;                   ///< the manifest's "type" text
    std::string runtime;                     ///< "native", "wasm" or "themis"
    std::string manifest_path;
    std::vector<std::string> dependencies;   ///< plugin dependencies (names)
    std::map<std::string, std::string> dependency_ranges;
    std::vector<std::string> capabilities;   ///< Keel capabilities (granted, once loaded)
    std::vector<std::string> traits;         ///< ThemisDB capability flags
    bool auto_load = false;
    int load_priority = 100;
    // Known once loaded:
    uint64_t generation = 0;
    std::string binary_sha256;
    PluginState state = PluginState::Unloaded;
};

struct PluginVersionRange {
    std::string min_version; ///< inclusive; "" = open
    std::string max_version; ///< inclusive; "" = open
};
struct PluginCapabilityRequirement {
    std::string capability_name;
    PluginVersionRange version_range;
};
struct PluginNegotiationResult {
    bool success = false;
    std::vector<std::string> satisfied;
    std::vector<std::string> unsatisfied;
    std::string error_message;
};

/** ThemisDB's hot-plug configuration. Keel's watcher always loads new, reloads changed and
 *  unloads removed plugins: enableHotPlug refuses (returns false) a config that turns one of
 *  those off. `watch_interval_ms` is Keel's debounce. */
struct HotPlugConfig {
    bool enabled = false;
    bool auto_load = true;
    bool auto_reload = true;
    bool auto_unload = true;
    uint32_t watch_interval_ms = 100;
};

/** Per-plugin statistics under ThemisDB's names (read from Keel's counters). */
struct PluginStats {
    double load_time_ms = 0;
    uint64_t reload_count = 0;
    uint64_t function_calls = 0;
    uint64_t errors = 0;
    uint64_t memory_bytes = 0;
    double avg_latency_ms = 0;
    double p95_latency_ms = 0;
    double p99_latency_ms = 0;
};

/** ThemisDB's PluginMetrics, read-only: a snapshot of Keel's counters taken by
 *  PluginManager::getMetrics(). `exposition()` is the full OpenMetrics text (Keel's
 *  keel_plugin_* families and ThemisDB's plugin_* gauges). */
class PluginMetrics {
public:
    PluginStats getStats(const std::string &name) const {
        auto it = stats_.find(name);
        return it == stats_.end() ? PluginStats() : it->second;
    }
    std::map<std::string, PluginStats> getAllStats() const { return stats_; }
    const std::string &exposition() const { return text_; }

    /** Parse the plugin_* gauges of an OpenMetrics exposition. */
    void refresh(const std::string &text) {
        std::map<std::string, PluginStats> stats;
        std::istringstream in(text);
        std::string line;
        while (std::getline(in, line)) {
            if (line.empty() || line[0] == '#') continue;
            size_t brace = line.find('{');
            size_t close = line.find('}');
            if (brace == std::string::npos || close == std::string::npos) continue;
            std::string family = line.substr(0, brace);
            std::string labels = line.substr(brace + 1, close - brace - 1);
            size_t p = labels.find("plugin=\"");
            if (p == std::string::npos) continue;
            size_t q = labels.find('"', p + 8);
            std::string plugin = labels.substr(p + 8, q - p - 8);
            double v = std::strtod(line.c_str() + close + 1, nullptr);
            PluginStats &s = stats[plugin];
            if (family == "plugin_function_calls") s.function_calls = static_cast<uint64_t>(v);
            else if (family == "plugin_errors") s.errors = static_cast<uint64_t>(v);
            else if (family == "plugin_reload_count") s.reload_count = static_cast<uint64_t>(v);
            else if (family == "plugin_load_time_ms") s.load_time_ms = v;
            else if (family == "plugin_memory_bytes") s.memory_bytes = static_cast<uint64_t>(v);
            else if (family == "plugin_call_latency_avg_ms") s.avg_latency_ms = v;
            else if (family == "plugin_call_latency_p95_ms") s.p95_latency_ms = v;
            else if (family == "plugin_call_latency_p99_ms") s.p99_latency_ms = v;
        }
        stats_ = std::move(stats);
        text_ = text;
    }

private:
    std::map<std::string, PluginStats> stats_;
    std::string text_;
};

/** Edition and licence gates (ThemisDB's enterprise plugins). Off by default: every plugin
 *  may load. When `enforce` is set, a manifest whose `allowed_editions` does not list
 *  `edition` fails with ERR_PLUGIN_EDITION_CEILING_EXCEEDED, and one whose `license_feature`
 *  is not in `licensed_features` fails with ERR_PLUGIN_LICENSE_CLAIM_REJECTED. */
struct EditionConfig {
    bool enforce = false;
    std::string edition = "community";
    std::set<std::string> licensed_features;
};

/** ThemisDB's PluginManager over a Keel host. */
class PluginManager {
public:
    using ReloadListener = std::function<void(const std::string &, PluginReloadPhase)>;

    /** The process-wide manager, over a host of its own (signatures required, Keel defaults). */
    static PluginManager &instance() {
        static PluginManager m;
        return m;
    }

    /** A manager over `host` (borrowed; must outlive the manager), or over a new host it owns
     *  when `host` is NULL. */
    explicit PluginManager(keel_host *host = nullptr) : host_(host) {
        if (host_ == nullptr) {
            if (keel_host_new(&host_) != KEEL_OK) host_ = nullptr;
            owns_host_ = host_ != nullptr;
        }
        if (host_ != nullptr) {
            if (keel_host_add_listener(host_, &PluginManager::on_event, this, nullptr, &listener_id_) != KEEL_OK)
                listener_id_ = 0;
        }
    }

    /** Unloads every plugin (as ThemisDB's destructor does), then releases the host if owned. */
    ~PluginManager() {
        (void)unloadAllPlugins();
        if (host_ != nullptr && listener_id_ != 0) keel_host_remove_listener(host_, listener_id_);
        if (owns_host_) keel_host_free(host_);
    }
    PluginManager(const PluginManager &) = delete;
    PluginManager &operator=(const PluginManager &) = delete;

    /** The Keel host (for Keel settings: trust store, signature policy, drain timeout...). */
    keel_host *host() const noexcept { return host_; }

    // ---- Discovery and loading ----

    /** Find manifests under `dir` (Keel's discovery: plugin folders with plugin.json or
     *  keel.json, nested categories, no stray *.json) and register them, unloaded. A plugin
     *  already loaded is never replaced by a rescan. Returns the number registered. Missing
     *  dir → ERR_PLUGIN_NOT_FOUND; manifests found but none valid → the first manifest error. */
    Result<size_t> scanPluginDirectory(const std::string &dir) {
        keel::detail::Buffer b;
        keel_status s = keel_discover_manifests(dir.c_str(), b.get());
        if (s != KEEL_OK) return detail::keel_error(s, "scanning '" + dir + "'");
        detail::Json paths = detail::Json::parse(b.text());
        size_t registered = 0;
        std::vector<Error> failures;
        for (const auto &p : paths.a) {
            auto m = read_manifest(p.str());
            if (!m) {
                failures.push_back(m.error());
                continue;
            }
            std::lock_guard<std::mutex> lock(mutex_);
            Entry &e = entries_[m->name];
            if (e.loaded()) continue; // never overwrite a loaded plugin
            e.manifest = *m;
            registered++;
        }
        if (registered == 0 && !failures.empty()) return failures.front();
        return registered;
    }

    /** Load a registered plugin, its plugin dependencies first (dependency order). Returns the
     *  instance if already loaded. */
    Result<IThemisPlugin *> loadPlugin(const std::string &name) {
        std::vector<std::string> chain;
        return load_recursive(name, chain);
    }

    /** Load the plugin whose manifest is `path` (a plugin.json / keel.json, or a plugin folder
     *  holding one) and register it under its manifest name. `config` must be "{}" (see the
     *  header comment). */
    Result<IThemisPlugin *> loadPluginFromPath(const std::string &path, const std::string &config = "{}") {
        if (!config.empty() && config != "{}") {
            return Error(errors::ErrorCode::ERR_PLUGIN_LOAD_FAILED,
                         "loadPluginFromPath: a config other than \"{}\" is not supported; Keel gives the plugin "
                         "the config of its manifest");
        }
        std::string manifest = path;
        for (const char *n : {"/keel.json", "/plugin.json"}) {
            std::ifstream f(path + n);
            if (f.good()) {
                manifest = path + n;
                break;
            }
        }
        auto m = read_manifest(manifest);
        if (!m) return m.error();
        {
            std::lock_guard<std::mutex> lock(mutex_);
            Entry &e = entries_[m->name];
            if (e.loaded()) {
                return Error(errors::ErrorCode::ERR_PLUGIN_LOAD_FAILED,
                             "KEEL_ERR_ALREADY_LOADED: a plugin named '" + m->name + "' is already loaded");
            }
            e.manifest = *m;
        }
        return loadPlugin(m->name);
    }

    /** Pull the plugin `ref` (`[registry/]repository[:tag][@sha256:<hex>]`) from an OCI
     *  registry into `cache_dir` (default `<temp>/themis-plugins`) and load it as
     *  loadPluginFromPath loads the pulled folder. `bearer` empty: anonymous. Errors: 6310 bad
     *  reference, 6308 no such manifest, 6309 digest mismatch, 6307 registry unreachable,
     *  authentication refused or not a Keel plugin artifact; then those of loadPluginFromPath. */
    Result<IThemisPlugin *> loadPluginFromOci(const std::string &ref, const std::string &cache_dir = "",
                                              const std::string &bearer = "") {
        std::string dir = cache_dir;
        if (dir.empty()) {
            const char *tmp = std::getenv("TMPDIR");
            dir = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/themis-plugins";
        }
        keel::detail::Buffer manifest;
        keel_status s =
            keel_oci_pull(ref.c_str(), dir.c_str(), bearer.empty() ? nullptr : bearer.c_str(), manifest.get(), nullptr);
        if (s != KEEL_OK) return detail::keel_error(s, "loadPluginFromOci '" + ref + "'");
        return loadPluginFromPath(manifest.text());
    }

    /** Unload a loaded plugin. Unknown or not loaded → ERR_PLUGIN_NOT_FOUND; loaded dependents
     *  → ERR_PLUGIN_DEPENDENCY_CONFLICT naming them (nothing unloaded). The entry stays
     *  registered (unloaded). */
    Result<void> unloadPlugin(const std::string &name) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            auto it = entries_.find(name);
            if (it == entries_.end() || !it->second.loaded()) {
                return Error(errors::ErrorCode::ERR_PLUGIN_NOT_FOUND, "Plugin not loaded: " + name);
            }
            it->second.release_lease(); // the manager's own lease must not hold up the drain
        }
        keel_status s = keel_host_unload(host_, name.c_str());
        if (s != KEEL_OK && s != KEEL_ERR_DRAIN_TIMEOUT) {
            record_error(name, s);
            return detail::keel_error(s, "Cannot unload plugin '" + name + "'");
        }
        forget_loaded(name);
        return Result<void>();
    }

    /** Unload every plugin, dependents before their dependencies, and clear the registry. */
    Result<void> unloadAllPlugins() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            for (auto &kv : entries_) kv.second.release_lease();
        }
        keel_status s = host_ == nullptr ? KEEL_OK : keel_host_unload_all(host_);
        std::map<std::string, Entry> old;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            old.swap(entries_);
        }
        old.clear(); // adapters and handles released outside the lock
        if (s != KEEL_OK && s != KEEL_ERR_DRAIN_TIMEOUT) return detail::keel_error(s, "unloadAllPlugins");
        return Result<void>();
    }

    // ---- Lookup ----

    /** The loaded plugin `name` (see the header comment for what is returned). */
    Result<IThemisPlugin *> getPlugin(const std::string &name) const {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = entries_.find(name);
        if (it == entries_.end() || !it->second.loaded()) {
            return Error(errors::ErrorCode::ERR_PLUGIN_NOT_FOUND, "Plugin not loaded: " + name);
        }
        Entry &e = const_cast<Entry &>(it->second);
        IThemisPlugin *p = e.plugin(host_);
        if (p == nullptr) return detail::keel_error(KEEL_ERR_PLUGIN_UNLOADED, "getPlugin '" + name + "'");
        return p;
    }

    /** The loaded plugins of a type (sorted by name). */
    std::vector<IThemisPlugin *> getPluginsByType(PluginType type) const {
        std::vector<IThemisPlugin *> out;
        for (const auto &m : loaded_rows()) {
            if (m.type != type) continue;
            auto p = getPlugin(m.name);
            if (p) out.push_back(*p);
        }
        return out;
    }

    /** Every registered plugin (scanned or loaded), with Keel's view for loaded ones. */
    std::vector<PluginManifest> listPlugins() const {
        std::map<std::string, PluginManifest> all;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            for (const auto &kv : entries_) all[kv.first] = kv.second.manifest;
        }
        for (auto &m : loaded_rows()) all[m.name] = m;
        std::vector<PluginManifest> out;
        for (auto &kv : all) out.push_back(std::move(kv.second));
        return out;
    }

    std::vector<std::string> listLoadedPlugins() const {
        std::vector<std::string> out;
        for (auto &m : loaded_rows()) out.push_back(m.name);
        return out;
    }

    bool isPluginLoaded(const std::string &name) const {
        keel_plugin *p = nullptr;
        if (keel_plugin_get(host_, name.c_str(), &p) != KEEL_OK) return false;
        keel_plugin_free(p);
        return true;
    }

    /** The plugin's manifest (Keel's view once loaded). Unknown → ERR_PLUGIN_NOT_FOUND. */
    Result<PluginManifest> getManifest(const std::string &name) const {
        for (auto &m : loaded_rows())
            if (m.name == name) return m;
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = entries_.find(name);
        if (it == entries_.end()) return Error(errors::ErrorCode::ERR_PLUGIN_NOT_FOUND, "Plugin not found: " + name);
        return it->second.manifest;
    }

    /** A plugin's functions (Keel plugins: their exported functions; ThemisDB plugins: the
     *  functions Keel's shim offers, e.g. "info", "state"). */
    Result<std::vector<std::string>> listFunctions(const std::string &name) const {
        keel_plugin *p = nullptr;
        keel_status s = keel_plugin_get(host_, name.c_str(), &p);
        if (s != KEEL_OK) return detail::keel_error(s, "listFunctions '" + name + "'");
        keel::detail::Buffer b;
        s = keel_plugin_functions(p, b.get());
        keel_plugin_free(p);
        if (s != KEEL_OK) return detail::keel_error(s, "listFunctions '" + name + "'");
        std::vector<std::string> out;
        for (auto &f : detail::Json::parse(b.text()).a) out.push_back(f.str());
        return out;
    }

    /** A plugin's lifecycle state now (Unloaded if not loaded). */
    PluginState getPluginState(const std::string &name) const {
        keel_plugin *p = nullptr;
        if (keel_plugin_get(host_, name.c_str(), &p) != KEEL_OK) return PluginState::Unloaded;
        keel_lifecycle_state st = KEEL_STATE_UNLOADED;
        keel_status s = keel_plugin_state(p, &st);
        keel_plugin_free(p);
        return s == KEEL_OK ? from_keel(st) : PluginState::Unloaded;
    }

    // ---- Reload and auto-load ----

    /** Verified hot reload with state (Keel's: on failure the old generation keeps serving).
     *  Not loaded → ERR_PLUGIN_NOT_FOUND; a reload whose state could not be saved or restored
     *  fails (ERR_PLUGIN_LOAD_FAILED, context KEEL_ERR_STATE_*). Reload listeners get
     *  BEFORE_UNLOAD, AFTER_UNLOAD, AFTER_LOAD before this returns. */
    Result<void> reloadPlugin(const std::string &name) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            auto it = entries_.find(name);
            if (it == entries_.end() || !it->second.loaded()) {
                return Error(errors::ErrorCode::ERR_PLUGIN_NOT_FOUND, "Plugin not loaded: " + name);
            }
            it->second.release_lease();
        }
        uint64_t g = 0;
        keel_status s = keel_host_reload(host_, name.c_str(), &g);
        if (s != KEEL_OK) {
            record_error(name, s);
            return detail::keel_error(s, "Reload of plugin '" + name + "' failed");
        }
        return Result<void>();
    }

    /** Load every registered plugin whose manifest says auto_load, by load_priority then name,
     *  each after its dependencies. Returns the number loaded by this call. */
    Result<size_t> autoLoadPlugins() {
        std::vector<std::pair<int, std::string>> todo;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            for (auto &kv : entries_)
                if (kv.second.manifest.auto_load && !kv.second.loaded())
                    todo.emplace_back(kv.second.manifest.load_priority, kv.first);
        }
        std::sort(todo.begin(), todo.end());
        size_t loaded = 0;
        for (auto &t : todo) {
            if (isPluginLoaded(t.second)) continue;
            auto r = loadPlugin(t.second);
            if (!r) return r.error();
            loaded++;
        }
        return loaded;
    }

    // ---- Capabilities ----

    /** Check requirements against a loaded plugin's capability flags and version. */
    PluginNegotiationResult negotiateCapabilities(const std::string &name,
                                                  const std::vector<PluginCapabilityRequirement> &reqs) const {
        PluginNegotiationResult r;
        auto p = getPlugin(name);
        if (!p) {
            r.error_message = "Plugin '" + name + "' not found or not loaded";
            return r;
        }
        const PluginCapabilities caps = (*p)->getCapabilities();
        const char *v = (*p)->getVersion();
        const std::string version = v == nullptr ? "" : v;
        std::vector<std::string> messages;
        for (const auto &req : reqs) {
            bool has = flag(caps, req.capability_name);
            if (!has) {
                r.unsatisfied.push_back(req.capability_name);
                messages.push_back("capability '" + req.capability_name + "' not supported");
                continue;
            }
            const auto &range = req.version_range;
            bool constrained = !range.min_version.empty() || !range.max_version.empty();
            bool ok = !constrained ||
                      (!version.empty() &&
                       (range.min_version.empty() || detail::compare_versions(version, range.min_version) >= 0) &&
                       (range.max_version.empty() || detail::compare_versions(version, range.max_version) <= 0));
            if (ok) {
                r.satisfied.push_back(req.capability_name);
            } else {
                r.unsatisfied.push_back(req.capability_name);
                messages.push_back("plugin version '" + version + "' out of range [" + range.min_version + ", " +
                                   range.max_version + "] for '" + req.capability_name + "'");
            }
        }
        for (size_t i = 0; i < messages.size(); i++) r.error_message += (i ? "; " : "") + messages[i];
        r.success = r.unsatisfied.empty();
        return r;
    }

    /** Compare the plugin's capability flags now with those frozen at load (the 5 original
     *  flags); any flag turned on marks it restricted → ERR_PLUGIN_CAPABILITY_ESCALATION. */
    Result<void> checkCapabilityEscalation(const std::string &name) {
        auto p = getPlugin(name);
        if (!p) return p.error();
        const PluginCapabilities now = (*p)->getCapabilities();
        std::lock_guard<std::mutex> lock(mutex_);
        Entry &e = entries_[name];
        std::string gained;
        const bool before[5] = {e.frozen.supports_streaming, e.frozen.supports_batching, e.frozen.supports_transactions,
                                e.frozen.thread_safe, e.frozen.gpu_accelerated};
        const bool after[5] = {now.supports_streaming, now.supports_batching, now.supports_transactions, now.thread_safe,
                               now.gpu_accelerated};
        static const char *names[5] = {"streaming", "batching", "transactions", "thread_safe", "gpu_accelerated"};
        for (int i = 0; i < 5; i++)
            if (!before[i] && after[i]) gained += (gained.empty() ? "" : ", ") + std::string(names[i]);
        if (gained.empty()) return Result<void>();
        e.restricted = true;
        return Error(errors::ErrorCode::ERR_PLUGIN_CAPABILITY_ESCALATION,
                     "Plugin '" + name + "' gained capabilities after load: " + gained);
    }

    bool isPluginRestricted(const std::string &name) const {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = entries_.find(name);
        return it != entries_.end() && it->second.restricted;
    }

    // ---- Metrics, hot plug, listeners, diagnostics ----

    /** A snapshot of Keel's counters under ThemisDB's names, taken now. The reference stays
     *  valid for the manager's life; the next getMetrics() call refreshes it. */
    const PluginMetrics &getMetrics() const {
        keel::detail::Buffer b;
        std::lock_guard<std::mutex> lock(metrics_mutex_);
        if (keel_host_metrics_text(host_, b.get()) == KEEL_OK) metrics_.refresh(b.text());
        return metrics_;
    }

    /** Watch `dir` with Keel's watcher (recursive; new folders load, changes reload verified,
     *  removals unload). false if already enabled, `dir` is missing, or `config` turns off
     *  auto_load, auto_reload or auto_unload (Keel's watcher always does all three). */
    bool enableHotPlug(const std::string &dir, const HotPlugConfig &config = HotPlugConfig()) {
        if (!config.auto_load || !config.auto_reload || !config.auto_unload) return false;
        uint64_t debounce = config.watch_interval_ms == 0 ? 100 : config.watch_interval_ms;
        if (keel_host_watch_dir(host_, dir.c_str(), debounce) != KEEL_OK) return false;
        std::lock_guard<std::mutex> lock(mutex_);
        hot_plug_ = true;
        return true;
    }

    void disableHotPlug() {
        keel_host_stop_watching(host_);
        std::lock_guard<std::mutex> lock(mutex_);
        hot_plug_ = false;
    }

    bool isHotPlugEnabled() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return hot_plug_;
    }

    void registerReloadListener(ReloadListener fn) {
        std::lock_guard<std::mutex> lock(listeners_mutex_);
        listeners_.push_back(std::move(fn));
    }

    void clearReloadListeners() {
        std::lock_guard<std::mutex> lock(listeners_mutex_);
        listeners_.clear();
    }

    /** Diagnostics of one plugin as JSON (ThemisDB's fields, plus Keel's generation, runtime
     *  and binary digest); an unknown plugin gives {"plugin_name":..,"status":"not_found"}. */
    std::string getDiagnosticsForPlugin(const std::string &name) const {
        auto m = getManifest(name);
        const std::string ts = timestamp();
        // The plugin's own PluginDiagnostics (ISelfHealingPlugin), asked outside our lock.
        const std::string own = m ? self_diagnostics(name) : std::string();
        if (!m) return "{\"plugin_name\":" + detail::quote(name) + ",\"timestamp\":" + detail::quote(ts) + ",\"status\":\"not_found\"}";
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = entries_.find(name);
        const Entry *e = it == entries_.end() ? nullptr : &it->second;
        static const char *states[] = {"UNLOADED", "LOADING", "LOADED", "DEGRADED", "UNLOADING"};
        const bool loaded = m->state != PluginState::Unloaded;
        std::ostringstream o;
        o << "{\"plugin_name\":" << detail::quote(name) << ",\"timestamp\":" << detail::quote(ts)
          << ",\"lifecycle_state\":\"" << states[static_cast<int>(m->state)] << "\",\"loaded\":" << (loaded ? "true" : "false")
          << ",\"path\":" << detail::quote(m->manifest_path) << ",\"type\":" << static_cast<int>(m->type)
          << ",\"manifest_version\":" << detail::quote(m->version) << ",\"runtime\":" << detail::quote(m->runtime)
          << ",\"generation\":" << m->generation << ",\"binary_sha256\":" << detail::quote(m->binary_sha256)
          << ",\"last_error\":" << detail::quote(e ? e->last_error : "") << ",\"error_count\":" << (e ? e->error_count : 0)
          << ",\"frozen_capabilities\":{";
        const PluginCapabilities f = e ? e->frozen : PluginCapabilities();
        o << "\"streaming\":" << f.supports_streaming << ",\"batching\":" << f.supports_batching
          << ",\"transactions\":" << f.supports_transactions << ",\"thread_safe\":" << f.thread_safe
          << ",\"gpu_accelerated\":" << f.gpu_accelerated << "},\"is_restricted\":" << ((e && e->restricted) ? "true" : "false")
          << "}";
        std::string s = o.str();
        if (!own.empty()) s.insert(s.size() - 1, ",\"plugin_diagnostics\":" + own);
        // bools streamed as 0/1 above: spell them as JSON
        for (const char *k : {"\"streaming\":", "\"batching\":", "\"transactions\":", "\"thread_safe\":", "\"gpu_accelerated\":"}) {
            size_t p = s.find(k);
            if (p == std::string::npos) continue;
            p += std::string(k).size();
            s.replace(p, 1, s[p] == '1' ? "true" : "false");
        }
        return s;
    }

    // ---- Edition and licence gates (configuration; off by default) ----

    static EditionConfig &editionConfig() {
        static EditionConfig c;
        return c;
    }
    static bool isEditionSupported() { return !editionConfig().enforce || editionConfig().edition != "community"; }
    static bool isLicensed() {
        return !editionConfig().enforce || editionConfig().licensed_features.count("enterprise_plugins") != 0;
    }
    static std::string communityUnavailableMessage(const std::string &name) {
        return "Plugin '" + name + "' is not available in the " + editionConfig().edition + " edition";
    }

private:
    struct Entry {
        PluginManifest manifest;
        PluginCapabilities frozen;
        bool restricted = false;
        std::string last_error;
        uint64_t error_count = 0;
        bool is_loaded = false;
        std::unique_ptr<keel::ThemisAdapter> adapter; // native / WASM
        keel_themis_lease *lease = nullptr;           // ThemisDB C++ plugins
        IThemisPlugin *legacy = nullptr;

        Entry() = default;
        Entry(Entry &&o) noexcept { *this = std::move(o); }
        Entry &operator=(Entry &&o) noexcept {
            if (this != &o) {
                release_lease();
                manifest = std::move(o.manifest);
                frozen = o.frozen;
                restricted = o.restricted;
                last_error = std::move(o.last_error);
                error_count = o.error_count;
                is_loaded = o.is_loaded;
                adapter = std::move(o.adapter);
                lease = o.lease;
                legacy = o.legacy;
                o.lease = nullptr;
                o.legacy = nullptr;
            }
            return *this;
        }
        ~Entry() { release_lease(); }

        bool loaded() const { return is_loaded; }
        void release_lease() {
            keel_themis_lease_free(lease);
            lease = nullptr;
            legacy = nullptr;
        }
        /** The IThemisPlugin to hand out (taken lazily; the lease follows reloads). */
        IThemisPlugin *plugin(keel_host *host) {
            if (manifest.runtime == "themis") {
                keel_plugin *p = nullptr;
                if (keel_plugin_get(host, manifest.name.c_str(), &p) != KEEL_OK) return nullptr;
                uint64_t current = 0, held = 0;
                bool fresh = lease != nullptr && keel_plugin_generation(p, &current) == KEEL_OK &&
                             keel_themis_lease_generation(lease, &held) == KEEL_OK && current == held;
                if (!fresh) {
                    release_lease();
                    keel_themis_lease *l = nullptr;
                    void *obj = nullptr;
                    if (keel_plugin_themis_lease(p, &l) == KEEL_OK && keel_themis_lease_plugin(l, &obj) == KEEL_OK) {
                        lease = l;
                        legacy = static_cast<IThemisPlugin *>(obj);
                    } else {
                        keel_themis_lease_free(l);
                    }
                }
                keel_plugin_free(p);
                return legacy;
            }
            if (!adapter) {
                try {
                    adapter = keel::ThemisAdapter::open(host, manifest.name);
                } catch (...) {
                    return nullptr;
                }
            }
            return adapter.get();
        }
    };

    static PluginState from_keel(keel_lifecycle_state s) {
        switch (s) {
        case KEEL_STATE_UNLOADED: return PluginState::Unloaded;
        case KEEL_STATE_LOADING: return PluginState::Loading;
        case KEEL_STATE_ACTIVE: return PluginState::Active;
        case KEEL_STATE_DEGRADED: return PluginState::Degraded;
        case KEEL_STATE_DRAINING: return PluginState::Unloading;
        }
        return PluginState::Unloaded;
    }

    static bool flag(const PluginCapabilities &c, const std::string &n) {
        if (n == "streaming") return c.supports_streaming;
        if (n == "batching") return c.supports_batching;
        if (n == "transactions") return c.supports_transactions;
        if (n == "thread_safe") return c.thread_safe;
        if (n == "gpu_accelerated") return c.gpu_accelerated;
        if (n == "provides_vram_policy") return c.provides_vram_policy;
        if (n == "provides_shard_policy") return c.provides_shard_policy;
        return false;
    }

    static std::string timestamp() {
        std::time_t t = std::time(nullptr);
        char b[32];
        std::tm tm{};
        gmtime_r(&t, &tm);
        std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
        return b;
    }

    static PluginManifest from_json(const detail::Json &j) {
        PluginManifest m;
        m.name = j["name"].str();
        m.version = j["version"].str();
        m.description = j["description"].str();
        m.type_name = j["type"].str();
        m.type = keel::detail::type_from_name(m.type_name);
        m.runtime = j["runtime"].str();
        for (const auto &kv : j["dependencies"].o) {
            m.dependencies.push_back(kv.first);
            m.dependency_ranges[kv.first] = kv.second.str();
        }
        for (const auto &c : j["capabilities"].a) m.capabilities.push_back(c.str());
        for (const auto &t : j["traits"].a) m.traits.push_back(t.str());
        m.auto_load = j["auto_load"].kind == detail::Json::Bool && j["auto_load"].b;
        if (j["load_priority"].kind == detail::Json::Number) m.load_priority = static_cast<int>(j["load_priority"].n);
        m.generation = j["generation"].u64();
        m.binary_sha256 = j["binary_sha256"].str();
        m.manifest_path = j["manifest_path"].str();
        const std::string st = j["state"].str();
        m.state = st == "active" ? PluginState::Active
                  : st == "degraded" ? PluginState::Degraded
                  : st == "draining" ? PluginState::Unloading
                                     : PluginState::Unloaded;
        return m;
    }

    Result<PluginManifest> read_manifest(const std::string &path) const {
        keel::detail::Buffer b;
        keel_status s = keel_manifest_read(path.c_str(), b.get());
        if (s != KEEL_OK) return detail::keel_error(s, "manifest '" + path + "'");
        PluginManifest m = from_json(detail::Json::parse(b.text()));
        m.manifest_path = path;
        return m;
    }

    std::vector<PluginManifest> loaded_rows() const {
        keel::detail::Buffer b;
        std::vector<PluginManifest> out;
        if (host_ == nullptr || keel_host_list_plugins(host_, b.get()) != KEEL_OK) return out;
        for (const auto &row : detail::Json::parse(b.text()).a) out.push_back(from_json(row));
        return out;
    }

    /** The gates of EditionConfig, read from the raw manifest (ThemisDB's fields). */
    Result<void> check_edition(const PluginManifest &m) const {
        const EditionConfig &c = editionConfig();
        if (!c.enforce) return Result<void>();
        std::ifstream f(m.manifest_path);
        std::stringstream ss;
        ss << f.rdbuf();
        detail::Json raw = detail::Json::parse(ss.str());
        const detail::Json &allowed = raw["allowed_editions"];
        if (allowed.kind == detail::Json::Array) {
            bool ok = false;
            for (const auto &e : allowed.a) {
                std::string a = e.str(), b = c.edition;
                std::transform(a.begin(), a.end(), a.begin(), ::tolower);
                std::transform(b.begin(), b.end(), b.begin(), ::tolower);
                ok = ok || a == b;
            }
            if (!ok) {
                return Error(errors::ErrorCode::ERR_PLUGIN_EDITION_CEILING_EXCEEDED,
                             "Plugin '" + m.name + "' is not allowed in edition '" + c.edition + "'");
            }
        }
        const std::string feature = raw["license_feature"].str();
        if (!feature.empty() && c.licensed_features.count(feature) == 0) {
            return Error(errors::ErrorCode::ERR_PLUGIN_LICENSE_CLAIM_REJECTED,
                         "Plugin '" + m.name + "' needs the licence feature '" + feature + "'");
        }
        return Result<void>();
    }

    Result<IThemisPlugin *> load_recursive(const std::string &name, std::vector<std::string> &chain) {
        if (std::find(chain.begin(), chain.end(), name) != chain.end()) {
            std::string path;
            for (auto &c : chain) path += c + " -> ";
            return Error(errors::ErrorCode::ERR_PLUGIN_CIRCULAR_DEPENDENCY,
                         "Circular dependency detected involving plugin '" + name + "': " + path + name);
        }
        PluginManifest m;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            auto it = entries_.find(name);
            if (it == entries_.end()) return Error(errors::ErrorCode::ERR_PLUGIN_NOT_FOUND, "Plugin not found: " + name);
            m = it->second.manifest;
        }
        if (isPluginLoaded(name)) return getPlugin(name);
        auto gate = check_edition(m);
        if (!gate) return gate.error();
        chain.push_back(name);
        for (const auto &dep : m.dependencies) {
            if (isPluginLoaded(dep)) continue;
            bool registered;
            {
                std::lock_guard<std::mutex> lock(mutex_);
                registered = entries_.count(dep) != 0;
            }
            if (!registered) {
                return Error(errors::ErrorCode::ERR_PLUGIN_MISSING_DEPENDENCY,
                             "Plugin '" + name + "' requires unregistered dependency '" + dep + "'");
            }
            auto r = load_recursive(dep, chain);
            if (!r) return r.error();
        }
        chain.pop_back();
        keel_status s = keel_host_load(host_, m.manifest_path.c_str(), nullptr);
        if (s != KEEL_OK) {
            record_error(name, s);
            return detail::keel_error(s, "Failed to load plugin '" + name + "'");
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);
            entries_[name].is_loaded = true;
        }
        auto p = getPlugin(name);
        if (p) {
            const PluginCapabilities caps = (*p)->getCapabilities();
            std::lock_guard<std::mutex> lock(mutex_);
            entries_[name].frozen = caps;
            entries_[name].restricted = false;
        }
        return p;
    }

    void record_error(const std::string &name, keel_status s) {
        std::string msg = detail::status_name(s) + ": " + keel::detail::last_error_message();
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = entries_.find(name);
        if (it == entries_.end()) return;
        it->second.last_error = msg;
        it->second.error_count++;
    }

    void forget_loaded(const std::string &name) {
        std::unique_ptr<keel::ThemisAdapter> adapter;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            auto it = entries_.find(name);
            if (it == entries_.end()) return;
            it->second.is_loaded = false;
            it->second.release_lease();
            adapter = std::move(it->second.adapter);
        }
    }

    void notify(const std::string &name, PluginReloadPhase phase) {
        std::vector<ReloadListener> ls;
        {
            std::lock_guard<std::mutex> lock(listeners_mutex_);
            ls = listeners_;
        }
        for (auto &l : ls) {
            try {
                l(name, phase);
            } catch (...) {
                // ThemisDB logs and swallows listener exceptions; none may reach Keel.
            }
        }
    }

    /** The "diagnostics" function of a ThemisDB plugin that is an ISelfHealingPlugin (its
     *  performHealthCheck() as JSON), or "" if it has none or it fails. */
    std::string self_diagnostics(const std::string &name) const {
        keel_plugin *p = nullptr;
        if (keel_plugin_get(host_, name.c_str(), &p) != KEEL_OK) return std::string();
        std::string out;
        keel_function f = 0;
        keel_buffer *buf = nullptr;
        if (keel_plugin_function(p, "diagnostics", &f) == KEEL_OK && keel_buffer_new(&buf) == KEEL_OK) {
            const uint8_t *data = nullptr;
            size_t len = 0;
            if (keel_call(p, f, nullptr, 0, buf) == KEEL_OK && keel_buffer_data(buf, &data, &len) == KEEL_OK)
                out.assign(reinterpret_cast<const char *>(data), len);
            keel_buffer_free(buf);
        }
        keel_plugin_free(p);
        return out;
    }

    /** Keel's lifecycle listener (outside Keel's lock; never re-entered). */
    static void on_event(const char *plugin, keel_event event, uint64_t generation, void *user_data) noexcept {
        (void)generation;
        try {
            auto *self = static_cast<PluginManager *>(user_data);
            const std::string name = plugin;
            switch (event) {
            case KEEL_EVENT_LOADED: {
                std::lock_guard<std::mutex> lock(self->mutex_);
                Entry &e = self->entries_[name];
                e.is_loaded = true;
                if (e.manifest.name.empty()) {
                    // Loaded by Keel itself (the hot-plug watcher): register it.
                    for (auto &m : self->loaded_rows())
                        if (m.name == name) e.manifest = m;
                }
                break;
            }
            case KEEL_EVENT_BEFORE_SWAP: self->notify(name, PluginReloadPhase::BEFORE_UNLOAD); break;
            case KEEL_EVENT_AFTER_SWAP:
                self->notify(name, PluginReloadPhase::AFTER_UNLOAD);
                self->notify(name, PluginReloadPhase::AFTER_LOAD);
                break;
            case KEEL_EVENT_ROLLED_BACK: break;
            case KEEL_EVENT_UNLOADED: self->forget_loaded(name); break;
            case KEEL_EVENT_HEALTH_CHANGED: break; // ThemisDB's reload listeners have no such phase
            }
        } catch (...) {
        }
    }

    keel_host *host_ = nullptr;
    bool owns_host_ = false;
    bool hot_plug_ = false; // guarded by mutex_
    uint64_t listener_id_ = 0;
    mutable std::mutex mutex_;
    std::map<std::string, Entry> entries_;
    mutable std::mutex listeners_mutex_;
    std::vector<ReloadListener> listeners_;
    mutable std::mutex metrics_mutex_;
    mutable PluginMetrics metrics_;
};

} // namespace plugins
} // namespace themis

#endif /* KEEL_THEMIS_PLUGIN_MANAGER_HPP */
