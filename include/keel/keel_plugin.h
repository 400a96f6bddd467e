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
 * Plain C99; usable from C++ (extern "C"; KEEL_DEFINE_PLUGIN gives the entry C linkage, and
 * keel_plugin_guard at the end of this file keeps C++ exceptions inside the plugin).
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
 * The table grows at its end only. A plugin built against this header that may run on an
 * older host must check `struct_size` before reading a field past `kv_delete`:
 * `host->struct_size >= offsetof(keel_host_api, field) + sizeof(host->field)` (see
 * KEEL_HOST_API_HAS below); a field past `struct_size` is absent, as if NULL.
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
    /*
     * Fields below were added after the first release: a plugin must check that
     * `struct_size` covers a field before reading it, e.g.
     *     host->struct_size >= offsetof(keel_host_api, cancelled) + sizeof host->cancelled
     * (an older host's table is shorter; reading past it is undefined behaviour).
     */

    /**
     * No capability (always present on hosts that have it; check `struct_size`): 1 if the
     * call this thread is running should stop — the server cancelled its cancel token, or
     * the call's per-call deadline (`keel_call_with`) has passed — else 0. 0 outside a call
     * made with options. Call it on the thread that runs `call` (the call context is
     * per thread). Poll it in long loops; once it returns 1, stop and return non-zero: the
     * host then reports KEEL_ERR_CANCELLED (or KEEL_ERR_DEADLINE) to the server. Returning 0
     * (success) reports the output as a success: only do so if the work was done. Cheap
     * (an atomic load; a clock read only when a deadline is set); never blocks.
     */
    int32_t (*cancelled)(void *ctx);

    /* ---- sinks ----
     * The key-value and storage entries go to the server's storage sink (see
     * keel_host_set_storage_sink in keel.h; by default an in-memory map that knows no
     * tables). The kv_* entries work on the plugin's own namespace (its name); storage_*
     * entries on a table of the server, named by the plugin (NUL-terminated, 1..=255 bytes,
     * no control characters) — the server decides, per plugin and table, and may refuse.
     * Return values shared by all of them: 0 success (found/deleted/complete), 1 absent,
     * 2 scan truncated, -1 bad argument (NULL, bad table name), -2 `out` refused a write,
     * -3 the server's sink failed or refused (its message: `sink_error`).
     * A scan writes each entry to `out` with one write, encoded as
     *     u32 key_len (little-endian), key bytes, u32 value_len (little-endian), value bytes
     * and stops — returning 2 — after 10 000 entries or 16 MiB of entries, or when `out`
     * refuses an entry. Entries come in the order the sink delivers them (the default map:
     * ascending key order). */
    /** capability "kv:read": the entries of the plugin's namespace whose key starts with `prefix`. */
    int32_t (*kv_scan)(void *ctx, const uint8_t *prefix, size_t prefix_len, const keel_output *out);
    /** capability "storage:read": append the value of `key` in `table` to `out`. 0 found, 1 absent. */
    int32_t (*storage_get)(void *ctx, const char *table, const uint8_t *key, size_t key_len,
                           const keel_output *out);
    /** capability "storage:write": set `key` in `table` to `value`. */
    int32_t (*storage_put)(void *ctx, const char *table, const uint8_t *key, size_t key_len,
                           const uint8_t *value, size_t value_len);
    /** capability "storage:write": delete `key` from `table`. 0 deleted, 1 absent. */
    int32_t (*storage_delete)(void *ctx, const char *table, const uint8_t *key, size_t key_len);
    /** capability "storage:read": the entries of `table` whose key starts with `prefix`. */
    int32_t (*storage_scan)(void *ctx, const char *table, const uint8_t *prefix, size_t prefix_len,
                            const keel_output *out);
    /** any of "kv:read", "kv:write", "storage:read", "storage:write": write the message of the
     *  last kv_* or storage_* entry that failed on this thread to `out`. 0 written, 1 none. */
    int32_t (*sink_error)(void *ctx, const keel_output *out);

    /* ---- capmetrics: metrics:write, rpc:register (check struct_size first) ----
     * These return 0 on success or a keel_status code (> 0, e.g. KEEL_ERR_METRIC_INVALID =
     * 606); -3 if the host caught a panic. A refused definition or registration is also
     * logged (WARN, through the host's log sink) with the reason. All are thread-safe. */

    /**
     * capability "metrics:write": define (or find) a series; `*id` receives its id.
     * `kind`: KEEL_METRIC_COUNTER, _GAUGE or _HISTOGRAM. `name` (`name_len` bytes, UTF-8):
     * [a-zA-Z_][a-zA-Z0-9_]*, at most 128 bytes, not "__...", no reserved OpenMetrics suffix
     * (_created, _bucket, _count, _sum, _info, _gcount, _gsum; a counter may end in _total,
     * which is dropped); exported as keel_custom_<name> (counters: ..._total) with the label
     * plugin="<plugin name>". `labels` (`labels_len` bytes; 0 = none): a JSON object of string
     * values, e.g. {"shard":"3"} (at most 16; names as above but not plugin/le/quantile;
     * values at most 256 bytes without '"', '\\' or control characters). `buckets`
     * (`bucket_count` doubles; histograms only; NULL/0 = .005 .. 10): strictly increasing
     * finite upper bounds, at most 64; +Inf is added. All pointers are borrowed for the call.
     * Same name and labels again: the same id (series and values survive a reload; they
     * are removed when the plugin unloads). Errors: KEEL_ERR_METRIC_INVALID (606),
     * KEEL_ERR_METRIC_CONFLICT (607: the name has another kind, here or in another plugin),
     * KEEL_ERR_METRIC_SERIES_LIMIT (806: the plugin has 10 000 series), KEEL_ERR_NULL_POINTER,
     * KEEL_ERR_INVALID_UTF8. Takes a host lock and allocates: define once, update often.
     */
    int32_t (*metric_define)(void *ctx, int32_t kind, const char *name, size_t name_len, const char *labels,
                             size_t labels_len, const double *buckets, size_t bucket_count, uint32_t *id);
    /** capability "metrics:write": add `value` to a counter (>= 0, finite) or gauge (not
     *  NaN). Errors: 606 (unknown id, value refused), 607 (a histogram). Lock-free, no
     *  allocation. */
    int32_t (*metric_add)(void *ctx, uint32_t id, double value);
    /** capability "metrics:write": set a gauge. Errors: 606 (unknown id, NaN), 607 (not a
     *  gauge). Lock-free, no allocation. */
    int32_t (*metric_set)(void *ctx, uint32_t id, double value);
    /** capability "metrics:write": record `value` in a histogram. Errors: 606, 607 (not a
     *  histogram). Lock-free, no allocation. */
    int32_t (*metric_observe)(void *ctx, uint32_t id, double value);
    /**
     * capability "rpc:register": bind the RPC endpoint `endpoint` (`endpoint_len` bytes,
     * UTF-8, 1..255, no control characters) to the plugin's function `function` (one of its
     * vtable `functions`). The server lists endpoints (keel_host_rpc_list) and invokes them
     * (keel_host_rpc_call / keel_host_rpc_resolve + keel_call) through the normal call path,
     * so `call` runs as for any call. Call it from `init` or during a call. The same binding
     * again is 0. Errors: KEEL_ERR_RPC_ENDPOINT_TAKEN (608: another plugin holds the name,
     * or this generation bound it to another function), KEEL_ERR_FUNCTION_NOT_FOUND (201),
     * KEEL_ERR_INVALID_ARGUMENT (bad name, more than 1024 endpoints). Endpoints are removed
     * when the plugin unloads; on reload the new generation registers its own during `init`,
     * and the old generation's endpoints it does not register again are removed when it is
     * published (restored if the reload rolls back).
     */
    int32_t (*rpc_register)(void *ctx, const char *endpoint, size_t endpoint_len, const char *function,
                            size_t function_len);

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

