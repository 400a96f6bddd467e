/*
 * keel.hpp — the Keel C++ API (C++17): keel::Host and keel::Plugin.
 *
 * A cxx bridge (src/bridge/mod.rs) over the same host as the C ABI (keel/keel.h). The
 * declarations come from the generated header included below (keel/src/bridge/mod.rs.h,
 * written by the build; installed with this file); this header adds only documentation and
 * two small helpers. Link Keel::keel (libkeel.so plus libkeel_cxx.a, the C++ half of the
 * bridge) or Keel::keel_static (libkeel.a contains both halves).
 *
 *     #include <keel/keel.hpp>
 *
 *     rust::Box<keel::Host> host = keel::new_host();
 *     host->set_trust_store_file("/etc/db/keel-trust.json");
 *     rust::Box<keel::Plugin> embedder = host->load("/var/lib/db/plugins/embedder/embedder.json");
 *     const std::uint32_t embed = embedder->function("embed");        // resolve once
 *     rust::Vec<std::uint8_t> out;                                     // reuse per thread
 *     try {
 *         embedder->call(embed, keel::bytes("some text"), out);       // lock-free
 *     } catch (const rust::Error &e) {
 *         if (keel::error_status(e) == KEEL_ERR_CALL_FAILED) { ... }  // e.what(): "KEEL_ERR_CALL_FAILED (704): ..."
 *     }
 *     std::string_view result = keel::view(out);
 *
 * The API (namespace keel):
 *   rust::Box<Host> new_host()
 *   Host:   load(manifest_path) -> rust::Box<Plugin>     load_dir(dir) -> rust::Vec<rust::String> (names)
 *           reload(name) -> uint64_t (new generation)     unload(name)
 *           get(name) -> rust::Box<Plugin>                metrics_text() -> rust::String (OpenMetrics)
 *           set_trust_store_file(path) -> uint64_t        set_trust_store_bytes(bytes) -> uint64_t (version)
 *           set_require_signature(bool)
 *   Plugin: function(name) -> uint32_t                    call(fn, input bytes, rust::Vec<uint8_t> &out)
 *           name() -> rust::Str (noexcept)                generation() -> uint64_t (noexcept; 0 once unloaded)
 * Strings are passed as rust::Str (constructible from std::string, std::string_view and
 * const char *; they must be UTF-8: rust::Str's constructor throws std::invalid_argument for
 * other bytes), bytes as rust::Slice<const std::uint8_t> (keel::bytes()).
 *
 * Ownership: new_host(), load() and get() return rust::Box, an owning pointer like
 * std::unique_ptr (move-only; destroying it releases the object). Destroying the Host unloads
 * every plugin. A Plugin is a handle on the plugin's slot: it stays valid across reloads (calls
 * go to the current generation) and after an unload or the host's destruction its calls fail
 * with KEEL_ERR_PLUGIN_UNLOADED, never with undefined behaviour. Function ids from function()
 * stay valid across reloads.
 *
 * Thread-safety: a Host and a Plugin may be used from many threads at once (every method is
 * const). call() takes no lock; give each thread its own output vector: call() clears it and
 * writes the result, reusing its capacity, so steady-state calls do not allocate.
 *
 * Errors: every method but name() and generation() may throw rust::Error (a std::exception).
 * Its what() is "<status name> (<code>): <message>", e.g.
 * "KEEL_ERR_DIGEST_MISMATCH (400): plugin 'echo' (...): ...", with the stable keel_status codes
 * of keel/keel.h; keel::error_status(e) returns the code. No Rust panic reaches C++ (a panic
 * inside Keel becomes KEEL_ERR_PANIC).
 */
#ifndef KEEL_HPP
#define KEEL_HPP

#include <keel/keel.h>

#include "rust/cxx.h"
#include "keel/src/bridge/mod.rs.h"

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <string>
#include <stdexcept>
#include <functional>
#include <vector>
#include <utility>

