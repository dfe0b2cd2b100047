// pybind11 module `_C_cuda` (installed as unigrpo._C_cuda): the CUDA kernels of
// csrc/README.md, torch-free. Pointers are Python ints (tensor.data_ptr(), 0 =
// absent), `stream` is a cudaStream_t as an int
// (torch.cuda.current_stream().cuda_stream). Arguments are checked here, before
// anything is launched (ValueError naming the argument); launch errors raise
// RuntimeError with the CUDA error string. Kernels run asynchronously on
// `stream`: nothing here synchronises or allocates, so calls can be captured in
// a CUDA graph. The GIL is released around each call.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

#include "cuda/launchers.h"

namespace py = pybind11;
namespace uc = unigrpo::cuda;

namespace {

using ptr_t = std::uintptr_t;

[[noreturn]] void bad(const std::string& msg) { throw py::value_error(msg); }

void check_dtype(int dtype) {
  if (dtype != 0 && dtype != 1 && dtype != 2)
    bad("dtype: unknown dtype code " + std::to_string(dtype) + " (expected 0 = float32, 1 = float16, 2 = bfloat16)");
}

int elem_size(int dtype) { return dtype == 0 ? 4 : 2; }

void check_positive(const char* name, int64_t value) {
  if (value <= 0) bad(std::string(name) + " must be > 0, got " + std::to_string(value));
}

// Non-null (if required) and aligned to `align` bytes (if non-null).
void check_ptr(const char* name, ptr_t p, bool required, int align) {
  if (p == 0) {
    if (required) bad(std::string(name) + " is a null pointer (0); it is required");
    return;
  }
  if (p % static_cast<ptr_t>(align) != 0) {
    std::ostringstream os;
    os << name << " pointer 0x" << std::hex << p << std::dec << " is not aligned to its element size (" << align
       << " bytes)";
    bad(os.str());
  }
}

void check_inv_temp(double inv_temp) {
  if (!(inv_temp > 0.0) || !std::isfinite(inv_temp) || !std::isfinite(static_cast<float>(inv_temp)))
    bad("inv_temp must be a finite number > 0, got " + std::to_string(inv_temp));
}

void check_launch(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("unigrpo._C_cuda.") + what + ": CUDA error: " + cudaGetErrorName(err) +
                             ": " + cudaGetErrorString(err));
}

template <typename T>
T* as(ptr_t p) {
  return reinterpret_cast<T*>(p);
}

