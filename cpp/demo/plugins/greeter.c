/* Demo plugin "greeter": greets and counts greetings. The count is saved and restored
 * across hot reloads. Built twice: GREETING="Hello" (1.0.0) and GREETING="Bonjour" (1.1.0). */
#include <keel/keel_plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef GREETING
#define GREETING "Hello"
#endif

typedef struct greeter {
    const keel_host_api *host;
    long long greetings;
} greeter;

static const char *const greeter_functions[] = {"greet", "count"};

static int32_t greeter_init(const char *config_json, size_t config_len, const keel_host_api *host, void **instance,
                            const keel_output *err) {
    greeter *g = (greeter *)calloc(1, sizeof *g);
    (void)config_json;
    (void)config_len;
    if (!g) {
        keel_output_str(err, "out of memory");
        return 1;
    }
    g->host = host;
    if (host->log) host->log(host->ctx, KEEL_LOG_INFO, "greeter " GREETING " ready", strlen("greeter " GREETING " ready"));
    *instance = g;
    return 0;
}

static int32_t greeter_call(void *instance, uint32_t function, const uint8_t *input, size_t input_len,
                            const keel_output *out) {
    greeter *g = (greeter *)instance;
    char buf[256];
    int n;
    if (function == 0) {
        g->greetings++;
        n = snprintf(buf, sizeof buf, GREETING ", %.*s! (greeting #%lld)", (int)(input_len > 128 ? 128 : input_len),
                     (const char *)input, g->greetings);
    } else if (function == 1) {
        n = snprintf(buf, sizeof buf, "%lld", g->greetings);
    } else {
        return 2;
    }
    return out->write(out->ctx, (const uint8_t *)buf, (size_t)n);
}

static void greeter_shutdown(void *instance) { free(instance); }

static int32_t greeter_save(void *instance, const keel_output *out) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%lld", ((greeter *)instance)->greetings);
    return out->write(out->ctx, (const uint8_t *)buf, (size_t)n);
}

static int32_t greeter_restore(void *instance, const uint8_t *state, size_t len) {
    char buf[32] = {0};
    if (len >= sizeof buf) return 1;
    memcpy(buf, state, len);
    ((greeter *)instance)->greetings = strtoll(buf, NULL, 10);
    return 0;
}

static int32_t greeter_health(void *instance) {
    (void)instance;
    return KEEL_HEALTH_HEALTHY;
}

static const keel_plugin_vtable greeter_vtable = {
    .abi_version = KEEL_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(keel_plugin_vtable),
    .flags = KEEL_PLUGIN_FLAG_SERIAL,
    .name = "greeter",
    .version = "1.0.0",
    .functions = greeter_functions,
    .function_count = 2,
    .init = greeter_init,
    .call = greeter_call,
    .shutdown = greeter_shutdown,
    .save_state = greeter_save,
    .restore_state = greeter_restore,
    .health = greeter_health,
};

KEEL_DEFINE_PLUGIN(greeter_vtable)
