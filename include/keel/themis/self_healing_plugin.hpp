/*
 * keel/themis/self_healing_plugin.hpp — ThemisDB's optional self-healing mix-in for legacy C++
 * plugins, declared by Keel (interface facts from themisdb-compat §1.5 and §6.3, written for
 * Keel, not copied). ABI-compatible with ThemisDB's `include/plugins/self_healing_plugin.h`
 * (current line, v0.0.47):
 *
 *  - Everything lives in namespace `themis::plugins` (the namespace is part of the RTTI name
 *    `dynamic_cast` matches; see plugin_interface.hpp).
 *  - `ISelfHealingPlugin` is a separate polymorphic base (own vptr) with its virtual methods in
 *    ThemisDB's order: destructor, performHealthCheck, attemptSelfRepair, cleanupResources,
 *    rollbackToLastGoodState, saveCheckpoint, getRecoveryStrategies, executeRecoveryAction,
 *    getRecoveryConfiguration. The order is the ABI: never reorder, insert or remove one.
 *  - `PluginDiagnostics` is returned by value: its members, their types and their order are
 *    ABI too (std::string / std::vector / std::chrono::system_clock::time_point of the same
 *    C++ standard library ABI as the host).
 *
 * What Keel does with it (docs/themis.md, "Self-healing plugins"): Keel's health monitor asks
 * performHealthCheck() instead of reporting `Unknown` (HEALTHY → healthy; DEGRADED and
 * RECOVERING → degraded; UNHEALTHY and CRITICAL → unhealthy; an exception → unhealthy), and
 * before it restarts an unhealthy plugin it lets the plugin repair itself the way ThemisDB's
 * monitor does: the strategies the plugin declares, in the order CLEANUP_RESOURCES, RECONNECT,
 * RELOAD_CONFIG, ROLLBACK_STATE, RESTART_PLUGIN, through executeRecoveryAction, each followed by
 * a new health check; then attemptSelfRepair(diagnostics). Only if none brings the plugin back
 * to HEALTHY or DEGRADED does Keel restart it (a verified reload, state carried over).
 */
#ifndef KEEL_THEMIS_SELF_HEALING_PLUGIN_HPP
#define KEEL_THEMIS_SELF_HEALING_PLUGIN_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace themis {
namespace plugins {

/** Health of a plugin as it reports it (values in ThemisDB's order). */
enum class PluginHealthStatus { HEALTHY, DEGRADED, UNHEALTHY, CRITICAL, RECOVERING };

/** What performHealthCheck() reports. Member order and types are ABI. */
struct PluginDiagnostics {
    PluginHealthStatus status = PluginHealthStatus::HEALTHY;
    std::string error_message;
    std::string error_code;

    std::uint64_t error_count = 0;
    std::uint64_t recovery_attempts = 0;
    std::uint64_t successful_recoveries = 0;
    std::uint64_t failed_recoveries = 0;

    std::size_t memory_usage_bytes = 0;
    double cpu_usage_percent = 0.0;
    std::uint64_t open_file_handles = 0;
    std::uint64_t active_connections = 0;

    /** At most 10, newest last. */
    std::vector<std::string> recent_errors;
    std::chrono::system_clock::time_point last_error_time;

    std::string suggested_recovery_action;
    std::vector<std::string> available_recovery_strategies;

    double average_response_time_ms = 0.0;
    std::uint64_t total_requests = 0;
    std::uint64_t failed_requests = 0;

    /** failed_requests / total_requests (0 without requests). */
    double getErrorRate() const {
        return total_requests == 0 ? 0.0 : static_cast<double>(failed_requests) / static_cast<double>(total_requests);
    }

    /** CRITICAL, RECOVERING, or an error rate above one half. */
    bool needsImmediateAttention() const {
        return status == PluginHealthStatus::CRITICAL || status == PluginHealthStatus::RECOVERING || getErrorRate() > 0.5;
    }
};

/** Recovery actions a plugin may declare (values in ThemisDB's order). */
enum class RecoveryAction {
    NONE,
    CLEANUP_RESOURCES,
    RECONNECT,
    RELOAD_CONFIG,
    ROLLBACK_STATE,
    RESTART_PLUGIN,
    SWITCH_TO_BACKUP,
    NOTIFY_ADMIN
};

/** The optional self-healing interface, found with dynamic_cast. Methods must be thread-safe. */
class ISelfHealingPlugin {
public:
    virtual ~ISelfHealingPlugin() = default;

    [[nodiscard]] virtual PluginDiagnostics performHealthCheck() = 0;
    [[nodiscard]] virtual bool attemptSelfRepair(const PluginDiagnostics &diagnostics) = 0;
    [[nodiscard]] virtual bool cleanupResources() = 0;
    [[nodiscard]] virtual bool rollbackToLastGoodState() = 0;
    virtual void saveCheckpoint() = 0;
    [[nodiscard]] virtual std::vector<RecoveryAction> getRecoveryStrategies() const = 0;

    /** Default: CLEANUP_RESOURCES → cleanupResources(), ROLLBACK_STATE →
     *  rollbackToLastGoodState(), anything else → false. */
    virtual bool executeRecoveryAction(RecoveryAction action) {
        switch (action) {
        case RecoveryAction::CLEANUP_RESOURCES: return cleanupResources();
        case RecoveryAction::ROLLBACK_STATE: return rollbackToLastGoodState();
        default: return false;
        }
    }

    /** JSON describing the plugin's recovery preferences (informational for Keel). */
    virtual std::string getRecoveryConfiguration() const {
        return "{\"max_recovery_attempts\":3,\"recovery_timeout_seconds\":30,"
               "\"backoff_strategy\":\"exponential\",\"notify_admin_on_failure\":true}";
    }
};

/** Outcome of one recovery (ThemisDB's monitor type; Keel reports its own health report). */
struct RecoveryResult {
    bool successful = false;
    RecoveryAction action_taken = RecoveryAction::NONE;
    std::string message;
    std::chrono::milliseconds duration{0};
    PluginHealthStatus status_after_recovery = PluginHealthStatus::UNHEALTHY;
};

using RecoveryEventCallback = std::function<void(const std::string &plugin_name, const RecoveryResult &result)>;

} // namespace plugins

// The old Keel spelling (namespace themis) names the same types.
using plugins::ISelfHealingPlugin;
using plugins::PluginDiagnostics;
using plugins::PluginHealthStatus;
using plugins::RecoveryAction;
using plugins::RecoveryEventCallback;
using plugins::RecoveryResult;

} // namespace themis

#endif // KEEL_THEMIS_SELF_HEALING_PLUGIN_HPP
