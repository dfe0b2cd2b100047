// Image-side per-row kernels on the CPU (math: unigrpo/ops/backends/__init__.py):
//   sde_row_sums: s1[b] = sum_d (x_next - cx[b] x - cv[b] v)^2, s2[b] = sum_d w (v - v_ref)^2
//   sde_row_grad: grad[b, d] = a[b] (x_next - cx[b] x - cv[b] v) + b[b] w (v - v_ref)
// Work is split in (row, tile of kTile columns) items across OpenMP threads, so
// a few very wide rows still use every core. Row sums add the per-tile partial
// sums in a fixed order: results do not depend on the thread count.
#include <algorithm>
#include <string>
#include <vector>

#include "common.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // internal always_inline vector helpers only

namespace unigrpo {
namespace cpu {
namespace UNIGRPO_ISA {  // compiled once per ISA level (common.h)
namespace {

using namespace simd;

constexpr int64_t kTile = 4096;

template <class T>
struct FlowArgs {
  int64_t D, ntiles, weight_row_stride;
  const T *x, *x_next, *v, *v_ref, *weight;
  const float *cx, *cv, *a, *b;
};

// s1 += res^2, s2 += w d^2 (d * (d * w), as in the reference) for one vector.
template <bool S1, bool S2, bool HW>
UNIGRPO_INLINE void sums_step(vf& a1, vf& a2, const vf& x, const vf& xn, const vf& v, const vf& vr, const vf& w,
                              float cx, float cv) {
  if (S1) {
    const vf res = xn - cx * x - cv * v;
    a1 += res * res;
  }
  if (S2) {
    const vf d = v - vr;
    a2 += HW ? d * (d * w) : d * d;
  }
}

// a * res + b * w * d for one vector.
template <bool A, bool B, bool HW>
UNIGRPO_INLINE vf grad_step(const vf& x, const vf& xn, const vf& v, const vf& vr, const vf& w, float cx, float cv,
                            float a, float b) {
  vf g{};
  // a zero coefficient contributes exactly 0 (a weight-0 penalty with a NaN v_ref is not 0 * NaN)
  if (A && a != 0.0f) g = a * (xn - cx * x - cv * v);
  if (B && b != 0.0f) g += b * (HW ? (v - vr) * w : v - vr);
  return g;
}

template <class T, bool S1, bool S2, bool HW>
void sums_items(const FlowArgs<T>& p, int64_t item_begin, int64_t item_end, double* part1,
                               double* part2) {
  for (int64_t it = item_begin; it < item_end; ++it) {
    const int64_t row = it / p.ntiles, d0 = (it % p.ntiles) * kTile;
    const int64_t len = std::min(kTile, p.D - d0), off = row * p.D + d0;
    const T* x = S1 ? p.x + off : nullptr;
    const T* xn = S1 ? p.x_next + off : nullptr;
    const T* v = p.v + off;
    const T* vr = S2 ? p.v_ref + off : nullptr;
    const T* w = HW ? p.weight + row * p.weight_row_stride + d0 : nullptr;
    const float cx = S1 ? p.cx[row] : 0.0f, cv = S1 ? p.cv[row] : 0.0f;
    vf acc1{}, acc2{}, acc3{}, acc4{};
    vf xa{}, xb{}, xna{}, xnb{}, va, vb, vra{}, vrb{}, wa{}, wb{};
    const int64_t npair = len & ~int64_t(W2 - 1);
    for (int64_t i = 0; i < npair; i += W2) {
      if (S1) {
        load2(x + i, xa, xb);
        load2(xn + i, xna, xnb);
      }
      if (S2) load2(vr + i, vra, vrb);
      if (HW) load2(w + i, wa, wb);
      load2(v + i, va, vb);
      sums_step<S1, S2, HW>(acc1, acc2, xa, xna, va, vra, wa, cx, cv);
      sums_step<S1, S2, HW>(acc3, acc4, xb, xnb, vb, vrb, wb, cx, cv);
    }
    if (const int n = int(len - npair)) {  // padded with zeros: adds nothing
      if (S1) {
        load2_partial(x + npair, n, 0.0f, xa, xb);
        load2_partial(xn + npair, n, 0.0f, xna, xnb);
      }
      if (S2) load2_partial(vr + npair, n, 0.0f, vra, vrb);
      if (HW) load2_partial(w + npair, n, 0.0f, wa, wb);
      load2_partial(v + npair, n, 0.0f, va, vb);
      sums_step<S1, S2, HW>(acc1, acc2, xa, xna, va, vra, wa, cx, cv);
      sums_step<S1, S2, HW>(acc3, acc4, xb, xnb, vb, vrb, wb, cx, cv);
    }
    acc1 += acc3;
    acc2 += acc4;
    if (S1) part1[it] = double(hsum(acc1));
    if (S2) part2[it] = double(hsum(acc2));
  }
}

template <class T, bool A, bool B, bool HW>
void grad_items(const FlowArgs<T>& p, int64_t item_begin, int64_t item_end, T* out) {
  for (int64_t it = item_begin; it < item_end; ++it) {
    const int64_t row = it / p.ntiles, d0 = (it % p.ntiles) * kTile;
    const int64_t len = std::min(kTile, p.D - d0), off = row * p.D + d0;
    const T* x = A ? p.x + off : nullptr;
    const T* xn = A ? p.x_next + off : nullptr;
    const T* v = p.v + off;
    const T* vr = B ? p.v_ref + off : nullptr;
    const T* w = HW ? p.weight + row * p.weight_row_stride + d0 : nullptr;
    const float cx = A ? p.cx[row] : 0.0f, cv = A ? p.cv[row] : 0.0f;
    const float ar = A ? p.a[row] : 0.0f, br = B ? p.b[row] : 0.0f;
    T* o = out + off;
    vf xa{}, xb{}, xna{}, xnb{}, va, vb, vra{}, vrb{}, wa{}, wb{};
    const int64_t npair = len & ~int64_t(W2 - 1);
    for (int64_t i = 0; i < npair; i += W2) {
      if (A) {
        load2(x + i, xa, xb);
        load2(xn + i, xna, xnb);
      }
      if (B) load2(vr + i, vra, vrb);
      if (HW) load2(w + i, wa, wb);
      load2(v + i, va, vb);
      store2(o + i, grad_step<A, B, HW>(xa, xna, va, vra, wa, cx, cv, ar, br),
             grad_step<A, B, HW>(xb, xnb, vb, vrb, wb, cx, cv, ar, br));
    }
    if (const int n = int(len - npair)) {
      if (A) {
        load2_partial(x + npair, n, 0.0f, xa, xb);
        load2_partial(xn + npair, n, 0.0f, xna, xnb);
      }
      if (B) load2_partial(vr + npair, n, 0.0f, vra, vrb);
      if (HW) load2_partial(w + npair, n, 0.0f, wa, wb);
      load2_partial(v + npair, n, 0.0f, va, vb);
      store2_partial(o + npair, n, grad_step<A, B, HW>(xa, xna, va, vra, wa, cx, cv, ar, br),
                     grad_step<A, B, HW>(xb, xnb, vb, vrb, wb, cx, cv, ar, br));
    }
  }
}

template <class T>
FlowArgs<T> make_args(int64_t D, std::uintptr_t x, std::uintptr_t x_next, std::uintptr_t v, std::uintptr_t cx,
                      std::uintptr_t cv, std::uintptr_t v_ref, std::uintptr_t weight, int64_t weight_row_stride,
                      std::uintptr_t a, std::uintptr_t b) {
  FlowArgs<T> p;
  p.D = D;
  p.ntiles = (D + kTile - 1) / kTile;
  p.weight_row_stride = weight_row_stride;
  p.x = reinterpret_cast<const T*>(x);
  p.x_next = reinterpret_cast<const T*>(x_next);
  p.v = reinterpret_cast<const T*>(v);
  p.v_ref = reinterpret_cast<const T*>(v_ref);
  p.weight = reinterpret_cast<const T*>(weight);
  p.cx = reinterpret_cast<const float*>(cx);
  p.cv = reinterpret_cast<const float*>(cv);
  p.a = reinterpret_cast<const float*>(a);
  p.b = reinterpret_cast<const float*>(b);
  return p;
}

template <class T>
void sums_dispatch(int64_t B, const FlowArgs<T>& p, float* s1, float* s2) {
  const int64_t items = B * p.ntiles;
  std::vector<double> part1(s1 ? items : 0), part2(s2 ? items : 0);
  double* p1 = part1.data();
  double* p2 = part2.data();
  const bool hw = p.weight != nullptr;
  parallel_chunks(items, kTile, [&](int64_t begin, int64_t end) {
    if (s1 && s2) {
      if (hw) sums_items<T, true, true, true>(p, begin, end, p1, p2);
      else sums_items<T, true, true, false>(p, begin, end, p1, p2);
    } else if (s1) {
      sums_items<T, true, false, false>(p, begin, end, p1, p2);
    } else {
      if (hw) sums_items<T, false, true, true>(p, begin, end, p1, p2);
      else sums_items<T, false, true, false>(p, begin, end, p1, p2);
    }
  });
  for (int64_t row = 0; row < B; ++row) {
    double t1 = 0.0, t2 = 0.0;
    for (int64_t k = 0; k < p.ntiles; ++k) {
      if (s1) t1 += p1[row * p.ntiles + k];
      if (s2) t2 += p2[row * p.ntiles + k];
    }
    if (s1) s1[row] = float(t1);
    if (s2) s2[row] = float(t2);
  }
}

template <class T>
void grad_dispatch(int64_t B, const FlowArgs<T>& p, std::uintptr_t grad_out) {
  T* out = reinterpret_cast<T*>(grad_out);
  const bool ha = p.a != nullptr, hb = p.b != nullptr, hw = p.weight != nullptr;
  parallel_chunks(B * p.ntiles, kTile, [&](int64_t begin, int64_t end) {
    if (ha && hb) {
      if (hw) grad_items<T, true, true, true>(p, begin, end, out);
      else grad_items<T, true, true, false>(p, begin, end, out);
    } else if (ha) {
      grad_items<T, true, false, false>(p, begin, end, out);
    } else if (hb) {
      if (hw) grad_items<T, false, true, true>(p, begin, end, out);
      else grad_items<T, false, true, false>(p, begin, end, out);
    } else {
      grad_items<T, false, false, false>(p, begin, end, out);
    }
  });
}

void check_sizes(const char* fn, int dtype, int64_t B, int64_t D) {
  check_dtype(fn, "dtype", dtype);
  check_positive(fn, "B", B);
  check_positive(fn, "D", D);
}

void check_weight(const char* fn, std::uintptr_t weight, int64_t D, int64_t weight_row_stride) {
  if (weight != 0)
    UNIGRPO_CHECK_ARG(weight_row_stride == 0 || weight_row_stride >= D, fn, "weight_row_stride",
                      "must be 0 (a (D,) weight) or >= D (" + std::to_string(D) + ", a (B, D) weight), got " +
                          std::to_string(weight_row_stride));
}

// The inputs of the two terms: x, x_next, cx, cv for the first (log-likelihood), v_ref and
// the weight for the second (penalty); v always. Returns the weight to use (0 without the
// second term).
std::uintptr_t check_flow_inputs(const char* fn, int dtype, int64_t B, int64_t D, bool first, bool second,
                                 std::uintptr_t x, std::uintptr_t x_next, std::uintptr_t v, std::uintptr_t cx,
                                 std::uintptr_t cv, std::uintptr_t v_ref, std::uintptr_t weight,
                                 int64_t weight_row_stride) {
  check_sizes(fn, dtype, B, D);
  check_nonnull(fn, "v", v);
  if (first) {
    check_nonnull(fn, "x", x);
    check_nonnull(fn, "x_next", x_next);
    check_nonnull(fn, "cx", cx);
    check_nonnull(fn, "cv", cv);
  }
  if (!second) return 0;
  check_nonnull(fn, "v_ref", v_ref);
  check_weight(fn, weight, D, weight_row_stride);
  return weight;
}

}  // namespace

void sde_row_sums(int dtype, int64_t B, int64_t D, std::uintptr_t x, std::uintptr_t x_next, std::uintptr_t v,
                  std::uintptr_t cx, std::uintptr_t cv, std::uintptr_t v_ref, std::uintptr_t weight,
                  int64_t weight_row_stride, std::uintptr_t s1, std::uintptr_t s2) {
  weight = check_flow_inputs("sde_row_sums", dtype, B, D, s1 != 0, s2 != 0, x, x_next, v, cx, cv, v_ref, weight,
                             weight_row_stride);
  if (s1 == 0 && s2 == 0) return;  // nothing asked for
  float* o1 = reinterpret_cast<float*>(s1);
  float* o2 = reinterpret_cast<float*>(s2);
  switch (dtype) {
    case kFloat32:
      sums_dispatch(B, make_args<float>(D, x, x_next, v, cx, cv, v_ref, weight, weight_row_stride, 0, 0), o1, o2);
      break;
    case kFloat16:
      sums_dispatch(B, make_args<fp16_t>(D, x, x_next, v, cx, cv, v_ref, weight, weight_row_stride, 0, 0), o1, o2);
      break;
    default:
      sums_dispatch(B, make_args<bf16_t>(D, x, x_next, v, cx, cv, v_ref, weight, weight_row_stride, 0, 0), o1, o2);
      break;
  }
}

void sde_row_grad(int dtype, int64_t B, int64_t D, std::uintptr_t x, std::uintptr_t x_next, std::uintptr_t v,
                  std::uintptr_t cx, std::uintptr_t cv, std::uintptr_t v_ref, std::uintptr_t weight,
                  int64_t weight_row_stride, std::uintptr_t a, std::uintptr_t b, std::uintptr_t grad_out) {
  weight = check_flow_inputs("sde_row_grad", dtype, B, D, a != 0, b != 0, x, x_next, v, cx, cv, v_ref, weight,
                             weight_row_stride);
  check_nonnull("sde_row_grad", "grad_out", grad_out);
  advise_huge_pages(reinterpret_cast<void*>(grad_out), uint64_t(B) * uint64_t(D) * (dtype == kFloat32 ? 4 : 2));
  switch (dtype) {
    case kFloat32:
      grad_dispatch(B, make_args<float>(D, x, x_next, v, cx, cv, v_ref, weight, weight_row_stride, a, b), grad_out);
      break;
    case kFloat16:
      grad_dispatch(B, make_args<fp16_t>(D, x, x_next, v, cx, cv, v_ref, weight, weight_row_stride, a, b), grad_out);
      break;
    default:
      grad_dispatch(B, make_args<bf16_t>(D, x, x_next, v, cx, cv, v_ref, weight, weight_row_stride, a, b), grad_out);
      break;
  }
}

}  // namespace UNIGRPO_ISA
}  // namespace cpu
}  // namespace unigrpo
