// The C++ API (include/keel/keel.hpp, the cxx bridge of src/bridge/mod.rs) from C++17 with
// -Wall -Wextra -Werror: load, resolve, call, errors as rust::Error with their keel_status,
// calls from two threads, reload, unload, a plugin directory, trust settings, metrics.
// Usage: test_cxx_api <fixture dir>   (expects echo/echo.json, evil/tampered.json, legacy/plugin.json)
#include <keel/keel.hpp>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

namespace fs = std::filesystem;

static int failures = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);         \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

// The rust::Error a call threw: its status (KEEL_OK if nothing was thrown) and what().
struct Thrown {
    keel_status status = KEEL_OK;
    std::string what;
};

template <typename F> static Thrown thrown(F &&f) {
    Thrown t;
    try {
        f();
    } catch (const rust::Error &e) {
        t.status = keel::error_status(e);
        t.what = e.what();
    }
    return t;
}

static bool starts_with(const std::string &s, const char *prefix) { return s.rfind(prefix, 0) == 0; }

static std::string str(rust::Str s) { return std::string(s.data(), s.size()); }

static void write_file(const fs::path &p, const std::string &text) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f << text;
}

static int run(const std::string &dir) {
    std::string tmpl = (fs::temp_directory_path() / "keel-cxx-api-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
        std::perror("mkdtemp");
        return 2;
    }
    const fs::path tmp = tmpl;

    rust::Box<keel::bridge::Host> host = keel::new_host();
    host->set_require_signature(false);

    // ---- Load, resolve once, call. ----
    rust::Box<keel::bridge::Plugin> echo = host->load(dir + "/echo/echo.json");
    CHECK(str(echo->name()) == "echo");
    CHECK(echo->generation() == 1);
    const std::uint32_t fn_echo = echo->function("echo");
    const std::uint32_t fn_fail = echo->function("fail");
    const std::uint32_t fn_sum = echo->function("sum");
    CHECK(echo->function("echo") == fn_echo); // resolving again gives the same id
    rust::Vec<std::uint8_t> out;
    echo->call(fn_echo, keel::bytes("hello from C++"), out);
    CHECK(keel::view(out) == "hello from C++");
    {
        // The same host through the C ABI: the plugin loaded through C++ is found there.
        keel_host *c = keel::c_host(*host);
        keel_plugin *p = nullptr;
        CHECK(keel_plugin_get(c, "echo", &p) == KEEL_OK && p != nullptr);
        keel_function f = 0;
        CHECK(keel_plugin_function(p, "echo", &f) == KEEL_OK && f == fn_echo);
        CHECK(keel_plugin_free(p) == KEEL_OK);
        CHECK(keel_plugin_get(c, "no_such_plugin", &p) == KEEL_ERR_PLUGIN_NOT_FOUND);
    }
    echo->call(fn_echo, keel::bytes(""), out); // the output is cleared, not appended to
    CHECK(out.empty());
    echo->call(fn_sum, keel::bytes("\x01\x02\x03"), out);
    CHECK(keel::view(out) == "6");

    // The caller's vector is reused: once large enough, calls keep its buffer.
    const std::string big(4096, 'k');
    echo->call(fn_echo, keel::bytes(big), out);
    const std::uint8_t *buffer = out.data();
    const std::size_t capacity = out.capacity();
    for (int i = 0; i < 100; i++) {
        echo->call(fn_echo, keel::bytes(big), out);
    }
    CHECK(out.data() == buffer && out.capacity() == capacity && out.size() == big.size());

    // ---- Errors: rust::Error, what() = "<NAME> (<code>): <message>". ----
    Thrown t = thrown([&] { echo->call(fn_fail, keel::bytes("boom"), out); });
    CHECK(t.status == KEEL_ERR_CALL_FAILED);
    CHECK(starts_with(t.what, "KEEL_ERR_CALL_FAILED (704): "));
    CHECK(t.what.find("asked to fail") != std::string::npos);
    echo->call(fn_echo, keel::bytes("still serving"), out); // a failed call changes nothing
    CHECK(keel::view(out) == "still serving");

    t = thrown([&] { echo->function("no_such_function"); });
    CHECK(t.status == KEEL_ERR_FUNCTION_NOT_FOUND);
    CHECK(starts_with(t.what, "KEEL_ERR_FUNCTION_NOT_FOUND (201): "));
    t = thrown([&] { echo->call(9999, keel::bytes("x"), out); }); // an id never resolved
    CHECK(t.status == KEEL_ERR_FUNCTION_NOT_FOUND);

    t = thrown([&] { host->get("no_such_plugin"); });
    CHECK(t.status == KEEL_ERR_PLUGIN_NOT_FOUND);
    CHECK(starts_with(t.what, "KEEL_ERR_PLUGIN_NOT_FOUND (200): "));
    CHECK(t.what.find("no_such_plugin") != std::string::npos);
    t = thrown([&] { host->reload("no_such_plugin"); });
    CHECK(t.status == KEEL_ERR_PLUGIN_NOT_FOUND);
    t = thrown([&] { host->unload("no_such_plugin"); });
    CHECK(t.status == KEEL_ERR_PLUGIN_NOT_FOUND);
    t = thrown([&] { host->load(dir + "/echo/echo.json"); });
    CHECK(t.status == KEEL_ERR_ALREADY_LOADED);

    // Malformed manifest.
    const fs::path bad = tmp / "malformed.json";
    write_file(bad, "{ \"manifest_version\": 1, \"name\": ");
    t = thrown([&] { host->load(bad.string()); });
    CHECK(t.status == KEEL_ERR_MANIFEST_PARSE);
    CHECK(starts_with(t.what, "KEEL_ERR_MANIFEST_PARSE (300): "));
    t = thrown([&] { host->load((tmp / "missing.json").string()); });
    CHECK(t.status == KEEL_ERR_FILE_NOT_FOUND);
    // Strings cross as rust::Str, which must be UTF-8: its constructor refuses other bytes.
    bool refused = false;
    try {
        host->load(std::string("bad\xff.json"));
    } catch (const std::invalid_argument &) {
        refused = true;
    }
    CHECK(refused);

    // Trust settings.
    t = thrown([&] { host->set_trust_store_bytes(keel::bytes("not a trust store")); });
    CHECK(t.status == KEEL_ERR_TRUST_STORE_MALFORMED);
    t = thrown([&] { host->set_trust_store_file((tmp / "no-store.json").string()); });
    CHECK(t.status == KEEL_ERR_FILE_NOT_FOUND);
    t = thrown([&] { host->set_require_signature(false); }); // already off: nothing weakened
    CHECK(t.status == KEEL_OK);

    // A tampered binary (the echo manifest next to another binary), on a host of its own.
    {
        rust::Box<keel::bridge::Host> other = keel::new_host();
        other->set_require_signature(false);
        t = thrown([&] { other->load(dir + "/evil/tampered.json"); });
        CHECK(t.status == KEEL_ERR_DIGEST_MISMATCH);
        CHECK(starts_with(t.what, "KEEL_ERR_DIGEST_MISMATCH (400): "));
        t = thrown([&] { other->get("echo"); }); // nothing was registered
        CHECK(t.status == KEEL_ERR_PLUGIN_NOT_FOUND);
        // The host has started: the policy can be strengthened, never weakened again.
        other->set_require_signature(true);
        t = thrown([&] { other->set_require_signature(false); });
        CHECK(t.status == KEEL_ERR_POLICY_DOWNGRADE);
        CHECK(starts_with(t.what, "KEEL_ERR_POLICY_DOWNGRADE (411): "));
        // Signatures required (the default) and none present: refused before the digest.
        rust::Box<keel::bridge::Host> strict = keel::new_host();
        t = thrown([&] { strict->load(dir + "/echo/echo.json"); });
        CHECK(t.status == KEEL_ERR_NO_SIGNATURE);
    }

    // ---- Two threads calling one plugin, each with its own output vector. ----
    {
        std::atomic<int> wrong{0};
        std::atomic<int> errors{0};
        auto worker = [&](int id) {
            rust::Vec<std::uint8_t> mine;
            const std::string msg = "thread " + std::to_string(id);
            for (int i = 0; i < 2000; i++) {
                try {
                    echo->call(fn_echo, keel::bytes(msg), mine);
                    if (keel::view(mine) != msg) wrong++;
                    echo->call(fn_sum, keel::bytes("\x05\x05"), mine);
                    if (keel::view(mine) != "10") wrong++;
                } catch (const rust::Error &) {
                    errors++;
                }
            }
        };
        std::thread a(worker, 1), b(worker, 2);
        a.join();
        b.join();
        CHECK(wrong.load() == 0);
        CHECK(errors.load() == 0);
    }

    // ---- Handles: another handle on the same slot; reload keeps handles and function ids. ----
    rust::Box<keel::bridge::Plugin> again = host->get("echo");
    CHECK(str(again->name()) == "echo");
    CHECK(host->reload("echo") == 2);
    CHECK(echo->generation() == 2 && again->generation() == 2);
    again->call(fn_echo, keel::bytes("after reload"), out);
    CHECK(keel::view(out) == "after reload");

    const std::string metrics(host->metrics_text());
    CHECK(metrics.find("echo") != std::string::npos);
    CHECK(metrics.find("# EOF") != std::string::npos);

    // ---- Unload: handles stay safe and report KEEL_ERR_PLUGIN_UNLOADED. ----
    host->unload("echo");
    CHECK(echo->generation() == 0);
    t = thrown([&] { echo->call(fn_echo, keel::bytes("x"), out); });
    CHECK(t.status == KEEL_ERR_PLUGIN_UNLOADED);
    t = thrown([&] { echo->function("echo"); });
    CHECK(t.status == KEEL_ERR_PLUGIN_UNLOADED);
    t = thrown([&] { host->get("echo"); });
    CHECK(t.status == KEEL_ERR_PLUGIN_NOT_FOUND);

    // ---- A plugin directory: one folder per plugin (a Keel and a ThemisDB manifest). ----
    {
        const fs::path plugins = tmp / "plugins";
        fs::create_directories(plugins / "a-echo");
        fs::create_directories(plugins / "b-legacy");
        fs::copy_file(dir + "/echo/echo.json", plugins / "a-echo" / "keel.json");
        fs::copy_file(dir + "/echo/libecho.so", plugins / "a-echo" / "libecho.so");
        fs::copy_file(dir + "/legacy/plugin.json", plugins / "b-legacy" / "plugin.json");
        fs::copy_file(dir + "/legacy/liblegacy.so", plugins / "b-legacy" / "liblegacy.so");
        rust::Vec<rust::String> names = host->load_dir(plugins.string());
        std::vector<std::string> got;
        for (const rust::String &n : names) got.emplace_back(std::string(n));
        CHECK((got == std::vector<std::string>{"echo", "legacy"}));
        rust::Box<keel::bridge::Plugin> e = host->get("echo");
        e->call(e->function("echo"), keel::bytes("from a directory"), out);
        CHECK(keel::view(out) == "from a directory");
        t = thrown([&] { host->load_dir((tmp / "no-such-dir").string()); });
        CHECK(t.status == KEEL_ERR_FILE_NOT_FOUND);
    }

    // ---- Destroying the host unloads everything; a handle outliving it stays safe. ----
    rust::Box<keel::bridge::Plugin> survivor = host->get("echo");
    const std::uint32_t fn_survivor = survivor->function("echo");
    { rust::Box<keel::bridge::Host> gone = std::move(host); }
    t = thrown([&] { survivor->call(fn_survivor, keel::bytes("x"), out); });
    CHECK(t.status == KEEL_ERR_PLUGIN_UNLOADED);

    fs::remove_all(tmp);
    if (failures != 0) {
        std::fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    std::printf("test_cxx_api: all checks passed\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s <fixture dir>\n", argv[0]);
        return 2;
    }
    try {
        return run(argv[1]);
    } catch (const rust::Error &e) { // a step expected to succeed threw
        std::fprintf(stderr, "unexpected rust::Error: %s\n", e.what());
        return 1;
    }
}
