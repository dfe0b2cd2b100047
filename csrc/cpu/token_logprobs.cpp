// Token log-probabilities (and entropy) from logits on the CPU.
//
// Forward: one pass over each row, in blocks of kBlock elements: the block's
// max (from memory), then exp(z - M) and (z - M) exp(z - M) summed over the
// same block while it is still in L1, with the running max M and the running
// sums rescaled whenever M grows. Nothing (N, V) is allocated.
// Backward: one pass, reads the logits, writes the gradient.
// Rows are split across OpenMP threads; the inner loops are vector code of the
// ISA level's native width, this file compiled once per level (see common.h).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "common.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // internal always_inline vector helpers only

namespace unigrpo {
namespace cpu {
namespace UNIGRPO_ISA {  // compiled once per ISA level (common.h)
namespace {

using namespace simd;

constexpr int64_t kBlock = 2048;  // elements (a multiple of 2 * W2); 8 KiB of fp32: stays in L1 between sweeps
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Accumulates exp(d) (and exp(d) * d with ENT) for d = x * t - M.
template <bool ENT>
UNIGRPO_INLINE void exp_accumulate(const vf& xv, float t, const vf& Mv, vf& s, vf& q) {
  vf d = xv * t - Mv;  // <= 0 up to rounding (M is the max so far), or NaN
  const vf e = exp_clamped<false>(d);  // d clamped below: e * d is 0, never NaN, for -inf logits
  s += e;
  if (ENT) q += e * d;
}

// Prefetches the cache lines of the 2W elements at p (past the row's end it
// fetches the next row's start, or nothing: prefetches never fault).
template <class T>
UNIGRPO_INLINE void prefetch_pair(const T* p) {
  for (unsigned k = 0; k < W2 * sizeof(T); k += 64) __builtin_prefetch(reinterpret_cast<const char*>(p) + k);
}

template <class T, bool ENT>
void forward_rows(const T* __restrict logits, int64_t row_begin, int64_t row_end, int64_t V,
                                 int64_t row_stride, const int64_t* __restrict ids, float t,
                                 float* __restrict logp, float* __restrict lse_parts, float* __restrict entropy) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const T* x = logits + r * row_stride;
    float M = kNegInf;    // running max of z = x * t
    double S = 0.0;       // sum exp(z - M)
    double Q = 0.0;       // sum exp(z - M) * (z - M)
    bool has_nan = false;  // only tracked in skipped blocks: elsewhere NaN propagates through exp
    for (int64_t b0 = 0; b0 < V; b0 += kBlock) {
      const T* xb = x + b0;
      const int64_t len = std::min(kBlock, V - b0);
      const int64_t npair = len & ~int64_t(W2 - 1);
      const int rem = int(len - npair);
      vf a, b, c, d;

      // Sweep 1: block max of x (t > 0, and rounding is monotonic, so max(x) * t == max(x * t)).
      vf m0 = splat(kNegInf), m1 = m0, m2 = m0, m3 = m0;
      int64_t i = 0;
      for (; i + 2 * W2 <= npair; i += 2 * W2) {
        load2(xb + i, a, b);
        load2(xb + i + W2, c, d);
        m0 = vmax(m0, a);
        m1 = vmax(m1, b);
        m2 = vmax(m2, c);
        m3 = vmax(m3, d);
      }
      if (i < npair) {
        load2(xb + i, a, b);
        m0 = vmax(m0, a);
        m1 = vmax(m1, b);
      }
      if (rem) {
        load2_partial(xb + npair, rem, kNegInf, a, b);
        m2 = vmax(m2, a);
        m3 = vmax(m3, b);
      }
      const float bm = hmax(vmax(vmax(m0, m1), vmax(m2, m3))) * t;
      if (bm == kNegInf) {  // all -inf (masked): contributes nothing, unless it hides a NaN
        for (int64_t k = 0; k < len; ++k) has_nan |= std::isnan(to_float(xb[k]));
        continue;
      }
      if (bm > M) {
        if (M != kNegInf) {
          const double shift = double(M) - double(bm);
          const double f = std::exp(shift);
          Q = f * (Q + shift * S);
          S *= f;
        }
        M = bm;
      }

      // Sweep 2 (block now in L1): exp sums against the running max.
      const vf Mv = splat(M);
      vf s0{}, s1{}, q0{}, q1{};
      for (i = 0; i < npair; i += W2) {
        prefetch_pair(xb + kBlock + i);  // the next block's sweep 1 then hits cache: memory overlaps compute
        load2(xb + i, a, b);
        exp_accumulate<ENT>(a, t, Mv, s0, q0);
        exp_accumulate<ENT>(b, t, Mv, s1, q1);
      }
      if (rem) {
        load2_partial(xb + npair, rem, kNegInf, a, b);
        exp_accumulate<ENT>(a, t, Mv, s0, q0);
        exp_accumulate<ENT>(b, t, Mv, s1, q1);
      }
      S += double(hsum(s0 + s1));
      if (ENT) Q += double(hsum(q0 + q1));
    }
    if (has_nan) S = std::numeric_limits<double>::quiet_NaN();
    const double log_s = std::log(S);
    lse_parts[2 * r] = M;  // lse = M + log S, kept apart: the backward's z - lse stays exact at any |z|
    lse_parts[2 * r + 1] = float(log_s);
    const float z_id = to_float(x[ids[r]]) * t;
    logp[r] = float((double(z_id) - double(M)) - log_s);
    // entropy = lse - sum p z = log S - sum p (z - M): no cancellation for large |z|.
    if (ENT) entropy[r] = float(log_s - Q / S);
  }
}

// grad = t * (g * (onehot - p) - ge * p * (d + H)), d = (z - M) - log S = z - lse, p = exp(d).
template <bool ENT>
UNIGRPO_INLINE vf grad_vec(const vf& xv, float t, const vf& mv, float ls, float cg, float cge, float H) {
  vf d = (xv * t - mv) - ls;
  const vf p = exp_clamped(d);
  if (ENT) return p * (cg + cge * (d + H));
  return p * cg;
}

template <class T, bool ENT>
void backward_rows(const T* __restrict logits, int64_t row_begin, int64_t row_end, int64_t V,
                                  int64_t row_stride, const int64_t* __restrict ids,
                                  const float* __restrict lse_parts, float t, const float* __restrict grad_logp,
                                  const float* __restrict grad_entropy, const float* __restrict entropy,
                                  T* __restrict out) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const T* x = logits + r * row_stride;
    T* o = out + r * V;
    const float m = lse_parts[2 * r], ls = lse_parts[2 * r + 1], g = grad_logp[r];
    const float ge = ENT ? grad_entropy[r] : 0.0f;
    const float H = ENT ? entropy[r] : 0.0f;
    const float cg = -g * t, cge = -ge * t;
    const vf mv = splat(m);
    const int64_t npair = V & ~int64_t(W2 - 1);
    const int rem = int(V - npair);
    vf a, b;
    if (ENT && ge != 0.0f) {
      for (int64_t i = 0; i < npair; i += W2) {
        load2(x + i, a, b);
        store2(o + i, grad_vec<true>(a, t, mv, ls, cg, cge, H), grad_vec<true>(b, t, mv, ls, cg, cge, H));
      }
      if (rem) {
        load2_partial(x + npair, rem, 0.0f, a, b);
        store2_partial(o + npair, rem, grad_vec<true>(a, t, mv, ls, cg, cge, H), grad_vec<true>(b, t, mv, ls, cg, cge, H));
      }
    } else {
      for (int64_t i = 0; i < npair; i += W2) {
        load2(x + i, a, b);
        store2(o + i, grad_vec<false>(a, t, mv, ls, cg, cge, H), grad_vec<false>(b, t, mv, ls, cg, cge, H));
      }
      if (rem) {
        load2_partial(x + npair, rem, 0.0f, a, b);
        store2_partial(o + npair, rem, grad_vec<false>(a, t, mv, ls, cg, cge, H),
                       grad_vec<false>(b, t, mv, ls, cg, cge, H));
      }
    }
    // The target token: redo it in fp32 with the one-hot term before the single rounding.
    const int64_t id = ids[r];
    vf d = splat((to_float(x[id]) * t - m) - ls);
    const float p = exp_clamped(d)[0];
    float val = g - g * p;
    if (ENT && ge != 0.0f) val -= ge * p * (d[0] + H);
    o[id] = from_float<T>(val * t);
  }
}