cudaStream_t as_stream(ptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

void logprob_forward(ptr_t logits, int dtype, int64_t N, int64_t V, int64_t row_stride, ptr_t ids, double inv_temp,
                     ptr_t logp, ptr_t lse_parts, ptr_t entropy, ptr_t stream) {
  check_dtype(dtype);
  check_positive("N", N);
  check_positive("V", V);
  if (row_stride < V)
    bad("row_stride must be >= V (" + std::to_string(V) + "), got " + std::to_string(row_stride));
  check_ptr("logits", logits, true, elem_size(dtype));
  check_ptr("ids", ids, true, 8);
  check_inv_temp(inv_temp);
  check_ptr("logp", logp, true, 4);
  check_ptr("lse_parts", lse_parts, true, 4);
  check_ptr("entropy", entropy, false, 4);
  check_launch(uc::launch_logprob_forward(as<const void>(logits), dtype, N, V, row_stride, as<const int64_t>(ids),
                                          static_cast<float>(inv_temp), as<float>(logp), as<float>(lse_parts),
                                          as<float>(entropy), as_stream(stream)),
               "logprob_forward");
}

void logprob_backward(ptr_t logits, int dtype, int64_t N, int64_t V, int64_t row_stride, ptr_t ids, ptr_t lse_parts,
                      double inv_temp, ptr_t grad_logp, ptr_t grad_entropy, ptr_t entropy, ptr_t grad_out,
                      ptr_t stream) {
  check_dtype(dtype);
  check_positive("N", N);
  check_positive("V", V);
  if (row_stride < V)
    bad("row_stride must be >= V (" + std::to_string(V) + "), got " + std::to_string(row_stride));
  check_ptr("logits", logits, true, elem_size(dtype));
  check_ptr("ids", ids, true, 8);
  check_ptr("lse_parts", lse_parts, true, 4);
  check_inv_temp(inv_temp);
  check_ptr("grad_logp", grad_logp, true, 4);
  check_ptr("grad_entropy", grad_entropy, false, 4);
  check_ptr("entropy", entropy, grad_entropy != 0, 4);  // needed by the entropy term
  check_ptr("grad_out", grad_out, true, elem_size(dtype));
  check_launch(uc::launch_logprob_backward(as<const void>(logits), dtype, N, V, row_stride, as<const int64_t>(ids),
                                           as<const float>(lse_parts), static_cast<float>(inv_temp),
                                           as<const float>(grad_logp), as<const float>(grad_entropy),
                                           as<const float>(entropy), as<void>(grad_out), as_stream(stream)),
               "logprob_backward");
}

void check_weight_stride(ptr_t weight, int64_t weight_row_stride, int64_t D) {
  if (weight != 0 && weight_row_stride != 0 && weight_row_stride != D)
    bad("weight_row_stride must be 0 (a (D,) weight) or D = " + std::to_string(D) + " (a (B, D) weight), got " +
        std::to_string(weight_row_stride));
}

// The inputs of the two terms: x, x_next, cx, cv for the first (log-likelihood), v_ref
// for the second (penalty), the weight optional, v always; the two per-row coefficient
// outputs / inputs (s1 s2, or a b) are fp32. Returns the element size.
int check_flow_inputs(int dtype, int64_t B, int64_t D, const char* first_name, ptr_t first, const char* second_name,
                      ptr_t second, ptr_t x, ptr_t x_next, ptr_t v, ptr_t cx, ptr_t cv, ptr_t v_ref, ptr_t weight,
                      int64_t weight_row_stride) {
  check_dtype(dtype);
  check_positive("B", B);
  check_positive("D", D);
  const int es = elem_size(dtype);
  const bool has1 = first != 0, has2 = second != 0;
  check_ptr(first_name, first, false, 4);
  check_ptr(second_name, second, false, 4);
  check_ptr("x", x, has1, es);
  check_ptr("x_next", x_next, has1, es);
  check_ptr("v", v, true, es);
  check_ptr("cx", cx, has1, 4);
  check_ptr("cv", cv, has1, 4);
  check_ptr("v_ref", v_ref, has2, es);
  check_ptr("weight", weight, false, es);
  check_weight_stride(weight, weight_row_stride, D);
  return es;
}

void sde_row_sums(int dtype, int64_t B, int64_t D, ptr_t x, ptr_t x_next, ptr_t v, ptr_t cx, ptr_t cv, ptr_t v_ref,
                  ptr_t weight, int64_t weight_row_stride, ptr_t s1, ptr_t s2, ptr_t stream) {
  check_flow_inputs(dtype, B, D, "s1", s1, "s2", s2, x, x_next, v, cx, cv, v_ref, weight, weight_row_stride);
  if (s1 == 0 && s2 == 0) return;  // nothing asked for
  check_launch(uc::launch_sde_row_sums(dtype, B, D, as<const void>(x), as<const void>(x_next), as<const void>(v),
                                       as<const float>(cx), as<const float>(cv), as<const void>(v_ref),
                                       as<const void>(weight), weight_row_stride, as<float>(s1), as<float>(s2),
                                       as_stream(stream)),
               "sde_row_sums");
}

void sde_row_grad(int dtype, int64_t B, int64_t D, ptr_t x, ptr_t x_next, ptr_t v, ptr_t cx, ptr_t cv, ptr_t v_ref,
                  ptr_t weight, int64_t weight_row_stride, ptr_t a, ptr_t b, ptr_t grad_out, ptr_t stream) {
  const int es =
      check_flow_inputs(dtype, B, D, "a", a, "b", b, x, x_next, v, cx, cv, v_ref, weight, weight_row_stride);
  check_ptr("grad_out", grad_out, true, es);
  check_launch(uc::launch_sde_row_grad(dtype, B, D, as<const void>(x), as<const void>(x_next), as<const void>(v),
                                       as<const float>(cx), as<const float>(cv), as<const void>(v_ref),
                                       as<const void>(weight), weight_row_stride, as<const float>(a),
                                       as<const float>(b), as<void>(grad_out), as_stream(stream)),
               "sde_row_grad");
}

// Never raises: 0 without a driver / device (so the module is harmless to
// import and query on a GPU-less machine).
int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the (non-sticky) error
    return 0;
  }
  return n;
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "unigrpo CUDA kernels (torch-free; see csrc/README.md)";
  m.attr("ABI_VERSION") = 2;  // 2: lse_parts (N, 2) replaced lse (N,)
  using rel = py::call_guard<py::gil_scoped_release>;

  m.def("logprob_forward", &logprob_forward, rel(), py::arg("logits"), py::arg("dtype"), py::arg("N"), py::arg("V"),
        py::arg("row_stride"), py::arg("ids"), py::arg("inv_temp"), py::arg("logp"), py::arg("lse_parts"),
        py::arg("entropy"), py::arg("stream"),
        "logp = z[id] - lse, lse_parts (N, 2) = [max z, log sum exp(z - max z)] (lse = their sum), entropy (if entropy != 0); z = logits * inv_temp.");
  m.def("logprob_backward", &logprob_backward, rel(), py::arg("logits"), py::arg("dtype"), py::arg("N"),
        py::arg("V"), py::arg("row_stride"), py::arg("ids"), py::arg("lse_parts"), py::arg("inv_temp"),
        py::arg("grad_logp"), py::arg("grad_entropy"), py::arg("entropy"), py::arg("grad_out"), py::arg("stream"),
        "grad_out = inv_temp * (g_logp * (onehot - p) - g_ent * p * (z - lse + H)), (N, V) contiguous.");
  m.def("sde_row_sums", &sde_row_sums, rel(), py::arg("dtype"), py::arg("B"), py::arg("D"), py::arg("x"),
        py::arg("x_next"), py::arg("v"), py::arg("cx"), py::arg("cv"), py::arg("v_ref"), py::arg("weight"),
        py::arg("weight_row_stride"), py::arg("s1"), py::arg("s2"), py::arg("stream"),
        "s1[b] = sum (x_next - cx x - cv v)^2 (if s1 != 0), s2[b] = sum w (v - v_ref)^2 (if s2 != 0).");
  m.def("sde_row_grad", &sde_row_grad, rel(), py::arg("dtype"), py::arg("B"), py::arg("D"), py::arg("x"),
        py::arg("x_next"), py::arg("v"), py::arg("cx"), py::arg("cv"), py::arg("v_ref"), py::arg("weight"),
        py::arg("weight_row_stride"), py::arg("a"), py::arg("b"), py::arg("grad_out"), py::arg("stream"),
        "grad = a[b] (x_next - cx x - cv v) + b[b] w (v - v_ref); a / b = 0 drops a term.");
  m.def("device_count", &device_count, rel(), "Number of CUDA devices; 0 (never an error) without a driver or GPU.");
  m.def(
      "runtime_version", []() {
        int v = 0;
        cudaRuntimeGetVersion(&v);
        return v;
      },
      "CUDA runtime version this module was built with (e.g. 13000).");
  m.def(
      "driver_version", []() {
        int v = 0;
        if (cudaDriverGetVersion(&v) != cudaSuccess) {
          cudaGetLastError();
          return 0;
        }
        return v;
      },
      "CUDA version the installed driver supports (0 without a driver).");
}
