/*
 * keel.hpp — the Keel C++ API (C++17): keel::Host, keel::Plugin, keel::Buffer, keel::Error.
 *
 * Header-only over the C ABI of keel/keel.h: every C function has a C++ counterpart here
 * (the list, and the few left to C on purpose, is in docs/cpp-api.md). At the boundary only
 * standard types: inputs are keel::ByteView (implicitly made from std::string_view,
 * std::string, const char *, std::vector<std::uint8_t> or pointer + length), outputs are
 * std::string / std::vector<std::uint8_t> or a reusable keel::Buffer; every failure throws
 * keel::Error (a std::runtime_error) whose status() is the stable keel_status code. Link
 * Keel::keel_cxx (CMake) — it adds nothing but this header's include path and the C++ half of
 * the legacy cxx bridge to Keel::keel.
 *
 *     #include <keel/keel.hpp>
 *
 *     keel::Host host;                                              // RAII: frees on scope exit
 *     host.set_trust_store_file("/etc/db/keel-trust.json");
 *     host.load_dir("/var/lib/db/plugins");                         // all-or-nothing, dependency order
 *     keel::Plugin embedder = host.get("embedder");                 // a handle: survives reloads
 *     const keel_function embed = embedder.function("embed");       // resolve once
 *     keel::Buffer out;                                             // reuse per thread
 *     try {
 *         embedder.call(embed, "some text", out);                   // lock-free, allocation-free
 *         use(out.view());                                          // std::string_view
 *         std::string copy = embedder.call(embed, "more text");     // convenience (allocates)
 *     } catch (const keel::Error &e) {
 *         if (e.status() == KEEL_ERR_CALL_FAILED) { ... }           // e.what(): "KEEL_ERR_CALL_FAILED (704): ..."
 *     }
 *
 * Classes and ownership (every class is RAII; none is copyable unless said):
 *   Error          std::runtime_error + status(). what() is "<status name> (<code>): <message>".
 *                  CallError, RpcError and HostFunctionError are aliases of it (older names).
 *   Host           owns a keel_host (keel_host_new / keel_host_free). Move-only; the moved-from
 *                  Host is empty (c_handle() == nullptr; using it throws KEEL_ERR_NULL_POINTER).
 *                  Destroying it unloads every plugin (draining in-flight calls) and must not
 *                  race with other uses of the same Host. Every other method is const and
 *                  thread-safe (lifecycle operations are serialised inside Keel).
 *                  Host(keel_host *adopt) takes ownership of a C host; c_handle() lends it.
 *   Plugin         owns a keel_plugin handle (keel_plugin_free). Move-only (take another handle
 *                  with host.get(name); share one with std::shared_ptr). A handle stays valid
 *                  across reloads (calls go to the current generation) and after unload or the
 *                  host's destruction (calls then throw KEEL_ERR_PLUGIN_UNLOADED). Every method
 *                  is const and thread-safe; call() takes no lock. PluginRef is an alias.
 *   Buffer         owns a keel_buffer: a call's output, memory kept across calls so that
 *                  steady-state calls allocate nothing. Move-only; NOT thread-safe (one per
 *                  thread). view()/data() are valid until the buffer is written again.
 *   CancelToken    a reference to a keel_cancel_token; copying adds a reference to the same
 *                  token (cancel a copy from another thread). cancel()/cancelled(): any thread.
 *   CallOptions    plain std data (deadline, fuel, cancel token, user context, tenant,
 *                  traceparent) for Plugin::call(fn, input, opts, ...). One per thread.
 *   ListenerHandle returned by Host::add_listener: removes the listener when destroyed (or
 *                  remove()); release() leaves it registered until the host is freed. Holds
 *                  only a weak reference to the host: outliving the Host is safe. Move-only.
 *   ThemisLease    keel_themis_lease (Plugin::themis_lease()): keeps one generation of a
 *                  ThemisDB legacy plugin alive while held. Move-only; thread-safe reads.
 *   WasmConfig, HealthMonitorConfig, RpcEndpoint, Version: plain data.
 *   HealthReport, WasmCacheStats, WasmSignalStats, WasmLimits: the C structs (plain data).
 *
 * Callbacks (listeners, host functions, log and storage sinks) are std::function / virtual
 * methods owned by Keel once registered and destroyed exactly once when Keel lets go of them
 * (possibly on another thread). They are called from many threads at once (must be
 * thread-safe); an exception they throw never crosses into Keel: a listener's or log sink's
 * is swallowed, a host function's or storage sink's fails the plugin's operation with what().
 *
 * Strings naming things (paths, plugin names, capabilities) must not contain NUL bytes
 * (KEEL_ERR_INVALID_ARGUMENT is thrown before Keel is called) and must be UTF-8
 * (KEEL_ERR_INVALID_UTF8 from Keel). No Rust panic reaches C++ (it becomes KEEL_ERR_PANIC).
 *
 * The older cxx-bridge API (rust::Box<keel::bridge::Host>, keel::new_host(), rust::Vec
 * outputs, errors as rust::Error with keel::error_status) is still declared at the end of
 * this header for existing users; new code should not need any rust:: type.
 */
#ifndef KEEL_HPP
#define KEEL_HPP

#include <keel/keel.h>
#include <keel/keel_common.h> /* KEEL_LOG_* */
#include <keel/keel_error.hpp>

#include "rust/cxx.h"
#include "keel/src/bridge/mod.rs.h"

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keel {

// ---- errors ----

/** Older names of keel::Error (the per-block error classes it replaces). */
using CallError = Error;
using RpcError = Error;
using HostFunctionError = Error;

namespace api_detail {
/** `s` as a NUL-terminated string; throws KEEL_ERR_INVALID_ARGUMENT if it contains a NUL. */
inline std::string cstr(std::string_view s, const char *what) {
    if (s.find('\0') != std::string_view::npos) {
        throw Error::with_message(KEEL_ERR_INVALID_ARGUMENT, std::string(what) + " must not contain NUL bytes");
    }
    return std::string(s);
}
} // namespace api_detail

// ---- byte views and buffers ----

/** A borrowed run of bytes (a call's input): implicitly made from std::string_view,
 *  std::string, a NUL-terminated const char *, std::vector<std::uint8_t> or (pointer, size).
 *  It does not own: the bytes must outlive the call it is passed to. */
class ByteView {
public:
    constexpr ByteView() noexcept = default;
    ByteView(const void *data, std::size_t size) noexcept
        : data_(static_cast<const std::uint8_t *>(data)), size_(data ? size : 0) {}
    ByteView(std::string_view s) noexcept : ByteView(s.data(), s.size()) {}
    ByteView(const std::string &s) noexcept : ByteView(s.data(), s.size()) {}
    ByteView(const char *s) noexcept : ByteView(s, s ? std::strlen(s) : 0) {}
    ByteView(const std::vector<std::uint8_t> &v) noexcept : ByteView(v.data(), v.size()) {}
    ByteView(rust::Slice<const std::uint8_t> s) noexcept : ByteView(s.data(), s.size()) {}
    const std::uint8_t *data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }
    bool empty() const noexcept { return size_ == 0; }
    std::string_view str() const noexcept { return std::string_view(reinterpret_cast<const char *>(data_), size_); }

private:
    const std::uint8_t *data_ = nullptr;
    std::size_t size_ = 0;
};

/** A keel_buffer (RAII, move-only): receives outputs (call results, texts); its memory is
 *  reused across calls, so steady-state calls do not allocate. Not thread-safe: one per thread.
 *  A failed call leaves it empty. */
class Buffer {
public:
    Buffer() { Error::check(keel_buffer_new(&b_)); }
    Buffer(const Buffer &) = delete;
    Buffer &operator=(const Buffer &) = delete;
    Buffer(Buffer &&o) noexcept : b_(o.b_) { o.b_ = nullptr; }
    Buffer &operator=(Buffer &&o) noexcept {
        std::swap(b_, o.b_);
        return *this;
    }
    ~Buffer() { keel_buffer_free(b_); }

    /** The content's bytes (nullptr when empty); valid until the buffer is next written. */
    const std::uint8_t *data() const noexcept {
        const std::uint8_t *d = nullptr;
        std::size_t n = 0;
        if (b_ == nullptr || keel_buffer_data(b_, &d, &n) != KEEL_OK || n == 0) {
            return nullptr;
        }
        return d;
    }
    std::size_t size() const noexcept {
        const std::uint8_t *d = nullptr;
        std::size_t n = 0;
        if (b_ == nullptr || keel_buffer_data(b_, &d, &n) != KEEL_OK) {
            return 0;
        }
        return n;
    }
    bool empty() const noexcept { return size() == 0; }
    /** The content as characters (valid until the buffer is next written). */
    std::string_view view() const noexcept {
        const std::uint8_t *d = nullptr;
        std::size_t n = 0;
        if (b_ == nullptr || keel_buffer_data(b_, &d, &n) != KEEL_OK || n == 0) {
            return std::string_view();
        }
        return std::string_view(reinterpret_cast<const char *>(d), n);
    }
    /** Copies of the content. */
    std::string str() const { return std::string(view()); }
    std::vector<std::uint8_t> bytes() const {
        const std::string_view v = view();
        return std::vector<std::uint8_t>(v.begin(), v.end());
    }
    /** The C buffer (borrowed), for keel_* functions taking a keel_buffer *. */
    keel_buffer *c_handle() const noexcept { return b_; }

private:
    keel_buffer *b_ = nullptr;
};