template <class T>
void forward_dispatch(std::uintptr_t logits, int64_t N, int64_t V, int64_t row_stride, const int64_t* ids,
                      float t, float* logp, float* lse_parts, float* entropy) {
  const T* x = reinterpret_cast<const T*>(logits);
  parallel_chunks(N, V, [&](int64_t begin, int64_t end) {
    if (entropy)
      forward_rows<T, true>(x, begin, end, V, row_stride, ids, t, logp, lse_parts, entropy);
    else
      forward_rows<T, false>(x, begin, end, V, row_stride, ids, t, logp, lse_parts, entropy);
  });
}

template <class T>
void backward_dispatch(std::uintptr_t logits, int64_t N, int64_t V, int64_t row_stride, const int64_t* ids,
                       const float* lse_parts, float t, const float* grad_logp, const float* grad_entropy,
                       const float* entropy, std::uintptr_t grad_out) {
  const T* x = reinterpret_cast<const T*>(logits);
  T* out = reinterpret_cast<T*>(grad_out);
  parallel_chunks(N, V, [&](int64_t begin, int64_t end) {
    if (grad_entropy)
      backward_rows<T, true>(x, begin, end, V, row_stride, ids, lse_parts, t, grad_logp, grad_entropy, entropy,
                             out);
    else
      backward_rows<T, false>(x, begin, end, V, row_stride, ids, lse_parts, t, grad_logp, grad_entropy, entropy,
                              out);
  });
}

