// Per-token log-probabilities (and entropy) over a vocabulary, CUDA.
//
// Contract (unigrpo/ops/backends/__init__.py), math in fp32:
//   forward   z = logits * inv_temp, m = max z, s = sum exp(z - m), lse = m + log s,
//             logp = z[id] - lse, lse_parts = [m, log s] (kept apart), entropy = lse - sum(softmax(z) * z)
//   backward  q = (z - m) - log s (= z - lse, exact at any |z|), p = exp(q)
//             grad = inv_temp * (g_logp * (onehot(id) - p) - g_ent * p * (q + H))
//
// Forward: one row per CTA (or per warp when a row is at most 8 KB), a single
// online pass over V with 16-byte loads. Each thread keeps a running max m,
// s = sum exp(z - m) and, for the entropy, t = sum exp(z - m) * (z - m); it
// loads kUnroll vectors at a time, takes their max, rescales (m, s, t) once,
// then adds one exp per element. The (m, s, t) triples are merged across the
// warp with shuffles and across warps through shared memory. Finally
// lse = m + log(s), H = log(s) - t / s (no cancellation of two |z|-sized
// terms). A row whose start is not 16-byte aligned (row_stride * size not a
// multiple of 16) does its first elements one at a time up to the next 16-byte
// boundary; V not a multiple of the vector width leaves a scalar tail.
//
// -inf logits (a masked vocabulary) contribute nothing: exp(-inf - m) = 0 and
// their (z - m) is clamped before it multiplies that 0, so the entropy and its
// gradient stay finite (as in the Triton kernels). NaN logits give NaN.
//
// Backward: elementwise given lse; grid (column blocks, rows), 16-byte loads
// and stores when the logits row and the output row are equally misaligned.
#include <algorithm>
#include <cmath>

#include "cuda/cuda_common.cuh"
#include "cuda/launchers.h"

