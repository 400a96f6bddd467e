/*
 * themis_shim.h — the C face of Keel's ThemisDB C++ shim (cpp/themis_shim.cpp), called by
 * the Rust runtime src/runtime/legacy.rs. Internal to Keel: not installed, not part of the
 * public ABI (the symbols are hidden in libkeel.so).
 *
 * Every function
 *  - catches every C++ exception (`catch (...)`): none ever propagates into Rust;
 *  - returns a keel_themis_rc; on KEEL_THEMIS_EXCEPTION / KEEL_THEMIS_FALSE / KEEL_THEMIS_NULL
 *    a message is written to `err` (for std::exception: its what());
 *  - takes the plugin object as an opaque `void *` that is exactly the `IThemisPlugin *` the
 *    plugin's createPlugin returned.
 *
 * Variable-length results go through a sink: `write(ctx, data, len)` appends and returns 0,
 * or non-zero to refuse (output limit); the shim then stops and returns KEEL_THEMIS_SINK_FULL.
 * The sink layout is that of keel_output in keel_plugin.h.
 */
#ifndef KEEL_THEMIS_SHIM_H
#define KEEL_THEMIS_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#define KEEL_THEMIS_NOEXCEPT noexcept
extern "C" {
#else
#define KEEL_THEMIS_NOEXCEPT
#endif

typedef enum keel_themis_rc {
    /** Done. */
    KEEL_THEMIS_OK = 0,
    /** The plugin method returned false (initialize, restoreState). */
    KEEL_THEMIS_FALSE = 1,
    /** The plugin threw; `err` holds the exception's message. */
    KEEL_THEMIS_EXCEPTION = 2,
    /** createPlugin returned NULL. */
    KEEL_THEMIS_NULL = 3,
    /** The plugin does not implement the optional interface (IStatefulPlugin). */
    KEEL_THEMIS_UNSUPPORTED = 4,
    /** A sink refused more bytes. */
    KEEL_THEMIS_SINK_FULL = 5,
    /** A required argument was NULL. */
    KEEL_THEMIS_BAD_ARGUMENT = 6
} keel_themis_rc;

typedef struct keel_themis_sink {
    void *ctx;
    int32_t (*write)(void *ctx, const uint8_t *data, size_t len);
} keel_themis_sink;

/** What a plugin says about itself (getType, getCapabilities, dynamic_cast<IStatefulPlugin*>). */
typedef struct keel_themis_info {
    /** getType() as its integer value (ThemisDB's current numbering). */
    int32_t type;
    /** getCapabilities(), one byte per flag in declaration order (0 or 1): streaming,
     *  batching, transactions, thread_safe, gpu_accelerated, provides_vram_policy,
     *  provides_shard_policy. */
    uint8_t capabilities[7];
    /** 1 if the object is also an IStatefulPlugin. */
    uint8_t stateful;
    /** 1 if getName() / getVersion() returned NULL (written to the sinks as ""). */
    uint8_t name_null;
    uint8_t version_null;
    /** 1 if the object is also an ISelfHealingPlugin. */
    uint8_t self_healing;
} keel_themis_info;

/** Call `create_fn` (the plugin's createPlugin) and store the object in *out. */
int32_t keel_themis_shim_create(void *create_fn, void **out, const keel_themis_sink *err) KEEL_THEMIS_NOEXCEPT;

/** getName, getVersion (to `name` / `version`), getType, getCapabilities, IStatefulPlugin. */
int32_t keel_themis_shim_info(void *plugin, keel_themis_info *info, const keel_themis_sink *name,
                              const keel_themis_sink *version, const keel_themis_sink *err) KEEL_THEMIS_NOEXCEPT;

/** initialize(config_json): KEEL_THEMIS_OK, KEEL_THEMIS_FALSE or KEEL_THEMIS_EXCEPTION. */
int32_t keel_themis_shim_initialize(void *plugin, const char *config_json, const keel_themis_sink *err) KEEL_THEMIS_NOEXCEPT;

/** shutdown(). */
int32_t keel_themis_shim_shutdown(void *plugin, const keel_themis_sink *err) KEEL_THEMIS_NOEXCEPT;

/** destroy_fn(plugin) (the plugin's destroyPlugin). */
int32_t keel_themis_shim_destroy(void *destroy_fn, void *plugin, const keel_themis_sink *err) KEEL_THEMIS_NOEXCEPT;

/** getInstance() into *out (may be NULL). */
int32_t keel_themis_shim_get_instance(void *plugin, void **out, const keel_themis_sink *err) KEEL_THEMIS_NOEXCEPT;

/** IStatefulPlugin::saveState() written to `out` (nothing written for ""). */
int32_t keel_themis_shim_save_state(void *plugin, const keel_themis_sink *out, const keel_themis_sink *err) KEEL_THEMIS_NOEXCEPT;

/** IStatefulPlugin::restoreState(std::string(data, len)). */
int32_t keel_themis_shim_restore_state(void *plugin, const uint8_t *data, size_t len, const keel_themis_sink *err) KEEL_THEMIS_NOEXCEPT;

/**
 * ISelfHealingPlugin::performHealthCheck(): `*status` receives the PluginHealthStatus value
 * (0 HEALTHY .. 4 RECOVERING) and `diag` (may be NULL) the diagnostics as a JSON object with
 * ThemisDB's field names. KEEL_THEMIS_UNSUPPORTED if the plugin is not self-healing.
 */
int32_t keel_themis_shim_health_check(void *plugin, int32_t *status, const keel_themis_sink *diag,
                                      const keel_themis_sink *err) KEEL_THEMIS_NOEXCEPT;

/**
 * ThemisDB's recovery sequence: the strategies the plugin declares (getRecoveryStrategies), in
 * the order CLEANUP_RESOURCES, RECONNECT, RELOAD_CONFIG, ROLLBACK_STATE, RESTART_PLUGIN, each
 * through executeRecoveryAction and, if it returns true, followed by performHealthCheck; then
 * attemptSelfRepair(diagnostics) and a last check. `*recovered` = 1 as soon as a check reports
 * HEALTHY or DEGRADED, else 0. `log` (may be NULL) receives one line per step ("...\n").
 * An exception in any step ends the sequence (KEEL_THEMIS_EXCEPTION, not recovered).
 */
int32_t keel_themis_shim_self_repair(void *plugin, int32_t *recovered, const keel_themis_sink *log,
                                     const keel_themis_sink *err) KEEL_THEMIS_NOEXCEPT;

#ifdef __cplusplus
}
#endif

#endif /* KEEL_THEMIS_SHIM_H */
