/* C-ABI stress host for the whole-host soak (issue 13), run by tests/soak.sh (under valgrind
 * memcheck, and under AddressSanitizer / ThreadSanitizer when linked with a sanitized Keel).
 *
 * Usage: soak_host <fixture dir> <calls per thread> <reloads>
 * The fixture dir is what `cargo test --test soak -- --ignored soak_prepare_fixtures` writes
 * (KEEL_SOAK_DIR): echo.json (+ .sig) switched between echo.v1.json and echo.v2.json (each
 * signed), churn.json (+ .sig), trust.json.
 *
 * Two caller threads make <calls> echo calls each while a reloader makes <reloads> reloads
 * alternating the two signed versions and a churn thread loops unload/load of `churn`; every
 * echo must return its input, every reload and load must succeed. Prints one `soak_host:`
 * line with the counts and the resident set size before and after (kB, /proc/self/status).
 * Exit status 0 on success, 1 on any failed check. */
#include <keel/keel.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *dir;
static unsigned long long calls_per_thread;
static unsigned long long reloads;
static keel_host *host;
static keel_plugin *echo;
static keel_function f_echo, f_tag;
static volatile int reloads_done;  /* written by the reloader, read by callers (atomics below) */
static volatile int callers_done;
static int failed;

#define FAIL(...)                                                                   \
    do {                                                                            \
        const char *m_ = "";                                                        \
        keel_last_error_message(&m_);                                               \
        fprintf(stderr, "soak_host: " __VA_ARGS__);                                 \
        fprintf(stderr, " (last error: %s)\n", m_);                                 \
        __atomic_store_n(&failed, 1, __ATOMIC_SEQ_CST);                             \
    } while (0)

