// Capabilities metrics:write and rpc:register from C++17 (-Wall -Wextra -Werror): the
// capmetrics native fixture defines metrics that appear in Host::metrics_text() with its
// plugin label, registers RPC endpoints during a call, and the server lists and invokes
// them with the keel.hpp wrappers (keel::rpc_list, keel::rpc_call, keel::RpcError).
// Usage: test_capmetrics <fixture dir>   (expects capmetrics/capmetrics.json)
#include <keel/keel.hpp>

#include <cstdio>
#include <string>
#include <vector>

static int failures = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);         \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static std::string call(const keel::bridge::Plugin &p, const char *fn, const std::string &input) {
    rust::Vec<std::uint8_t> out;
    p.call(p.function(fn), keel::bytes(input), out);
    return std::string(keel::view(out));
}

static bool contains(const std::string &s, const std::string &what) { return s.find(what) != std::string::npos; }

static int run(const std::string &dir) {
    rust::Box<keel::bridge::Host> host = keel::new_host();
    host->set_require_signature(false);
    // rpc:register is not in the default allowlist.
    const char *allow[] = {"log", "metrics:write", "rpc:register"};
    CHECK(keel_host_set_capability_allowlist(keel::c_host(*host), allow, 3) == KEEL_OK);

    rust::Box<keel::bridge::Plugin> p = host->load(dir + "/capmetrics/capmetrics.json");
    CHECK(call(*p, "caps", "") == "metrics=1 rpc=1");

    // ---- metrics:write ----
    call(*p, "hello", "abc");
    call(*p, "hello", "abcdef");
    const std::string text(host->metrics_text());
    CHECK(contains(text, "keel_custom_native_requests_total{plugin=\"capmetrics\",route=\"hello\"} 2"));
    CHECK(contains(text, "keel_custom_native_last_input_bytes{plugin=\"capmetrics\"} 6"));
    CHECK(contains(text, "# TYPE keel_custom_native_input_bytes histogram"));
    // A bad name is a status the plugin sees; the host keeps serving.
    CHECK(call(*p, "define", "0 bad-name") == std::to_string(KEEL_ERR_METRIC_INVALID) + " 0");
    CHECK(call(*p, "hello", "x") == "hello from v1: x");

    // ---- rpc:register ----
    CHECK(keel::rpc_list(*host).empty());
    CHECK(call(*p, "register", "cxx.greet hello") == "0");
    CHECK(call(*p, "register", "cxx.\"quoted\\ echo") == "0");
    const std::vector<keel::RpcEndpoint> eps = keel::rpc_list(*host);
    CHECK(eps.size() == 2);
    if (eps.size() == 2) {
        CHECK(eps[0].endpoint == "cxx.\"quoted\\" && eps[0].plugin == "capmetrics" && eps[0].function == "echo");
        CHECK(eps[1].endpoint == "cxx.greet" && eps[1].function == "hello");
    }
    CHECK(contains(keel::rpc_list_json(*host), "\"endpoint\":\"cxx.greet\""));
    CHECK(keel::rpc_call(*host, "cxx.greet", "C++") == "hello from v1: C++");
    CHECK(keel::rpc_call(*host, "cxx.\"quoted\\", "raw") == "raw");
    keel_status status = KEEL_OK;
    std::string what;
    try {
        keel::rpc_call(*host, "no.such", "");
    } catch (const keel::RpcError &e) {
        status = e.status();
        what = e.what();
    }
    CHECK(status == KEEL_ERR_RPC_ENDPOINT_NOT_FOUND);
    CHECK(contains(what, "KEEL_ERR_RPC_ENDPOINT_NOT_FOUND (609): ") && contains(what, "no.such"));
    // Taken by this plugin for another function: the plugin sees the error.
    CHECK(call(*p, "register", "cxx.greet echo") == std::to_string(KEEL_ERR_RPC_ENDPOINT_TAKEN));

    // Unload removes endpoints and series.
    host->unload("capmetrics");
    CHECK(keel::rpc_list(*host).empty());
    CHECK(!contains(std::string(host->metrics_text()), "keel_custom_"));
    return failures == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s <fixture dir>\n", argv[0]);
        return 2;
    }
    try {
        const int rc = run(argv[1]);
        if (rc != 0) {
            std::fprintf(stderr, "%d check(s) failed\n", failures);
        }
        return rc;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "unexpected exception: %s\n", e.what());
        return 1;
    }
}
