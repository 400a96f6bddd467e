/* A C program built with `cc main.c $(pkg-config --cflags --libs keel)` against the installed
 * package only (tests/cmake/install_and_consume.cmake): the version it was compiled against is
 * the library's, and a plugin loads and answers.  Usage: pkgconfig_consumer <echo manifest> */
#include <keel/keel.h>

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    uint32_t major = 0, minor = 0, patch = 0;
    keel_host *host = NULL;
    keel_plugin *plugin = NULL;
    keel_buffer *out = NULL;
    keel_function fn = 0;
    const uint8_t *data = NULL;
    size_t len = 0;
    const char *msg = "";

    if (argc != 2) return 2;
    if (keel_version(&major, &minor, &patch) != KEEL_OK || major != KEEL_VERSION_MAJOR ||
        minor != KEEL_VERSION_MINOR || patch != KEEL_VERSION_PATCH) {
        fprintf(stderr, "keel_version %u.%u.%u is not %s\n", major, minor, patch, KEEL_VERSION_STRING);
        return 1;
    }
    if (keel_host_new(&host) != KEEL_OK || keel_host_set_require_signature(host, false) != KEEL_OK ||
        keel_buffer_new(&out) != KEEL_OK || keel_host_load(host, argv[1], &plugin) != KEEL_OK ||
        keel_plugin_function(plugin, "echo", &fn) != KEEL_OK ||
        keel_call(plugin, fn, (const uint8_t *)"pkg-config", 10, out) != KEEL_OK ||
        keel_buffer_data(out, &data, &len) != KEEL_OK) {
        keel_last_error_message(&msg);
        fprintf(stderr, "failed: %s\n", msg);
        return 1;
    }
    if (len != 10 || memcmp(data, "pkg-config", 10) != 0) {
        fprintf(stderr, "echo returned the wrong bytes\n");
        return 1;
    }
    keel_plugin_free(plugin);
    keel_buffer_free(out);
    keel_host_free(host);
    printf("pkg-config consumer: Keel %s ok\n", KEEL_VERSION_STRING);
    return 0;
}
