/* A C++ native plugin (tests/fixtures/cxx/cxx_plugin.cpp, built by keel_add_plugin) loaded and
 * called through the C ABI: its entry has C linkage (KEEL_DEFINE_PLUGIN), its std:: code runs,
 * and exceptions thrown in its hooks come back as clean errors with their message while the
 * host keeps serving. Usage: test_cxx_plugin <dir holding cxxplugin/ and cxxplugin_bad/>. */
#include <keel/keel.h>

#include <stdio.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            const char *m_ = "";                                                         \
            keel_last_error_message(&m_);                                                \
            fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, #cond, m_); \
            failures++;                                                                  \
        }                                                                                \
    } while (0)

static keel_status call_str(keel_plugin *p, const char *fn_name, const char *input, keel_buffer *out) {
    keel_function fn = 0;
    keel_status s = keel_plugin_function(p, fn_name, &fn);
    if (s != KEEL_OK) return s;
    return keel_call(p, fn, (const uint8_t *)input, strlen(input), out);
}

static int buffer_equals(const keel_buffer *b, const char *want) {
    const uint8_t *data = NULL;
    size_t len = 0;
    if (keel_buffer_data(b, &data, &len) != KEEL_OK) return 0;
    return len == strlen(want) && (len == 0 || memcmp(data, want, len) == 0);
}

static int last_error_contains(const char *needle) {
    const char *m = "";
    keel_last_error_message(&m);
    return strstr(m, needle) != NULL;
}

int main(int argc, char **argv) {
    char manifest[4096];
    keel_host *host = NULL;
    keel_plugin *plugin = NULL;
    keel_buffer *out = NULL;
    int round;

    if (argc != 2) {
        fprintf(stderr, "usage: %s <plugin dir>\n", argv[0]);
        return 2;
    }
    CHECK(keel_host_new(&host) == KEEL_OK);
    CHECK(keel_host_set_require_signature(host, false) == KEEL_OK);
    CHECK(keel_buffer_new(&out) == KEEL_OK);

    /* init throws std::invalid_argument: a clean KEEL_ERR_INIT_FAILED with its what(). */
    snprintf(manifest, sizeof manifest, "%s/cxxplugin_bad/keel.json", argv[1]);
    CHECK(keel_host_load(host, manifest, &plugin) == KEEL_ERR_INIT_FAILED);
    CHECK(last_error_contains("init refused by config"));
    CHECK(plugin == NULL);

    snprintf(manifest, sizeof manifest, "%s/cxxplugin/keel.json", argv[1]);
    CHECK(keel_host_load(host, manifest, &plugin) == KEEL_OK);
    if (plugin == NULL) {
        fprintf(stderr, "the C++ plugin did not load\n");
        return 1;
    }
    for (round = 0; round < 3; round++) {
        CHECK(call_str(plugin, "upper", "hello keel", out) == KEEL_OK);
        CHECK(buffer_equals(out, "HELLO KEEL"));
        CHECK(call_str(plugin, "words", " one two  three ", out) == KEEL_OK);
        CHECK(buffer_equals(out, "3"));
        /* A std::exception: KEEL_ERR_CALL_FAILED with its message, output empty. */
        CHECK(call_str(plugin, "throw", "x", out) == KEEL_ERR_CALL_FAILED);
        CHECK(last_error_contains("boom: x"));
        CHECK(buffer_equals(out, ""));
        /* Anything else thrown: still a clean error. */
        CHECK(call_str(plugin, "throw_int", "", out) == KEEL_ERR_CALL_FAILED);
        CHECK(last_error_contains("unknown C++ exception"));
    }
    /* The host still serves the plugin after the exceptions. */
    CHECK(call_str(plugin, "upper", "still here", out) == KEEL_OK);
    CHECK(buffer_equals(out, "STILL HERE"));

    keel_plugin_free(plugin);
    keel_buffer_free(out);
    keel_host_free(host);
    if (failures != 0) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("C++ plugin: ok\n");
    return 0;
}