namespace unigrpo {
namespace cuda {
namespace {

constexpr int kUnroll = 4;             // 16-byte vectors in flight per thread (forward)
constexpr int kBwdUnroll = 4;          // same for the backward (loads + stores)
constexpr int kRowsPerWarpCta = 8;     // warp-per-row kernels: 8 warps, 8 rows per CTA
constexpr int64_t kWarpRowBytes = 8192;  // rows up to this size go one per warp

// ------------------------------------------------------------------ forward

// Merge (m2, s2, t2) into (m, s, t). Symmetric in its two arguments, so a
// butterfly reduction leaves the same value in every lane.
template <bool ENT>
__device__ __forceinline__ void lse_merge(float& m, float& s, float& t, float m2, float s2, float t2) {
  const float mn = fmaxf(m, m2);
  const float d1 = m - mn, d2 = m2 - mn;  // <= 0
  const float c1 = exp_fast(d1), c2 = exp_fast(d2);
  const float s1c = s * c1, s2c = s2 * c2;
  // t_new = c1 (t + d1 s) + c2 (t2 + d2 s2); a zero weight must not meet an infinite d.
  if (ENT) t = fmaf(c1, t, s1c == 0.f ? 0.f : d1 * s1c) + fmaf(c2, t2, s2c == 0.f ? 0.f : d2 * s2c);
  s = s1c + s2c;
  m = mn;
}

// One element z (already scaled by inv_temp).
template <bool ENT>
__device__ __forceinline__ void lse_push(float& m, float& s, float& t, float z) {
  lse_merge<ENT>(m, s, t, z, 1.f, 0.f);
}

// U 16-byte vectors of raw logits.
template <typename T, bool ENT, int U>
__device__ __forceinline__ void lse_chunk(const uint4 (&r)[U], float inv_temp, float& m, float& s, float& t) {
  constexpr int VEC = VecTraits<T>::kVec;
  float z[U][VEC];
  float vmax[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    unpack<T>(r[u], z[u]);
#pragma unroll
    for (int k = 0; k < VEC; ++k) z[u][k] = __fmul_rn(z[u][k], inv_temp);  // = torch's fp32 z
    // pairwise max (short dependency chains)
    float a[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) a[k] = z[u][k];
#pragma unroll
    for (int w = VEC / 2; w > 0; w >>= 1) {
#pragma unroll
      for (int k = 0; k < w; ++k) a[k] = fmaxf(a[k], a[k + w]);
    }
    vmax[u] = a[0];
  }
  float cm = vmax[0];
#pragma unroll
  for (int u = 1; u < U; ++u) cm = fmaxf(cm, vmax[u]);

  const float mn = fmaxf(m, cm);
  const float d = m - mn;
  const float c = exp_fast(d);
  const float sc = s * c;
  if (ENT) t = fmaf(c, t, sc == 0.f ? 0.f : d * sc);
  s = sc;
  m = mn;

  float ps[U], pt[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    ps[u] = 0.f;
    pt[u] = 0.f;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float q = z[u][k] - mn;
      const float e = exp_fast(q);  // 0 for z = -inf
      ps[u] += e;
      if (ENT) pt[u] = fmaf(e, fmaxf(q, kNegBig), pt[u]);  // clamp: 0 * -inf would be NaN
    }
  }
#pragma unroll
  for (int u = 1; u < U; ++u) {
    ps[0] += ps[u];
    if (ENT) pt[0] += pt[u];
  }
  s += ps[0];
  if (ENT) t += pt[0];
}

// This thread's partial (m, s, t) over elements tid, tid + nthr, ... of a row.
template <typename T, bool ENT>
__device__ __forceinline__ void row_partial(const T* __restrict__ row, int64_t V, float inv_temp, int tid, int nthr,
                                            float& m, float& s, float& t) {
  constexpr int VEC = VecTraits<T>::kVec;
  const unsigned mis = static_cast<unsigned>(reinterpret_cast<std::uintptr_t>(row) & 15u);
  int64_t head = static_cast<int64_t>(((16u - mis) & 15u) / sizeof(T));  // elements up to a 16-byte boundary
  if (head > V) head = V;
  for (int64_t j = tid; j < head; j += nthr) lse_push<ENT>(m, s, t, __fmul_rn(load_f(row + j), inv_temp));

  const uint4* __restrict__ vp = reinterpret_cast<const uint4*>(row + head);
  const int64_t nvec = (V - head) / VEC;
  const int64_t step = nthr;
  // Groups of kUnroll vectors, all loads issued before any use. A partial last
  // group is padded with -inf elements, which change nothing (exp(-inf) = 0 and
  // the entropy term clamps its (z - m)), so every load stays in a full group.
  const unsigned ninf = VecTraits<T>::kNegInfWord;
  for (int64_t i = tid; i < nvec; i += kUnroll * step) {
    uint4 r[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = i + u * step;
      r[u] = k < nvec ? __ldg(vp + k) : make_uint4(ninf, ninf, ninf, ninf);
    }
    lse_chunk<T, ENT, kUnroll>(r, inv_temp, m, s, t);
  }
  for (int64_t j = head + nvec * VEC + tid; j < V; j += nthr)
    lse_push<ENT>(m, s, t, __fmul_rn(load_f(row + j), inv_temp));
}

template <bool ENT>
__device__ __forceinline__ void warp_merge(float& m, float& s, float& t) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, off);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, off);
    const float t2 = ENT ? __shfl_xor_sync(0xffffffffu, t, off) : 0.f;
    lse_merge<ENT>(m, s, t, m2, s2, t2);
  }
}

// Final (m, s, t) of a row -> logp, lse_parts, entropy (one thread).
template <typename T, bool ENT>
__device__ __forceinline__ void finish_row(const T* __restrict__ row, int64_t V, int64_t r, const int64_t* __restrict__ ids,
                                           float inv_temp, float m, float s, float t, float* __restrict__ logp,
                                           float* __restrict__ lse_parts, float* __restrict__ entropy) {
  // s >= 1 for a finite row; log in double: once per row, and independent of fast-math.
  const float ls = static_cast<float>(log(static_cast<double>(s)));
  lse_parts[2 * r] = m;  // lse = m + ls, kept apart: the backward's z - lse stays exact at any |z|
  lse_parts[2 * r + 1] = ls;
  const int64_t id = ids[r];
  float lp = __int_as_float(0x7fc00000);  // NaN: id out of range
  if (id >= 0 && id < V) lp = (__fmul_rn(load_f(row + id), inv_temp) - m) - ls;
  logp[r] = lp;
  if (ENT) entropy[r] = ls - __fdiv_rn(t, s);
}