namespace keel {

/** The bytes of `s` as a call input (borrowed: `s` must outlive the call). */
inline rust::Slice<const std::uint8_t> bytes(std::string_view s) noexcept {
    return rust::Slice<const std::uint8_t>(reinterpret_cast<const std::uint8_t *>(s.data()), s.size());
}

/** The bytes of a call's output viewed as characters (valid until `out` changes). */
inline std::string_view view(const rust::Vec<std::uint8_t> &out) noexcept {
    return std::string_view(reinterpret_cast<const char *>(out.data()), out.size());
}

/** The keel_status code of an error thrown by the C++ API: the number in parentheses after
 *  the status name at the start of what(). KEEL_ERR_INTERNAL if what() has no such code. */
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

/** The host behind `host` as a borrowed C handle, for the C ABI functions of keel/keel.h
 *  (the same host: plugins loaded through either are the same plugins). Valid while `host`
 *  lives; never pass it to keel_host_free. Thread-safety as the C function used. */
inline keel_host *c_host(const Host &host) noexcept {
    return reinterpret_cast<keel_host *>(host.c_handle());
}

// ---- callopts ----
//
// Calls with options (keel_call_with) and cancel tokens, header-only over the C ABI (no
// bridge involved): keel::CancelToken (RAII, shareable), keel::CallOptions (std types),
// keel::PluginRef (a C plugin handle, RAII), keel::Buffer (a reusable output buffer) and
// keel::call_with(). Errors are thrown as keel::CallError (a std::runtime_error whose what()
// has the same "<status name> (<code>): <message>" form as rust::Error; status() gives the
// code). See docs/services-callopts.md.
//
//     keel::PluginRef plugin(host, "search");              // resolve once
//     const keel_function query = plugin.function("query");
//     keel::CancelToken token;                              // cancel it from any thread
//     keel::CallOptions opts;
//     opts.deadline = std::chrono::milliseconds(250);       // capped at the plugin's own
//     opts.cancel = token;                                  // a reference to the same token
//     opts.tenant = "tenant-7";
//     opts.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
//     keel::Buffer out;                                     // reuse per thread
//     keel::call_with(plugin, query, keel::bytes("..."), opts, out);
//     std::string_view result = out.view();

/** A keel_status failure from the C ABI wrappers below. */
class CallError : public std::runtime_error {
public:
    CallError(keel_status status, const std::string &what) : std::runtime_error(what), status_(status) {}
    keel_status status() const noexcept { return status_; }