namespace api_detail {
/** Parse the JSON string starting at s[i] == '"'; i ends past the closing quote. Handles the
 *  escapes Keel's encoder writes (\" \\ \/ \b \f \n \r \t \uXXXX, the latter as UTF-8). */
inline std::string json_string(std::string_view s, std::size_t &i) {
    std::string out;
    if (i >= s.size() || s[i] != '"') {
        throw Error::with_message(KEEL_ERR_INTERNAL, "JSON from Keel: string expected");
    }
    for (i++; i < s.size(); i++) {
        const char c = s[i];
        if (c == '"') {
            i++;
            return out;
        }
        if (c != '\\') {
            out += c;
            continue;
        }
        if (++i >= s.size()) {
            break;
        }
        switch (s[i]) {
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
            if (i + 4 >= s.size()) {
                throw Error::with_message(KEEL_ERR_INTERNAL, "JSON from Keel: bad \\u escape");
            }
            unsigned cp = 0;
            for (std::size_t k = 1; k <= 4; k++) {
                const char h = s[i + k];
                cp = cp * 16 + static_cast<unsigned>(h >= '0' && h <= '9'   ? h - '0'
                                                     : h >= 'a' && h <= 'f' ? h - 'a' + 10
                                                     : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                                                            : 0);
            }
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
        default: out += s[i]; break;
        }
    }
    throw Error::with_message(KEEL_ERR_INTERNAL, "JSON from Keel: unterminated string");
}

/** The strings of a JSON array of strings (the shape keel_plugin_functions and
 *  keel_discover_manifests write). */
inline std::vector<std::string> json_string_array(std::string_view s) {
    std::vector<std::string> out;
    for (std::size_t i = 0; i < s.size();) {
        if (s[i] == '"') {
            out.push_back(json_string(s, i));
        } else {
            i++;
        }
    }
    return out;
}

inline std::string_view sv(const char *s) noexcept { return s ? std::string_view(s) : std::string_view(); }
} // namespace api_detail

// ---- call options ----

/** A cancel token (keel_cancel_token). Copying gives another reference to the same token
 *  (keel_cancel_token_clone), so a copy may be handed to another thread and cancelled there;
 *  moving transfers the reference (the moved-from token is empty: c_handle() is NULL and
 *  cancel()/cancelled() do nothing/return false). Destroying a token releases its reference;
 *  a call running with it holds its own, so that is safe at any time. cancel() and
 *  cancelled() are thread-safe and noexcept. */
class CancelToken {
public:
    CancelToken() { Error::check(keel_cancel_token_new(&t_)); }
    CancelToken(const CancelToken &o) {
        if (o.t_ != nullptr) {
            Error::check(keel_cancel_token_clone(o.t_, &t_));
        }
    }
    CancelToken(CancelToken &&o) noexcept : t_(o.t_) { o.t_ = nullptr; }
    CancelToken &operator=(const CancelToken &o) {
        if (this != &o) {
            CancelToken copy(o);
            std::swap(t_, copy.t_);
        }
        return *this;
    }
    CancelToken &operator=(CancelToken &&o) noexcept {
        std::swap(t_, o.t_);
        return *this;
    }
    ~CancelToken() { keel_cancel_token_free(t_); }

    /** Cancel every call this token was or will be given. Idempotent, any thread, any time. */
    void cancel() const noexcept {
        if (t_ != nullptr) {
            keel_cancel_token_cancel(t_);
        }
    }
    bool cancelled() const noexcept {
        bool c = false;
        if (t_ != nullptr) {
            keel_cancel_token_is_cancelled(t_, &c);
        }
        return c;
    }
    /** The C handle (borrowed; valid while this token holds it). */
    keel_cancel_token *c_handle() const noexcept { return t_; }

private:
    keel_cancel_token *t_ = nullptr;
};

/** Options of one call; every field unset means "as a plain call". Reuse one per thread:
 *  a call reads it and allocates nothing. */
struct CallOptions {
    /** Wall-clock budget (capped at the plugin's deadline; a longer one is not an error).
     *  Coarser durations convert implicitly (std::chrono::milliseconds(5)). Zero or negative:
     *  an already-expired deadline (1 µs). */
    std::optional<std::chrono::microseconds> deadline;
    /** WASM fuel (capped at the plugin's budget); ignored by native plugins. 0: as unset. */
    std::optional<std::uint64_t> fuel;
    /** The call's cancel token (a reference to the caller's: copy a CancelToken in). */
    std::optional<CancelToken> cancel;
    /** The server's opaque context (session, transaction) for host functions. Not owned. */
    void *user_context = nullptr;
    /** Tenant id (UTF-8, at most 256 bytes); empty: none. */
    std::string tenant;
    /** W3C traceparent; empty: none. Checked by Keel (KEEL_ERR_INVALID_ARGUMENT if malformed). */
    std::string traceparent;
};

namespace api_detail {
/** The C options for `opts` (borrowing its strings). Throws KEEL_ERR_INVALID_ARGUMENT for a
 *  tenant or traceparent with an embedded NUL. */
inline keel_call_options c_options(const CallOptions &opts) {
    keel_call_options o{};
    o.struct_size = sizeof(keel_call_options);
    if (opts.deadline) {
        const auto us = opts.deadline->count();
        o.deadline_us = us <= 0 ? 1 : static_cast<std::uint64_t>(us);
    }
    o.fuel = opts.fuel.value_or(0);
    o.cancel = opts.cancel ? opts.cancel->c_handle() : nullptr;
    o.user_context = opts.user_context;
    for (const std::string *s : {&opts.tenant, &opts.traceparent}) {
        if (s->find('\0') != std::string::npos) {
            throw Error::with_message(KEEL_ERR_INVALID_ARGUMENT,
                                      "call options: tenant and traceparent must not contain NUL bytes");
        }
    }
    o.tenant = opts.tenant.empty() ? nullptr : opts.tenant.c_str();
    o.traceparent = opts.traceparent.empty() ? nullptr : opts.traceparent.c_str();
    return o;
}
} // namespace api_detail

// ---- plain data ----

using HealthReport = keel_health_report;         ///< status, score, failures, restarts, ...
using HealthStatus = keel_health_status;         ///< KEEL_HEALTH_STATUS_*
using LifecycleState = keel_lifecycle_state;     ///< KEEL_STATE_*
using Event = keel_event;                        ///< KEEL_EVENT_*
using WasmLimits = keel_wasm_limits;             ///< per call / instance limits
using WasmCacheStats = keel_wasm_cache_stats;    ///< compiled-module cache counters

/** Exposition formats of Host::metrics_text. */
enum class MetricsFormat : std::uint32_t {
    /** OpenMetrics 1.0 text ending with "# EOF"; serve as openmetrics_content_type. */
    OpenMetrics = KEEL_METRICS_FORMAT_OPENMETRICS,
    /** Classic Prometheus text 0.0.4 (no "# EOF"), to append to a server's own /metrics. */
    Prometheus = KEEL_METRICS_FORMAT_PROMETHEUS,
};
inline constexpr std::string_view openmetrics_content_type = KEEL_METRICS_CONTENT_TYPE_OPENMETRICS;
inline constexpr std::string_view prometheus_content_type = KEEL_METRICS_CONTENT_TYPE_PROMETHEUS;

/** How WASM instance memories use the address space (Host::set_wasm_memory_mode; docs/wasm.md). */
enum class WasmMemoryMode : std::uint32_t {
    /** Default: the memory cap + 64 KiB reserved per instance, explicit bounds checks. */
    Capped = KEEL_WASM_MEMORY_CAPPED,
    /** 8 GiB (wasmer) or 4 GiB + 32 MiB (wasmtime) reserved per instance, no bounds checks. */
    Static = KEEL_WASM_MEMORY_STATIC,
    /** The current size + 64 KiB reserved; growth moves (copies) the memory. */
    Dynamic = KEEL_WASM_MEMORY_DYNAMIC,
};

/** The engine of the host's WASM plugins (Host::set_wasm_engine; docs/wasm.md). */
enum class WasmEngine : std::uint32_t {
    /** Default: wasmer 7.4.2. */
    Wasmer = KEEL_WASM_ENGINE_WASMER,
    /** wasmtime 48: lower per-call cost, epoch interruption. */
    Wasmtime = KEEL_WASM_ENGINE_WASMTIME,
};

/** How the host compiles plugins on wasmer (Host::set_wasm_compiler; docs/wasm.md). */
enum class WasmCompiler : std::uint32_t {
    /** Default: Cranelift (fastest code, slowest compile). */
    Cranelift = KEEL_WASM_COMPILER_CRANELIFT,
    /** Singlepass: compiles in about linear time; slower code. */
    Singlepass = KEEL_WASM_COMPILER_SINGLEPASS,
    /** Singlepass at load, Cranelift compiled in the background and switched to. */
    Tiered = KEEL_WASM_COMPILER_TIERED,
};

/** The compiler that made a WASM plugin's running code (Plugin::wasm_tier). */
enum class WasmTier : std::uint32_t {
    Cranelift = KEEL_WASM_TIER_CRANELIFT,
    Singlepass = KEEL_WASM_TIER_SINGLEPASS,
};

/** Settings of the host's WASM runtime (Host::set_wasm_config). Default-constructed with
 *  Keel's defaults (keel_wasm_config_default, no module cache): change what you need. */
