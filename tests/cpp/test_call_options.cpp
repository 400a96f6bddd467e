// Calls with options from C++ (the `callopts` block of include/keel/keel.hpp, over the C ABI)
// with -Wall -Wextra -Werror: keel::CancelToken (RAII, copies share the token, cancel from
// another thread), keel::CallOptions with std types (chrono deadline, optional fuel, strings),
// keel::call_with, errors as keel::CallError with their keel_status.
// Usage: test_call_options <fixture dir>   (expects cancel_poll/cancel_poll.json)
#include <keel/keel.hpp>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <utility>

static int failures = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);         \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

// The status a keel::CallError carried (KEEL_OK if nothing was thrown), and its what().
struct Thrown {
    keel_status status = KEEL_OK;
    std::string what;
};

template <typename F> static Thrown thrown(F &&f) {
    Thrown t;
    try {
        f();
    } catch (const keel::CallError &e) {
        t.status = e.status();
        t.what = e.what();
    }
    return t;
}

static std::string plain(const keel::PluginRef &p, const char *fn) {
    keel::Buffer out;
    keel::call(p, p.function(fn), keel::bytes(""), out);
    return std::string(out.view());
}

static void wait_until_running(const keel::PluginRef &p) {
    while (plain(p, "running") != "1") {
        std::this_thread::yield();
    }
}

static int run(const std::string &dir) {
    rust::Box<keel::bridge::Host> host = keel::new_host();
    host->set_require_signature(false);
    rust::Box<keel::bridge::Plugin> loaded = host->load(dir + "/cancel_poll/cancel_poll.json");
    keel::PluginRef plugin(*host, "cancel_poll");
    const keel_function wait = plugin.function("wait");
    const keel_function finish = plugin.function("finish");
    const keel_function state = plugin.function("state");

    // No options set: as a plain call.
    {
        keel::Buffer out;
        keel::call_with(plugin, state, keel::bytes(""), keel::CallOptions{}, out);
        CHECK(out.view() == "0");
    }

    // Cancel from another thread through a copy of the token: the polling plugin stops,
    // the call throws KEEL_ERR_CANCELLED.
    {
        keel::CancelToken token;
        CHECK(!token.cancelled());
        keel::CallOptions opts;
        opts.cancel = token; // another reference to the same token
        opts.tenant = "tenant-7";
        opts.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        Thrown t;
        std::thread caller([&] {
            keel::Buffer out;
            t = thrown([&] { keel::call_with(plugin, wait, keel::bytes(""), opts, out); });
        });
        wait_until_running(plugin);
        keel::CancelToken moved = std::move(token); // moving keeps the token alive
        CHECK(token.c_handle() == nullptr);
        CHECK(!token.cancelled());
        std::thread([copy = moved] { copy.cancel(); }).join();
        caller.join();
        CHECK(t.status == KEEL_ERR_CANCELLED);
        CHECK(t.what.rfind("KEEL_ERR_CANCELLED (804): ", 0) == 0);
        CHECK(moved.cancelled());
        CHECK(opts.cancel->cancelled());
        // A call with the cancelled token is not run.
        keel::Buffer out;
        t = thrown([&] { keel::call_with(plugin, finish, keel::bytes(""), opts, out); });
        CHECK(t.status == KEEL_ERR_CANCELLED);
        CHECK(out.view().empty());
    }

    // A token whose only C++ owner is destroyed while the call runs: the call holds its own
    // reference; its per-call deadline then stops the plugin (KEEL_ERR_DEADLINE).
    {
        keel::CallOptions opts;
        opts.cancel = keel::CancelToken();
        opts.deadline = std::chrono::milliseconds(200);
        Thrown t;
        std::thread caller([&] {
            keel::Buffer out;
            t = thrown([&] { keel::call_with(plugin, wait, keel::bytes(""), opts, out); });
        });
        wait_until_running(plugin); // call_with has read `opts` by now
        opts.cancel.reset();
        caller.join();
        CHECK(t.status == KEEL_ERR_DEADLINE);
    }

    // Success after the deadline passed: delivered (the work was done).
    {
        keel::CallOptions opts;
        opts.deadline = std::chrono::milliseconds(10);
        opts.fuel = 1000; // ignored by native plugins
        keel::Buffer out;
        keel::call_with(plugin, finish, keel::bytes(""), opts, out);
        CHECK(out.view() == "done");
    }

    // Bad options: clear codes, the plugin keeps serving.
    {
        keel::CallOptions opts;
        opts.traceparent = "not-a-traceparent";
        keel::Buffer out;
        Thrown t = thrown([&] { keel::call_with(plugin, state, keel::bytes(""), opts, out); });
        CHECK(t.status == KEEL_ERR_INVALID_ARGUMENT);
        CHECK(t.what.find("traceparent") != std::string::npos);
        opts.traceparent.clear();
        opts.tenant = std::string("a\0b", 3);
        t = thrown([&] { keel::call_with(plugin, state, keel::bytes(""), opts, out); });
        CHECK(t.status == KEEL_ERR_INVALID_ARGUMENT);
        opts.tenant = std::string(300, 't');
        t = thrown([&] { keel::call_with(plugin, state, keel::bytes(""), opts, out); });
        CHECK(t.status == KEEL_ERR_INVALID_ARGUMENT);
        t = thrown([&] { keel::PluginRef missing(*host, "no_such_plugin"); });
        CHECK(t.status == KEEL_ERR_PLUGIN_NOT_FOUND);
        CHECK(plain(plugin, "has") == "yes");
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
    std::puts("test_call_options: ok");
    return 0;
}
