// Shared by the native kernels.
//
// The dtype enum at the top is plain C++ and safe to include from CUDA
// sources. Everything after it (argument checks, scalar fp16/bf16 conversion,
// the portable SIMD layer) is host-only and skipped under nvcc.
#pragma once

#include <cstdint>

namespace unigrpo {

// dtype codes of the native ABI (csrc/README.md).
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

}  // namespace unigrpo

#if !defined(__CUDACC__)

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace unigrpo {

// Asks Linux for transparent huge pages on the 2 MiB-aligned interior of a
// large output buffer the kernel is about to write in full (a fresh
// torch.empty: not yet faulted in). First-touch page faults of a 4 KiB-paged
// buffer otherwise cost several times the kernel itself (e.g. 60 ms vs 13 ms
// for a 256 MiB gradient). Advisory only: errors are ignored, memory already
// faulted in is unaffected, and UNIGRPO_HUGEPAGES=0 turns it off. This is what
// PyTorch's own THP_MEM_ALLOC_ENABLE=1 does for every large allocation.
inline void advise_huge_pages(void* ptr, uint64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* env = std::getenv("UNIGRPO_HUGEPAGES");
    return !(env && env[0] == '0');
  }();
  constexpr std::uintptr_t kHuge = std::uintptr_t(2) << 20;
  if (!enabled || bytes < 2 * kHuge) return;
  const std::uintptr_t begin = (reinterpret_cast<std::uintptr_t>(ptr) + kHuge - 1) & ~(kHuge - 1);
  const std::uintptr_t end = (reinterpret_cast<std::uintptr_t>(ptr) + bytes) & ~(kHuge - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)bytes;
#endif
}

// Runs f(begin, end) on contiguous static chunks of [0, n) across the OpenMP
// threads (one chunk each); serially when OpenMP is absent or the job is small
// (n * cost_per_item below ~64K elements is not worth waking the team).
template <class F>
inline void parallel_chunks(int64_t n, int64_t cost_per_item, F&& f) {
#ifdef _OPENMP
  const bool parallel = n > 1 && n * cost_per_item >= (int64_t(1) << 16) && omp_get_max_threads() > 1;
#pragma omp parallel if (parallel)
  {
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t chunk = n / nt, rem = n % nt;
    const int64_t begin = tid * chunk + (tid < rem ? tid : rem);
    const int64_t end = begin + chunk + (tid < rem ? 1 : 0);
    if (begin < end) f(begin, end);
  }
#else
  (void)cost_per_item;
  f(int64_t(0), n);
#endif
}

// ---------------------------------------------------------------------------
// Argument checks. They throw std::invalid_argument, which pybind11 turns into
// a Python ValueError; the message names the entry point and the argument.
// ---------------------------------------------------------------------------

[[noreturn]] inline void arg_error(const char* fn, const char* arg, const std::string& what) {
  throw std::invalid_argument(std::string(fn) + ": argument '" + arg + "' " + what);
}

inline const char* dtype_name(int dtype) {
  switch (dtype) {
    case kFloat32: return "float32";
    case kFloat16: return "float16";
    case kBFloat16: return "bfloat16";
    default: return "unknown";
  }
}

inline void check_dtype(const char* fn, const char* arg, int dtype) {
  if (dtype != kFloat32 && dtype != kFloat16 && dtype != kBFloat16)
    arg_error(fn, arg, "must be a dtype code 0 (float32), 1 (float16) or 2 (bfloat16), got " +
                           std::to_string(dtype));
}

inline void check_positive(const char* fn, const char* arg, int64_t value) {
  if (value <= 0) arg_error(fn, arg, "must be > 0, got " + std::to_string(value));
}

inline void check_nonnull(const char* fn, const char* arg, std::uintptr_t ptr) {
  if (ptr == 0) arg_error(fn, arg, "is a null pointer (0) but is required here");
}

