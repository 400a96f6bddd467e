/*
 * keel_wasm.h — the Keel WebAssembly plugin ABI, for plugin authors.
 *
 * A WASM Keel plugin is one wasm32 module. Build it with clang, no libc needed:
 *
 *     clang --target=wasm32 -nostdlib -O2 -Wl,--no-entry -Wl,--export-dynamic \
 *           -o plugin.wasm plugin.c
 *
 * and describe it with a manifest (`"runtime": "wasm"`, `"binary": {"wasm32": "plugin.wasm"}`).
 * The host compiles exactly the bytes whose SHA-256 (and signature) it verified.
 *
 * ---------------------------------------------------------------------------------------
 * Exports (the host checks names and signatures before any guest code runs; a missing
 * required export or a wrong signature refuses the load with KEEL_ERR_WASM_INSTANTIATE)
 *
 *   required
 *     memory                                 the module's one linear memory
 *     keel_abi_version() -> i32              must return KEEL_WASM_ABI_VERSION, else the
 *                                            load fails with KEEL_ERR_ABI_MISMATCH
 *     keel_functions() -> keel_result        the plugin's function names, comma-separated
 *                                            ("sum,fib,checksum"); a function's position in
 *                                            this list is its index for keel_call
 *     keel_alloc(size) -> ptr                allocate `size` bytes; 0 when out of memory
 *     keel_call(function, in, in_len) -> keel_result
 *   optional
 *     keel_free(ptr, size)                   release a keel_alloc block (`size` as allocated)
 *     keel_init(config, config_len) -> keel_result
 *     keel_save_state() -> keel_result       the state bytes, for hot reload
 *     keel_restore_state(state, len) -> keel_result
 *     keel_restore_state_versioned(state, len, version, version_len) -> keel_result
 *                                            as keel_restore_state, with the version (the
 *                                            manifest "version", UTF-8, not NUL-terminated)
 *                                            of the plugin that saved the state, so a new
 *                                            version can migrate it; preferred when exported
 *     keel_health() -> i32                   KEEL_HEALTH_* value
 *     _initialize()                          (WASI reactor convention) run once per instance,
 *                                            before keel_init
 *
 * A module with a start function is refused: guest code runs only inside the hooks above,
 * each under the plugin's CPU budget and deadline.
 *
 * KEEL_WASM_FUNCTIONS("a,b,c") below defines keel_abi_version and keel_functions;
 * defining KEEL_WASM_IMPLEMENT_ALLOCATOR before including this header in one source file
 * defines keel_alloc and keel_free (a small size-class allocator over memory.grow).
 *
 * ---------------------------------------------------------------------------------------
 * Calling convention
 *
 * Lifecycle of one instance: [_initialize], keel_abi_version, keel_init(config) if exported
 * (config = the manifest's "config" object as JSON text, "{}" when absent),
 * keel_restore_state_versioned(state, version) or keel_restore_state(state) if the host has a state to hand over (hot reload), keel_functions
 * (first instance only), then any number of keel_call / keel_save_state / keel_health. Calls into one instance never overlap: each instance runs on one thread at a
 * time. With `"instances": "pooled"` the host keeps several instances of the module (each
 * with its own memory) and runs calls on them concurrently, so a pooled plugin must not rely
 * on state between calls; with `"instances": "serial"` (the default) there is one instance
 * and calls are serialised.
 *
 * Input: the host obtains a buffer with keel_alloc, copies the input (or config, or state)
 * into it and passes (ptr, len). The buffer belongs to the host: the guest reads it during
 * the hook and must neither free it nor keep pointers into it; the host reuses it for later
 * calls (and releases it with keel_free, if exported, when it needs a larger one).
 * A zero-length input may come with any pointer.
 *
 * Results: hooks that produce bytes or can fail return a keel_result, one i64:
 *
 *     bits  0..31  pointer to the bytes in the guest's memory
 *     bits 32..62  their length (less than 2^31)
 *     bit  63      set = error
 *
 * Build it with KEEL_WASM_OK(ptr, len) or KEEL_WASM_ERR(ptr, len) (or the keel_ok/keel_err
 * helpers). On success the bytes are the output (empty output: KEEL_WASM_OK(0, 0)); on error
 * they are an error message (UTF-8) and the host reports KEEL_ERR_CALL_FAILED,
 * KEEL_ERR_INIT_FAILED, KEEL_ERR_STATE_SAVE or KEEL_ERR_STATE_RESTORE with it. The bytes
 * are owned by the guest and must stay valid until the guest is next entered; the host
 * copies them out first (a static buffer, or a block the guest frees on its next call,
 * both work). Output longer than the plugin's max_output_bytes fails the call with
 * KEEL_ERR_OUTPUT_TOO_LARGE; a pointer/length outside the memory fails it with
 * KEEL_ERR_PLUGIN_ABI_VIOLATION.
 *
 * Limits (manifest "limits", clamped to the node's ceilings):
 *   memory_mb       the memory cannot grow past it: memory.grow returns -1 (keel_alloc
 *                   returns 0). If the hook then fails (traps or returns an error), the call
 *                   fails with KEEL_ERR_MEMORY_LIMIT; a plugin that copes and succeeds, succeeds.
 *   fuel_per_call   deterministic instruction budget, refilled for every hook (about one
 *                   point per WebAssembly operator; calls and memory operations cost more).
 *                   Running out fails the call with KEEL_ERR_CPU_BUDGET.
 *   timeout_ms      wall-clock deadline per hook; past it the guest is interrupted and the
 *                   call fails with KEEL_ERR_DEADLINE.
 * A trap (unreachable, out-of-bounds access, division by zero, stack overflow, ...) fails
 * the call with KEEL_ERR_WASM_TRAP and the trap's message. After any of these failures the
 * instance is discarded and the next call runs on a fresh one (keel_init runs again; the
 * state of a serial instance is lost), because a guest stopped mid-way may hold broken data.
 *
 * ---------------------------------------------------------------------------------------
 * Imports: functions only, from module "keel" (Keel's own, below) or from a module named
 * after a namespace under which the server defined host functions (see "Host functions
 * defined by the server" below), and only those the plugin's granted capabilities provide.
 * Checked at load, before any of the module's code runs, each failure naming the import as
 * module.name:
 *   - an import nobody defines (neither Keel's nor the server's): KEEL_ERR_IMPORT_UNDEFINED;
 *   - a function whose capability was not granted, or an import that is not a function (a
 *     memory, a table, a global): KEEL_ERR_IMPORT_NOT_GRANTED;
 *   - a function imported with the wrong signature: KEEL_ERR_WASM_INSTANTIATE.
 * Declared-but-unused imports below cost nothing: clang only imports what the code calls.
 *
 * A pointer/length pair handed to a host function that does not lie inside the guest's
 * memory traps the guest; the call fails with KEEL_ERR_PLUGIN_ABI_VIOLATION.
 *
 * Plain C99 plus clang's wasm attributes; usable from C++ (extern "C").
 */
