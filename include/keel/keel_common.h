/*
 * keel_common.h — values shared by the native plugin ABI (keel_plugin.h) and the WASM plugin
 * ABI (keel_wasm.h). Defined here once; both headers include it, so a plugin may include
 * either or both.
 *
 * Plain C99 (preprocessor definitions only); usable from C++ and from wasm32 builds.
 */
#ifndef KEEL_COMMON_H
#define KEEL_COMMON_H

/** Log levels (keel_host_api.log in keel_plugin.h, keel_log in keel_wasm.h). */
#define KEEL_LOG_ERROR 0
#define KEEL_LOG_WARN 1
#define KEEL_LOG_INFO 2
#define KEEL_LOG_DEBUG 3

/** Values a plugin's health hook returns (`health` in keel_plugin.h, keel_health in keel_wasm.h). */
#define KEEL_HEALTH_HEALTHY 0
#define KEEL_HEALTH_DEGRADED 1
#define KEEL_HEALTH_UNHEALTHY 2

/** Metric kinds (capability "metrics:write": metric_define in keel_plugin.h,
 *  keel_metric_define in keel_wasm.h). */
#define KEEL_METRIC_COUNTER 0
#define KEEL_METRIC_GAUGE 1
#define KEEL_METRIC_HISTOGRAM 2

#endif /* KEEL_COMMON_H */
