/* The Keel C ABI from C (compiled as C11) and from C++ (the same file compiled as C++17),
 * both with -Wall -Wextra -Werror. Usage: test_abi <fixture dir>. */
#include <keel/keel.h>

#include <stdio.h>
#include <stdlib.h>
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

static char path_buf[4096];

static const char *path(const char *dir, const char *rel) {
    snprintf(path_buf, sizeof path_buf, "%s/%s", dir, rel);
    return path_buf;
}

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

int main(int argc, char **argv) {
    keel_host *host = NULL;
    keel_plugin *plugin = NULL;
    keel_buffer *out = NULL;
    const char *name = NULL;
    const char *dir;
    FILE *f;

    if (argc != 2) {
        fprintf(stderr, "usage: %s <fixture dir>\n", argv[0]);
        return 2;
    }
    dir = argv[1];

    CHECK(keel_host_new(&host) == KEEL_OK);
    CHECK(keel_host_set_require_signature(host, false) == KEEL_OK);
    CHECK(keel_buffer_new(&out) == KEEL_OK);

    /* Refused before any of their code runs (same plugin name as the good one below). */
    CHECK(keel_host_load(host, path(dir, "evil/tampered.json"), NULL) == KEEL_ERR_DIGEST_MISMATCH);
    CHECK(keel_host_load(host, path(dir, "abi2/echo.json"), NULL) == KEEL_ERR_ABI_MISMATCH);

    /* A good plugin loads and answers. */
    CHECK(keel_host_load(host, path(dir, "echo/echo.json"), &plugin) == KEEL_OK);
    CHECK(call_str(plugin, "echo", "from C", out) == KEEL_OK);
    CHECK(buffer_equals(out, "from C"));
    CHECK(call_str(plugin, "hostcaps", "", out) == KEEL_OK);
    CHECK(buffer_equals(out, "log=1 clock=0 random=0 kv_get=1 kv_put=1 kv_delete=1"));
    CHECK(call_str(plugin, "kv_put", "lang=c", out) == KEEL_OK);
    CHECK(call_str(plugin, "kv_get", "lang", out) == KEEL_OK);
    CHECK(buffer_equals(out, "c"));
    /* Output buffers: the result on success, empty on any failure (the plugin's error text
     * is in the last error message). */
    CHECK(call_str(plugin, "echo", "previous result", out) == KEEL_OK);
    CHECK(call_str(plugin, "fail", "", out) == KEEL_ERR_CALL_FAILED);
    CHECK(buffer_equals(out, ""));
    CHECK(call_str(plugin, "nope", "", out) == KEEL_ERR_FUNCTION_NOT_FOUND);
    CHECK(call_str(plugin, "echo", "previous result", out) == KEEL_OK);
    CHECK(keel_call(plugin, 200, NULL, 0, out) == KEEL_ERR_FUNCTION_NOT_FOUND); /* never resolved */
    CHECK(buffer_equals(out, ""));

    /* Bad input gets its own code and leaves the host serving. */
    CHECK(keel_host_load(NULL, "x", NULL) == KEEL_ERR_NULL_POINTER);
    CHECK(keel_host_load(host, NULL, NULL) == KEEL_ERR_NULL_POINTER);
    CHECK(keel_call(plugin, 0, NULL, 3, out) == KEEL_ERR_NULL_POINTER);
    CHECK(keel_call(NULL, 0, NULL, 0, out) == KEEL_ERR_NULL_POINTER);
    {
        const char bad_utf8[] = {(char)0xff, (char)0xfe, 0};
        CHECK(keel_host_load(host, bad_utf8, NULL) == KEEL_ERR_INVALID_UTF8);
    }
    {
        keel_plugin *missing = NULL;
        CHECK(keel_plugin_get(host, "missing", &missing) == KEEL_ERR_PLUGIN_NOT_FOUND);
        CHECK(missing == NULL);
    }
    {
        /* A native plugin has no ThemisDB object to lease; the out-parameter stays as it was. */
        keel_themis_lease *lease = NULL;
        CHECK(keel_plugin_themis_lease(plugin, &lease) == KEEL_ERR_UNSUPPORTED);
        CHECK(lease == NULL);
        CHECK(keel_themis_lease_free(NULL) == KEEL_OK);
    }
    CHECK(keel_host_load(host, path(dir, "does/not/exist.json"), NULL) == KEEL_ERR_FILE_NOT_FOUND);
    f = fopen(path(dir, "malformed.json"), "w");
    CHECK(f != NULL);
    if (f) {
        fputs("{\"manifest_version\": 1, \"name\": \"broken\"", f);
        fclose(f);
    }
    CHECK(keel_host_load(host, path(dir, "malformed.json"), NULL) == KEEL_ERR_MANIFEST_PARSE);
    CHECK(keel_status_name(KEEL_ERR_DIGEST_MISMATCH, &name) == KEEL_OK);
    CHECK(name != NULL && strcmp(name, "KEEL_ERR_DIGEST_MISMATCH") == 0);

    /* Still serving. */
    CHECK(call_str(plugin, "echo", "still here", out) == KEEL_OK);
    CHECK(buffer_equals(out, "still here"));

    /* Metrics. */
    CHECK(keel_host_metrics_text(host, out) == KEEL_OK);
    {
        const uint8_t *data = NULL;
        size_t len = 0;
        char *text;
        keel_buffer_data(out, &data, &len);
        CHECK(len > 0);
        text = (char *)malloc(len + 1);
        CHECK(text != NULL);
        if (text && len > 0) {
            memcpy(text, data, len);
            text[len] = '\0';
            CHECK(strstr(text, "keel_plugin_calls_total{plugin=\"echo\"") != NULL);
        }
        free(text);
    }

    /* Unload: the handle stays valid but the plugin is gone. */
    CHECK(keel_host_unload(host, "echo") == KEEL_OK);
    CHECK(call_str(plugin, "echo", "x", out) == KEEL_ERR_PLUGIN_UNLOADED);

    CHECK(keel_plugin_free(plugin) == KEEL_OK);
    CHECK(keel_buffer_free(out) == KEEL_OK);
    CHECK(keel_host_free(host) == KEEL_OK);
    CHECK(keel_host_free(NULL) == KEEL_OK);

    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("test_abi: all checks passed\n");
    return 0;
}