#ifndef KEEL_WASM_H
#define KEEL_WASM_H

#include <stddef.h>
#include <stdint.h>

/* KEEL_LOG_* (log levels for keel_log) and KEEL_HEALTH_* (keel_health values). */
#include "keel_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** The WASM ABI version this header describes (keel_abi_version must return it). */
#define KEEL_WASM_ABI_VERSION 1

/** Export a function under `name` (a bare identifier). */
#define KEEL_WASM_EXPORT(name) __attribute__((export_name(#name), visibility("default")))
/** Import `name` from the host module "keel". */
#define KEEL_WASM_IMPORT(name) __attribute__((import_module("keel"), import_name(#name)))

/** Packed (pointer, length, error flag); see "Results" above. */
typedef int64_t keel_result;

#define KEEL_WASM_OK(ptr, len) \
    ((keel_result)((((uint64_t)(uint32_t)(len) & 0x7fffffffu) << 32) | (uint64_t)(uint32_t)(uintptr_t)(ptr)))
#define KEEL_WASM_ERR(ptr, len) ((keel_result)((uint64_t)KEEL_WASM_OK(ptr, len) | ((uint64_t)1 << 63)))

static inline keel_result keel_ok(const void *ptr, uint32_t len) { return KEEL_WASM_OK(ptr, len); }
static inline keel_result keel_err(const void *ptr, uint32_t len) { return KEEL_WASM_ERR(ptr, len); }