struct WasmConfig {
    WasmLimits defaults{};  ///< for plugins whose manifests set no limits
    WasmLimits ceilings{};  ///< the most a manifest may ask for
    std::uint32_t pool_size = 0;
    bool metering = false;
    std::uint32_t watchdog_tick_us = 0;
    /** Directory of the compiled-module cache; empty: no cache. */
    std::string cache_dir;
    /** Node-local secret authenticating cache entries (must not be all zeros with a cache). */
    std::array<std::uint8_t, 32> cache_key{};

    WasmConfig() {
        keel_wasm_config c{};
        Error::check(keel_wasm_config_default(&c));
        defaults = c.defaults;
        ceilings = c.ceilings;
        pool_size = c.pool_size;
        metering = c.metering;
        watchdog_tick_us = c.watchdog_tick_us;
        std::memcpy(cache_key.data(), c.cache_key, cache_key.size());
    }
};

/** Settings of the health monitor (Host::start_health_monitor). */
struct HealthMonitorConfig {
    std::chrono::milliseconds interval{1000};
    std::uint32_t unhealthy_threshold = 3;
    std::chrono::milliseconds backoff_initial{100};
    std::chrono::milliseconds backoff_max{30000};
};

/** One registered RPC endpoint: its name, the plugin that registered it, the function it calls. */
struct RpcEndpoint {
    std::string endpoint;
    std::string plugin;
    std::string function;
};

/** A library version (keel::version(): the libkeel actually loaded). */
struct Version {
    std::uint32_t major = 0;
    std::uint32_t minor = 0;
    std::uint32_t patch = 0;
};

// ---- free functions (no host) ----

/** The version of the Keel library loaded at run time (compare with KEEL_VERSION_* of
 *  keel_version.h). Thread-safe. */
inline Version version() {
    Version v;
    Error::check(keel_version(&v.major, &v.minor, &v.patch));
    return v;
}

/** The bit of a capability name in the sets of Plugin::capabilities() and
 *  Host::capability_allowlist(). Throws KEEL_ERR_CAPABILITY_UNKNOWN. Thread-safe. */
inline std::uint64_t capability_bit(std::string_view name) {
    std::uint64_t bit = 0;
    Error::check(keel_capability_bit(api_detail::cstr(name, "a capability name").c_str(), &bit));
    return bit;
}

/** How to reach an OCI registry (keel_registry_options): anonymous by default, a bearer token,
 *  or basic credentials (also used for the registry's token server); plain HTTP off the
 *  loopback interface only when allowed; the timeout of each request. Move-only; the setters
 *  return *this so options read as one expression. Not thread-safe to change while a call uses
 *  it; one value may be passed to many calls. */
class RegistryOptions {
public:
    RegistryOptions() { Error::check(keel_registry_options_new(&o_)); }
    RegistryOptions(const RegistryOptions &) = delete;
    RegistryOptions &operator=(const RegistryOptions &) = delete;
    RegistryOptions(RegistryOptions &&o) noexcept : o_(o.o_) { o.o_ = nullptr; }
    RegistryOptions &operator=(RegistryOptions &&o) noexcept {
        std::swap(o_, o.o_);
        return *this;
    }
    ~RegistryOptions() { keel_registry_options_free(o_); }

    /** A bearer token sent as given (empty: anonymous again). */
    RegistryOptions &bearer(std::string_view token) {
        const std::string t = api_detail::cstr(token, "a bearer token");
        Error::check(keel_registry_options_set_bearer(o_, t.c_str()));
        return *this;
    }
    /** Basic credentials (KEEL_ERR_INVALID_ARGUMENT for an empty user name). */
    RegistryOptions &basic(std::string_view username, std::string_view password) {
        Error::check(keel_registry_options_set_basic(o_, api_detail::cstr(username, "a user name").c_str(),
                                                     api_detail::cstr(password, "a password").c_str()));
        return *this;
    }
    /** Allow plain HTTP to a registry off the loopback interface. */
    RegistryOptions &insecure(bool allow = true) {
        Error::check(keel_registry_options_set_insecure(o_, allow));
        return *this;
    }
    /** Connect and read timeout per request (KEEL_ERR_INVALID_ARGUMENT for 0). */
    RegistryOptions &timeout(std::chrono::milliseconds t) {
        Error::check(keel_registry_options_set_timeout_ms(o_, static_cast<std::uint64_t>(t.count())));
        return *this;
    }
    /** The C handle (borrowed; valid while this object holds it). */
    const keel_registry_options *c_handle() const noexcept { return o_; }

private:
    keel_registry_options *o_ = nullptr;
};

/** What keel::oci_pull fetched: the plugin manifest in the cache and the resolved digest. */
struct OciPull {
    std::string manifest_path;
    std::string digest;
};

/** Pull a plugin from an OCI registry into the content-addressed cache `cache_dir` without
 *  loading it (keel_oci_pull); load `manifest_path` with Host::load to run the trust chain.
 *  `bearer` empty: anonymous. Thread-safe; blocks while it pulls. */
inline OciPull oci_pull(std::string_view reference, std::string_view cache_dir, std::string_view bearer = {}) {
    Buffer path, digest;
    const std::string b = api_detail::cstr(bearer, "a bearer token");
    Error::check(keel_oci_pull(api_detail::cstr(reference, "an OCI reference").c_str(),
                               api_detail::cstr(cache_dir, "a cache directory").c_str(), b.empty() ? nullptr : b.c_str(),
                               path.c_handle(), digest.c_handle()));
    return OciPull{path.str(), digest.str()};
}

/** keel::oci_pull with registry options (keel_oci_pull_with). */
inline OciPull oci_pull_with(std::string_view reference, std::string_view cache_dir, const RegistryOptions &options) {
    Buffer path, digest;
    Error::check(keel_oci_pull_with(api_detail::cstr(reference, "an OCI reference").c_str(),
                                    api_detail::cstr(cache_dir, "a cache directory").c_str(), options.c_handle(),
                                    path.c_handle(), digest.c_handle()));
    return OciPull{path.str(), digest.str()};
}

/** The manifest paths keel::Host::load_dir would load from `dir` (sorted), without reading
 *  or loading them (keel_discover_manifests). Thread-safe. */
inline std::vector<std::string> discover_manifests(std::string_view dir) {
    Buffer b;
    Error::check(keel_discover_manifests(api_detail::cstr(dir, "a directory").c_str(), b.c_handle()));
    return api_detail::json_string_array(b.view());
}

/** One manifest read and validated without loading or trust checks: its normalised Keel
 *  form as JSON text (keel_manifest_read). Thread-safe. */
inline std::string manifest_read(std::string_view path) {
    Buffer b;
    Error::check(keel_manifest_read(api_detail::cstr(path, "a manifest path").c_str(), b.c_handle()));
    return b.str();
}

// ---- ThemisDB leases ----

/** A lease on one generation of a ThemisDB legacy plugin (keel_themis_lease): while it is
 *  held that generation and its getInstance() object stay alive (see keel.h). Move-only;
 *  reads are thread-safe. Hold it for the work with the object, not for the plugin's life. */
class ThemisLease {
public:
    ThemisLease() noexcept = default;
    explicit ThemisLease(keel_themis_lease *adopt) noexcept : l_(adopt) {}
    ThemisLease(const ThemisLease &) = delete;
    ThemisLease &operator=(const ThemisLease &) = delete;
    ThemisLease(ThemisLease &&o) noexcept : l_(o.l_) { o.l_ = nullptr; }
    ThemisLease &operator=(ThemisLease &&o) noexcept {
        std::swap(l_, o.l_);
        return *this;
    }
    ~ThemisLease() { keel_themis_lease_free(l_); }
    /** What IThemisPlugin::getInstance() returned (cast it by the plugin's type). */
    void *instance() const {
        void *p = nullptr;
        Error::check(keel_themis_lease_instance(l_, &p));
        return p;
    }
    /** The generation's IThemisPlugin object (do not initialize/shutdown/destroy it). */
    void *plugin() const {
        void *p = nullptr;
        Error::check(keel_themis_lease_plugin(l_, &p));
        return p;
    }
    std::uint64_t generation() const {
        std::uint64_t g = 0;
        Error::check(keel_themis_lease_generation(l_, &g));
        return g;
    }
    keel_themis_lease *c_handle() const noexcept { return l_; }

private:
    keel_themis_lease *l_ = nullptr;
};

class Host;

/** A host argument of the free functions below: a keel::Host, the legacy bridge host
 *  (*rust::Box<keel::bridge::Host>) or a C keel_host * (explicitly). Borrowed. */
class HostRef {
public:
    HostRef(const Host &host) noexcept; // defined after Host
    HostRef(const bridge::Host &host) noexcept : h_(reinterpret_cast<keel_host *>(host.c_handle())) {}
    explicit HostRef(keel_host *host) noexcept : h_(host) {}
    keel_host *get() const noexcept { return h_; }

private:
    keel_host *h_;
};

// ---- plugins ----

/** An owning handle on a loaded plugin (keel_plugin *). Move-only (a second handle: Host::get;
 *  to share one, use std::shared_ptr<Plugin>). Valid across reloads (calls reach the current
 *  generation; function ids stay valid) and after an unload or the host's destruction (calls
 *  then throw KEEL_ERR_PLUGIN_UNLOADED). Every method is thread-safe and may run concurrently
 *  with reloads; call() takes no lock (one Buffer per thread). A default-constructed or
 *  moved-from Plugin is empty: its methods throw KEEL_ERR_NULL_POINTER. */
