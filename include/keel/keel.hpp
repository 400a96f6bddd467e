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

} // namespace keel

#endif // KEEL_HPP