/** Error with a NUL-terminated message (the string must outlive the hook: use a literal). */
static inline keel_result keel_err_str(const char *msg) {
    uint32_t n = 0;
    while (msg[n] != '\0') n++;
    return KEEL_WASM_ERR(msg, n);
}

/* ---- host functions (module "keel") -------------------------------------------------- */

/** capability "log": write one log line of `len` bytes (not NUL-terminated, UTF-8; at most
 *  16 KiB are kept). */
KEEL_WASM_IMPORT(log) void keel_log(int32_t level, const char *msg, uint32_t len);

/** capability "clock": nanoseconds since the Unix epoch. */
KEEL_WASM_IMPORT(now_unix_nanos) int64_t keel_now_unix_nanos(void);

/** capability "random": fill `buf` with `len` bytes from the host's CSPRNG; returns 0, or -1
 *  (nothing written) if `len` exceeds 1 MiB. */
KEEL_WASM_IMPORT(random_bytes) int32_t keel_random_bytes(uint8_t *buf, uint32_t len);

/**
 * capability "kv:read": look `key` up in the plugin's namespace (the plugin's name: plugins
 * never see each other's keys). Returns -1 if absent, -2 if the key exceeds 64 KiB, -3 if
 * the server's storage sink failed (message: keel_sink_error), otherwise the value's full
 * length; min(length, out_cap) bytes are copied to `out` (call again with a larger buffer
 * when the length exceeds out_cap). The kv_* and storage_* imports go to the server's
 * storage sink when it set one (keel_host_set_storage_sink), else to an in-memory map.
 */
KEEL_WASM_IMPORT(kv_get) int64_t keel_kv_get(const uint8_t *key, uint32_t key_len, uint8_t *out, uint32_t out_cap);

/** capability "kv:write": set `key` to `value`; returns 0, or -1 (nothing stored) if the key
 *  exceeds 64 KiB or the value 16 MiB, -3 if the storage sink failed. */
KEEL_WASM_IMPORT(kv_put) int32_t keel_kv_put(const uint8_t *key, uint32_t key_len, const uint8_t *value,
                                             uint32_t value_len);

/** capability "kv:write": delete `key`; returns 0 if it was deleted, 1 if it was absent, -1 if
 *  the key exceeds 64 KiB, -3 if the storage sink failed. */
KEEL_WASM_IMPORT(kv_delete) int32_t keel_kv_delete(const uint8_t *key, uint32_t key_len);

/* ---- sinks: scans, the server's tables, sink errors ------------------------------------
 * Scans write whole entries to `out`, each encoded as
 *     u32 key_len (little-endian), key, u32 value_len (little-endian), value
 * and return r >= 0: the low 32 bits (r & 0xffffffff) are the bytes written, bit 32
 * (r >> 32 & 1) is set when the scan was cut — `out` had no room for the next entry, or
 * 10 000 entries / 16 MiB were reached — so more entries may match. Entries come in the
 * order the sink delivers them (the in-memory map: ascending keys). r < 0: -2 bad argument
 * (prefix over 64 KiB, bad table name), -3 the storage sink failed.
 * storage_* name a table of the server (`table`, `table_len`: 1..=255 bytes of UTF-8
 * without control characters); the server's sink receives the plugin's name and the table
 * and decides: it may refuse (-3, its message through keel_sink_error). Without a storage
 * sink set by the server, every storage_* call fails with -3 (no tables). */

/** capability "kv:read": the entries of the plugin's namespace whose key starts with `prefix`. */
KEEL_WASM_IMPORT(kv_scan) int64_t keel_kv_scan(const uint8_t *prefix, uint32_t prefix_len, uint8_t *out,
                                               uint32_t out_cap);

