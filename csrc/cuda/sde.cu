// Per-row sums and their affine backward for the flow-matching (image) side, CUDA.
//
// Contract (unigrpo/ops/backends/__init__.py), (B, D) inputs of one dtype,
// fp32 math and accumulation:
//   sde_row_sums  s1[b] = sum_d (x_next - cx[b] x - cv[b] v)^2
//                 s2[b] = sum_d w (v - v_ref)^2            (w = 1 without weight)
//   sde_row_grad  grad[b, d] = a[b] (x_next - cx[b] x - cv[b] v) + b[b] w (v - v_ref)
//
// Sums: one CTA per row; each thread keeps one accumulator per vector lane
// (short sequential chains), then a warp-shuffle + shared-memory block sum.
// Grad: elementwise, grid (column blocks, rows), grid-stride in both.
// 16-byte vectors when every pointer used is 16-byte aligned and D * size is a
// multiple of 16 (so every row stays aligned); otherwise element by element.
#include <algorithm>
#include <type_traits>

#include "cuda/cuda_common.cuh"
#include "cuda/launchers.h"

namespace unigrpo {
namespace cuda {
namespace {

template <typename F>
void with_bool(bool b, F&& f) {
  if (b)
    f(std::true_type{});
  else
    f(std::false_type{});
}

// ----------------------------------------------------------------- row sums

template <typename T, bool S1, bool S2, bool W, bool VP>
__global__ void __launch_bounds__(1024) sde_row_sums_kernel(int64_t B, int64_t D, const T* __restrict__ x,
                                                            const T* __restrict__ xn, const T* __restrict__ v,
                                                            const float* __restrict__ cx,
                                                            const float* __restrict__ cv,
                                                            const T* __restrict__ vref, const T* __restrict__ w,
                                                            int64_t wrs, float* __restrict__ s1,
                                                            float* __restrict__ s2) {
  __shared__ float sh[32];
  constexpr int VEC = VP ? VecTraits<T>::kVec : 1;
  const int tid = threadIdx.x, nthr = blockDim.x;
  for (int64_t r = blockIdx.x; r < B; r += gridDim.x) {
    const int64_t off = r * D;
    const float cxr = S1 ? cx[r] : 0.f;
    const float cvr = S1 ? cv[r] : 0.f;
    const T* wr = W ? w + r * wrs : nullptr;
    float acc1[VEC], acc2[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc1[k] = acc2[k] = 0.f;

    const int64_t nunits = D / VEC;
    for (int64_t i = tid; i < nunits; i += nthr) {
      const int64_t e = i * VEC;
      float fv[VEC];
      if constexpr (VP) {
        load_vec<T>(v + off + e, fv);
      } else {
        fv[0] = load_f(v + off + e);
      }
      if constexpr (S1) {
        float fx[VEC], fn[VEC];
        if constexpr (VP) {
          load_vec<T>(x + off + e, fx);
          load_vec<T>(xn + off + e, fn);
        } else {
          fx[0] = load_f(x + off + e);
          fn[0] = load_f(xn + off + e);
        }
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float res = fmaf(-cvr, fv[k], fmaf(-cxr, fx[k], fn[k]));
          acc1[k] = fmaf(res, res, acc1[k]);
        }
      }
      if constexpr (S2) {
        float fr[VEC], fw[VEC];
        if constexpr (VP) {
          load_vec<T>(vref + off + e, fr);
          if constexpr (W) load_vec<T>(wr + e, fw);
        } else {
          fr[0] = load_f(vref + off + e);
          if constexpr (W) fw[0] = load_f(wr + e);
        }
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float d = fv[k] - fr[k];
          if constexpr (W)
            acc2[k] = fmaf(d * d, fw[k], acc2[k]);
          else
            acc2[k] = fmaf(d, d, acc2[k]);
        }
      }
    }
    // pairwise over the vector lanes
#pragma unroll
    for (int h = VEC / 2; h > 0; h >>= 1) {
#pragma unroll
      for (int k = 0; k < h; ++k) {
        acc1[k] += acc1[k + h];
        acc2[k] += acc2[k + h];
      }
    }
    if constexpr (S1) {
      const float t = block_sum(acc1[0], sh);
      if (tid == 0) s1[r] = t;
    }
    if constexpr (S2) {
      const float t = block_sum(acc2[0], sh);
      if (tid == 0) s2[r] = t;
    }
  }
}

template <typename T>
void row_sums_typed(int64_t B, int64_t D, const void* x, const void* xn, const void* v, const float* cx,
                    const float* cv, const void* vref, const void* w, int64_t wrs, float* s1, float* s2,
                    cudaStream_t stream) {
  const bool want1 = s1 != nullptr, want2 = s2 != nullptr;
  if (!want1 && !want2) return;
  const bool use_w = want2 && w != nullptr;
  bool vp = (D * static_cast<int64_t>(sizeof(T))) % 16 == 0 && aligned16(v);
  if (want1) vp = vp && aligned16(x) && aligned16(xn);
  if (want2) vp = vp && aligned16(vref);
  if (use_w) vp = vp && aligned16(w);
  const int64_t units = vp ? D / VecTraits<T>::kVec : D;
  // ~4+ units per thread, 32..1024 threads.
  int threads = 32;
  while (threads < 1024 && static_cast<int64_t>(threads) * 4 < units) threads *= 2;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(B, int64_t(1) << 30));