class Plugin {
public:
    Plugin() noexcept = default;
    /** Adopt a handle from keel_host_load / keel_plugin_get / keel_host_rpc_resolve. */
    explicit Plugin(keel_plugin *adopt) noexcept : p_(adopt) {}
    /** A new handle on the loaded plugin `name` of `host` (KEEL_ERR_PLUGIN_NOT_FOUND). */
    Plugin(HostRef host, std::string_view name) {
        Error::check(keel_plugin_get(host.get(), api_detail::cstr(name, "a plugin name").c_str(), &p_));
    }
    Plugin(const Plugin &) = delete;
    Plugin &operator=(const Plugin &) = delete;
    Plugin(Plugin &&o) noexcept : p_(o.p_) { o.p_ = nullptr; }
    Plugin &operator=(Plugin &&o) noexcept {
        std::swap(p_, o.p_);
        return *this;
    }
    ~Plugin() { keel_plugin_free(p_); }
    explicit operator bool() const noexcept { return p_ != nullptr; }

    /** Resolve a function once (KEEL_ERR_FUNCTION_NOT_FOUND); the id survives reloads. */
    keel_function function(std::string_view name) const {
        keel_function f = 0;
        Error::check(keel_plugin_function(p_, api_detail::cstr(name, "a function name").c_str(), &f));
        return f;
    }

    /** Call `fn` on `input`; the result goes into `out` (emptied on failure). Lock-free;
     *  allocates nothing once `out` is large enough. Throws Error with the call's status
     *  (KEEL_ERR_CALL_FAILED with the plugin's message, KEEL_ERR_DEADLINE, ...). */
    void call(keel_function fn, ByteView input, Buffer &out) const {
        Error::check(keel_call(p_, fn, input.data(), input.size(), out.c_handle()));
    }
    /** As above with options (deadline, fuel, cancel token, tenant, traceparent, user
     *  context): keel_call_with. Adds KEEL_ERR_CANCELLED and KEEL_ERR_INVALID_ARGUMENT. */
    void call(keel_function fn, ByteView input, const CallOptions &opts, Buffer &out) const {
        const keel_call_options o = api_detail::c_options(opts);
        Error::check(keel_call_with(p_, fn, input.data(), input.size(), &o, out.c_handle()));
    }
    /** Convenience forms returning a copy of the result (one buffer and one string per call). */
    std::string call(keel_function fn, ByteView input) const {
        Buffer out;
        call(fn, input, out);
        return out.str();
    }
    std::string call(keel_function fn, ByteView input, const CallOptions &opts) const {
        Buffer out;
        call(fn, input, opts, out);
        return out.str();
    }
    std::vector<std::uint8_t> call_bytes(keel_function fn, ByteView input) const {
        Buffer out;
        call(fn, input, out);
        return out.bytes();
    }

    /** The plugin's name (works after unload too). */
    std::string name() const { return text(keel_plugin_name); }
    /** The current generation's manifest version (semver text). */
    std::string version() const { return text(keel_plugin_version); }
    /** The current generation's manifest type ("" when none). */
    std::string type() const { return text(keel_plugin_type); }
    /** Whether the current generation's manifest declares the trait `name`. */
    bool has_trait(std::string_view name) const {
        bool b = false;
        Error::check(keel_plugin_has_trait(p_, api_detail::cstr(name, "a trait name").c_str(), &b));
        return b;
    }
    /** The functions the current generation exports, in the plugin's order. */
    std::vector<std::string> functions() const { return api_detail::json_string_array(text(keel_plugin_functions)); }
    /** The current generation number (1 after load, +1 per reload or restart). */
    std::uint64_t generation() const {
        std::uint64_t g = 0;
        Error::check(keel_plugin_generation(p_, &g));
        return g;
    }
    /** The lifecycle state now (KEEL_STATE_UNLOADED after an unload; does not throw then). */
    LifecycleState state() const {
        keel_lifecycle_state s{};
        Error::check(keel_plugin_state(p_, &s));
        return s;
    }
    /** The compiler that made this WASM plugin's running code (Singlepass until a tiered
     *  plugin's tier-up). Throws KEEL_ERR_UNSUPPORTED for other runtimes. */
    WasmTier wasm_tier() const {
        std::uint32_t t = 0;
        Error::check(keel_plugin_wasm_tier(p_, &t));
        return static_cast<WasmTier>(t);
    }
    /** The health monitor's last report (KEEL_HEALTH_STATUS_UNKNOWN before any check). */
    HealthReport health() const {
        HealthReport r{};
        Error::check(keel_plugin_health(p_, &r));
        return r;
    }
    /** The granted capabilities (bits of keel::capability_bit), frozen at load. */
    std::uint64_t capabilities() const {
        std::uint64_t bits = 0;
        Error::check(keel_plugin_capabilities(p_, &bits));
        return bits;
    }
    /** Whether the capability `name` was granted (throws KEEL_ERR_CAPABILITY_UNKNOWN). */
    bool has_capability(std::string_view name) const { return (capabilities() & capability_bit(name)) != 0; }
    /** A lease on a ThemisDB legacy plugin's current generation (KEEL_ERR_UNSUPPORTED else). */
    ThemisLease themis_lease() const {
        keel_themis_lease *l = nullptr;
        Error::check(keel_plugin_themis_lease(p_, &l));
        return ThemisLease(l);
    }

    /** The C handle (borrowed: valid while this Plugin holds it). */
    keel_plugin *c_handle() const noexcept { return p_; }
    /** Give up ownership: the caller must keel_plugin_free the result. */
    keel_plugin *release() noexcept { return std::exchange(p_, nullptr); }

private:
    std::string text(keel_status (*get)(const keel_plugin *, keel_buffer *)) const {
        Buffer b;
        Error::check(get(p_, b.c_handle()));
        return b.str();
    }
    keel_plugin *p_ = nullptr;
};

/** The older name of keel::Plugin (the callopts block's C plugin handle). */
using PluginRef = Plugin;

/** keel_call_with through a Plugin (the same as plugin.call(fn, input, opts, out)). */
inline void call_with(const Plugin &plugin, keel_function fn, ByteView input, const CallOptions &opts, Buffer &out) {
    plugin.call(fn, input, opts, out);
}
/** keel_call through a Plugin (the same as plugin.call(fn, input, out)). */
inline void call(const Plugin &plugin, keel_function fn, ByteView input, Buffer &out) { plugin.call(fn, input, out); }

/** An RPC endpoint resolved once (Host::rpc_resolve): call plugin.call(function, ...) on the
 *  normal lock-free path. The binding is read at resolution time. */
struct RpcTarget {
    Plugin plugin;
    keel_function function = 0;
};

// ---- listeners ----

/** A lifecycle listener: the plugin's name (borrowed for the call), the event and the
 *  generation. Called from the thread running the lifecycle operation (the caller's, the
 *  health monitor's, the directory watcher's), one call at a time, never under Keel's lock:
 *  it may load, reload or unload plugins. An exception it throws is swallowed. */
using Listener = std::function<void(std::string_view plugin, Event event, std::uint64_t generation)>;

namespace api_detail {
inline void listener_trampoline(const char *plugin, keel_event event, std::uint64_t generation, void *ud) noexcept {
    try {
        (*static_cast<Listener *>(ud))(sv(plugin), event, generation);
    } catch (...) {
        // A listener's exception never crosses into Keel.
    }
}
inline void listener_free(void *ud) noexcept { delete static_cast<Listener *>(ud); }
} // namespace api_detail

/** The registration of a listener (Host::add_listener): RAII, move-only. Destroying it (or
 *  remove()) removes the listener; release() keeps it registered until the host is freed.
 *  It holds a weak reference to the host, so it may outlive the Host safely (it then does
 *  nothing). Not thread-safe itself (the host is). */
class ListenerHandle {
public:
    ListenerHandle() noexcept = default;
    ListenerHandle(std::weak_ptr<keel_host> host, std::uint64_t id) noexcept : host_(std::move(host)), id_(id) {}
    ListenerHandle(const ListenerHandle &) = delete;
    ListenerHandle &operator=(const ListenerHandle &) = delete;
    ListenerHandle(ListenerHandle &&o) noexcept : host_(std::move(o.host_)), id_(std::exchange(o.id_, 0)) {}
    ListenerHandle &operator=(ListenerHandle &&o) noexcept {
        if (this != &o) {
            reset();
            host_ = std::move(o.host_);
            id_ = std::exchange(o.id_, 0);
        }
        return *this;
    }
    ~ListenerHandle() { reset(); }

    /** Remove the listener now (an event being delivered on another thread may still reach
     *  it). Throws Error if Keel refuses (it does not for a live registration). */
    void remove() {
        const std::uint64_t id = std::exchange(id_, 0);
        if (id == 0) {
            return;
        }
        if (std::shared_ptr<keel_host> h = host_.lock()) {
            Error::check(keel_host_remove_listener(h.get(), id));
        }
    }
    /** Leave the listener registered for the host's life; returns its id. */
    std::uint64_t release() noexcept { return std::exchange(id_, 0); }
    std::uint64_t id() const noexcept { return id_; }

private:
    void reset() noexcept {
        const std::uint64_t id = std::exchange(id_, 0);
        if (id == 0) {
            return;
        }
        if (std::shared_ptr<keel_host> h = host_.lock()) {
            keel_host_remove_listener(h.get(), id);
        }
    }
    std::weak_ptr<keel_host> host_;
    std::uint64_t id_ = 0;
};

