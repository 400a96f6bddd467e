/*
 * keel/themis/plugin_interface.hpp — ThemisDB's legacy C++ plugin interface, declared by Keel.
 *
 * Keel loads ThemisDB plugins (shared libraries exporting `createPlugin`/`destroyPlugin`
 * that return `themis::plugins::IThemisPlugin*`) and shows Keel plugins to ThemisDB-style code as
 * `IThemisPlugin` (cpp/themis_adapter.hpp). This header is Keel's own declaration of that
 * interface, written from the interface facts (docs: themisdb-compat §1), not copied from
 * ThemisDB. It is ABI-compatible with ThemisDB's current line (v0.0.47):
 *
 *  - Every type lives in ThemisDB's namespace `themis::plugins`. The namespace is part of
 *    the C++ RTTI names, so it is ABI: `dynamic_cast<themis::plugins::IStatefulPlugin*>` in
 *    Keel's shim only matches plugins compiled against a header that spells it the same way
 *    (ThemisDB's own does). The old Keel spelling `themis::IThemisPlugin` etc. still
 *    compiles: the names are re-declared in `themis` with using-declarations, which name the
 *    very same types (no second RTTI name).
 *  - `PluginType` uses the current numbering (CUSTOM = 12; older releases used 6 and 7).
 *  - `PluginCapabilities` has the 7 flags of the current line, in its order (older releases
 *    had the first 5 only; a plugin built against those returns a 5-byte struct, and the
 *    last two flags read by a host are then meaningless).
 *  - `IThemisPlugin`'s virtual methods are declared in ThemisDB's order; the order *is* the
 *    ABI (Itanium C++ ABI: complete and deleting destructor first, then getName ..
 *    getInstance). Never reorder, insert or remove a virtual method here.
 *  - `IStatefulPlugin` is a separate polymorphic base (own vptr), found with dynamic_cast:
 *    plugin and host must agree on RTTI and on std::string's layout (same C++ standard
 *    library ABI, e.g. libstdc++ with _GLIBCXX_USE_CXX11_ABI=1).
 *
 * A plugin implements IThemisPlugin (and optionally IStatefulPlugin) and ends its source
 * with THEMIS_PLUGIN_IMPL(ClassName), which exports both entry points. Keel refuses a
 * library that exports createPlugin without destroyPlugin: destroying the object with the
 * host's `delete` (ThemisDB's fallback) would free it through another module's allocator.
 */
#ifndef KEEL_THEMIS_PLUGIN_INTERFACE_HPP
#define KEEL_THEMIS_PLUGIN_INTERFACE_HPP

#include <string>

#ifndef THEMIS_PLUGIN_EXPORT
#if defined(_WIN32)
#if defined(THEMIS_PLUGIN_EXPORTS)
#define THEMIS_PLUGIN_EXPORT __declspec(dllexport)
#else
#define THEMIS_PLUGIN_EXPORT __declspec(dllimport)
#endif
#else
#define THEMIS_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif
#endif

namespace themis {
namespace plugins {

/** What a plugin's getInstance() object is (the host casts it by this). Current numbering. */
enum class PluginType : int {
    COMPUTE_BACKEND = 0,
    BLOB_STORAGE = 1,
    IMPORTER = 2,
    EXPORTER = 3,
    HSM_PROVIDER = 4,
    EMBEDDING = 5,
    LLM_BACKEND = 6,
    AUDIO_PROCESSING = 7,
    IMAGE_GENERATION = 8,
    AGENTIC_TOOL = 9,
    INGESTION_STEP = 10,
    RESOURCE_LIMIT_POLICY = 11,
    CUSTOM = 12,
};

/** Behaviour flags a plugin declares; returned by value (trivially copyable, 7 bytes). */
struct PluginCapabilities {
    bool supports_streaming = false;
    bool supports_batching = false;
    bool supports_transactions = false;
    bool thread_safe = false;
    bool gpu_accelerated = false;
    bool provides_vram_policy = false;
    bool provides_shard_policy = false;
};

/** A ThemisDB plugin. The declaration order of the virtual methods is the ABI. */
class IThemisPlugin {
public:
    virtual ~IThemisPlugin() = default;
    /** The plugin's name (NUL-terminated; valid while the object lives). */
    virtual const char *getName() const = 0;
    /** Semver string; may be NULL (hosts treat NULL as ""). */
    virtual const char *getVersion() const = 0;
    virtual PluginType getType() const = 0;
    virtual PluginCapabilities getCapabilities() const = 0;
    /** Called once after creation with a JSON object; false (or an exception) fails the load. */
    virtual bool initialize(const char *config_json) = 0;
    /** Called once before destroyPlugin, only if initialize succeeded. */
    virtual void shutdown() = 0;
    /** The type-specific object (cast by getType()); may be NULL. */
    virtual void *getInstance() = 0;
};

/** Optional mix-in: state carried across a hot reload. */
class IStatefulPlugin {
public:
    virtual ~IStatefulPlugin() = default;
    /** The state as JSON text; "" means no state. May throw. */
    virtual std::string saveState() = 0;
    /** Take over a state saved by a previous instance; false if it cannot. */
    virtual bool restoreState(const std::string &state) = 0;
};

using CreatePluginFunc = IThemisPlugin *(*)();
using DestroyPluginFunc = void (*)(IThemisPlugin *);

static_assert(sizeof(PluginCapabilities) == 7, "PluginCapabilities is 7 bools (ThemisDB current line)");

} // namespace plugins

// Keel's earlier spelling (`themis::IThemisPlugin`): the same types, not copies.
using plugins::CreatePluginFunc;
using plugins::DestroyPluginFunc;
using plugins::IStatefulPlugin;
using plugins::IThemisPlugin;
using plugins::PluginCapabilities;
using plugins::PluginType;

} // namespace themis

/** The exact names of the two entry points. */
#define THEMIS_PLUGIN_CREATE_SYMBOL "createPlugin"
#define THEMIS_PLUGIN_DESTROY_SYMBOL "destroyPlugin"

/** Export createPlugin (returns `new PluginClass()`) and destroyPlugin (deletes it inside the
 *  plugin's own module, through the virtual destructor). Use once per plugin library, at
 *  namespace scope. */
#define THEMIS_PLUGIN_IMPL(PluginClass)                                                            \
    extern "C" {                                                                                   \
    THEMIS_PLUGIN_EXPORT ::themis::plugins::IThemisPlugin *createPlugin() { return new PluginClass(); }\
    THEMIS_PLUGIN_EXPORT void destroyPlugin(::themis::plugins::IThemisPlugin *plugin) { delete plugin; }\
    }

#endif /* KEEL_THEMIS_PLUGIN_INTERFACE_HPP */