/** capability "storage:read": as keel_kv_get, in the server's `table` (-2 also for a bad
 *  table name). */
KEEL_WASM_IMPORT(storage_get) int64_t keel_storage_get(const char *table, uint32_t table_len, const uint8_t *key,
                                                       uint32_t key_len, uint8_t *out, uint32_t out_cap);

/** capability "storage:write": as keel_kv_put, in the server's `table` (-1 also for a bad
 *  table name). */
KEEL_WASM_IMPORT(storage_put) int32_t keel_storage_put(const char *table, uint32_t table_len, const uint8_t *key,
                                                       uint32_t key_len, const uint8_t *value, uint32_t value_len);

/** capability "storage:write": as keel_kv_delete, in the server's `table` (-1 also for a bad
 *  table name). */
KEEL_WASM_IMPORT(storage_delete) int32_t keel_storage_delete(const char *table, uint32_t table_len,
                                                             const uint8_t *key, uint32_t key_len);

/** capability "storage:read": as keel_kv_scan, in the server's `table`. */
KEEL_WASM_IMPORT(storage_scan) int64_t keel_storage_scan(const char *table, uint32_t table_len,
                                                         const uint8_t *prefix, uint32_t prefix_len, uint8_t *out,
                                                         uint32_t out_cap);

/** any of "kv:read", "kv:write", "storage:read", "storage:write": copy the message of the
 *  most recent kv_* or storage_* failure (-3, or a refused table name) on the thread running
 *  this call to `out` (min(length, cap) bytes); returns the message's full length (0: none).
 *  Read it right after the failing call: it is not cleared by successes. */
KEEL_WASM_IMPORT(sink_error) int32_t keel_sink_error(char *out, uint32_t cap);

/* ---- capmetrics: metrics:write, rpc:register ----
 * Failures return a negative keel_status (e.g. -606 = -KEEL_ERR_METRIC_INVALID); the host
 * also logs why (level WARN, through its log sink). Nothing here traps except pointer/length
 * pairs outside the guest's memory. Thread-safety: a WASM instance runs on one thread at a
 * time; the series a plugin defines are shared by all its instances (pooled mode) and
 * generations. */

/**
 * capability "metrics:write": define (or find) a series and return its id (>= 0), or a
 * negative status. `kind` is KEEL_METRIC_COUNTER, _GAUGE or _HISTOGRAM. `name` (UTF-8,
 * `name_len` bytes) follows the Prometheus rules [a-zA-Z_][a-zA-Z0-9_]*, at most 128 bytes, not
 * starting with "__", not ending in _created/_bucket/_count/_sum/_info/_gcount/_gsum (a
 * counter may end in _total, which is dropped); it is exported as keel_custom_<name>
 * (counters keel_custom_<name>_total) with the label plugin="<plugin name>". `labels` is a
 * JSON object of string values ({"shard":"3"}; len 0 = no labels; at most 16; names as metric
 * names but not "plugin", "le", "quantile"; values at most 256 bytes without '"', '\' or
 * control characters). `buckets` (histograms only, `bucket_count` little-endian doubles,
 * strictly increasing, finite, at most 64; 0 = the Prometheus defaults .005 .. 10) are the
 * upper bounds; +Inf is added. Defining the same name and labels again returns the same id
 * (also in a reloaded generation: series and their values survive a reload, and are removed
 * when the plugin unloads). At most 10 000 series per plugin: the next is refused with
 * -KEEL_ERR_METRIC_SERIES_LIMIT (-806). Another kind under a name already defined (by this
 * or another plugin) is -KEEL_ERR_METRIC_CONFLICT (-607); a bad name, labels or buckets
 * -KEEL_ERR_METRIC_INVALID (-606).
 */
KEEL_WASM_IMPORT(metric_define) int64_t keel_metric_define(int32_t kind, const char *name, uint32_t name_len,
                                                           const char *labels, uint32_t labels_len,
                                                           const double *buckets, uint32_t bucket_count);

