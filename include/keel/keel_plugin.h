/*
 * keel_plugin.h — the Keel native plugin ABI, for plugin authors.
 *
 * A native Keel plugin is a shared library that exports one symbol,
 *
 *     const keel_plugin_vtable *keel_plugin_entry(void);
 *
 * (use KEEL_PLUGIN_EXPORT, or define it through KEEL_DEFINE_PLUGIN below). The host
 * calls it once per load, checks `abi_version` before anything else, and refuses the
 * plugin (KEEL_ERR_ABI_MISMATCH) if it is not KEEL_PLUGIN_ABI_VERSION. It then calls
 * `init`, then `call` any number of times (concurrently from several threads unless
 * KEEL_PLUGIN_FLAG_SERIAL is set), then `shutdown` exactly once. No `call` runs during
 * or after `shutdown`.
 *
 * Ownership: every pointer the host passes is borrowed and valid only for the duration
 * of the hook it is passed to, except `host`, valid until `shutdown` returns. The vtable
 * and every string in it are owned by the plugin and must stay valid until the library
 * is unloaded (static storage is the norm).
 *
 * Errors: hooks return 0 on success and any other value on failure. On failure, bytes
 * written to the output are taken as the error message (UTF-8), so a plugin can explain
 * what went wrong; the host reports KEEL_ERR_CALL_FAILED / KEEL_ERR_INIT_FAILED with it.
 * A plugin must not let a C++ exception or a longjmp cross any of these functions.
 *
 * Containment: the plugin runs in the host's process. The host checks what the plugin
 * reports (the vtable is copied once according to `struct_size`; `function_count` and every
 * function name are bounded and must be readable; a write refused for the output limit fails
 * the call whatever `call` returns), but a plugin that segfaults, aborts or corrupts memory
 * takes the whole process down. Untrusted code belongs in a WASM plugin.
 *
 * Plain C99; usable from C++ (extern "C").
 */
#ifndef KEEL_PLUGIN_H
#define KEEL_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

/* KEEL_LOG_* (log levels for keel_host_api.log) and KEEL_HEALTH_* (health hook values). */
#include "keel_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** The ABI version this header describes. Bumped on any incompatible change. */
#define KEEL_PLUGIN_ABI_VERSION 1u

/** The name of the exported entry symbol. */
#define KEEL_PLUGIN_ENTRY_SYMBOL "keel_plugin_entry"

#if defined(_WIN32)
#define KEEL_PLUGIN_EXPORT __declspec(dllexport)
#else
#define KEEL_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

/** vtable flags. */
/** The host serialises calls into this plugin (the plugin is not thread-safe). */
#define KEEL_PLUGIN_FLAG_SERIAL 0x1u

/**
 * Where a hook writes its result. `write` appends `len` bytes (copied; `data` may be
 * freed afterwards) and returns 0, or non-zero if the host refuses (output too large),
 * in which case the hook should stop and return non-zero. Valid only during the hook.
 */
typedef struct keel_output {
    void *ctx;
    int32_t (*write)(void *ctx, const uint8_t *data, size_t len);
} keel_output;

/**
 * A host function the server defined (opaque). Obtained from keel_host_api.host_fn_lookup;
 * valid until the plugin's `shutdown` returns (the plugin's generation keeps it alive even if
 * the server removes or redefines it meanwhile).
 */
typedef struct keel_host_fn keel_host_fn;

/**
 * What the host offers the plugin. Entries are present only for capabilities the
 * manifest declares and the node allows; the others are NULL, always check before
 * calling. All entries are thread-safe. `ctx` is passed back as the first argument.
 *
 * Versions: fields are only ever appended. A plugin must check `struct_size` before reading
 * a field that is not in the first version of this struct (everything after `kv_delete`):
 *
 *     if (host->struct_size >= offsetof(keel_host_api, host_fn_call) + sizeof host->host_fn_call
 *         && host->host_fn_lookup != NULL) { ... }
 *
 * An older host's table is shorter; reading past its `struct_size` reads garbage.
 */
