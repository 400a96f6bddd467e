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
#include <functional>
#include <stdexcept>
#include <string>
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
