// The sinks from C++ (include/keel/keel.hpp, block "sinks") with -Wall -Wextra -Werror: a
// server owning tables in a keel::StorageSink that a native plugin reads and writes through
// storage:*, kv:* in the plugin's own namespace through the same sink, a refusal and a
// throwing sink turned into errors the plugin sees, a std::function log sink, the defaults
// restored, the same plugin without storage:* seeing NULL entries.
// Usage: test_sinks <fixture dir>   (expects storage/storage.json, storage_nocap/storage.json)
#include <keel/keel.hpp>

#include <cstdio>
#include <map>
#include <mutex>
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

// The server's storage: rows by "<space>\n<key>", space "table:<t>" or "kv:<plugin>".
// Table "secrets" is refused; table "explode" throws something that is not a std::exception.
class Server : public keel::StorageSink {
  public:
    std::mutex mu;
    std::map<std::string, std::string> rows;
    std::vector<std::string> seen; // "<plugin>:<table or -"

    static std::string space(const keel::StorageRequest &r) {
        if (!r.table) return "kv:" + std::string(r.plugin);
        if (*r.table == "secrets") throw std::runtime_error("access to table 'secrets' denied");
        if (*r.table == "explode") throw 42;
        return "table:" + std::string(*r.table);
    }
    std::string key(const keel::StorageRequest &r, std::string_view k) {
        std::lock_guard<std::mutex> g(mu);
        seen.push_back(std::string(r.plugin) + ":" + (r.table ? std::string(*r.table) : "-"));
        return space(r) + "\n" + std::string(k);
    }

    std::optional<std::string> get(const keel::StorageRequest &r, std::string_view k) override {
        const std::string full = key(r, k);
        std::lock_guard<std::mutex> g(mu);
        auto it = rows.find(full);
        if (it == rows.end()) return std::nullopt;
        return it->second;
    }
    void put(const keel::StorageRequest &r, std::string_view k, std::string_view v) override {
        const std::string full = key(r, k);
        std::lock_guard<std::mutex> g(mu);
        rows[full] = std::string(v);
    }
    bool remove(const keel::StorageRequest &r, std::string_view k) override {
        const std::string full = key(r, k);
        std::lock_guard<std::mutex> g(mu);
        return rows.erase(full) == 1;
    }
    void scan(const keel::StorageRequest &r, std::string_view prefix,
              const std::function<bool(std::string_view, std::string_view)> &visit) override {
        const std::string from = key(r, prefix);
        const std::string sp = from.substr(0, from.size() - prefix.size());
        std::lock_guard<std::mutex> g(mu);
        for (auto it = rows.lower_bound(from); it != rows.end() && it->first.rfind(from, 0) == 0; ++it) {
            if (!visit(std::string_view(it->first).substr(sp.size()), it->second)) break;
        }
    }
};

struct Line {
    std::string plugin;
    int level;
    std::string message, trace_id, tenant;
};