typedef struct keel_host_api {
    /** KEEL_PLUGIN_ABI_VERSION of the host. */
    uint32_t abi_version;
    /** sizeof(keel_host_api) as the host knows it; fields past it are absent. */
    uint32_t struct_size;
    void *ctx;
    /** capability "log": write one log line (not NUL-terminated, `len` bytes). */
    void (*log)(void *ctx, int32_t level, const char *msg, size_t len);
    /** capability "clock": nanoseconds since the Unix epoch. */
    int64_t (*now_unix_nanos)(void *ctx);
    /** capability "random": fill `buf` with `len` random bytes; 0 on success. */
    int32_t (*random_bytes)(void *ctx, uint8_t *buf, size_t len);
    /** capability "kv:read": append the value of `key` to `out`. 0 = found, 1 = absent, <0 error. */
    int32_t (*kv_get)(void *ctx, const uint8_t *key, size_t key_len, const keel_output *out);
    /** capability "kv:write": set `key` to `value`. 0 on success. */
    int32_t (*kv_put)(void *ctx, const uint8_t *key, size_t key_len, const uint8_t *value, size_t value_len);
    /** capability "kv:write": delete `key`. 0 = deleted, 1 = was absent. */
    int32_t (*kv_delete)(void *ctx, const uint8_t *key, size_t key_len);

    /* ---- hostfn: host functions defined by the server (check struct_size first) ---- */
    /**
     * Look up the host function the server defined as `namespace`.`name` (NUL-terminated
     * UTF-8). Returns NULL when none is defined or its capability was not granted to this
     * plugin. The set is bound when the plugin loads: functions the server defines later are
     * seen after a reload. Look a function up once (in `init`) and keep the pointer: it stays
     * valid until `shutdown` returns. Not for the call path (it searches).
     */
    const keel_host_fn *(*host_fn_lookup)(void *ctx, const char *namespace_, const char *name);
    /**
     * Call `fn` (from host_fn_lookup of this table) with `input_len` bytes of `input`; the
     * function's output is appended to `out` (any keel_output: the one of the current hook,
     * or the plugin's own). Returns 0 on success. On failure returns the function's non-zero
     * status and what it wrote to `out` is its error message (UTF-8); -3 means the function
     * panicked or threw (the host caught it and keeps serving), -1 a NULL argument. Cheap: no
     * allocation, lock or lookup. Thread-safe; may be called from any hook, on the hook's
     * thread (the call context the function sees is that of the call the hook serves).
     */
    int32_t (*host_fn_call)(void *ctx, const keel_host_fn *fn, const uint8_t *input, size_t input_len,
                            const keel_output *out);
} keel_host_api;

/**
 * The plugin's function table. Fields marked optional may be NULL.
 */
typedef struct keel_plugin_vtable {
    /** Must be KEEL_PLUGIN_ABI_VERSION. Checked before any other field is read. */
    uint32_t abi_version;
    /** sizeof(keel_plugin_vtable) as the plugin was compiled. */
    uint32_t struct_size;
    /** KEEL_PLUGIN_FLAG_* bits. */
    uint32_t flags;
    /** The plugin's name and semver version (informational; the manifest is authoritative). */
    const char *name;
    const char *version;
    /** The exported function names; `call` receives an index into this array. */
    const char *const *functions;
    uint32_t function_count;
    /**
     * Create an instance. `config_json` is the manifest's `config` object as JSON text
     * (`config_len` bytes, also NUL-terminated). Store the instance in `*instance`.
     * On failure write a message to `err` and return non-zero.
     */
    int32_t (*init)(const char *config_json, size_t config_len, const keel_host_api *host,
                    void **instance, const keel_output *err);
    /** Run function `function` on `input`; write the result to `output`. */
    int32_t (*call)(void *instance, uint32_t function, const uint8_t *input, size_t input_len,
                    const keel_output *output);
    /** Release the instance. Called exactly once; no call is in flight. */
    void (*shutdown)(void *instance);
    /** Optional: write the instance's state to `out` (for hot reload). */
    int32_t (*save_state)(void *instance, const keel_output *out);
    /** Optional: take over a state written by `save_state` of an earlier generation. */
    int32_t (*restore_state)(void *instance, const uint8_t *state, size_t len);
    /**
     * Optional: KEEL_HEALTH_* value. Called by the host's health monitor from a worker
     * thread, concurrently with calls unless KEEL_PLUGIN_FLAG_SERIAL is set (then it is
     * serialised with them). Should answer quickly: a hook that does not answer within the
     * monitor's check timeout counts as unhealthy.
     */
    int32_t (*health)(void *instance);
} keel_plugin_vtable;

/** Signature of the entry symbol. */
typedef const keel_plugin_vtable *(*keel_plugin_entry_fn)(void);

/** Define the entry symbol returning `vtable` (a `static const keel_plugin_vtable`). */
#define KEEL_DEFINE_PLUGIN(vtable)                                                     \
    KEEL_PLUGIN_EXPORT const keel_plugin_vtable *keel_plugin_entry(void) { return &(vtable); }

/** Convenience: write a NUL-terminated string to an output. */
static inline int32_t keel_output_str(const keel_output *out, const char *s) {
    size_t n = 0;
    while (s[n] != '\0') n++;
    return out->write(out->ctx, (const uint8_t *)s, n);
}

#ifdef __cplusplus
}
#endif

#endif /* KEEL_PLUGIN_H */
