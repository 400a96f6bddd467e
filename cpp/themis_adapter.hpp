/*
 * themis_adapter.hpp — show any Keel plugin (native, WASM or legacy ThemisDB C++) to existing
 * ThemisDB-style code as a themis::plugins::IThemisPlugin. Header-only, C++17, over the C ABI
 * (keel/keel.h); link Keel::keel (or Keel::keel_static).
 *
 *     keel_plugin *p;  keel_host_load(host, "plugins/embedder/embedder.json", &p);
 *     keel::ThemisAdapter adapter(p);             // takes ownership of the handle
 *     themis::plugins::IThemisPlugin &plugin = adapter;    // hand it to code written for ThemisDB
 *     std::string out = adapter.call("embed", "some text");
 *
 * What each IThemisPlugin method means for a Keel plugin:
 *  - getName():    the plugin's name (its manifest's; the same across reloads).
 *  - getVersion(): the current generation's manifest version. The returned pointer stays valid
 *                  for the adapter's life, also after a reload changes the version.
 *  - getType():    the manifest's "type" mapped to PluginType (ThemisDB's current numbering);
 *                  no or an unknown type gives CUSTOM.
 *  - getCapabilities(): the manifest's traits (ThemisDB capability flags, e.g. "streaming").
 *  - initialize(config_json): Keel initialised the plugin at load with its manifest's config,
 *                  so `config_json` is ignored; returns true iff the plugin is loaded.
 *  - shutdown():   OnShutdown::KeepLoaded (default): nothing happens — the plugin belongs to
 *                  the Keel host, and other users keep it. OnShutdown::Unload: unload the
 *                  plugin from the host given at construction (status: lastShutdownStatus()).
 *  - getInstance(): for a legacy ThemisDB plugin, its own getInstance() object; for any other
 *                  plugin, the adapter itself (so code that receives the object can reach
 *                  call()). The legacy object is held by a keel_themis_lease the adapter keeps
 *                  (see keel.h): a reload or unload — by the embedder, the health monitor or the
 *                  directory watcher — never frees it under the caller. The object stays valid
 *                  until the adapter lets the lease go: at the next getInstance() that finds
 *                  the plugin reloaded (it then returns the new generation's object),
 *                  releaseInstance(), shutdown() or the adapter's destruction. While the
 *                  adapter holds a lease, a reload or unload of the plugin waits for it like
 *                  for a call in flight (up to the drain timeout, then KEEL_ERR_DRAIN_TIMEOUT
 *                  with the swap done); call releaseInstance() when done with the object.
 *
 * Exceptions: the IThemisPlugin methods are noexcept and never throw (no exception reaches Keel
 * or the code that calls them). Only the adapter's own helpers throw keel::Error (a keel_status
 * plus the message): the constructor, open(), call(), generation().
 *
 * Thread-safety: like a keel_plugin handle, an adapter may be used from many threads at once.
 */
#ifndef KEEL_THEMIS_ADAPTER_HPP
#define KEEL_THEMIS_ADAPTER_HPP

#include <keel/keel.h>
#include <keel/keel_error.hpp> /* keel::Error (shared with keel.hpp) */
#include <keel/themis/plugin_interface.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>