  with_bool(want1, [&](auto s1_tag) {
    with_bool(want2, [&](auto s2_tag) {
      constexpr bool S1 = decltype(s1_tag)::value, S2 = decltype(s2_tag)::value;
      if constexpr (S1 || S2) {
        with_bool(use_w, [&](auto w_tag) {
          constexpr bool W = decltype(w_tag)::value;
          if constexpr (S2 || !W) {
            with_bool(vp, [&](auto vp_tag) {
              constexpr bool VP = decltype(vp_tag)::value;
              sde_row_sums_kernel<T, S1, S2, W, VP><<<grid, threads, 0, stream>>>(
                  B, D, static_cast<const T*>(x), static_cast<const T*>(xn), static_cast<const T*>(v), cx, cv,
                  static_cast<const T*>(vref), static_cast<const T*>(w), wrs, s1, s2);
            });
          }
        });
      }
    });
  });
}

// --------------------------------------------------------------------- grad

constexpr int kGradBlock = 256;

template <typename T, bool HA, bool HB, bool W, bool VP>
__global__ void __launch_bounds__(kGradBlock) sde_row_grad_kernel(
    int64_t B, int64_t D, const T* __restrict__ x, const T* __restrict__ xn, const T* __restrict__ v,
    const float* __restrict__ cx, const float* __restrict__ cv, const T* __restrict__ vref, const T* __restrict__ w,
    int64_t wrs, const float* __restrict__ a, const float* __restrict__ b, T* __restrict__ out) {
  constexpr int VEC = VP ? VecTraits<T>::kVec : 1;
  const int64_t nunits = D / VEC;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = blockIdx.y; r < B; r += gridDim.y) {
    const int64_t off = r * D;
    const float ar = HA ? a[r] : 0.f;
    const float cxr = HA ? cx[r] : 0.f;
    const float cvr = HA ? cv[r] : 0.f;
    const float br = HB ? b[r] : 0.f;
    const T* wr = W ? w + r * wrs : nullptr;
    for (int64_t i = start; i < nunits; i += step) {
      const int64_t e = i * VEC;
      float g[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) g[k] = 0.f;
      if constexpr (HA || HB) {
        float fv[VEC];
        if constexpr (VP) {
          load_vec<T>(v + off + e, fv);
        } else {
          fv[0] = load_f(v + off + e);
        }
        if constexpr (HA) {
          float fx[VEC], fn[VEC];
          if constexpr (VP) {
            load_vec<T>(x + off + e, fx);
            load_vec<T>(xn + off + e, fn);
          } else {
            fx[0] = load_f(x + off + e);
            fn[0] = load_f(xn + off + e);
          }
          if (ar != 0.f) {  // a zero coefficient contributes exactly 0, not 0 * NaN
#pragma unroll
            for (int k = 0; k < VEC; ++k) g[k] = ar * fmaf(-cvr, fv[k], fmaf(-cxr, fx[k], fn[k]));
          }
        }
        if (HB && br != 0.f) {
          float fr[VEC], fw[VEC];
          if constexpr (VP) {
            load_vec<T>(vref + off + e, fr);
            if constexpr (W) load_vec<T>(wr + e, fw);
          } else {
            fr[0] = load_f(vref + off + e);
            if constexpr (W) fw[0] = load_f(wr + e);
          }
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            float d = fv[k] - fr[k];
            if constexpr (W) d *= fw[k];
            g[k] = fmaf(br, d, g[k]);
          }
        }
      }
      if constexpr (VP) {
        store_vec<T>(out + off + e, g);
      } else {
        out[off + e] = from_float<T>(g[0]);
      }
    }
  }
}