// ---- sinks ----
// The log sink and the storage sink (over keel_host_set_log_sink and
// keel_host_set_storage_sink; rules in docs/services-sinks.md).

/** One plugin log line. Every view is borrowed for the duration of the sink's call. */
struct LogRecord {
    std::string_view plugin;
    /** KEEL_LOG_ERROR (0), KEEL_LOG_WARN (1), KEEL_LOG_INFO (2) or KEEL_LOG_DEBUG (3). */
    int level = 0;
    std::string_view message;
    /** The trace id (32 lowercase hex digits) of the call's traceparent; empty if none. */
    std::string_view trace_id;
    /** The call's whole traceparent; empty if none. */
    std::string_view traceparent;
    /** The call's tenant id; empty if none. */
    std::string_view tenant;
};

/** A log sink: called on the logging plugin's thread, concurrently from many threads (so it
 *  must be thread-safe). An exception it throws is caught and the line dropped. */
using LogSink = std::function<void(const LogRecord &)>;

/** Who asks and where, as a StorageSink receives it (views borrowed for the call). */
struct StorageRequest {
    /** The calling plugin's name. */
    std::string_view plugin;
    /** The server table the plugin named (storage:*), or nullopt for the plugin's own
     *  key-value namespace (kv:*; the namespace is the plugin's name: keep them apart). */
    std::optional<std::string_view> table;
    /** The current call's tenant and traceparent (empty if none) and user_context (or null). */
    std::string_view tenant;
    std::string_view traceparent;
    void *user_context = nullptr;
};

/** The server's storage behind kv:* and storage:*. Every method is called on the plugin's
 *  thread, concurrently from many threads (implementations must be thread-safe). To refuse
 *  or fail, throw: any exception becomes an error status for the plugin, with what() as the
 *  message for a std::exception. Nothing thrown crosses into Keel or the plugin. */
class StorageSink {
  public:
    virtual ~StorageSink() = default;
    /** The value of `key`, or nullopt if absent (at most 64 MiB). */
    virtual std::optional<std::string> get(const StorageRequest &req, std::string_view key) = 0;
    virtual void put(const StorageRequest &req, std::string_view key, std::string_view value) = 0;
    /** Whether `key` was present. */
    virtual bool remove(const StorageRequest &req, std::string_view key) = 0;
    /** Call `visit(key, value)` for each entry whose key starts with `prefix` (any order)
     *  until it returns false (Keel's scan limit reached: stop and return). */
    virtual void scan(const StorageRequest &req, std::string_view prefix,
                      const std::function<bool(std::string_view key, std::string_view value)> &visit) = 0;
};

namespace sinks_detail {

inline std::string_view sv(const char *s) noexcept { return s ? std::string_view(s) : std::string_view(); }

inline void log_trampoline(void *user_data, const keel_log_record *r) noexcept {
    try {
        LogRecord rec;
        rec.plugin = sv(r->plugin);
        rec.level = r->level;
        rec.message = std::string_view(r->message, r->message_len);
        rec.trace_id = sv(r->trace_id);
        rec.traceparent = sv(r->traceparent);
        rec.tenant = sv(r->tenant);
        (*static_cast<LogSink *>(user_data))(rec);
    } catch (...) {
        // A failing log sink drops the line; nothing crosses into Keel.
    }
}

inline void free_log(void *user_data) noexcept { delete static_cast<LogSink *>(user_data); }

inline StorageRequest request(const keel_storage_request *r) noexcept {
    StorageRequest req;
    req.plugin = sv(r->plugin);
    if (r->table) req.table = std::string_view(r->table);
    req.tenant = sv(r->tenant);
    req.traceparent = sv(r->traceparent);
    req.user_context = r->user_context;
    return req;
}

inline void write(const keel_sink_writer *w, std::string_view s) noexcept {
    w->write(w->ctx, reinterpret_cast<const std::uint8_t *>(s.data()), s.size());
}

inline std::string_view bytes_view(const std::uint8_t *p, std::size_t n) noexcept {
    return n ? std::string_view(reinterpret_cast<const char *>(p), n) : std::string_view();
}

/** Run a storage callback: an exception becomes status 2 with its message in `error`. */
template <typename F> inline std::int32_t guarded(const keel_sink_writer *error, F &&f) noexcept {
    try {
        return f();
    } catch (const std::exception &e) {
        write(error, e.what());
    } catch (...) {
        write(error, "unknown C++ exception in the storage sink");
    }
    return 2;
}

inline StorageSink &sink(void *user_data) noexcept { return **static_cast<std::shared_ptr<StorageSink> *>(user_data); }

inline std::int32_t get(void *ud, const keel_storage_request *r, const std::uint8_t *key, std::size_t key_len,
                        const keel_sink_writer *value, const keel_sink_writer *error) noexcept {
    return guarded(error, [&]() -> std::int32_t {
        std::optional<std::string> v = sink(ud).get(request(r), bytes_view(key, key_len));
        if (!v) return 1;
        if (value->write(value->ctx, reinterpret_cast<const std::uint8_t *>(v->data()), v->size()) != 0) {
            throw std::length_error("value too large for Keel");
        }
        return 0;
    });
}

inline std::int32_t put(void *ud, const keel_storage_request *r, const std::uint8_t *key, std::size_t key_len,
                        const std::uint8_t *val, std::size_t val_len, const keel_sink_writer *error) noexcept {
    return guarded(error, [&]() -> std::int32_t {
        sink(ud).put(request(r), bytes_view(key, key_len), bytes_view(val, val_len));
        return 0;
    });
}

inline std::int32_t remove(void *ud, const keel_storage_request *r, const std::uint8_t *key, std::size_t key_len,
                           const keel_sink_writer *error) noexcept {
    return guarded(error, [&]() -> std::int32_t { return sink(ud).remove(request(r), bytes_view(key, key_len)) ? 0 : 1; });
}

inline std::int32_t scan(void *ud, const keel_storage_request *r, const std::uint8_t *prefix, std::size_t prefix_len,
                         const keel_scan_visitor *visitor, const keel_sink_writer *error) noexcept {
    return guarded(error, [&]() -> std::int32_t {
        sink(ud).scan(request(r), bytes_view(prefix, prefix_len), [visitor](std::string_view k, std::string_view v) {
            return visitor->entry(visitor->ctx, reinterpret_cast<const std::uint8_t *>(k.data()), k.size(),
                                  reinterpret_cast<const std::uint8_t *>(v.data()), v.size()) == 0;
        });
        return 0;
    });
}

inline void free_storage(void *user_data) noexcept { delete static_cast<std::shared_ptr<StorageSink> *>(user_data); }

} // namespace sinks_detail

// ---- host functions ----

/** What a host function learns about the call it serves. Borrowed: valid only during the host
 *  function's call, on its thread; so are the string_views it returns. */
class CallContext {
public:
    explicit CallContext(const keel_call_context *c) noexcept : c_(c) {}
    /** The name of the calling plugin. */
    std::string_view plugin() const noexcept { return str(keel_call_context_plugin); }
    /** The tenant id given with the call's options (empty without). */
    std::string_view tenant() const noexcept { return str(keel_call_context_tenant); }
    /** The W3C traceparent given with the call's options (empty without). */
    std::string_view traceparent() const noexcept { return str(keel_call_context_traceparent); }
    /** The server's user_context pointer given with the call's options (nullptr without). */
    void *user_context() const noexcept {
        void *p = nullptr;
        return keel_call_context_user_context(c_, &p) == KEEL_OK ? p : nullptr;
    }
    /** Whether the call's cancel token was cancelled (false without one). */
    bool cancelled() const noexcept {
        bool b = false;
        return keel_call_context_cancelled(c_, &b) == KEEL_OK && b;
    }
    /** The C context, for keel_call_context_* functions. */
    const keel_call_context *c_context() const noexcept { return c_; }

private:
    std::string_view str(keel_status (*get)(const keel_call_context *, const char **, size_t *)) const noexcept {
        const char *p = nullptr;
        size_t n = 0;
        if (get(c_, &p, &n) != KEEL_OK || p == nullptr) return std::string_view();
        return std::string_view(p, n);
    }
    const keel_call_context *c_;
};

/** A host function: returns its output; throws to fail the plugin's call (any exception: the
 *  message the plugin sees is what() for a std::exception). Called from many threads at once:
 *  it must be thread-safe. */
using HostFunction = std::function<std::string(const CallContext &, std::string_view input)>;

namespace api_detail {
/** The C callback behind every HostFunction: no exception leaves it. Returns 0, or -3 (the
 *  status native plugins see for a function that threw) with the message written. */
inline int32_t host_function_trampoline(const keel_call_context *ctx, const uint8_t *input, size_t len,
                                        const keel_host_fn_output *out, void *user_data) noexcept {
    auto write = [out](std::string_view s) { return out->write(out->ctx, reinterpret_cast<const uint8_t *>(s.data()), s.size()); };
    try {
        const auto &f = *static_cast<const HostFunction *>(user_data);
        const std::string result =
            f(CallContext(ctx), std::string_view(reinterpret_cast<const char *>(input), input ? len : 0));
        return write(result) == 0 ? 0 : 1;
    } catch (const std::exception &e) {
        write(e.what());
    } catch (...) {
        write("host function threw a non-std exception");
    }
    return -3;
}

inline void host_function_free(void *user_data) noexcept { delete static_cast<HostFunction *>(user_data); }
} // namespace api_detail