/** capability "metrics:write": add `value` to a counter (>= 0, finite) or gauge (not NaN).
 *  0, or -606 (unknown id, value refused) / -607 (a histogram). Lock-free, allocates nothing. */
KEEL_WASM_IMPORT(metric_add) int32_t keel_metric_add(int32_t id, double value);

/** capability "metrics:write": set a gauge. 0, or -606 (unknown id, NaN) / -607 (not a gauge). */
KEEL_WASM_IMPORT(metric_set) int32_t keel_metric_set(int32_t id, double value);

/** capability "metrics:write": record `value` in a histogram. 0, or -606 / -607 (not a
 *  histogram). */
KEEL_WASM_IMPORT(metric_observe) int32_t keel_metric_observe(int32_t id, double value);

/**
 * capability "rpc:register": bind the RPC endpoint `endpoint` (UTF-8, 1..255 bytes, no
 * control characters) to the plugin's function `function` (a name from keel_functions; an
 * unknown one makes invocations fail with KEEL_ERR_FUNCTION_NOT_FOUND). The server lists
 * endpoints (keel_host_rpc_list) and invokes them (keel_host_rpc_call), which calls the
 * function as keel_call would. Call it from keel_init (or during a call). Returns 0; the same
 * binding again is 0 (every pooled instance runs keel_init); a name another plugin holds, or
 * that this generation bound to another function, is -KEEL_ERR_RPC_ENDPOINT_TAKEN (-608);
 * a bad name or more than 1024 endpoints -KEEL_ERR_INVALID_ARGUMENT (-102). Endpoints are
 * removed when the plugin unloads; on reload the new generation registers its own, and
 * those it does not register again are removed when it is published.
 */
KEEL_WASM_IMPORT(rpc_register) int32_t keel_rpc_register(const char *endpoint, uint32_t endpoint_len,
                                                         const char *function, uint32_t function_len);

/* ---- host functions defined by the server (hostfn) ---------------------------------- */
/*
 * The server (the program embedding Keel) may define host functions under a namespace and a
 * name, each tied to one capability (keel_host_define_function in keel.h, or
 * keel::define_host_function in keel.hpp). A WASM plugin imports one from module
 * `namespace`, name `name`, with this signature (the convention of kv_get):
 *
 *     (import "db" "get_row" (func (param i32 i32 i32 i32) (result i64)))
 *     int64_t f(const uint8_t *input, uint32_t input_len, uint8_t *out, uint32_t out_cap);
 *
 * The host copies `input_len` bytes of `input` out of the guest's memory, runs the server's
 * function, and copies min(length, out_cap) bytes of its output to `out`. The result:
 *
 *     >= 0   success; the output's full length (call again with a buffer of at least that
 *            size if it exceeds out_cap: the function runs again)
 *     <  0   failure (bit 63 set); the low 63 bits are the full length of the function's
 *            error message (UTF-8), of which min(length, out_cap) bytes were copied to `out`
 *
 * (KEEL_HOST_FN_FAILED / KEEL_HOST_FN_LEN below.) A function that panics or throws in the
 * server is a failure with a message like any other; the host keeps serving. The output goes
 * straight into `out` (the host buffers none of it); `input` and `out` may overlap (the
 * function then reads a copy of the input). A pointer/length outside the guest's memory traps
 * (KEEL_ERR_PLUGIN_ABI_VIOLATION), as for every host function.
 *
 * Binding: the plugin binds to the server's definitions when it loads; a function the server
 * defines, replaces or removes later is seen from the next load or reload on. The function
 * runs on the thread of the call, and sees that call's context (user_context, tenant,
 * traceparent, cancellation) when the server called with options.
 */
#define KEEL_HOST_FN_FAILED(r) ((int64_t)(r) < 0)
#define KEEL_HOST_FN_LEN(r) ((uint64_t)(r) & 0x7fffffffffffffffull)