static std::string call(const keel::bridge::Plugin &p, const char *fn, const std::string &input, std::string *error = nullptr) {
    rust::Vec<std::uint8_t> out;
    try {
        p.call(p.function(fn), keel::bytes(input), out);
    } catch (const rust::Error &e) {
        if (error) *error = e.what();
        else {
            std::fprintf(stderr, "%s(%s) threw: %s\n", fn, input.c_str(), e.what());
            failures++;
        }
        return "";
    }
    if (error) *error = "";
    return std::string(keel::view(out));
}

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: test_sinks <fixture dir>\n");
        return 2;
    }
    const std::string dir = argv[1];
    rust::Box<keel::bridge::Host> host = keel::new_host();
    host->set_require_signature(false);
    const char *caps[] = {"log", "kv:read", "kv:write", "storage:read", "storage:write"};
    CHECK(keel_host_set_capability_allowlist(keel::c_host(*host), caps, 5) == KEEL_OK);

    auto server = std::make_shared<Server>();
    server->rows["table:orders\no1"] = "apples";
    server->rows["table:orders\no2"] = "pears";
    std::weak_ptr<Server> weak = server;
    keel::set_storage_sink(*host, server);
    server.reset(); // Keel holds it now

    std::mutex log_mu;
    std::vector<Line> lines;
    keel::set_log_sink(*host, [&](const keel::LogRecord &r) {
        std::lock_guard<std::mutex> g(log_mu);
        lines.push_back(Line{std::string(r.plugin), r.level, std::string(r.message), std::string(r.trace_id),
                             std::string(r.tenant)});
    });

    {
        rust::Box<keel::bridge::Plugin> p = host->load(dir + "/storage/storage.json");
        auto srv = weak.lock();
        CHECK(srv != nullptr);
        CHECK(call(*p, "get", "orders|o1") == "apples");
        call(*p, "put", "orders|o3=plums");
        {
            std::lock_guard<std::mutex> g(srv->mu);
            CHECK(srv->rows["table:orders\no3"] == "plums");
        }
        CHECK(call(*p, "scan", "orders|o") == "o1=apples\no2=pears\no3=plums\n");
        CHECK(call(*p, "del", "orders|o1") == "deleted");
        CHECK(call(*p, "del", "orders|o1") == "absent");
        // kv:* through the same sink, in the plugin's namespace.
        call(*p, "kv_put", "a=1");
        CHECK(call(*p, "kv_scan", "") == "a=1\n");
        {
            std::lock_guard<std::mutex> g(srv->mu);
            CHECK(srv->rows["kv:storage\na"] == "1");
            bool saw_table = false, saw_kv = false;
            for (auto &s : srv->seen) {
                saw_table |= s == "storage:orders";
                saw_kv |= s == "storage:-";
            }
            CHECK(saw_table && saw_kv);
        }
        // A refusal (std::exception) and a non-std exception: errors the plugin sees.
        std::string err;
        call(*p, "get", "secrets|k", &err);
        CHECK(err.find("KEEL_ERR_CALL_FAILED") != std::string::npos);
        CHECK(err.find("access to table 'secrets' denied") != std::string::npos);
        call(*p, "put", "explode|k=v", &err);
        CHECK(err.find("unknown C++ exception") != std::string::npos);
        // The host keeps serving.
        CHECK(call(*p, "get", "orders|o2") == "pears");

        // The log sink: the plugin's name, level and message (no trace context in a plain call).
        call(*p, "log", "hello from native");
        {
            std::lock_guard<std::mutex> g(log_mu);
            CHECK(lines.size() == 1);
            if (!lines.empty()) {
                CHECK(lines[0].plugin == "storage");
                CHECK(lines[0].level == KEEL_LOG_INFO);
                CHECK(lines[0].message == "hello from native");
                CHECK(lines[0].trace_id.empty() && lines[0].tenant.empty());
            }
        }
        // A throwing log sink drops the line; the call succeeds.
        keel::set_log_sink(*host, [](const keel::LogRecord &) { throw std::runtime_error("log sink down"); });
        call(*p, "log", "dropped");
        keel::set_log_sink(*host, nullptr); // stderr again
        call(*p, "log", "to stderr");
        CHECK(lines.size() == 1);

        // Back to the default map: no tables, kv in memory.
        keel::set_storage_sink(*host, nullptr);
        call(*p, "get", "orders|o2", &err);
        CHECK(err.find("no storage sink is set") != std::string::npos);
        call(*p, "kv_put", "b=2");
        CHECK(call(*p, "kv_scan", "b") == "b=2\n");
        host->unload("storage");
    }
    // Keel released the server once it was replaced and no operation was inside it.
    CHECK(weak.expired());

    // Without storage:* the entries are NULL.
    {
        rust::Box<keel::bridge::Plugin> p = host->load(dir + "/storage_nocap/storage.json");
        CHECK(call(*p, "caps", "") ==
              "kv_scan=1 storage_get=0 storage_put=0 storage_delete=0 storage_scan=0 sink_error=1");
    }

    if (failures) {
        std::fprintf(stderr, "test_sinks: %d failure(s)\n", failures);
        return 1;
    }
    std::printf("test_sinks: ok\n");
    return 0;
}