// Shared argument checks of the two entry points; returns inv_temp as fp32.
float check_common(const char* fn, std::uintptr_t logits, int dtype, int64_t N, int64_t V, int64_t row_stride,
                   std::uintptr_t ids, double inv_temp) {
  check_nonnull(fn, "logits", logits);
  check_dtype(fn, "dtype", dtype);
  check_positive(fn, "N", N);
  check_positive(fn, "V", V);
  UNIGRPO_CHECK_ARG(row_stride >= V, fn, "row_stride",
                    "must be >= V (" + std::to_string(V) + "), got " + std::to_string(row_stride));
  check_nonnull(fn, "ids", ids);
  const float t = float(inv_temp);
  UNIGRPO_CHECK_ARG(t > 0.0f && std::isfinite(t), fn, "inv_temp",
                    "must be a finite number > 0, got " + std::to_string(inv_temp));
  return t;
}

// Every id in [0, V), checked for all rows before any kernel runs.
void check_ids(const char* fn, const int64_t* ids, int64_t N, int64_t V) {
  for (int64_t r = 0; r < N; ++r) {
    const int64_t id = ids[r];
    if (id < 0 || id >= V)
      arg_error(fn, "ids", "has ids[" + std::to_string(r) + "] = " + std::to_string(id) +
                               ", out of range [0, " + std::to_string(V) + ")");
  }
}

}  // namespace

void logprob_forward(std::uintptr_t logits, int dtype, int64_t N, int64_t V, int64_t row_stride,
                     std::uintptr_t ids, double inv_temp, std::uintptr_t logp, std::uintptr_t lse_parts,
                     std::uintptr_t entropy) {
  const char* fn = "logprob_forward";
  const float t = check_common(fn, logits, dtype, N, V, row_stride, ids, inv_temp);
  check_nonnull(fn, "logp", logp);
  check_nonnull(fn, "lse_parts", lse_parts);
  const int64_t* id = reinterpret_cast<const int64_t*>(ids);
  check_ids(fn, id, N, V);
  float* lp = reinterpret_cast<float*>(logp);
  float* ls = reinterpret_cast<float*>(lse_parts);
  float* ent = reinterpret_cast<float*>(entropy);
  switch (dtype) {
    case kFloat32: forward_dispatch<float>(logits, N, V, row_stride, id, t, lp, ls, ent); break;
    case kFloat16: forward_dispatch<fp16_t>(logits, N, V, row_stride, id, t, lp, ls, ent); break;
    default: forward_dispatch<bf16_t>(logits, N, V, row_stride, id, t, lp, ls, ent); break;
  }
}

void logprob_backward(std::uintptr_t logits, int dtype, int64_t N, int64_t V, int64_t row_stride,
                      std::uintptr_t ids, std::uintptr_t lse_parts, double inv_temp, std::uintptr_t grad_logp,
                      std::uintptr_t grad_entropy, std::uintptr_t entropy, std::uintptr_t grad_out) {
  const char* fn = "logprob_backward";
  const float t = check_common(fn, logits, dtype, N, V, row_stride, ids, inv_temp);
  check_nonnull(fn, "lse_parts", lse_parts);
  check_nonnull(fn, "grad_logp", grad_logp);
  if (grad_entropy != 0) check_nonnull(fn, "entropy", entropy);
  check_nonnull(fn, "grad_out", grad_out);
  const int64_t* id = reinterpret_cast<const int64_t*>(ids);
  check_ids(fn, id, N, V);
  const float* ls = reinterpret_cast<const float*>(lse_parts);
  const float* gl = reinterpret_cast<const float*>(grad_logp);
  const float* ge = reinterpret_cast<const float*>(grad_entropy);
  const float* ent = reinterpret_cast<const float*>(entropy);
  advise_huge_pages(reinterpret_cast<void*>(grad_out), uint64_t(N) * uint64_t(V) * (dtype == kFloat32 ? 4 : 2));
  switch (dtype) {
    case kFloat32: backward_dispatch<float>(logits, N, V, row_stride, id, ls, t, gl, ge, ent, grad_out); break;
    case kFloat16: backward_dispatch<fp16_t>(logits, N, V, row_stride, id, ls, t, gl, ge, ent, grad_out); break;
    default: backward_dispatch<bf16_t>(logits, N, V, row_stride, id, ls, t, gl, ge, ent, grad_out); break;
  }
}

}  // namespace UNIGRPO_ISA
}  // namespace cpu
}  // namespace unigrpo