template <typename T>
void row_grad_typed(int64_t B, int64_t D, const void* x, const void* xn, const void* v, const float* cx,
                    const float* cv, const void* vref, const void* w, int64_t wrs, const float* a, const float* b,
                    void* out, cudaStream_t stream) {
  const bool has_a = a != nullptr, has_b = b != nullptr;
  const bool use_w = has_b && w != nullptr;
  bool vp = (D * static_cast<int64_t>(sizeof(T))) % 16 == 0 && aligned16(out);
  if (has_a || has_b) vp = vp && aligned16(v);
  if (has_a) vp = vp && aligned16(x) && aligned16(xn);
  if (has_b) vp = vp && aligned16(vref);
  if (use_w) vp = vp && aligned16(w);
  const int64_t units = vp ? D / VecTraits<T>::kVec : D;
  const int64_t gy = std::min<int64_t>(B, 65535);
  const int64_t target = static_cast<int64_t>(current_sm_count()) * 8;  // 8 x 256 threads per SM
  const int64_t max_gx = (units + kGradBlock - 1) / kGradBlock;
  const int64_t gx = std::max<int64_t>(1, std::min<int64_t>(max_gx, (target + gy - 1) / gy));
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));

  with_bool(has_a, [&](auto a_tag) {
    with_bool(has_b, [&](auto b_tag) {
      with_bool(use_w, [&](auto w_tag) {
        constexpr bool HA = decltype(a_tag)::value, HB = decltype(b_tag)::value, W = decltype(w_tag)::value;
        if constexpr (HB || !W) {
          with_bool(vp, [&](auto vp_tag) {
            constexpr bool VP = decltype(vp_tag)::value;
            sde_row_grad_kernel<T, HA, HB, W, VP><<<grid, kGradBlock, 0, stream>>>(
                B, D, static_cast<const T*>(x), static_cast<const T*>(xn), static_cast<const T*>(v), cx, cv,
                static_cast<const T*>(vref), static_cast<const T*>(w), wrs, a, b, static_cast<T*>(out));
          });
        }
      });
    });
  });
}

}  // namespace

cudaError_t launch_sde_row_sums(int dtype, int64_t B, int64_t D, const void* x, const void* x_next, const void* v,
                                const float* cx, const float* cv, const void* v_ref, const void* weight,
                                int64_t weight_row_stride, float* s1, float* s2, cudaStream_t stream) {
  switch (dtype) {
    case kFloat32:
      row_sums_typed<float>(B, D, x, x_next, v, cx, cv, v_ref, weight, weight_row_stride, s1, s2, stream);
      break;
    case kFloat16:
      row_sums_typed<__half>(B, D, x, x_next, v, cx, cv, v_ref, weight, weight_row_stride, s1, s2, stream);
      break;
    case kBFloat16:
      row_sums_typed<__nv_bfloat16>(B, D, x, x_next, v, cx, cv, v_ref, weight, weight_row_stride, s1, s2, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_sde_row_grad(int dtype, int64_t B, int64_t D, const void* x, const void* x_next, const void* v,
                                const float* cx, const float* cv, const void* v_ref, const void* weight,
                                int64_t weight_row_stride, const float* a, const float* b, void* grad_out,
                                cudaStream_t stream) {
  switch (dtype) {
    case kFloat32:
      row_grad_typed<float>(B, D, x, x_next, v, cx, cv, v_ref, weight, weight_row_stride, a, b, grad_out, stream);
      break;
    case kFloat16:
      row_grad_typed<__half>(B, D, x, x_next, v, cx, cv, v_ref, weight, weight_row_stride, a, b, grad_out, stream);
      break;
    case kBFloat16:
      row_grad_typed<__nv_bfloat16>(B, D, x, x_next, v, cx, cv, v_ref, weight, weight_row_stride, a, b, grad_out,
                                    stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace unigrpo
