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
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

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

} // namespace keel

#endif // KEEL_HPP