// One row per CTA of BLOCK threads.
template <typename T, bool ENT, int BLOCK>
__global__ void __launch_bounds__(BLOCK, 1024 / BLOCK) logprob_fwd_block_kernel(const T* __restrict__ logits, int64_t N, int64_t V,
                                                                  int64_t row_stride, const int64_t* __restrict__ ids,
                                                                  float inv_temp, float* __restrict__ logp,
                                                                  float* __restrict__ lse_parts,
                                                                  float* __restrict__ entropy) {
  __shared__ float sh_m[32], sh_s[32], sh_t[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  constexpr int kWarps = BLOCK / 32;
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T* row = logits + r * row_stride;
    float m = kNegBig, s = 0.f, t = 0.f;
    row_partial<T, ENT>(row, V, inv_temp, tid, BLOCK, m, s, t);
    warp_merge<ENT>(m, s, t);
    if (lane == 0) {
      sh_m[warp] = m;
      sh_s[warp] = s;
      sh_t[warp] = t;
    }
    __syncthreads();
    if (warp == 0) {
      m = lane < kWarps ? sh_m[lane] : kNegBig;
      s = lane < kWarps ? sh_s[lane] : 0.f;
      t = lane < kWarps ? sh_t[lane] : 0.f;
      warp_merge<ENT>(m, s, t);
      if (lane == 0) finish_row<T, ENT>(row, V, r, ids, inv_temp, m, s, t, logp, lse_parts, entropy);
    }
    __syncthreads();  // shared memory is reused by the next row
  }
}

// One row per warp, kRowsPerWarpCta rows per CTA (small V).
template <typename T, bool ENT>
__global__ void __launch_bounds__(32 * kRowsPerWarpCta, 4) logprob_fwd_warp_kernel(
    const T* __restrict__ logits, int64_t N, int64_t V, int64_t row_stride, const int64_t* __restrict__ ids,
    float inv_temp, float* __restrict__ logp, float* __restrict__ lse_parts, float* __restrict__ entropy) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerWarpCta + warp; r < N;
       r += static_cast<int64_t>(gridDim.x) * kRowsPerWarpCta) {
    const T* row = logits + r * row_stride;
    float m = kNegBig, s = 0.f, t = 0.f;
    row_partial<T, ENT>(row, V, inv_temp, lane, 32, m, s, t);
    warp_merge<ENT>(m, s, t);
    if (lane == 0) finish_row<T, ENT>(row, V, r, ids, inv_temp, m, s, t, logp, lse_parts, entropy);
  }
}

constexpr int64_t kMaxGridX = 1 << 30;

template <typename T, bool ENT>
void forward_impl(const T* logits, int64_t N, int64_t V, int64_t row_stride, const int64_t* ids, float inv_temp,
                  float* logp, float* lse_parts, float* entropy, cudaStream_t stream) {
  if (V * static_cast<int64_t>(sizeof(T)) <= kWarpRowBytes) {
    const int64_t grid = std::min<int64_t>((N + kRowsPerWarpCta - 1) / kRowsPerWarpCta, kMaxGridX);
    logprob_fwd_warp_kernel<T, ENT><<<static_cast<unsigned>(grid), 32 * kRowsPerWarpCta, 0, stream>>>(
        logits, N, V, row_stride, ids, inv_temp, logp, lse_parts, entropy);
    return;
  }
  const int64_t grid = std::min<int64_t>(N, kMaxGridX);
  // Few rows: bigger CTAs keep more bytes in flight per row.
  if (N < current_sm_count()) {
    logprob_fwd_block_kernel<T, ENT, 1024><<<static_cast<unsigned>(grid), 1024, 0, stream>>>(
        logits, N, V, row_stride, ids, inv_temp, logp, lse_parts, entropy);
  } else {
    logprob_fwd_block_kernel<T, ENT, 256><<<static_cast<unsigned>(grid), 256, 0, stream>>>(
        logits, N, V, row_stride, ids, inv_temp, logp, lse_parts, entropy);
  }
}

