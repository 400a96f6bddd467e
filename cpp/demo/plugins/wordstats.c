/* Demo plugin "wordstats": counts bytes, words and lines of its input; stateless and
 * thread-safe (calls run concurrently). */
#include <keel/keel_plugin.h>

#include <ctype.h>
#include <stdio.h>

static const char *const wordstats_functions[] = {"count"};

static int32_t wordstats_init(const char *config_json, size_t config_len, const keel_host_api *host, void **instance,
                              const keel_output *err) {
    (void)config_json;
    (void)config_len;
    (void)host;
    (void)err;
    *instance = NULL;
    return 0;
}

static int32_t wordstats_call(void *instance, uint32_t function, const uint8_t *input, size_t input_len,
                              const keel_output *out) {
    size_t i, words = 0, lines = 0;
    int in_word = 0;
    char buf[128];
    int n;
    (void)instance;
    if (function != 0) return 2;
    for (i = 0; i < input_len; i++) {
        if (input[i] == '\n') lines++;
        if (isspace(input[i])) {
            in_word = 0;
        } else if (!in_word) {
            in_word = 1;
            words++;
        }
    }
    n = snprintf(buf, sizeof buf, "{\"bytes\":%zu,\"words\":%zu,\"lines\":%zu}", input_len, words, lines);
    return out->write(out->ctx, (const uint8_t *)buf, (size_t)n);
}

static void wordstats_shutdown(void *instance) { (void)instance; }

static const keel_plugin_vtable wordstats_vtable = {
    .abi_version = KEEL_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(keel_plugin_vtable),
    .flags = 0,
    .name = "wordstats",
    .version = "1.0.0",
    .functions = wordstats_functions,
    .function_count = 1,
    .init = wordstats_init,
    .call = wordstats_call,
    .shutdown = wordstats_shutdown,
};

KEEL_DEFINE_PLUGIN(wordstats_vtable)