// ---- the host ----

namespace api_detail {
inline void set_log_sink(keel_host *h, LogSink sink) {
    if (!sink) {
        Error::check(keel_host_set_log_sink(h, nullptr, nullptr, nullptr));
        return;
    }
    auto *owned = new LogSink(std::move(sink));
    const keel_status s = keel_host_set_log_sink(h, sinks_detail::log_trampoline, owned, sinks_detail::free_log);
    if (s != KEEL_OK) {
        delete owned; // not taken: Keel calls no destructor on failure
    }
    Error::check(s);
}

inline void set_storage_sink(keel_host *h, std::shared_ptr<StorageSink> sink) {
    if (!sink) {
        Error::check(keel_host_set_storage_sink(h, nullptr, nullptr, nullptr));
        return;
    }
    keel_storage_sink table{};
    table.struct_size = sizeof(keel_storage_sink);
    table.get = sinks_detail::get;
    table.put = sinks_detail::put;
    table.remove = sinks_detail::remove;
    table.scan = sinks_detail::scan;
    auto *owned = new std::shared_ptr<StorageSink>(std::move(sink));
    const keel_status s = keel_host_set_storage_sink(h, &table, owned, sinks_detail::free_storage);
    if (s != KEEL_OK) {
        delete owned;
    }
    Error::check(s);
}

inline void define_function(keel_host *h, std::string_view ns, std::string_view name, std::string_view capability,
                            HostFunction f) {
    if (!f) {
        throw Error::with_message(KEEL_ERR_NULL_POINTER, "empty host function");
    }
    const std::string n = cstr(ns, "a namespace"), nm = cstr(name, "a function name"),
                      cap = cstr(capability, "a capability name");
    auto *heap = new HostFunction(std::move(f));
    // Keel owns `heap` from here on, whatever the outcome (it frees it on failure).
    Error::check(keel_host_define_function(h, n.c_str(), nm.c_str(), cap.c_str(), &host_function_trampoline, heap,
                                           &host_function_free));
}

inline void remove_function(keel_host *h, std::string_view ns, std::string_view name) {
    Error::check(keel_host_remove_function(h, cstr(ns, "a namespace").c_str(), cstr(name, "a function name").c_str()));
}

inline std::string rpc_list_json(keel_host *h) {
    Buffer b;
    Error::check(keel_host_rpc_list(h, b.c_handle()));
    return b.str();
}

inline std::vector<RpcEndpoint> rpc_list(keel_host *h) {
    const std::string j = rpc_list_json(h);
    std::vector<RpcEndpoint> out;
    // The fixed shape Keel writes: an array of objects with three string members.
    for (std::size_t i = 0; i < j.size(); i++) {
        if (j[i] != '{') {
            continue;
        }
        RpcEndpoint e;
        i++;
        while (i < j.size() && j[i] != '}') {
            if (j[i] != '"') {
                i++;
                continue;
            }
            const std::string key = json_string(j, i);
            while (i < j.size() && j[i] != '"') {
                i++;
            }
            std::string value = json_string(j, i);
            if (key == "endpoint") {
                e.endpoint = std::move(value);
            } else if (key == "plugin") {
                e.plugin = std::move(value);
            } else if (key == "function") {
                e.function = std::move(value);
            }
        }
        out.push_back(std::move(e));
    }
    return out;
}

inline void rpc_call(keel_host *h, std::string_view endpoint, ByteView input, Buffer &out) {
    Error::check(keel_host_rpc_call(h, cstr(endpoint, "an endpoint").c_str(), input.data(), input.size(),
                                    out.c_handle()));
}
} // namespace api_detail

/** A Keel host (keel_host): the registry of loaded plugins, policy and runtimes. RAII
 *  (keel_host_new / keel_host_free), move-only. Every method is const and thread-safe
 *  (lifecycle operations are serialised inside Keel); only destruction and assignment must
 *  not race with other uses. Destroying it unloads every plugin (each drained up to the
 *  drain timeout); Plugin handles stay valid (their calls then throw
 *  KEEL_ERR_PLUGIN_UNLOADED). Every method throws keel::Error on failure. */
class Host {
public:
    /** A new host: no plugin, signatures required, capabilities log, clock, random, kv:read,
     *  kv:write and metrics:write allowed. */
    Host() {
        keel_host *h = nullptr;
        Error::check(keel_host_new(&h));
        h_ = std::shared_ptr<keel_host>(h, [](keel_host *p) { keel_host_free(p); });
    }
    /** Take ownership of a C host (freed by this Host's destructor). */
    explicit Host(keel_host *adopt) : h_(adopt, [](keel_host *p) { keel_host_free(p); }) {}
    Host(const Host &) = delete;
    Host &operator=(const Host &) = delete;
    Host(Host &&) noexcept = default;
    Host &operator=(Host &&) noexcept = default;
    ~Host() = default;

    /** The C host (borrowed: valid while this Host lives; never keel_host_free it). */
    keel_host *c_handle() const noexcept { return h_.get(); }

    // -- lifecycle --

    /** Load one plugin from its manifest (every check before any plugin code runs). */
    Plugin load(std::string_view manifest_path) const {
        keel_plugin *p = nullptr;
        Error::check(keel_host_load(h(), api_detail::cstr(manifest_path, "a manifest path").c_str(), &p));
        return Plugin(p);
    }
    /** Load every plugin of a plugin directory as one all-or-nothing set, in dependency order
     *  (the C ABI's load set: on failure nothing stays loaded). */
    void load_dir(std::string_view dir) const {
        Error::check(keel_host_load_dir(h(), api_detail::cstr(dir, "a directory").c_str()));
    }
    /** Load a plugin from an OCI registry (keel_host_load_oci): pull `reference`
     *  (`[registry/]repository[:tag][@sha256:<hex>]`) into the content-addressed cache
     *  `cache_dir` (every blob checked against its digest; a cached digest reference needs no
     *  network; a tag is resolved once), then load it as load() does (signature, pin, init).
     *  `bearer` empty: anonymous. `resolved_digest`, if given, receives the digest the
     *  reference resolved to. Blocks while it pulls. */
    Plugin load_oci(std::string_view reference, std::string_view cache_dir, std::string_view bearer = {},
                    std::string *resolved_digest = nullptr) const {
        keel_plugin *p = nullptr;
        Buffer digest;
        const std::string b = api_detail::cstr(bearer, "a bearer token");
        Error::check(keel_host_load_oci(h(), api_detail::cstr(reference, "an OCI reference").c_str(),
                                        api_detail::cstr(cache_dir, "a cache directory").c_str(),
                                        b.empty() ? nullptr : b.c_str(), &p, digest.c_handle()));
        Plugin plugin(p);
        if (resolved_digest != nullptr) *resolved_digest = digest.str();
        return plugin;
    }
    /** load_oci with registry options (keel_host_load_oci_with): basic credentials and the
     *  token flow, plain HTTP off loopback when allowed, the request timeout. (A name of its
     *  own, not an overload: `load_oci(ref, dir, {})` stays unambiguous.) */
    Plugin load_oci_with(std::string_view reference, std::string_view cache_dir, const RegistryOptions &options,
                         std::string *resolved_digest = nullptr) const {
        keel_plugin *p = nullptr;
        Buffer digest;
        Error::check(keel_host_load_oci_with(h(), api_detail::cstr(reference, "an OCI reference").c_str(),
                                             api_detail::cstr(cache_dir, "a cache directory").c_str(),
                                             options.c_handle(), &p, digest.c_handle()));
        Plugin plugin(p);
        if (resolved_digest != nullptr) *resolved_digest = digest.str();
        return plugin;
    }
    /** What prune_oci_cache did: folders removed, bytes left. */
    struct OciPrune {
        std::size_t removed = 0;
        std::uint64_t kept_bytes = 0;
    };
    /** Evict least recently used folders of the OCI cache `cache_dir` until it takes at most
     *  `max_bytes` (keel_host_prune_oci_cache); folders a loaded plugin came from (in any
     *  process) and folders being pulled stay. */
    OciPrune prune_oci_cache(std::string_view cache_dir, std::uint64_t max_bytes) const {
        OciPrune r;
        Error::check(keel_host_prune_oci_cache(h(), api_detail::cstr(cache_dir, "a cache directory").c_str(), max_bytes,
                                               &r.removed, &r.kept_bytes));
        return r;
    }
    /** Follow a trust store published in an OCI registry (keel_host_follow_trust_store): a
     *  published store signed by one of `roots` (a trust-store document of root keys) and not
     *  older than the one in use is swapped in now and at every `interval` afterwards. Returns
     *  the version in use. */
    std::uint64_t follow_trust_store(std::string_view reference, std::string_view roots,
                                     std::chrono::milliseconds interval, std::string_view bearer = {}) const {
        std::uint64_t v = 0;
        const std::string b = api_detail::cstr(bearer, "a bearer token");
        Error::check(keel_host_follow_trust_store(h(), api_detail::cstr(reference, "an OCI reference").c_str(),
                                                  reinterpret_cast<const std::uint8_t *>(roots.data()), roots.size(),
                                                  static_cast<std::uint64_t>(interval.count()),
                                                  b.empty() ? nullptr : b.c_str(), &v));
        return v;
    }
    /** follow_trust_store with registry options (keel_host_follow_trust_store_with). */
    std::uint64_t follow_trust_store_with(std::string_view reference, std::string_view roots,
                                          std::chrono::milliseconds interval, const RegistryOptions &options) const {
        std::uint64_t v = 0;
        Error::check(keel_host_follow_trust_store_with(
            h(), api_detail::cstr(reference, "an OCI reference").c_str(),
            reinterpret_cast<const std::uint8_t *>(roots.data()), roots.size(),
            static_cast<std::uint64_t>(interval.count()), options.c_handle(), &v));
        return v;
    }
    /** Check the followed trust-store reference now (keel_host_trust_check_now); the version
     *  in use afterwards. */
    std::uint64_t trust_check_now() const {
        std::uint64_t v = 0;
        Error::check(keel_host_trust_check_now(h(), &v));
        return v;
    }
    /** Stop following (keel_host_stop_following_trust_store); whether a follower ran. */
    bool stop_following_trust_store() const {
        bool was = false;
        Error::check(keel_host_stop_following_trust_store(h(), &was));
        return was;
    }
    /** A new handle on a loaded plugin (KEEL_ERR_PLUGIN_NOT_FOUND). */
    Plugin get(std::string_view name) const { return Plugin(HostRef(h()), name); }
    /** Hot-reload `name` from its manifest; the new generation. KEEL_ERR_DRAIN_TIMEOUT is
     *  thrown after the swap (the new generation serves). */
    std::uint64_t reload(std::string_view name) const {
        std::uint64_t g = 0;
        Error::check(keel_host_reload(h(), api_detail::cstr(name, "a plugin name").c_str(), &g));
        return g;
    }
    /** Unload `name` (KEEL_ERR_HAS_DEPENDENTS: nothing unloaded). */
    void unload(std::string_view name) const {
        Error::check(keel_host_unload(h(), api_detail::cstr(name, "a plugin name").c_str()));
    }
    /** Unload `name` and every plugin depending on it, dependents first. */
    void unload_cascade(std::string_view name) const {
        Error::check(keel_host_unload_cascade(h(), api_detail::cstr(name, "a plugin name").c_str()));
    }
    /** Unload every plugin, dependents first. */
    void unload_all() const { Error::check(keel_host_unload_all(h())); }
    /** Every loaded plugin as keel_host_list_plugins' JSON array (name, version, type,
     *  runtime, generation, state, capabilities, ...). */
    std::string list_plugins_json() const {
        Buffer b;
        Error::check(keel_host_list_plugins(h(), b.c_handle()));
        return b.str();
    }
    /** How long unload and reload wait for in-flight calls (default 5 s). */
    void set_drain_timeout(std::chrono::milliseconds timeout) const {
        Error::check(keel_host_set_drain_timeout_ms(h(), static_cast<std::uint64_t>(timeout.count())));
    }