template <typename T>
void forward_dispatch(const void* logits, int64_t N, int64_t V, int64_t row_stride, const int64_t* ids,
                      float inv_temp, float* logp, float* lse_parts, float* entropy, cudaStream_t stream) {
  const T* x = static_cast<const T*>(logits);
  if (entropy != nullptr)
    forward_impl<T, true>(x, N, V, row_stride, ids, inv_temp, logp, lse_parts, entropy, stream);
  else
    forward_impl<T, false>(x, N, V, row_stride, ids, inv_temp, logp, lse_parts, entropy, stream);
}

// ----------------------------------------------------------------- backward

struct BwdRow {
  float inv_temp, m, ls, A, B, ig;  // grad = p * (A + B q) (+ ig at id), q = (z - m) - ls = z - lse
  int64_t id;
};

template <bool ENT>
__device__ __forceinline__ float grad_elem(float x, const BwdRow& c) {
  float q = __fsub_rn(__fmul_rn(x, c.inv_temp) - c.m, c.ls);
  q = (q < -200.f) ? -200.f : q;  // exp underflows to 0 anyway; keeps B * q finite for z = -inf
  const float p = exp_accurate(q);
  return ENT ? p * fmaf(c.B, q, c.A) : p * c.A;
}

template <typename T, bool ENT>
__device__ __forceinline__ void grad_scalar(const T* __restrict__ in, T* __restrict__ out, int64_t j, const BwdRow& c) {
  float g = grad_elem<ENT>(load_f(in + j), c);
  if (j == c.id) g += c.ig;
  out[j] = from_float<T>(g);
}

template <typename T, bool ENT>
__device__ __forceinline__ void grad_vec(const uint4& r, T* __restrict__ out, int64_t base, const BwdRow& c) {
  constexpr int VEC = VecTraits<T>::kVec;
  float f[VEC];
  unpack<T>(r, f);
#pragma unroll
  for (int k = 0; k < VEC; ++k) f[k] = grad_elem<ENT>(f[k], c);
  const int64_t off = c.id - base;
  if (off >= 0 && off < VEC) {
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      if (k == off) f[k] += c.ig;
  }
  store_vec<T>(out + base, f);
}

// Elements of one row handled by "part" `part` of `nparts` (each `nthr` threads):
// vectors part*nthr + tid, stepping nparts*nthr; head/tail scalars go to part 0.
template <typename T, bool ENT>
__device__ __forceinline__ void grad_row(const T* __restrict__ in, T* __restrict__ out, int64_t V, const BwdRow& c,
                                         int tid, int nthr, int64_t part, int64_t nparts) {
  constexpr int VEC = VecTraits<T>::kVec;
  const unsigned mis_in = static_cast<unsigned>(reinterpret_cast<std::uintptr_t>(in) & 15u);
  const unsigned mis_out = static_cast<unsigned>(reinterpret_cast<std::uintptr_t>(out) & 15u);
  const int64_t step = nparts * nthr;
  if (mis_in != mis_out) {  // no common 16-byte grid: element by element
    for (int64_t j = part * nthr + tid; j < V; j += step) grad_scalar<T, ENT>(in, out, j, c);
    return;
  }
  int64_t head = static_cast<int64_t>(((16u - mis_in) & 15u) / sizeof(T));
  if (head > V) head = V;
  const int64_t nvec = (V - head) / VEC;
  if (part == 0) {
    for (int64_t j = tid; j < head; j += nthr) grad_scalar<T, ENT>(in, out, j, c);
    for (int64_t j = head + nvec * VEC + tid; j < V; j += nthr) grad_scalar<T, ENT>(in, out, j, c);
  }
  // in + head and out + head are both 16-byte aligned (same misalignment).
  // Groups of kBwdUnroll vectors: all loads (guarded) before any compute/store.
  const uint4* __restrict__ vin = reinterpret_cast<const uint4*>(in + head);
  for (int64_t i = part * nthr + tid; i < nvec; i += kBwdUnroll * step) {
    uint4 r[kBwdUnroll];
#pragma unroll
    for (int u = 0; u < kBwdUnroll; ++u) {
      const int64_t k = i + u * step;
      if (k < nvec) r[u] = __ldg(vin + k);
    }
#pragma unroll
    for (int u = 0; u < kBwdUnroll; ++u) {
      const int64_t k = i + u * step;
      if (k < nvec) grad_vec<T, ENT>(r[u], out, head + k * VEC, c);
    }
  }
}