namespace keel {

namespace detail {

inline std::string last_error_message() noexcept {
    try {
        const char *m = nullptr;
        if (keel_last_error_message(&m) != KEEL_OK || m == nullptr) return std::string();
        return std::string(m);
    } catch (...) {
        return std::string();
    }
}

inline void check(keel_status s, const char *what) {
    if (s != KEEL_OK) throw Error(s, std::string(what) + ": " + last_error_message());
}

/** An owned keel_buffer. */
class Buffer {
public:
    Buffer() { check(keel_buffer_new(&buf_), "keel_buffer_new"); }
    ~Buffer() { keel_buffer_free(buf_); }
    Buffer(const Buffer &) = delete;
    Buffer &operator=(const Buffer &) = delete;
    keel_buffer *get() const noexcept { return buf_; }
    std::string text() const {
        const uint8_t *data = nullptr;
        size_t len = 0;
        check(keel_buffer_data(buf_, &data, &len), "keel_buffer_data");
        return len == 0 ? std::string() : std::string(reinterpret_cast<const char *>(data), len);
    }

private:
    keel_buffer *buf_ = nullptr;
};

/** ThemisDB type names in PluginType's current numbering. */
inline themis::plugins::PluginType type_from_name(std::string_view name) noexcept {
    static constexpr std::string_view names[] = {
        "compute_backend", "blob_storage",     "importer",       "exporter",     "hsm_provider",
        "embedding",       "llm_backend",      "audio_processing", "image_generation", "agentic_tool",
        "ingestion_step",  "resource_limit_policy", "custom"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (names[i] == name) return static_cast<themis::plugins::PluginType>(i);
    }
    return themis::plugins::PluginType::CUSTOM;
}

} // namespace detail

/** What ThemisAdapter::shutdown() does. */
enum class OnShutdown {
    /** Nothing: the plugin stays loaded in the Keel host. */
    KeepLoaded,
    /** keel_host_unload() the plugin from the host given to the adapter. */
    Unload,
};

/** A Keel plugin seen as a themis::plugins::IThemisPlugin. */
class ThemisAdapter final : public themis::plugins::IThemisPlugin {
public:
    /** Adopt `plugin` (freed with keel_plugin_free by the destructor). `host` is used only by
     *  OnShutdown::Unload and must then outlive the adapter. Throws keel::Error if `plugin` is
     *  NULL or its name cannot be read; the caller then still owns `plugin`. */
    explicit ThemisAdapter(keel_plugin *plugin, const keel_host *host = nullptr,
                           OnShutdown on_shutdown = OnShutdown::KeepLoaded)
        : plugin_(plugin), host_(host), on_shutdown_(on_shutdown) {
        if (plugin_ == nullptr) throw Error(KEEL_ERR_NULL_POINTER, "ThemisAdapter: plugin is NULL");
        if (on_shutdown_ == OnShutdown::Unload && host_ == nullptr) {
            throw Error(KEEL_ERR_NULL_POINTER, "ThemisAdapter: OnShutdown::Unload needs the host");
        }
        detail::Buffer b;
        detail::check(keel_plugin_name(plugin_, b.get()), "keel_plugin_name");
        name_ = b.text();
        detail::Buffer v;
        if (keel_plugin_version(plugin_, v.get()) == KEEL_OK) last_version_ = &*versions_.insert(v.text()).first;
    }

    /** Look up the loaded plugin `name` in `host` and adapt it. Throws keel::Error (e.g.
     *  KEEL_ERR_PLUGIN_NOT_FOUND). */
    static std::unique_ptr<ThemisAdapter> open(const keel_host *host, const std::string &name,
                                               OnShutdown on_shutdown = OnShutdown::KeepLoaded) {
        keel_plugin *p = nullptr;
        detail::check(keel_plugin_get(host, name.c_str(), &p), "keel_plugin_get");
        try {
            return std::make_unique<ThemisAdapter>(p, host, on_shutdown);
        } catch (...) {
            keel_plugin_free(p);
            throw;
        }
    }

    ~ThemisAdapter() override {
        keel_themis_lease_free(lease_);
        keel_plugin_free(plugin_);
    }
    ThemisAdapter(const ThemisAdapter &) = delete;
    ThemisAdapter &operator=(const ThemisAdapter &) = delete;

    // ---- themis::plugins::IThemisPlugin (noexcept: nothing escapes) ----

    const char *getName() const noexcept override { return name_.c_str(); }

    const char *getVersion() const noexcept override {
        std::lock_guard<std::mutex> lock(mutex_);
        try {
            detail::Buffer b;
            if (keel_plugin_version(plugin_, b.get()) == KEEL_OK) {
                // Node-based set: pointers to earlier versions stay valid.
                last_version_ = &*versions_.insert(b.text()).first;
            }
        } catch (...) {
        }
        // Unloaded (or out of memory): the last version seen.
        return last_version_ == nullptr ? "" : last_version_->c_str();
    }

    themis::plugins::PluginType getType() const noexcept override {
        try {
            detail::Buffer b;
            if (keel_plugin_type(plugin_, b.get()) == KEEL_OK) return detail::type_from_name(b.text());
        } catch (...) {
        }
        return themis::plugins::PluginType::CUSTOM;
    }

    themis::plugins::PluginCapabilities getCapabilities() const noexcept override {
        themis::plugins::PluginCapabilities c;
        c.supports_streaming = has_trait("streaming");
        c.supports_batching = has_trait("batching");
        c.supports_transactions = has_trait("transactions");
        c.thread_safe = has_trait("thread_safe");
        c.gpu_accelerated = has_trait("gpu_accelerated");
        c.provides_vram_policy = has_trait("provides_vram_policy");
        c.provides_shard_policy = has_trait("provides_shard_policy");
        return c;
    }

    bool initialize(const char *config_json) noexcept override {
        (void)config_json;
        uint64_t g = 0;
        return keel_plugin_generation(plugin_, &g) == KEEL_OK;
    }