    /** Throw the calling thread's last error for `s` (when `s` is not KEEL_OK). */
    static void check(keel_status s) {
        if (s == KEEL_OK) {
            return;
        }
        const char *name = "KEEL_ERR_UNKNOWN";
        keel_status_name(static_cast<std::uint32_t>(s), &name);
        const char *msg = "";
        keel_last_error_message(&msg);
        throw CallError(s, std::string(name) + " (" + std::to_string(static_cast<std::uint32_t>(s)) + "): " + msg);
    }

private:
    keel_status status_;
};

/** A cancel token (keel_cancel_token). Copying gives another reference to the same token
 *  (keel_cancel_token_clone), so a copy may be handed to another thread and cancelled there;
 *  moving transfers the reference (the moved-from token is empty: c_handle() is NULL and
 *  cancel()/cancelled() do nothing/return false). Destroying a token releases its reference;
 *  a call running with it holds its own, so that is safe at any time. cancel() and
 *  cancelled() are thread-safe and noexcept. The constructor and copies throw CallError only
 *  if the C ABI fails (out of memory aborts, as everywhere in Keel). */
class CancelToken {
public:
    CancelToken() { CallError::check(keel_cancel_token_new(&t_)); }
    CancelToken(const CancelToken &o) {
        if (o.t_ != nullptr) {
            CallError::check(keel_cancel_token_clone(o.t_, &t_));
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

/** An owning C plugin handle (keel_plugin *), for C ABI functions such as keel_call_with.
 *  Move-only; thread-safe to use from many threads at once (as the C handle). */
class PluginRef {
public:
    /** The loaded plugin `name` of `host` (throws CallError: KEEL_ERR_PLUGIN_NOT_FOUND, ...). */
    PluginRef(const Host &host, const std::string &name) {
        CallError::check(keel_plugin_get(c_host(host), name.c_str(), &p_));
    }
    /** Adopt a handle from keel_host_load / keel_plugin_get (released by the destructor). */
    explicit PluginRef(keel_plugin *adopt) noexcept : p_(adopt) {}
    PluginRef(const PluginRef &) = delete;
    PluginRef &operator=(const PluginRef &) = delete;
    PluginRef(PluginRef &&o) noexcept : p_(o.p_) { o.p_ = nullptr; }
    PluginRef &operator=(PluginRef &&o) noexcept {
        std::swap(p_, o.p_);
        return *this;
    }
    ~PluginRef() { keel_plugin_free(p_); }

    /** Resolve a function (throws CallError). */
    keel_function function(const std::string &name) const {
        keel_function f = 0;
        CallError::check(keel_plugin_function(p_, name.c_str(), &f));
        return f;
    }
    keel_plugin *c_handle() const noexcept { return p_; }

private:
    keel_plugin *p_ = nullptr;
};

/** A keel_buffer (RAII, move-only): a call's output, its memory reused across calls. Not
 *  thread-safe: one per thread. */
class Buffer {
public:
    Buffer() { CallError::check(keel_buffer_new(&b_)); }
    Buffer(const Buffer &) = delete;
    Buffer &operator=(const Buffer &) = delete;
    Buffer(Buffer &&o) noexcept : b_(o.b_) { o.b_ = nullptr; }
    Buffer &operator=(Buffer &&o) noexcept {
        std::swap(b_, o.b_);
        return *this;
    }
    ~Buffer() { keel_buffer_free(b_); }

    /** The content (valid until the next call writes the buffer). */
    std::string_view view() const noexcept {
        const std::uint8_t *d = nullptr;
        std::size_t n = 0;
        if (b_ == nullptr || keel_buffer_data(b_, &d, &n) != KEEL_OK || n == 0) {
            return std::string_view();
        }
        return std::string_view(reinterpret_cast<const char *>(d), n);
    }
    keel_buffer *c_handle() const noexcept { return b_; }

private:
    keel_buffer *b_ = nullptr;
};

/** keel_call_with: call `function` of `plugin` on `input` with `opts`; the result goes into
 *  `out` (empty on failure). Throws CallError with the call's status (KEEL_ERR_CANCELLED,
 *  KEEL_ERR_DEADLINE, KEEL_ERR_INVALID_ARGUMENT for a bad traceparent or a string with an
 *  embedded NUL, ...). Thread-safe as keel_call_with (one Buffer per thread); allocates
 *  nothing itself. */
inline void call_with(const PluginRef &plugin, keel_function function, rust::Slice<const std::uint8_t> input,
                      const CallOptions &opts, Buffer &out) {
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
            throw CallError(KEEL_ERR_INVALID_ARGUMENT,
                            std::string("KEEL_ERR_INVALID_ARGUMENT (") +
                                std::to_string(static_cast<std::uint32_t>(KEEL_ERR_INVALID_ARGUMENT)) +
                                "): call options: tenant and traceparent must not contain NUL bytes");
        }
    }
    o.tenant = opts.tenant.empty() ? nullptr : opts.tenant.c_str();
    o.traceparent = opts.traceparent.empty() ? nullptr : opts.traceparent.c_str();
    CallError::check(keel_call_with(plugin.c_handle(), function, input.data(), input.size(), &o, out.c_handle()));
}

/** keel_call: a plain call through a PluginRef (throws CallError). */
inline void call(const PluginRef &plugin, keel_function function, rust::Slice<const std::uint8_t> input, Buffer &out) {
    CallError::check(keel_call(plugin.c_handle(), function, input.data(), input.size(), out.c_handle()));
}

// ---- sinks ----
// The log sink and the storage sink from C++ (over keel_host_set_log_sink and
// keel_host_set_storage_sink of keel/keel.h; rules in docs/services-sinks.md).
} // namespace keel

#include <keel/keel_common.h> /* KEEL_LOG_* */

#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

namespace keel {

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

inline void check(keel_status s) {
    if (s != KEEL_OK) {
        const char *msg = nullptr;
        keel_last_error_message(&msg);
        throw std::runtime_error(msg ? msg : "keel error");
    }
}

} // namespace sinks_detail

/** Send every plugin log line of `host` to `sink` (an empty function: back to stderr).
 *  Settable at any time from any thread; the previous sink is destroyed once no line is
 *  being delivered to it (possibly on a plugin's thread). Throws std::runtime_error if Keel
 *  refuses (it does not for a live host). */
inline void set_log_sink(const Host &host, LogSink sink) {
    if (!sink) {
        sinks_detail::check(keel_host_set_log_sink(c_host(host), nullptr, nullptr, nullptr));
        return;
    }
    auto *owned = new LogSink(std::move(sink));
    const keel_status s = keel_host_set_log_sink(c_host(host), sinks_detail::log_trampoline, owned, sinks_detail::free_log);
    if (s != KEEL_OK) delete owned; // not taken: Keel calls no destructor on failure
    sinks_detail::check(s);
}

/** Make `sink` the storage behind kv:* and storage:* of every plugin of `host` (nullptr:
 *  back to the in-memory map, which knows no tables). Settable at any time from any thread;
 *  Keel keeps a reference to `sink` and releases it once no operation is inside it. Throws
 *  std::runtime_error if Keel refuses. */
inline void set_storage_sink(const Host &host, std::shared_ptr<StorageSink> sink) {
    if (!sink) {
        sinks_detail::check(keel_host_set_storage_sink(c_host(host), nullptr, nullptr, nullptr));
        return;
    }
    keel_storage_sink table{};
    table.struct_size = sizeof(keel_storage_sink);
    table.get = sinks_detail::get;
    table.put = sinks_detail::put;
    table.remove = sinks_detail::remove;
    table.scan = sinks_detail::scan;
    auto *owned = new std::shared_ptr<StorageSink>(std::move(sink));
    const keel_status s = keel_host_set_storage_sink(c_host(host), &table, owned, sinks_detail::free_storage);
    if (s != KEEL_OK) delete owned;
    sinks_detail::check(s);
}

// ---- capmetrics ----
// RPC endpoints plugins register (capability "rpc:register"), over the C ABI functions
// keel_host_rpc_list / keel_host_rpc_resolve / keel_host_rpc_call. Plugin-defined metrics
// (capability "metrics:write") need nothing here: they are in Host::metrics_text() as
// keel_custom_* families with the label plugin="<name>". See docs/services-capmetrics.md.

/** A failed C ABI call of this block: its keel_status and Keel's message (what()). */
class RpcError : public std::runtime_error {
public:
    RpcError(keel_status status, const std::string &message) : std::runtime_error(message), status_(status) {}
    keel_status status() const noexcept { return status_; }

private:
    keel_status status_;
};

/** One registered endpoint: its name, the plugin that registered it, the function it calls. */
struct RpcEndpoint {
    std::string endpoint;
    std::string plugin;
    std::string function;
};

namespace capmetrics_detail {

/** Throw RpcError for a failed status, with the thread's last error message. */
inline void check(keel_status s) {
    if (s == KEEL_OK) {
        return;
    }
    const char *msg = nullptr;
    keel_last_error_message(&msg);
    const char *name = nullptr;
    keel_status_name(static_cast<std::uint32_t>(s), &name);
    throw RpcError(s, std::string(name ? name : "KEEL_ERR") + " (" + std::to_string(static_cast<unsigned>(s)) +
                          "): " + (msg ? msg : ""));
}

/** A keel_buffer owned for one scope. */
class Buffer {
public:
    Buffer() { check(keel_buffer_new(&b_)); }
    ~Buffer() { keel_buffer_free(b_); }
    Buffer(const Buffer &) = delete;
    Buffer &operator=(const Buffer &) = delete;
    keel_buffer *get() const noexcept { return b_; }
    std::string str() const {
        const std::uint8_t *d = nullptr;
        std::size_t n = 0;
        check(keel_buffer_data(b_, &d, &n));
        return n ? std::string(reinterpret_cast<const char *>(d), n) : std::string();
    }

private:
    keel_buffer *b_ = nullptr;
};

/** Parse the JSON string starting at s[i] == '"'; i ends past the closing quote. Handles the
 *  escapes Keel's encoder writes (\" \\ \/ \b \f \n \r \t \uXXXX, the latter as UTF-8). */
inline std::string json_string(const std::string &s, std::size_t &i) {
    std::string out;
    if (i >= s.size() || s[i] != '"') {
        throw RpcError(KEEL_ERR_INTERNAL, "endpoint list: string expected");
    }
    for (i++; i < s.size(); i++) {
        char c = s[i];
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
                throw RpcError(KEEL_ERR_INTERNAL, "endpoint list: bad \\u escape");
            }
            const unsigned cp = static_cast<unsigned>(std::stoul(s.substr(i + 1, 4), nullptr, 16));
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
    throw RpcError(KEEL_ERR_INTERNAL, "endpoint list: unterminated string");
}

} // namespace capmetrics_detail

/** The registered endpoints as keel_host_rpc_list's JSON text
 *  ([{"endpoint":..,"plugin":..,"function":..}], sorted by endpoint). Thread-safe.
 *  Throws RpcError. */
inline std::string rpc_list_json(const Host &host) {
    capmetrics_detail::Buffer b;
    capmetrics_detail::check(keel_host_rpc_list(c_host(host), b.get()));
    return b.str();
}

/** The registered endpoints, sorted by endpoint name. Thread-safe. Throws RpcError. */
inline std::vector<RpcEndpoint> rpc_list(const Host &host) {
    const std::string j = rpc_list_json(host);
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
            const std::string key = capmetrics_detail::json_string(j, i);
            while (i < j.size() && j[i] != '"') {
                i++;
            }
            std::string value = capmetrics_detail::json_string(j, i);
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

/** Invoke `endpoint` with `input`; the function's output. Calls the plugin through the normal
 *  call path (errors as keel_call's, plus KEEL_ERR_RPC_ENDPOINT_NOT_FOUND). Thread-safe.
 *  Throws RpcError. */
inline std::string rpc_call(const Host &host, std::string_view endpoint, std::string_view input) {
    capmetrics_detail::Buffer b;
    const std::string ep(endpoint);
    capmetrics_detail::check(keel_host_rpc_call(c_host(host), ep.c_str(),
                                                reinterpret_cast<const std::uint8_t *>(input.data()), input.size(),
                                                b.get()));
    return b.str();
}

// ---- hostfn ----
// Host functions defined by the server, from C++ (std::function over keel_host_define_function
// of keel/keel.h). Plugins granted the function's capability call it: native plugins through
// host_fn_lookup/host_fn_call of their host-API table, WASM plugins by importing `name` from
// module `namespace` (keel_wasm.h). A plugin binds to the definitions that exist when it loads;
// (re)definitions and removals reach plugins loaded or reloaded afterwards.
//
//     keel::define_host_function(*host, "db", "get_row", "storage:read",
//         [&table](const keel::CallContext &ctx, std::string_view key) -> std::string {
//             auto it = table.find(std::string(key));
//             if (it == table.end()) throw std::runtime_error("no such row");  // the plugin's error
//             return it->second;                                               // the plugin's output
//         });

/** A keel_status failure of the host-function C++ API: what() is "<status name> (<code>):
 *  <message>"; status() is the code. */
class HostFunctionError : public std::runtime_error {
public:
    HostFunctionError(keel_status status, const std::string &what) : std::runtime_error(what), status_(status) {}
    keel_status status() const noexcept { return status_; }

private:
    keel_status status_;
};

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

namespace detail {
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

[[noreturn]] inline void throw_last(keel_status s) {
    const char *msg = nullptr;
    const char *name = nullptr;
    if (keel_last_error_message(&msg) != KEEL_OK) msg = nullptr;
    if (keel_status_name(static_cast<uint32_t>(s), &name) != KEEL_OK) name = nullptr;
    throw HostFunctionError(s, std::string(name ? name : "KEEL_ERR") + " (" + std::to_string(static_cast<unsigned>(s)) +
                                   "): " + (msg ? msg : ""));
}
} // namespace detail

/** Define (or replace) the host function `ns`.`name`, callable by plugins granted
 *  `capability`. The std::function is moved to the heap and owned by Keel: destroyed exactly
 *  once, when the definition has been replaced or removed (or the host destroyed) and no
 *  loaded plugin generation is bound to it any more (also when the definition is refused).
 *  Throws HostFunctionError (KEEL_ERR_INVALID_ARGUMENT for a bad name or namespace "keel",
 *  KEEL_ERR_CAPABILITY_UNKNOWN, KEEL_ERR_NULL_POINTER for an empty function). Thread-safe. */
inline void define_host_function(const Host &host, std::string_view ns, std::string_view name,
                                 std::string_view capability, HostFunction f) {
    auto *heap = new HostFunction(std::move(f));
    if (!*heap) {
        delete heap;
        throw HostFunctionError(KEEL_ERR_NULL_POINTER, "KEEL_ERR_NULL_POINTER (100): empty host function");
    }
    const std::string n(ns), nm(name), cap(capability);
    // Keel owns `heap` from here on, whatever the outcome (it frees it on failure).
    const keel_status s = keel_host_define_function(c_host(host), n.c_str(), nm.c_str(), cap.c_str(),
                                                    &detail::host_function_trampoline, heap,
                                                    &detail::host_function_free);
    if (s != KEEL_OK) detail::throw_last(s);
}

/** Remove the host function `ns`.`name`; plugins bound to it keep it until they are reloaded
 *  or unloaded. Throws HostFunctionError (KEEL_ERR_HOST_FN_NOT_FOUND). Thread-safe. */
inline void remove_host_function(const Host &host, std::string_view ns, std::string_view name) {
    const std::string n(ns), nm(name);
    const keel_status s = keel_host_remove_function(c_host(host), n.c_str(), nm.c_str());
    if (s != KEEL_OK) detail::throw_last(s);
}

} // namespace keel

#endif // KEEL_HPP