template <bool ENT>
__device__ __forceinline__ BwdRow bwd_row_consts(int64_t r, const int64_t* __restrict__ ids,
                                                 const float* __restrict__ lse_parts, float inv_temp,
                                                 const float* __restrict__ grad_logp,
                                                 const float* __restrict__ grad_entropy,
                                                 const float* __restrict__ entropy) {
  BwdRow c;
  const float gl = grad_logp != nullptr ? grad_logp[r] : 0.f;
  const float ge = ENT ? grad_entropy[r] : 0.f;
  const float h = ENT ? entropy[r] : 0.f;
  c.inv_temp = inv_temp;
  c.m = lse_parts[2 * r];
  c.ls = lse_parts[2 * r + 1];
  c.A = ENT ? -inv_temp * fmaf(ge, h, gl) : -inv_temp * gl;
  c.B = -inv_temp * ge;
  c.ig = inv_temp * gl;
  c.id = ids[r];
  return c;
}

constexpr int kBwdBlock = 256;

// grid (column parts, rows).
template <typename T, bool ENT>
__global__ void __launch_bounds__(kBwdBlock, 4) logprob_bwd_block_kernel(
    const T* __restrict__ logits, int64_t N, int64_t V, int64_t row_stride, const int64_t* __restrict__ ids,
    const float* __restrict__ lse_parts, float inv_temp, const float* __restrict__ grad_logp,
    const float* __restrict__ grad_entropy, const float* __restrict__ entropy, T* __restrict__ grad_out) {
  for (int64_t r = blockIdx.y; r < N; r += gridDim.y) {
    const BwdRow c = bwd_row_consts<ENT>(r, ids, lse_parts, inv_temp, grad_logp, grad_entropy, entropy);
    grad_row<T, ENT>(logits + r * row_stride, grad_out + r * V, V, c, threadIdx.x, kBwdBlock, blockIdx.x,
                     gridDim.x);
  }
}

template <typename T, bool ENT>
__global__ void __launch_bounds__(32 * kRowsPerWarpCta, 4) logprob_bwd_warp_kernel(
    const T* __restrict__ logits, int64_t N, int64_t V, int64_t row_stride, const int64_t* __restrict__ ids,
    const float* __restrict__ lse_parts, float inv_temp, const float* __restrict__ grad_logp,
    const float* __restrict__ grad_entropy, const float* __restrict__ entropy, T* __restrict__ grad_out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerWarpCta + warp; r < N;
       r += static_cast<int64_t>(gridDim.x) * kRowsPerWarpCta) {
    const BwdRow c = bwd_row_consts<ENT>(r, ids, lse_parts, inv_temp, grad_logp, grad_entropy, entropy);
    grad_row<T, ENT>(logits + r * row_stride, grad_out + r * V, V, c, lane, 32, 0, 1);
  }
}