#define UNIGRPO_CHECK_ARG(cond, fn, arg, what) \
  do {                                         \
    if (!(cond)) ::unigrpo::arg_error((fn), (arg), (what)); \
  } while (0)

// ---------------------------------------------------------------------------
// Storage types. Both half types are bit containers: all arithmetic is fp32.
// ---------------------------------------------------------------------------

struct bf16_t { uint16_t bits; };
struct fp16_t { uint16_t bits; };
static_assert(sizeof(bf16_t) == 2 && sizeof(fp16_t) == 2, "half types must be 2 bytes");

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float f32_from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// Scalar conversions (round to nearest even, NaN kept quiet), pure integer and
// fp32 arithmetic: no F16C needed. Same algorithms as the vector versions below.
inline float to_float(float x) { return x; }
inline float to_float(bf16_t x) { return f32_from_bits(uint32_t(x.bits) << 16); }
inline float to_float(fp16_t x) {
  const uint32_t w = uint32_t(x.bits) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = f32_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = f32_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t r = two_w < (1u << 27) ? f32_bits(denormalized) : f32_bits(normalized);
  return f32_from_bits(sign | r);
}

template <class T> inline T from_float(float f);
template <> inline float from_float<float>(float f) { return f; }
template <> inline bf16_t from_float<bf16_t>(float f) {
  const uint32_t u = f32_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bf16_t{uint16_t((u >> 16) | 0x40u)};
  return bf16_t{uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16)};
}
template <> inline fp16_t from_float<fp16_t>(float f) {
  float base = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = f32_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = f32_from_bits((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = f32_bits(base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  return fp16_t{uint16_t((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign))};
}

// ---------------------------------------------------------------------------
// Portable SIMD: GCC vector extensions of the target's native width. The CPU
// kernel files (cpu/token_logprobs.cpp, cpu/sde.cpp) are compiled once per ISA
// level, each into its own namespace (UNIGRPO_ISA) with its own -march and
// vector width (UNIGRPO_SIMD_BYTES): 64 bytes (16 lanes, zmm) for x86-64-v4,
// 32 (8 lanes, ymm) for x86-64-v3, 16 (4 lanes, xmm) for baseline x86-64 and
// other CPUs; cpu/dispatch.cpp picks one at load time. Why not one 16-lane
// type cloned per ISA: without 512-bit registers GCC lowers the 64-byte
// vectors' compares and selects (max, the exp clamp) to scalar code, which made
// the AVX2 path ~10x slower than the AVX-512 one. The helpers are always_inline
// so each variant inlines them with its own ISA (their by-value vector ABI never
// matters, hence -Wpsabi is silenced in the files that include this).
// ---------------------------------------------------------------------------
#ifndef UNIGRPO_SIMD_BYTES
#define UNIGRPO_SIMD_BYTES 16
#endif
#ifndef UNIGRPO_ISA
#define UNIGRPO_ISA baseline
#endif
#define UNIGRPO_INLINE inline __attribute__((always_inline))

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
namespace simd {

constexpr int W = UNIGRPO_SIMD_BYTES / 4;  // fp32 lanes
typedef float vf __attribute__((vector_size(UNIGRPO_SIMD_BYTES)));
typedef int32_t vi __attribute__((vector_size(UNIGRPO_SIMD_BYTES)));
typedef uint32_t vu __attribute__((vector_size(UNIGRPO_SIMD_BYTES)));

UNIGRPO_INLINE vf splat(float x) { return vf{} + x; }
UNIGRPO_INLINE vf vmax(const vf& a, const vf& b) { return a > b ? a : b; }

// Kernels move data in pairs of vectors: load2/store2 cover 2W = 32
// consecutive elements. For 16-bit types the two vectors hold the even and the
// odd elements: one full-width load, then a shift or a mask per vector, no
// widening or cross-lane shuffles (store2 undoes it the same way). Reductions
// do not care about the order and element-wise kernels store through store2,
// so the permutation is invisible. For fp32 they are simply p[0:W], p[W:2W].
constexpr int W2 = 2 * W;

// half-precision bits in the top 16 bits of each lane (low 16 bits zero) -> fp32
UNIGRPO_INLINE vf half_hi_to_float(const vu& w) {
  const vu sign = w & 0x80000000u;
  const vu two_w = w + w;
  const vf normalized = (vf)((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const vf denormalized = (vf)((two_w >> 17) | (126u << 23)) - 0.5f;
  const vu r = two_w < (1u << 27) ? (vu)denormalized : (vu)normalized;
  return (vf)(sign | r);
}
// fp32 -> half-precision bits in the low 16 bits of each lane (top bits zero)
UNIGRPO_INLINE vu float_to_half_lo(const vf& v) {
  const vu w = (vu)v;
  vf base = ((vf)(w & 0x7FFFFFFFu) * 0x1.0p+112f) * 0x1.0p-110f;
  const vu shl1_w = w + w;
  const vu sign = w & 0x80000000u;
  vu bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = (vf)((bias >> 1) + 0x07800000u) + base;
  const vu bits = (vu)base;
  const vu nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  return (sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign);
}
// fp32 -> bf16 (round to nearest even, NaN quieted) in the top 16 bits of each lane
UNIGRPO_INLINE vu float_to_bf16_hi(const vf& v) {
  const vu u = (vu)v;
  const vu rounded = u + 0x7FFFu + ((u >> 16) & 1u);
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? (u | 0x00400000u) : rounded;
}

UNIGRPO_INLINE void load2(const float* p, vf& a, vf& b) {
  std::memcpy(&a, p, sizeof a);
  std::memcpy(&b, p + W, sizeof b);
}
UNIGRPO_INLINE void load2(const bf16_t* p, vf& a, vf& b) {
  vu u;
  std::memcpy(&u, p, sizeof u);
  a = (vf)(u << 16);
  b = (vf)(u & 0xFFFF0000u);
}
UNIGRPO_INLINE void load2(const fp16_t* p, vf& a, vf& b) {
  vu u;
  std::memcpy(&u, p, sizeof u);
  a = half_hi_to_float(u << 16);
  b = half_hi_to_float(u & 0xFFFF0000u);
}

UNIGRPO_INLINE void store2(float* p, const vf& a, const vf& b) {
  std::memcpy(p, &a, sizeof a);
  std::memcpy(p + W, &b, sizeof b);
}
UNIGRPO_INLINE void store2(bf16_t* p, const vf& a, const vf& b) {
  const vu u = (float_to_bf16_hi(a) >> 16) | (float_to_bf16_hi(b) & 0xFFFF0000u);
  std::memcpy(p, &u, sizeof u);
}
UNIGRPO_INLINE void store2(fp16_t* p, const vf& a, const vf& b) {
  const vu u = float_to_half_lo(a) | (float_to_half_lo(b) << 16);
  std::memcpy(p, &u, sizeof u);
}

// The last n < 2W elements of a row, through a buffer padded with `pad`, so
// tails run the very same vector math as the body.
template <class T>
UNIGRPO_INLINE void load2_partial(const T* p, int n, float pad, vf& a, vf& b) {
  T buf[W2];
  const T fill = from_float<T>(pad);
  for (int i = 0; i < W2; ++i) buf[i] = i < n ? p[i] : fill;
  load2(buf, a, b);
}
template <class T>
UNIGRPO_INLINE void store2_partial(T* p, int n, const vf& a, const vf& b) {
  T buf[W2];
  store2(buf, a, b);
  for (int i = 0; i < n; ++i) p[i] = buf[i];
}

UNIGRPO_INLINE float hsum(const vf& v) {
  float s = 0.0f;
  for (int i = 0; i < W; ++i) s += v[i];
  return s;
}
UNIGRPO_INLINE float hmax(const vf& v) {
  float m = v[0];
  for (int i = 1; i < W; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// exp below this underflows fp32 normals: exp_clamped returns exactly 0 there
// (and for -inf), so masked (-inf) logits contribute nothing.
constexpr float kExpLo = -87.33654f;
constexpr float kExpHi = 88.0f;

// exp(x) for fp32, Cephes-style: x = n ln2 + r, |r| <= ln2/2, degree-6
// polynomial, 2^n through the exponent bits; about 1 ulp. x is clamped in place
// to [kExpLo, kExpHi] so x * exp(x) stays finite (0, not NaN, for x = -inf).
// kHigh = false skips the upper clamp (about 13% fewer cycles) where the
// caller guarantees x <= kExpHi (x = z - max z); larger x would give garbage.
template <bool kHigh = true>
UNIGRPO_INLINE vf exp_clamped(vf& x) {
  const vi under = x < kExpLo;
  x = under ? splat(kExpLo) : x;
  if (kHigh) x = x > kExpHi ? splat(kExpHi) : x;
  const float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const vf t = x * 1.44269504088896341f + kMagic;
  const vf n = t - kMagic;
  const vi ni = (vi)t - (vi)splat(kMagic);
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  vf y = p * (r * r) + r + 1.0f;
  y = y * (vf)((ni + 127) << 23);
  return under ? vf{} : y;
}

}  // namespace simd
#pragma GCC diagnostic pop

// ---------------------------------------------------------------------------
// CPU entry points (csrc/README.md), bound in bindings_cpu.cpp. Pointers are
// addresses (0 = absent); they check their arguments before touching memory and
// throw std::invalid_argument. cpu/token_logprobs.cpp and cpu/sde.cpp define
// them once per ISA level in namespace cpu::<level>; cpu/dispatch.cpp defines
// the cpu:: ones, which call the level chosen at load time.
// ---------------------------------------------------------------------------
#define UNIGRPO_CPU_ENTRY_POINTS                                                                              \
  void logprob_forward(std::uintptr_t logits, int dtype, int64_t N, int64_t V, int64_t row_stride,           \
                       std::uintptr_t ids, double inv_temp, std::uintptr_t logp, std::uintptr_t lse_parts,   \
                       std::uintptr_t entropy);                                                              \
  void logprob_backward(std::uintptr_t logits, int dtype, int64_t N, int64_t V, int64_t row_stride,          \
                        std::uintptr_t ids, std::uintptr_t lse_parts, double inv_temp,                      \
                        std::uintptr_t grad_logp,                                                            \
                        std::uintptr_t grad_entropy, std::uintptr_t entropy, std::uintptr_t grad_out);       \
  void sde_row_sums(int dtype, int64_t B, int64_t D, std::uintptr_t x, std::uintptr_t x_next,                 \
                    std::uintptr_t v, std::uintptr_t cx, std::uintptr_t cv, std::uintptr_t v_ref,            \
                    std::uintptr_t weight, int64_t weight_row_stride, std::uintptr_t s1, std::uintptr_t s2); \
  void sde_row_grad(int dtype, int64_t B, int64_t D, std::uintptr_t x, std::uintptr_t x_next,                 \
                    std::uintptr_t v, std::uintptr_t cx, std::uintptr_t cv, std::uintptr_t v_ref,            \
                    std::uintptr_t weight, int64_t weight_row_stride, std::uintptr_t a, std::uintptr_t b,    \
                    std::uintptr_t grad_out);

namespace cpu {
UNIGRPO_CPU_ENTRY_POINTS
namespace x86_64_v4 { UNIGRPO_CPU_ENTRY_POINTS }
namespace x86_64_v3 { UNIGRPO_CPU_ENTRY_POINTS }
namespace baseline { UNIGRPO_CPU_ENTRY_POINTS }
// The ISA levels built into this module, best first, and the one in use.
const char* const* isa_levels_built();
const char* isa_in_use();
// Use `level` (one of isa_levels_built(), and supported by this CPU) from now on.
void set_isa(const std::string& level);
}  // namespace cpu
}  // namespace unigrpo

#endif  // !defined(__CUDACC__)
