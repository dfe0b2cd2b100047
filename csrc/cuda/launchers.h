// Host launchers of the CUDA kernels (csrc/cuda/*.cu), called by
// csrc/bindings_cuda.cpp after it has checked the arguments (csrc/README.md).
// Each launches on `stream` without synchronising or allocating (so it can be
// captured in a CUDA graph) and returns cudaGetLastError() after the launch.
// Pointers of optional arguments may be null ("absent"); sizes are > 0.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace unigrpo {
namespace cuda {

// logits: (N, V) rows of `dtype` at `row_stride` elements; ids: (N,) int64.
// Writes logp, entropy (if non-null), (N,) fp32, and lse_parts (N, 2) fp32 = [max z, log sum exp(z - max z)]. A row whose id is
// outside [0, V) gets logp = NaN (kernels cannot raise).
cudaError_t launch_logprob_forward(const void* logits, int dtype, int64_t N, int64_t V, int64_t row_stride,
                                   const int64_t* ids, float inv_temp, float* logp, float* lse_parts, float* entropy,
                                   cudaStream_t stream);

// grad_out: contiguous (N, V) of `dtype`. grad_logp null counts as 0;
// grad_entropy null drops the entropy term (else entropy must be non-null).
cudaError_t launch_logprob_backward(const void* logits, int dtype, int64_t N, int64_t V, int64_t row_stride,
                                    const int64_t* ids, const float* lse_parts, float inv_temp, const float* grad_logp,
                                    const float* grad_entropy, const float* entropy, void* grad_out,
                                    cudaStream_t stream);

// (B, D) tensors of `dtype`, rows contiguous; weight (D,) (weight_row_stride 0)
// or (B, D) (weight_row_stride D) or null. s1 null skips the first sum (then x,
// x_next, cx, cv are unused), s2 null the second (then v_ref, weight unused).
cudaError_t launch_sde_row_sums(int dtype, int64_t B, int64_t D, const void* x, const void* x_next, const void* v,
                                const float* cx, const float* cv, const void* v_ref, const void* weight,
                                int64_t weight_row_stride, float* s1, float* s2, cudaStream_t stream);

// grad_out: (B, D) of `dtype`. a null drops the first term (x, x_next, cx, cv
// unused), b null the second (v_ref, weight unused); both null writes zeros.
cudaError_t launch_sde_row_grad(int dtype, int64_t B, int64_t D, const void* x, const void* x_next, const void* v,
                                const float* cx, const float* cv, const void* v_ref, const void* weight,
                                int64_t weight_row_stride, const float* a, const float* b, void* grad_out,
                                cudaStream_t stream);

}  // namespace cuda
}  // namespace unigrpo
