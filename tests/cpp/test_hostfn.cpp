// Host functions defined from C++ (include/keel/keel.hpp, "hostfn" block) with C++17 and
// -Wall -Wextra -Werror: a native plugin (tests/fixtures/native/hostfn.c) reads and writes rows
// of a table this program owns through std::function host functions "db.get_row" and
// "db.put_row"; a function that throws gives the plugin an error and the host keeps serving;
// the std::function is destroyed exactly once, when no loaded plugin is bound to it any more.
// Usage: test_hostfn <fixture dir>   (expects hostfn/hostfn.json)
#include <keel/keel.hpp>

#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

static int failures = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);         \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

// The error of a call that threw (empty if it did not).
template <typename F> static std::string error_of(F &&f) {
    try {
        f();
    } catch (const std::exception &e) {
        return e.what();
    }
    return std::string();
}

static bool contains(const std::string &s, const char *part) { return s.find(part) != std::string::npos; }

// Counts destructions of the state a host function holds.
struct Tracker {
    std::atomic<int> *destroyed;
    explicit Tracker(std::atomic<int> *d) : destroyed(d) {}
    ~Tracker() { destroyed->fetch_add(1); }
};

static int run(const std::string &dir) {
    rust::Box<keel::bridge::Host> host = keel::new_host();
    host->set_require_signature(false);
    const char *allow[] = {"storage:read", "storage:write"};
    CHECK(keel_host_set_capability_allowlist(keel::c_host(*host), allow, 2) == KEEL_OK);

    std::mutex mu;
    std::map<std::string, std::string> table{{"k0", "from the server"}};
    std::atomic<int> destroyed{0};
    auto tracker = std::make_shared<Tracker>(&destroyed);

    keel::define_host_function(*host, "db", "get_row", "storage:read",
                               [&, tracker](const keel::CallContext &ctx, std::string_view key) -> std::string {
                                   if (ctx.plugin() != "hostfn" || !ctx.tenant().empty() || ctx.user_context() != nullptr ||
                                       ctx.cancelled())
                                       throw std::runtime_error("unexpected call context");
                                   std::lock_guard<std::mutex> g(mu);
                                   auto it = table.find(std::string(key));
                                   if (it == table.end()) throw std::runtime_error("no row '" + std::string(key) + "'");
                                   return it->second;
                               });
    tracker.reset(); // the definition holds the only reference now
    keel::define_host_function(*host, "db", "put_row", "storage:write",
                               [&](const keel::CallContext &, std::string_view in) -> std::string {
                                   if (in.empty() || in.size() < 1u + static_cast<unsigned char>(in[0]))
                                       throw std::invalid_argument("short put");
                                   const size_t klen = static_cast<unsigned char>(in[0]);
                                   std::lock_guard<std::mutex> g(mu);
                                   table[std::string(in.substr(1, klen))] = std::string(in.substr(1 + klen));
                                   return std::string();
                               });

    rust::Box<keel::bridge::Plugin> p = host->load(dir + "/hostfn/hostfn.json");
    rust::Vec<std::uint8_t> out;
    const std::uint32_t get = p->function("get"), put = p->function("put"), bound = p->function("bound");
    p->call(bound, keel::bytes(""), out);
    CHECK(keel::view(out) == std::string_view("\x01\x01", 2));
    p->call(get, keel::bytes("k0"), out);
    CHECK(keel::view(out) == "from the server");
    p->call(put, keel::bytes("\x02k1hello"), out);
    {
        std::lock_guard<std::mutex> g(mu);
        CHECK(table["k1"] == "hello");
    }
    p->call(get, keel::bytes("k1"), out);
    CHECK(keel::view(out) == "hello");

    // A function that throws: the plugin's call fails with the exception's message; the host
    // and the plugin keep serving.
    for (int i = 0; i < 3; i++) {
        std::string e = error_of([&] { p->call(get, keel::bytes("missing"), out); });
        CHECK(contains(e, "KEEL_ERR_CALL_FAILED") && contains(e, "no row 'missing'"));
        e = error_of([&] { p->call(put, keel::bytes(""), out); });
        CHECK(contains(e, "KEEL_ERR_CALL_FAILED") && contains(e, "short put") && contains(e, "returned -3"));
        p->call(get, keel::bytes("k0"), out);
        CHECK(keel::view(out) == "from the server");
    }

    // Replaced while the plugin is bound to it: destroyed only when the plugin lets go.
    keel::define_host_function(*host, "db", "get_row", "storage:read",
                               [](const keel::CallContext &, std::string_view) -> std::string { return "v2"; });
    CHECK(destroyed.load() == 0);
    p->call(get, keel::bytes("k0"), out);
    CHECK(keel::view(out) == "from the server");
    host->reload("hostfn");
    CHECK(destroyed.load() == 1);
    p->call(get, keel::bytes("k0"), out);
    CHECK(keel::view(out) == "v2");

    // Errors are HostFunctionError with their status.
    try {
        keel::define_host_function(*host, "keel", "x", "log",
                                   [](const keel::CallContext &, std::string_view) { return std::string(); });
        CHECK(false);
    } catch (const keel::HostFunctionError &e) {
        CHECK(e.status() == KEEL_ERR_INVALID_ARGUMENT);
    }
    keel::remove_host_function(*host, "db", "put_row");
    try {
        keel::remove_host_function(*host, "db", "put_row");
        CHECK(false);
    } catch (const keel::HostFunctionError &e) {
        CHECK(e.status() == KEEL_ERR_HOST_FN_NOT_FOUND);
        CHECK(contains(e.what(), "db.put_row"));
    }
    return failures;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s <fixture dir>\n", argv[0]);
        return 2;
    }
    try {
        const int f = run(argv[1]);
        if (f != 0) {
            std::fprintf(stderr, "%d check(s) failed\n", f);
            return 1;
        }
    } catch (const std::exception &e) {
        std::fprintf(stderr, "unexpected exception: %s\n", e.what());
        return 1;
    }
    std::puts("test_hostfn: ok");
    return 0;
}