/** Whether `host` (a `const keel_host_api *`) has the field `field` (it may still be NULL). */
#define KEEL_HOST_API_HAS(host, field)                                                             \
    ((host)->struct_size >= offsetof(keel_host_api, field) + sizeof((host)->field))

/**
 * The plugin's function table. Fields marked optional may be NULL.
 *
 * Initialise it with designated initializers (`.name = "x", .call = my_call, ...`): fields
 * added in later versions of this header (always at the end, announced through `struct_size`)
 * are then NULL in your table without a source change, and `-Wmissing-field-initializers`
 * stays quiet. Set `struct_size = sizeof(keel_plugin_vtable)`.
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
    /**
     * Optional (since this field was added; the host reads it only if `struct_size` covers
     * it): like `restore_state`, with the version (the manifest `version`, NUL-terminated) of
     * the plugin that saved the state, so a new version can migrate an old state. Preferred
     * over `restore_state` when both are set.
     */
    int32_t (*restore_state_versioned)(void *instance, const uint8_t *state, size_t len,
                                       const char *saved_by_version);
} keel_plugin_vtable;

/** Signature of the entry symbol. */
typedef const keel_plugin_vtable *(*keel_plugin_entry_fn)(void);

/** C linkage for the entry symbol also when the plugin is C++ (the host looks it up by name). */
#ifdef __cplusplus
#define KEEL_PLUGIN_EXTERN_C extern "C"
#else
#define KEEL_PLUGIN_EXTERN_C
#endif