template <typename T, bool ENT>
void backward_impl(const T* logits, int64_t N, int64_t V, int64_t row_stride, const int64_t* ids, const float* lse_parts,
                   float inv_temp, const float* grad_logp, const float* grad_entropy, const float* entropy,
                   T* grad_out, cudaStream_t stream) {
  if (V * static_cast<int64_t>(sizeof(T)) <= kWarpRowBytes) {
    const int64_t grid = std::min<int64_t>((N + kRowsPerWarpCta - 1) / kRowsPerWarpCta, kMaxGridX);
    logprob_bwd_warp_kernel<T, ENT><<<static_cast<unsigned>(grid), 32 * kRowsPerWarpCta, 0, stream>>>(
        logits, N, V, row_stride, ids, lse_parts, inv_temp, grad_logp, grad_entropy, entropy, grad_out);
    return;
  }
  constexpr int VEC = VecTraits<T>::kVec;
  const int64_t gy = std::min<int64_t>(N, 65535);
  // Enough CTAs to fill the GPU (8 x 256 threads per SM) when there are few rows.
  const int64_t target = static_cast<int64_t>(current_sm_count()) * 8;
  // at least one full group of kBwdUnroll vectors per thread
  const int64_t max_parts = std::max<int64_t>(1, (V / VEC + kBwdBlock * kBwdUnroll - 1) / (kBwdBlock * kBwdUnroll));
  const int64_t gx = std::min<int64_t>(max_parts, std::max<int64_t>(1, target / gy));
  logprob_bwd_block_kernel<T, ENT><<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), kBwdBlock, 0,
                                     stream>>>(logits, N, V, row_stride, ids, lse_parts, inv_temp, grad_logp,
                                               grad_entropy, entropy, grad_out);
}

template <typename T>
void backward_dispatch(const void* logits, int64_t N, int64_t V, int64_t row_stride, const int64_t* ids,
                       const float* lse_parts, float inv_temp, const float* grad_logp, const float* grad_entropy,
                       const float* entropy, void* grad_out, cudaStream_t stream) {
  const T* x = static_cast<const T*>(logits);
  T* g = static_cast<T*>(grad_out);
  if (grad_entropy != nullptr)
    backward_impl<T, true>(x, N, V, row_stride, ids, lse_parts, inv_temp, grad_logp, grad_entropy, entropy, g, stream);
  else
    backward_impl<T, false>(x, N, V, row_stride, ids, lse_parts, inv_temp, grad_logp, nullptr, nullptr, g, stream);
}

}  // namespace

cudaError_t launch_logprob_forward(const void* logits, int dtype, int64_t N, int64_t V, int64_t row_stride,
                                   const int64_t* ids, float inv_temp, float* logp, float* lse_parts, float* entropy,
                                   cudaStream_t stream) {
  switch (dtype) {
    case kFloat32:
      forward_dispatch<float>(logits, N, V, row_stride, ids, inv_temp, logp, lse_parts, entropy, stream);
      break;
    case kFloat16:
      forward_dispatch<__half>(logits, N, V, row_stride, ids, inv_temp, logp, lse_parts, entropy, stream);
      break;
    case kBFloat16:
      forward_dispatch<__nv_bfloat16>(logits, N, V, row_stride, ids, inv_temp, logp, lse_parts, entropy, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_logprob_backward(const void* logits, int dtype, int64_t N, int64_t V, int64_t row_stride,
                                    const int64_t* ids, const float* lse_parts, float inv_temp, const float* grad_logp,
                                    const float* grad_entropy, const float* entropy, void* grad_out,
                                    cudaStream_t stream) {
  switch (dtype) {
    case kFloat32:
      backward_dispatch<float>(logits, N, V, row_stride, ids, lse_parts, inv_temp, grad_logp, grad_entropy, entropy,
                               grad_out, stream);
      break;
    case kFloat16:
      backward_dispatch<__half>(logits, N, V, row_stride, ids, lse_parts, inv_temp, grad_logp, grad_entropy, entropy,
                                grad_out, stream);
      break;
    case kBFloat16:
      backward_dispatch<__nv_bfloat16>(logits, N, V, row_stride, ids, lse_parts, inv_temp, grad_logp, grad_entropy,
                                       entropy, grad_out, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace unigrpo