    void shutdown() noexcept override {
        if (on_shutdown_ != OnShutdown::Unload) return;
        releaseInstance(); // the adapter's own lease must not hold up the unload
        last_shutdown_.store(keel_host_unload(host_, name_.c_str()));
    }

    void *getInstance() noexcept override {
        if (not_legacy_.load(std::memory_order_relaxed)) {
            // A Keel plugin (native or WASM): the adapter itself while the plugin is loaded,
            // with no lock and no lease to look for (learned on the first call below).
            uint64_t g = 0;
            return keel_plugin_generation(plugin_, &g) == KEEL_OK ? this : nullptr;
        }
        std::lock_guard<std::mutex> lock(mutex_);
        uint64_t current = 0;
        if (keel_plugin_generation(plugin_, &current) != KEEL_OK) {
            release_lease_locked(); // unloaded: nothing to hand out
            return nullptr;
        }
        uint64_t held = 0;
        if (lease_ != nullptr && keel_themis_lease_generation(lease_, &held) == KEEL_OK && held == current) {
            return leased_instance_locked();
        }
        keel_themis_lease *fresh = nullptr;
        keel_status s = keel_plugin_themis_lease(plugin_, &fresh);
        if (s == KEEL_ERR_UNSUPPORTED) {
            not_legacy_.store(true, std::memory_order_relaxed);
            return this;
        }
        if (s != KEEL_OK) return nullptr;
        release_lease_locked();
        lease_ = fresh;
        return leased_instance_locked();
    }

    /** Let go of the legacy object getInstance() returned (its generation may then be shut
     *  down if it has been replaced). The next getInstance() takes a new lease. */
    void releaseInstance() noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        release_lease_locked();
    }

    // ---- Helpers (these may throw keel::Error) ----

    /** Call `function` with `len` bytes at `data`; returns the output. Function ids are
     *  resolved once per adapter and stay valid across reloads. */
    std::string call(const std::string &function, const void *data, size_t len) {
        keel_function fn = resolve(function);
        thread_local detail::Buffer out;
        const keel_status s = keel_call(plugin_, fn, static_cast<const uint8_t *>(data), len, out.get());
        // The context string is built only on failure (not on every call).
        if (s != KEEL_OK) detail::check(s, ("keel_call '" + function + "'").c_str());
        return out.text();
    }

    std::string call(const std::string &function, std::string_view input) {
        return call(function, input.data(), input.size());
    }

    /** The current generation number (1 after load, +1 per reload). */
    uint64_t generation() const {
        uint64_t g = 0;
        detail::check(keel_plugin_generation(plugin_, &g), "keel_plugin_generation");
        return g;
    }

    /** The status of the unload done by the last shutdown() (KEEL_OK if none was done). */
    keel_status lastShutdownStatus() const noexcept { return last_shutdown_.load(); }

    /** The underlying handle (still owned by the adapter). */
    keel_plugin *handle() const noexcept { return plugin_; }

private:
    void release_lease_locked() noexcept {
        keel_themis_lease_free(lease_);
        lease_ = nullptr;
    }

    void *leased_instance_locked() const noexcept {
        void *instance = nullptr;
        return keel_themis_lease_instance(lease_, &instance) == KEEL_OK ? instance : nullptr;
    }

    bool has_trait(const char *trait) const noexcept {
        bool has = false;
        return keel_plugin_has_trait(plugin_, trait, &has) == KEEL_OK && has;
    }

    keel_function resolve(const std::string &function) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = functions_.find(function);
        if (it != functions_.end()) return it->second;
        keel_function fn = 0;
        detail::check(keel_plugin_function(plugin_, function.c_str(), &fn),
                      ("keel_plugin_function '" + function + "'").c_str());
        functions_.emplace(function, fn);
        return fn;
    }

    keel_plugin *plugin_;
    const keel_host *host_;
    OnShutdown on_shutdown_;
    std::atomic<keel_status> last_shutdown_{KEEL_OK};
    std::string name_;
    mutable std::mutex mutex_;
    /** Set once the plugin is known not to be a ThemisDB plugin (getInstance's fast path). */
    std::atomic<bool> not_legacy_{false};
    mutable std::set<std::string> versions_;
    mutable const std::string *last_version_ = nullptr;
    std::unordered_map<std::string, keel_function> functions_;
    keel_themis_lease *lease_ = nullptr; // guarded by mutex_
};

} // namespace keel

#endif /* KEEL_THEMIS_ADAPTER_HPP */