    // -- trust and policy --

    /** Run every check a load runs before plugin code, without loading: returns normally if
     *  the plugin would load, throws the first failing check's Error otherwise. */
    void verify(std::string_view manifest_path) const {
        Error::check(keel_verify(h(), api_detail::cstr(manifest_path, "a manifest path").c_str()));
    }
    /** Replace the trust store with a JSON file / document (rollback-protected). */
    void set_trust_store_file(std::string_view path) const {
        Error::check(keel_host_set_trust_store_file(h(), api_detail::cstr(path, "a path").c_str()));
    }
    void set_trust_store_bytes(ByteView json) const {
        Error::check(keel_host_set_trust_store_bytes(h(), json.data(), json.size()));
    }
    /** Require trusted signatures (turning it off after the first load: KEEL_ERR_POLICY_DOWNGRADE). */
    void set_require_signature(bool require) const { Error::check(keel_host_set_require_signature(h(), require)); }
    /** Allow binaries without a pinned SHA-256 (on after the first load: KEEL_ERR_POLICY_DOWNGRADE). */
    void set_allow_unpinned(bool allow) const { Error::check(keel_host_set_allow_unpinned(h(), allow)); }
    /**
     * Run every native plugin loaded from now on in a sandbox process (docs/isolation.md), and/or
     * name the `keel-sandbox` launcher (empty: the one set before, else $KEEL_SANDBOX_LAUNCHER,
     * else next to the library). Off after the first load: KEEL_ERR_POLICY_DOWNGRADE.
     */
    void set_native_isolation(bool required, std::string_view launcher = {}) const {
        if (launcher.empty()) {
            Error::check(keel_host_set_native_isolation(h(), required, nullptr));
        } else {
            Error::check(keel_host_set_native_isolation(h(), required,
                                                        api_detail::cstr(launcher, "a launcher path").c_str()));
        }
    }
    /** Also run the native plugins whose name matches the glob `pattern` isolated (never removed). */
    void require_isolation_for(std::string_view pattern) const {
        Error::check(keel_host_require_isolation_for(h(), api_detail::cstr(pattern, "a pattern").c_str()));
    }
    /** Also run the native plugins signed by the trusted key `key_id` (64 hex digits) isolated (never removed). */
    void require_isolation_for_key(std::string_view key_id) const {
        Error::check(keel_host_require_isolation_for_key(h(), api_detail::cstr(key_id, "a key id").c_str()));
    }
    /** Limit each sandbox started from now on to `percent` of one CPU through its cgroup (0: none). */
    void set_sandbox_cpu_percent(std::uint32_t percent) const {
        Error::check(keel_host_set_sandbox_cpu_percent(h(), percent));
    }
    /** The capabilities plugins loaded from now on may be granted (all-or-nothing check). */
    void set_capability_allowlist(const std::vector<std::string> &names) const {
        std::vector<std::string> owned;
        owned.reserve(names.size());
        std::vector<const char *> ptrs;
        ptrs.reserve(names.size());
        for (const std::string &n : names) {
            owned.push_back(api_detail::cstr(n, "a capability name"));
            ptrs.push_back(owned.back().c_str());
        }
        Error::check(keel_host_set_capability_allowlist(h(), ptrs.data(), ptrs.size()));
    }
    /** The allowlist as a bit set (keel::capability_bit). */
    std::uint64_t capability_allowlist() const {
        std::uint64_t bits = 0;
        Error::check(keel_host_capability_allowlist(h(), &bits));
        return bits;
    }
    /** Whether the allowlist contains `capability` (throws KEEL_ERR_CAPABILITY_UNKNOWN). */
    bool allows(std::string_view capability) const { return (capability_allowlist() & capability_bit(capability)) != 0; }

    // -- health, sampling, watching --

    /** Start (or restart with new settings) the health monitor. */
    void start_health_monitor(const HealthMonitorConfig &c = HealthMonitorConfig()) const {
        Error::check(keel_host_start_health_monitor(h(), static_cast<std::uint64_t>(c.interval.count()),
                                                    c.unhealthy_threshold,
                                                    static_cast<std::uint64_t>(c.backoff_initial.count()),
                                                    static_cast<std::uint64_t>(c.backoff_max.count())));
    }
    void stop_health_monitor() const { Error::check(keel_host_stop_health_monitor(h())); }
    /** Time one call in `every` for the latency histogram (0: off; default 64). */
    void set_latency_sampling(std::uint32_t every) const { Error::check(keel_host_set_latency_sampling(h(), every)); }
    /** Watch a plugin directory: load, reload and unload as its folders change. */
    void watch_dir(std::string_view dir, std::chrono::milliseconds debounce = std::chrono::milliseconds(500)) const {
        Error::check(keel_host_watch_dir(h(), api_detail::cstr(dir, "a directory").c_str(),
                                         static_cast<std::uint64_t>(debounce.count())));
    }
    void stop_watching() const { Error::check(keel_host_stop_watching(h())); }
    /** The watcher's outcomes after sequence number `after_seq` as JSON lines (see keel.h). */
    std::string watch_events(std::uint64_t after_seq = 0) const {
        Buffer b;
        Error::check(keel_host_watch_events(h(), after_seq, b.c_handle()));
        return b.str();
    }

    // -- metrics, WASM --

