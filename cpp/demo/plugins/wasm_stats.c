/* Demo plugin "wasm-stats": wordstats as a sandboxed WebAssembly plugin (keel_wasm.h).
 * Counts bytes, words and lines; logs through the "log" capability.
 *   clang --target=wasm32 -nostdlib -O2 -Wl,--no-entry -Wl,--export-dynamic -I include -o wasm-stats.wasm wasm_stats.c */
#define KEEL_WASM_IMPLEMENT_ALLOCATOR
#include "keel/keel_wasm.h"

KEEL_WASM_FUNCTIONS("count")

static char out[96];

static uint32_t put_u32(char *p, uint32_t v) {
    char tmp[10];
    uint32_t n = 0, i;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (i = 0; i < n; i++) p[i] = tmp[n - 1 - i];
    return n;
}

static uint32_t put_str(char *p, const char *s) {
    uint32_t n = 0;
    while (s[n]) {
        p[n] = s[n];
        n++;
    }
    return n;
}

KEEL_WASM_EXPORT(keel_call) keel_result keel_call(uint32_t function, const uint8_t *in, uint32_t len) {
    uint32_t i, words = 0, lines = 0, n = 0;
    int in_word = 0;
    if (function != 0) return keel_err_str("unknown function");
    for (i = 0; i < len; i++) {
        uint8_t c = in[i];
        int space = c == ' ' || c == '\n' || c == '\t' || c == '\r';
        if (c == '\n') lines++;
        if (space) {
            in_word = 0;
        } else if (!in_word) {
            in_word = 1;
            words++;
        }
    }
    n += put_str(out + n, "{\"bytes\":");
    n += put_u32(out + n, len);
    n += put_str(out + n, ",\"words\":");
    n += put_u32(out + n, words);
    n += put_str(out + n, ",\"lines\":");
    n += put_u32(out + n, lines);
    n += put_str(out + n, ",\"runtime\":\"wasm\"}");
    keel_log(KEEL_LOG_DEBUG, out, n);
    return keel_ok(out, n);
}