/** Import the server's host function `ns`.`name` as C function `cname`. */
#define KEEL_WASM_HOST_FN(ns, name, cname)                                                     \
    __attribute__((import_module(#ns), import_name(#name))) int64_t cname(                     \
        const uint8_t *input, uint32_t input_len, uint8_t *out, uint32_t out_cap)

/* ---- the plugin's exports (define the ones you need) --------------------------------- */

KEEL_WASM_EXPORT(keel_abi_version) int32_t keel_abi_version(void);
KEEL_WASM_EXPORT(keel_functions) keel_result keel_functions(void);
KEEL_WASM_EXPORT(keel_alloc) void *keel_alloc(uint32_t size);
KEEL_WASM_EXPORT(keel_free) void keel_free(void *ptr, uint32_t size);
KEEL_WASM_EXPORT(keel_init) keel_result keel_init(const uint8_t *config_json, uint32_t len);
KEEL_WASM_EXPORT(keel_call) keel_result keel_call(uint32_t function, const uint8_t *input, uint32_t len);
KEEL_WASM_EXPORT(keel_save_state) keel_result keel_save_state(void);
KEEL_WASM_EXPORT(keel_restore_state) keel_result keel_restore_state(const uint8_t *state, uint32_t len);
KEEL_WASM_EXPORT(keel_restore_state_versioned)
keel_result keel_restore_state_versioned(const uint8_t *state, uint32_t len, const uint8_t *version, uint32_t version_len);
KEEL_WASM_EXPORT(keel_health) int32_t keel_health(void);

/**
 * Define keel_abi_version and keel_functions. `names` is a string literal of
 * comma-separated function names, e.g. KEEL_WASM_FUNCTIONS("sum,fib"). Names are
 * 1-128 characters of [A-Za-z0-9_.:-], unique.
 */
#define KEEL_WASM_FUNCTIONS(names)                                                            \
    int32_t keel_abi_version(void) { return KEEL_WASM_ABI_VERSION; }                         \
    keel_result keel_functions(void) {                                                       \
        static const char keel_function_names_[] = names;                                    \
        return KEEL_WASM_OK(keel_function_names_, sizeof(keel_function_names_) - 1);         \
    }

#ifdef KEEL_WASM_IMPLEMENT_ALLOCATOR
/*
 * A small allocator for -nostdlib builds: power-of-two size classes from 16 bytes, one
 * free list per class, new blocks bumped from __heap_base, memory grown on demand.
 * Memory is never returned to the host (wasm memories cannot shrink).
 */
extern unsigned char __heap_base;
static uintptr_t keel_heap_top_;
static void *keel_free_lists_[28];

static uint32_t keel_size_class_(uint32_t size, uint32_t *block) {
    uint32_t c = 0, b = 16;
    while (b < size) {
        b <<= 1;
        c++;
    }
    *block = b;
    return c;
}

void *keel_alloc(uint32_t size) {
    if (size == 0) size = 1;
    if (size > (1u << 30)) return 0;
    uint32_t block;
    uint32_t c = keel_size_class_(size, &block);
    void *p = keel_free_lists_[c];
    if (p) {
        keel_free_lists_[c] = *(void **)p;
        return p;
    }
    if (keel_heap_top_ == 0) keel_heap_top_ = ((uintptr_t)&__heap_base + 15u) & ~(uintptr_t)15u;
    uint64_t start = keel_heap_top_;
    uint64_t end = start + block;
    uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        uint64_t pages = (end - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, (size_t)pages) == (size_t)-1) return 0;
    }
    keel_heap_top_ = (uintptr_t)end;
    return (void *)(uintptr_t)start;
}

void keel_free(void *ptr, uint32_t size) {
    if (!ptr) return;
    uint32_t block;
    uint32_t c = keel_size_class_(size == 0 ? 1 : size, &block);
    *(void **)ptr = keel_free_lists_[c];
    keel_free_lists_[c] = ptr;
}
#endif /* KEEL_WASM_IMPLEMENT_ALLOCATOR */

#ifdef __cplusplus
}
#endif

#endif /* KEEL_WASM_H */