/**
 * Define the entry symbol returning `vtable` (a `static const keel_plugin_vtable`). Use it at
 * namespace scope, from C or C++: the symbol gets C linkage and default visibility either way
 * (a C++ function left without `extern "C"` is exported under a mangled name, which the host
 * reports as KEEL_ERR_SYMBOL_MISSING).
 */
#define KEEL_DEFINE_PLUGIN(vtable)                                                     \
    KEEL_PLUGIN_EXTERN_C KEEL_PLUGIN_EXPORT const keel_plugin_vtable *keel_plugin_entry(void); \
    KEEL_PLUGIN_EXTERN_C KEEL_PLUGIN_EXPORT const keel_plugin_vtable *keel_plugin_entry(void) { return &(vtable); }

/** Convenience: write a NUL-terminated string to an output. */
static inline int32_t keel_output_str(const keel_output *out, const char *s) {
    size_t n = 0;
    while (s[n] != '\0') n++;
    return out->write(out->ctx, (const uint8_t *)s, n);
}

#ifdef __cplusplus
}

#include <exception>

/*
 * The exception barrier for C++ plugins. No C++ exception may leave a hook (the host is not
 * C++, and an exception crossing it terminates the process). Wrap each hook's body:
 *
 *     static int32_t my_call(void *inst, uint32_t fn, const uint8_t *in, size_t len,
 *                            const keel_output *out) {
 *         return keel_plugin_guard(out, [&]() -> int32_t {
 *             ...                         // may throw
 *             return 0;
 *         });
 *     }
 *
 * `body` returns the hook's status. If it throws, the exception's what() (or "unknown C++
 * exception") is written to `err` (the hook's error output: `err` of init, `output` of call
 * and save_state; may be NULL for hooks without one) and the hook returns
 * KEEL_PLUGIN_GUARD_FAILED, so the host reports KEEL_ERR_CALL_FAILED / KEEL_ERR_INIT_FAILED
 * with that message. (For `call`, bytes written before the throw stay in front of the message.)
 * keel_plugin_guard_void does the same for hooks returning nothing (shutdown): the exception
 * is swallowed.
 */
#define KEEL_PLUGIN_GUARD_FAILED (-1)

template <class Body>
inline int32_t keel_plugin_guard(const keel_output *err, Body &&body) noexcept {
    try {
        return static_cast<int32_t>(body());
    } catch (const std::exception &e) {
        if (err != nullptr) keel_output_str(err, e.what());
    } catch (...) {
        if (err != nullptr) keel_output_str(err, "unknown C++ exception");
    }
    return KEEL_PLUGIN_GUARD_FAILED;
}

template <class Body>
inline void keel_plugin_guard_void(Body &&body) noexcept {
    try {
        body();
    } catch (...) {
    }
}
#endif /* __cplusplus */

#endif /* KEEL_PLUGIN_H */