    /** Every loaded plugin's metrics (serve with openmetrics_content_type or
     *  prometheus_content_type). */
    std::string metrics_text(MetricsFormat format = MetricsFormat::OpenMetrics) const {
        return metrics_text(format, false);
    }
    /** metrics_text with options: omit_idle_histograms leaves out the latency histogram of
     *  every plugin never called since its load (KEEL_METRICS_OMIT_IDLE_HISTOGRAMS). */
    std::string metrics_text(MetricsFormat format, bool omit_idle_histograms) const {
        Buffer b;
        std::uint32_t f = static_cast<std::uint32_t>(format);
        if (omit_idle_histograms) f |= KEEL_METRICS_OMIT_IDLE_HISTOGRAMS;
        Error::check(keel_host_metrics_text_format(h(), f, b.c_handle()));
        return b.str();
    }
    /** Configure the WASM runtime (before the first WASM load). */
    void set_wasm_config(const WasmConfig &config) const {
        keel_wasm_config c{};
        c.defaults = config.defaults;
        c.ceilings = config.ceilings;
        c.pool_size = config.pool_size;
        c.metering = config.metering;
        c.watchdog_tick_us = config.watchdog_tick_us;
        const std::string dir = api_detail::cstr(config.cache_dir, "a cache directory");
        c.cache_dir = dir.empty() ? nullptr : dir.c_str();
        std::memcpy(c.cache_key, config.cache_key.data(), sizeof c.cache_key);
        Error::check(keel_host_set_wasm_config(h(), &c));
    }
    /** How WASM memories use the address space (before the first WASM load; kept by
     *  set_wasm_config). */
    void set_wasm_memory_mode(WasmMemoryMode mode) const {
        Error::check(keel_host_set_wasm_memory_mode(h(), static_cast<std::uint32_t>(mode)));
    }
    WasmMemoryMode wasm_memory_mode() const {
        std::uint32_t m = 0;
        Error::check(keel_host_wasm_memory_mode(h(), &m));
        return static_cast<WasmMemoryMode>(m);
    }
    /** The engine of WASM plugins; with manifest_may_choose a manifest may ask for the other
     *  one ("wasm_engine"). Before the first WASM plugin is loaded (kept by set_wasm_config). */
    void set_wasm_engine(WasmEngine engine, bool manifest_may_choose = false) const {
        Error::check(keel_host_set_wasm_engine(h(), static_cast<std::uint32_t>(engine), manifest_may_choose));
    }
    WasmEngine wasm_engine() const {
        std::uint32_t e = 0;
        Error::check(keel_host_wasm_engine(h(), &e, nullptr));
        return static_cast<WasmEngine>(e);
    }
    bool wasm_manifest_may_choose_engine() const {
        bool b = false;
        Error::check(keel_host_wasm_engine(h(), nullptr, &b));
        return b;
    }
    /** How plugins on wasmer are compiled. Before the first WASM plugin is loaded (kept by
     *  set_wasm_config); Singlepass and Tiered are refused on a wasmtime host. */
    void set_wasm_compiler(WasmCompiler compiler) const {
        Error::check(keel_host_set_wasm_compiler(h(), static_cast<std::uint32_t>(compiler)));
    }
    WasmCompiler wasm_compiler() const {
        std::uint32_t c = 0;
        Error::check(keel_host_wasm_compiler(h(), &c));
        return static_cast<WasmCompiler>(c);
    }
    WasmCacheStats wasm_cache_stats() const {
        WasmCacheStats s{};
        Error::check(keel_host_wasm_cache_stats(h(), &s));
        return s;
    }

    // -- listeners and services --

    /** Register a lifecycle listener; it stays registered while the handle lives. */
    [[nodiscard]] ListenerHandle add_listener(Listener listener) const {
        if (!listener) {
            throw Error::with_message(KEEL_ERR_NULL_POINTER, "empty listener");
        }
        auto *heap = new Listener(std::move(listener));
        std::uint64_t id = 0;
        const keel_status s =
            keel_host_add_listener(h(), &api_detail::listener_trampoline, heap, &api_detail::listener_free, &id);
        if (s != KEEL_OK) {
            delete heap; // not taken on failure
        }
        Error::check(s);
        return ListenerHandle(h_, id);
    }
    /** Define (or replace) the host function ns.name for plugins granted `capability`. The
     *  std::function is owned by Keel from here on (also when refused). */
    void define_function(std::string_view ns, std::string_view name, std::string_view capability,
                         HostFunction f) const {
        api_detail::define_function(h(), ns, name, capability, std::move(f));
    }
    /** Remove a host function (KEEL_ERR_HOST_FN_NOT_FOUND); bound plugins keep it until reload. */
    void remove_function(std::string_view ns, std::string_view name) const { api_detail::remove_function(h(), ns, name); }
    /** Plugin log lines go to `sink` (an empty function: back to stderr). */
    void set_log_sink(LogSink sink) const { api_detail::set_log_sink(h(), std::move(sink)); }
    /** kv:* and storage:* go to `sink` (nullptr: back to the in-memory map). */
    void set_storage_sink(std::shared_ptr<StorageSink> sink) const { api_detail::set_storage_sink(h(), std::move(sink)); }
    /** The registered RPC endpoints, sorted by name (and as keel_host_rpc_list's JSON). */
    std::vector<RpcEndpoint> rpc_list() const { return api_detail::rpc_list(h()); }
    std::string rpc_list_json() const { return api_detail::rpc_list_json(h()); }
    /** Resolve an endpoint once for repeated lock-free calls (KEEL_ERR_RPC_ENDPOINT_NOT_FOUND). */
    RpcTarget rpc_resolve(std::string_view endpoint) const {
        keel_plugin *p = nullptr;
        keel_function f = 0;
        Error::check(keel_host_rpc_resolve(h(), api_detail::cstr(endpoint, "an endpoint").c_str(), &p, &f));
        return RpcTarget{Plugin(p), f};
    }
    /** Invoke an endpoint with `input` (the result into `out`, or returned). */
    void rpc_call(std::string_view endpoint, ByteView input, Buffer &out) const {
        api_detail::rpc_call(h(), endpoint, input, out);
    }
    std::string rpc_call(std::string_view endpoint, ByteView input) const {
        Buffer out;
        api_detail::rpc_call(h(), endpoint, input, out);
        return out.str();
    }

private:
    keel_host *h() const {
        if (!h_) {
            throw Error::with_message(KEEL_ERR_NULL_POINTER, "empty keel::Host (moved from)");
        }
        return h_.get();
    }
    std::shared_ptr<keel_host> h_;
};

inline HostRef::HostRef(const Host &host) noexcept : h_(host.c_handle()) {}

// ---- free-function forms (older blocks; keel::Host has the same as methods) ----

/** Host::set_log_sink for any host (keel::Host or the legacy bridge host). */
inline void set_log_sink(HostRef host, LogSink sink) { api_detail::set_log_sink(host.get(), std::move(sink)); }
/** Host::set_storage_sink for any host. */
inline void set_storage_sink(HostRef host, std::shared_ptr<StorageSink> sink) {
    api_detail::set_storage_sink(host.get(), std::move(sink));
}
/** Host::rpc_list_json / rpc_list / rpc_call for any host. */
inline std::string rpc_list_json(HostRef host) { return api_detail::rpc_list_json(host.get()); }
inline std::vector<RpcEndpoint> rpc_list(HostRef host) { return api_detail::rpc_list(host.get()); }
inline std::string rpc_call(HostRef host, std::string_view endpoint, ByteView input) {
    Buffer out;
    api_detail::rpc_call(host.get(), endpoint, input, out);
    return out.str();
}
/** Host::define_function / remove_function for any host. */
inline void define_host_function(HostRef host, std::string_view ns, std::string_view name,
                                 std::string_view capability, HostFunction f) {
    api_detail::define_function(host.get(), ns, name, capability, std::move(f));
}
inline void remove_host_function(HostRef host, std::string_view ns, std::string_view name) {
    api_detail::remove_function(host.get(), ns, name);
}

// ---- legacy: the cxx bridge (src/bridge/mod.rs) ----
// rust::Box<keel::bridge::Host> keel::new_host(); Host: load, load_dir, reload, unload, get,
// set_trust_store_file/bytes, set_require_signature, metrics_text, c_handle; Plugin: function,
// call(fn, rust::Slice<const uint8_t>, rust::Vec<uint8_t>&), name, generation. Errors are
// rust::Error with what() "<status name> (<code>): <message>" (keel::error_status()). Kept for
// existing users; the classes above cover all of it with std types.

using bridge::new_host;

/** The bytes of `s` as a bridge call input (borrowed: `s` must outlive the call). */
inline rust::Slice<const std::uint8_t> bytes(std::string_view s) noexcept {
    return rust::Slice<const std::uint8_t>(reinterpret_cast<const std::uint8_t *>(s.data()), s.size());
}

/** The bytes of a bridge call's output viewed as characters (valid until `out` changes). */
inline std::string_view view(const rust::Vec<std::uint8_t> &out) noexcept {
    return std::string_view(reinterpret_cast<const char *>(out.data()), out.size());
}

/** The keel_status of a rust::Error thrown by the bridge: the number in parentheses after the
 *  status name at the start of what(). KEEL_ERR_INTERNAL if what() has no such code. */
inline keel_status error_status(const rust::Error &e) noexcept {
    const std::string_view what(e.what());
    const auto open = what.find(" (");
    const auto close = what.find("): ");
    if (open == std::string_view::npos || close == std::string_view::npos || close <= open + 2) {
        return KEEL_ERR_INTERNAL;
    }
    std::uint32_t code = 0;
    for (std::size_t i = open + 2; i < close; i++) {
        const char c = what[i];
        if (c < '0' || c > '9' || code > 100000) {
            return KEEL_ERR_INTERNAL;
        }
        code = code * 10 + static_cast<std::uint32_t>(c - '0');
    }
    return static_cast<keel_status>(code);
}

/** The bridge host as a borrowed C handle (valid while `host` lives; never keel_host_free it). */
inline keel_host *c_host(const bridge::Host &host) noexcept { return reinterpret_cast<keel_host *>(host.c_handle()); }
/** keel::Host's C handle (the same as host.c_handle()). */
inline keel_host *c_host(const Host &host) noexcept { return host.c_handle(); }

} // namespace keel

#endif // KEEL_HPP
