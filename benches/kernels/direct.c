/*
 * The compute kernels of the WASM and native fixtures (tests/fixtures/wasm/c/kernel.h),
 * exported as plain C functions: the "same C compiled directly" baseline of benches/wasm.rs.
 * Built by the bench with clang, like both plugin builds it is compared with.
 */
#include <stdint.h>

#include "kernel.h"

uint64_t bench_kernel_sum(const uint8_t *p, uint32_t n) { return kernel_sum(p, n); }

uint64_t bench_kernel_fnv1a(const uint8_t *p, uint32_t n) { return kernel_checksum(p, n); }
