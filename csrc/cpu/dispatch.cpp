// The cpu:: entry points: each calls the same function of the ISA level chosen
// once, at load time (the best this CPU supports, or UNIGRPO_CPU_ISA), among the
// levels this module was built with (common.h). Compiled for baseline x86-64.
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "common.h"

namespace unigrpo {
namespace cpu {
namespace {

struct Level {
  const char* name;
  bool (*supported)();
  decltype(&baseline::logprob_forward) logprob_forward;
  decltype(&baseline::logprob_backward) logprob_backward;
  decltype(&baseline::sde_row_sums) sde_row_sums;
  decltype(&baseline::sde_row_grad) sde_row_grad;
};

#define UNIGRPO_LEVEL(ns, label, test) \
  Level{label, test, &ns::logprob_forward, &ns::logprob_backward, &ns::sde_row_sums, &ns::sde_row_grad}

#if defined(__x86_64__) && defined(__GNUC__)
bool has_v4() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
bool has_v3() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
         __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("movbe");
}
#endif
bool always() { return true; }

// best first; the last is always supported
const Level kLevels[] = {
#if defined(UNIGRPO_BUILT_X86_64_V4)
    UNIGRPO_LEVEL(x86_64_v4, "x86-64-v4", has_v4),
#endif
#if defined(UNIGRPO_BUILT_X86_64_V3)
    UNIGRPO_LEVEL(x86_64_v3, "x86-64-v3", has_v3),
#endif
    UNIGRPO_LEVEL(baseline, "baseline", always),
};
constexpr int kNumLevels = sizeof(kLevels) / sizeof(kLevels[0]);

const char* const* level_names() {
  static const char* names[kNumLevels + 1] = {};
  for (int i = 0; i < kNumLevels; ++i) names[i] = kLevels[i].name;
  return names;
}

int find(const std::string& name) {
  for (int i = 0; i < kNumLevels; ++i)
    if (name == kLevels[i].name) return i;
  std::string built;
  for (int i = 0; i < kNumLevels; ++i) built += std::string(i ? ", " : "") + kLevels[i].name;
  throw std::invalid_argument("unknown CPU ISA level '" + name + "'; this build has: " + built);
}

int pick_at_load() {
  const char* env = std::getenv("UNIGRPO_CPU_ISA");
  if (env && *env) {  // a forced level this CPU cannot run falls back to the best it can, never crashes
    const int i = find(env);
    if (kLevels[i].supported()) return i;
  }
  for (int i = 0; i < kNumLevels; ++i)
    if (kLevels[i].supported()) return i;
  return kNumLevels - 1;
}

std::atomic<int>& current() {
  static std::atomic<int> level{pick_at_load()};
  return level;
}

const Level& use() { return kLevels[current().load(std::memory_order_relaxed)]; }

}  // namespace

const char* const* isa_levels_built() { return level_names(); }
const char* isa_in_use() { return use().name; }

void set_isa(const std::string& level) {
  const int i = find(level);
  if (!kLevels[i].supported())
    throw std::invalid_argument("CPU ISA level '" + level + "' is not supported by this CPU");
  current().store(i);
}

void logprob_forward(std::uintptr_t logits, int dtype, int64_t N, int64_t V, int64_t row_stride,
                     std::uintptr_t ids, double inv_temp, std::uintptr_t logp, std::uintptr_t lse_parts,
                     std::uintptr_t entropy) {
  use().logprob_forward(logits, dtype, N, V, row_stride, ids, inv_temp, logp, lse_parts, entropy);
}

void logprob_backward(std::uintptr_t logits, int dtype, int64_t N, int64_t V, int64_t row_stride,
                      std::uintptr_t ids, std::uintptr_t lse_parts, double inv_temp, std::uintptr_t grad_logp,
                      std::uintptr_t grad_entropy, std::uintptr_t entropy, std::uintptr_t grad_out) {
  use().logprob_backward(logits, dtype, N, V, row_stride, ids, lse_parts, inv_temp, grad_logp, grad_entropy, entropy,
                         grad_out);
}

void sde_row_sums(int dtype, int64_t B, int64_t D, std::uintptr_t x, std::uintptr_t x_next, std::uintptr_t v,
                  std::uintptr_t cx, std::uintptr_t cv, std::uintptr_t v_ref, std::uintptr_t weight,
                  int64_t weight_row_stride, std::uintptr_t s1, std::uintptr_t s2) {
  use().sde_row_sums(dtype, B, D, x, x_next, v, cx, cv, v_ref, weight, weight_row_stride, s1, s2);
}

void sde_row_grad(int dtype, int64_t B, int64_t D, std::uintptr_t x, std::uintptr_t x_next, std::uintptr_t v,
                  std::uintptr_t cx, std::uintptr_t cv, std::uintptr_t v_ref, std::uintptr_t weight,
                  int64_t weight_row_stride, std::uintptr_t a, std::uintptr_t b, std::uintptr_t grad_out) {
  use().sde_row_grad(dtype, B, D, x, x_next, v, cx, cv, v_ref, weight, weight_row_stride, a, b, grad_out);
}

}  // namespace cpu
}  // namespace unigrpo
