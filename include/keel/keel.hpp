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

#include <cstdint>
#include <string_view>

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

} // namespace keel

#endif // KEEL_HPP