static void path(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", dir, name); }

static long rss_kb(void) {
    char line[256];
    long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

/* Copy <from> over <to> through a temporary file and a rename. */
static int replace_file(const char *from, const char *to) {
    char src[4096], dst[4096], tmp[4200], buf[8192];
    size_t n;
    FILE *in, *out;
    path(src, sizeof src, from);
    path(dst, sizeof dst, to);
    snprintf(tmp, sizeof tmp, "%s.tmp", dst);
    in = fopen(src, "rb");
    out = fopen(tmp, "wb");
    if (!in || !out) {
        if (in) fclose(in);
        if (out) fclose(out);
        return -1;
    }
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
    fclose(in);
    if (fclose(out) != 0) return -1;
    return rename(tmp, dst);
}

static int switch_version(int v2) {
    if (replace_file(v2 ? "echo.v2.json.sig" : "echo.v1.json.sig", "echo.json.sig") != 0) return -1;
    return replace_file(v2 ? "echo.v2.json" : "echo.v1.json", "echo.json");
}

static void *caller(void *arg) {
    unsigned char input[64];
    unsigned long long n = 0;
    keel_buffer *out = NULL;
    const uint8_t *data;
    size_t len;
    memset(input, (int)(size_t)arg, sizeof input);
    if (keel_buffer_new(&out) != KEEL_OK) {
        FAIL("keel_buffer_new");
        return NULL;
    }
    while ((n < calls_per_thread || !__atomic_load_n(&reloads_done, __ATOMIC_ACQUIRE)) &&
           !__atomic_load_n(&failed, __ATOMIC_RELAXED)) {
        memcpy(input, &n, sizeof n);
        if (keel_call(echo, f_echo, input, sizeof input, out) != KEEL_OK) {
            FAIL("echo call %llu failed", n);
            break;
        }
        if (keel_buffer_data(out, &data, &len) != KEEL_OK || len != sizeof input || memcmp(data, input, len) != 0) {
            FAIL("echo call %llu returned other bytes", n);
            break;
        }
        n++;
        if (n % 4096 == 0) {
            keel_plugin *p = NULL;
            keel_status s = keel_plugin_get(host, "churn", &p);
            if (s == KEEL_OK) {
                keel_function f = 0;
                s = keel_plugin_function(p, "echo", &f);
                if (s == KEEL_OK) s = keel_call(p, f, (const uint8_t *)"churn", 5, out);
                if (s != KEEL_OK && s != KEEL_ERR_PLUGIN_UNLOADED) FAIL("churn call: status %d", (int)s);
                keel_plugin_free(p);
            } else if (s != KEEL_ERR_PLUGIN_NOT_FOUND) {
                FAIL("keel_plugin_get(churn): status %d", (int)s);
            }
        }
        if (n % 1024 == 0 && keel_call(echo, f_tag, NULL, 0, out) != KEEL_OK) FAIL("tag call failed");
    }
    keel_buffer_free(out);
    __atomic_add_fetch(&callers_done, 1, __ATOMIC_RELEASE);
    return (void *)(size_t)n;
}

static void *reloader(void *arg) {
    unsigned long long i;
    uint64_t g = 0, last = 0;
    (void)arg;
    for (i = 0; i < reloads && !__atomic_load_n(&failed, __ATOMIC_RELAXED); i++) {
        if (switch_version(i % 2 == 0) != 0) {
            FAIL("switching the manifest");
            break;
        }
        if (keel_host_reload(host, "echo", &g) != KEEL_OK) {
            FAIL("reload %llu failed", i);
            break;
        }
        if (g <= last) FAIL("generation went from %llu to %llu", (unsigned long long)last, (unsigned long long)g);
        last = g;
    }
    __atomic_store_n(&reloads_done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void *churner(void *arg) {
    char manifest[4096];
    unsigned long long cycles = 0;
    (void)arg;
    path(manifest, sizeof manifest, "churn.json");
    while (__atomic_load_n(&callers_done, __ATOMIC_ACQUIRE) < 2 && !__atomic_load_n(&failed, __ATOMIC_RELAXED)) {
        if (keel_host_unload(host, "churn") != KEEL_OK) FAIL("unload churn");
        if (keel_host_load(host, manifest, NULL) != KEEL_OK) FAIL("load churn");
        cycles++;
    }
    return (void *)(size_t)cycles;
}

int main(int argc, char **argv) {
    char manifest[4096], trust[4096];
    pthread_t t[4];
    void *r[4];
    long before, after;
    uint64_t g = 0;

    if (argc != 4) {
        fprintf(stderr, "usage: %s <fixture dir> <calls per thread> <reloads>\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    calls_per_thread = strtoull(argv[2], NULL, 10);
    reloads = strtoull(argv[3], NULL, 10);

    path(trust, sizeof trust, "trust.json");
    if (keel_host_new(&host) != KEEL_OK || keel_host_set_trust_store_file(host, trust) != KEEL_OK) {
        FAIL("host setup");
        return 1;
    }
    if (switch_version(0) != 0) FAIL("switching the manifest");
    path(manifest, sizeof manifest, "echo.json");
    if (keel_host_load(host, manifest, &echo) != KEEL_OK) {
        FAIL("load echo");
        return 1;
    }
    path(manifest, sizeof manifest, "churn.json");
    if (keel_host_load(host, manifest, NULL) != KEEL_OK) FAIL("load churn");
    if (keel_plugin_function(echo, "echo", &f_echo) != KEEL_OK || keel_plugin_function(echo, "tag", &f_tag) != KEEL_OK)
        FAIL("resolve");
    if (failed) return 1;

    before = rss_kb();
    pthread_create(&t[0], NULL, caller, (void *)1);
    pthread_create(&t[1], NULL, caller, (void *)2);
    pthread_create(&t[2], NULL, reloader, NULL);
    pthread_create(&t[3], NULL, churner, NULL);
    pthread_join(t[2], &r[2]);
    pthread_join(t[0], &r[0]);
    pthread_join(t[1], &r[1]);
    pthread_join(t[3], &r[3]);

    if (keel_plugin_generation(echo, &g) != KEEL_OK || g != reloads + 1)
        FAIL("generation %llu after %llu reloads", (unsigned long long)g, reloads);
    keel_plugin_free(echo);
    if (keel_host_unload(host, "echo") != KEEL_OK) FAIL("unload echo");
    if (keel_host_unload(host, "churn") != KEEL_OK) FAIL("unload churn");
    after = rss_kb();
    if (keel_host_free(host) != KEEL_OK) FAIL("host free");
    printf("soak_host: %llu + %llu calls, %llu reloads (generation %llu), %llu unload/load cycles, RSS before %ld kB "
           "after %ld kB\n",
           (unsigned long long)(size_t)r[0], (unsigned long long)(size_t)r[1], reloads, (unsigned long long)g,
           (unsigned long long)(size_t)r[3], before, after);
    return failed ? 1 : 0;
}
