// Shared helpers for the CUDA kernels of `unigrpo._C_cuda` (device side plus a
// few host utilities). Deliberately independent of csrc/common.h (the CPU
// module's header): only the dtype codes must agree with it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cfloat>
#include <cstdint>

namespace unigrpo {
namespace cuda {

// dtype codes of the native ABI (csrc/README.md): must match csrc/common.h.
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

inline bool dtype_known(int code) { return code == kFloat32 || code == kFloat16 || code == kBFloat16; }
inline int dtype_size(int code) { return code == kFloat32 ? 4 : 2; }

// Finite stand-in for -inf as the running max of an online logsumexp: every
// rescale factor exp(m_old - m_new) and product (m_old - m_new) * s stays
// finite (0 * -inf would be NaN), and exp(-inf - m) is still 0.
constexpr float kNegBig = -FLT_MAX;
constexpr float kLog2e = 1.4426950216293335f;       // float(log2(e))
constexpr float kLog2eLo = 1.9259629911266175e-08f;  // log2(e) - kLog2e
constexpr float kLn2 = 0.6931471824645996f;

#if defined(__CUDACC__)

// 2^x with the MUFU unit (ex2.approx.ftz: ~2 ulp, 2^-inf = 0). Written as PTX
// so that its accuracy does not depend on --use_fast_math.
__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// exp(q) for q <= 0, one MUFU op: relative error ~2 ulp + |q| * 2^-24 (the
// rounding of q * log2e). Used where terms are summed (the forward), where
// the large-|q| terms are negligible.
__device__ __forceinline__ float exp_fast(float q) { return ex2_approx(q * kLog2e); }

// exp(q) to ~2 ulp over the whole range: the rounding error of q * log2e is
// recovered with FMAs and applied as 2^e ~ 1 + e ln2. Used where each p is an
// output (the backward). -inf (and anything below -200) gives 0; NaN stays NaN.
__device__ __forceinline__ float exp_accurate(float q) {
  q = (q < -200.f) ? -200.f : q;
  const float t = q * kLog2e;
  float e = fmaf(q, kLog2e, -t);  // exact low part of q * kLog2e
  e = fmaf(q, kLog2eLo, e);
  const float p = ex2_approx(t);
  return fmaf(p, e * kLn2, p);
}

// ------------------------------------------------------------- dtype traits

template <typename T>
struct VecTraits;  // kVec elements of T per 16-byte vector

// kNegInfWord: a 32-bit word of -inf elements (to pad a partial group of vectors).
template <>
struct VecTraits<float> {
  static constexpr int kVec = 4;
  static constexpr unsigned kNegInfWord = 0xff800000u;
};
template <>
struct VecTraits<__half> {
  static constexpr int kVec = 8;
  static constexpr unsigned kNegInfWord = 0xfc00fc00u;
};
template <>
struct VecTraits<__nv_bfloat16> {
  static constexpr int kVec = 8;
  static constexpr unsigned kNegInfWord = 0xff80ff80u;
};

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Scalar read-only load, converted to fp32.
template <typename T>
__device__ __forceinline__ float load_f(const T* p) {
  return to_float(__ldg(p));
}

// 16 bytes -> kVec floats.
template <typename T>
__device__ __forceinline__ void unpack(const uint4& r, float (&f)[VecTraits<T>::kVec]);

template <>
__device__ __forceinline__ void unpack<float>(const uint4& r, float (&f)[4]) {
  f[0] = __uint_as_float(r.x);
  f[1] = __uint_as_float(r.y);
  f[2] = __uint_as_float(r.z);
  f[3] = __uint_as_float(r.w);
}

template <>
__device__ __forceinline__ void unpack<__nv_bfloat16>(const uint4& r, float (&f)[8]) {
  const unsigned w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {  // little endian: element 2k is the low half
    f[2 * k] = __uint_as_float(w[k] << 16);
    f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
  }
}

template <>
__device__ __forceinline__ void unpack<__half>(const uint4& r, float (&f)[8]) {
  const unsigned w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    __half2 h;
    *reinterpret_cast<unsigned*>(&h) = w[k];
    const float2 v = __half22float2(h);
    f[2 * k] = v.x;
    f[2 * k + 1] = v.y;
  }
}

// kVec floats -> 16 bytes (round to nearest even).
template <typename T>
__device__ __forceinline__ uint4 pack(const float (&f)[VecTraits<T>::kVec]);

template <>
__device__ __forceinline__ uint4 pack<float>(const float (&f)[4]) {
  return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
}

template <>
__device__ __forceinline__ uint4 pack<__nv_bfloat16>(const float (&f)[8]) {
  unsigned w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);  // .x = low half
    w[k] = *reinterpret_cast<const unsigned*>(&h);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

template <>
__device__ __forceinline__ uint4 pack<__half>(const float (&f)[8]) {
  unsigned w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const __half2 h = __floats2half2_rn(f[2 * k], f[2 * k + 1]);
    w[k] = *reinterpret_cast<const unsigned*>(&h);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Load kVec elements (16-byte aligned) as floats.
template <typename T>
__device__ __forceinline__ void load_vec(const T* p, float (&f)[VecTraits<T>::kVec]) {
  unpack<T>(__ldg(reinterpret_cast<const uint4*>(p)), f);
}

template <typename T>
__device__ __forceinline__ void store_vec(T* p, const float (&f)[VecTraits<T>::kVec]) {
  *reinterpret_cast<uint4*>(p) = pack<T>(f);
}

// ---------------------------------------------------------------- reductions

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum of `v` over the block (any blockDim.x multiple of 32, <= 1024); the
// result is valid in thread 0. `smem` holds >= 32 floats. Ends with the block
// synchronised, so smem can be reused right after.
__device__ __forceinline__ float block_sum(float v, float* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  float r = 0.f;
  if (warp == 0) {
    r = lane < nwarps ? smem[lane] : 0.f;
    r = warp_sum(r);
  }
  __syncthreads();
  return r;
}

#endif  // __CUDACC__

// ------------------------------------------------------------------ host side

template <typename T>
inline bool aligned16(const T* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0;
}

// Number of SMs of the current device, cached per device (a cheap host query,
// allowed during stream capture; the cache makes it a memory read after the
// first call). Falls back to 132 (H100 SXM) if the query fails.
inline int current_sm_count() {
  static std::atomic<int> cache[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
    cudaGetLastError();
    return 132;
  }
  int n = cache[dev].load(std::memory_order_relaxed);
  if (n > 0) return n;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
    cudaGetLastError();
    return 132;
  }
  cache[dev].store(n, std::memory_order_relaxed);
  return n;
}

}  // namespace cuda
}  // namespace unigrpo
