// pybind11 module unigrpo._C: the CPU kernels of csrc/README.md, torch-free.
// Pointers are Python ints (tensor.data_ptr(), 0 = absent). Argument errors
// raise ValueError (std::invalid_argument); the GIL is released while the
// kernels run.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using std::uintptr_t;

PYBIND11_MODULE(_C, m) {
  m.doc() = "unigrpo CPU kernels (raw pointers, sizes and dtype codes; see csrc/README.md)";
  m.attr("ABI_VERSION") = 2;  // 2: lse_parts (N, 2) replaced lse (N,)
  m.attr("DTYPE_FLOAT32") = int(unigrpo::kFloat32);
  m.attr("DTYPE_FLOAT16") = int(unigrpo::kFloat16);
  m.attr("DTYPE_BFLOAT16") = int(unigrpo::kBFloat16);

  const auto nogil = py::call_guard<py::gil_scoped_release>();

  m.def("logprob_forward", &unigrpo::cpu::logprob_forward, nogil, py::arg("logits"), py::arg("dtype"),
        py::arg("N"), py::arg("V"), py::arg("row_stride"), py::arg("ids"), py::arg("inv_temp"), py::arg("logp"),
        py::arg("lse_parts"), py::arg("entropy"),
        "logp = z[ids] - lse, lse_parts (N, 2) = [max z, log sum exp(z - max z)] (lse = their sum, kept "
        "apart), entropy (if entropy != 0) for z = logits * inv_temp; one pass over each row.");
  m.def("logprob_backward", &unigrpo::cpu::logprob_backward, nogil, py::arg("logits"), py::arg("dtype"),
        py::arg("N"), py::arg("V"), py::arg("row_stride"), py::arg("ids"), py::arg("lse_parts"), py::arg("inv_temp"),
        py::arg("grad_logp"), py::arg("grad_entropy"), py::arg("entropy"), py::arg("grad_out"),
        "grad_out (N, V, contiguous, logits dtype) = d(logp, entropy)/d logits applied to (grad_logp, "
        "grad_entropy); grad_entropy = 0 means no entropy term.");
  m.def("sde_row_sums", &unigrpo::cpu::sde_row_sums, nogil, py::arg("dtype"), py::arg("B"), py::arg("D"),
        py::arg("x"), py::arg("x_next"), py::arg("v"), py::arg("cx"), py::arg("cv"), py::arg("v_ref"),
        py::arg("weight"), py::arg("weight_row_stride"), py::arg("s1"), py::arg("s2"),
        "s1 = sum_d (x_next - cx x - cv v)^2 (if s1 != 0), s2 = sum_d w (v - v_ref)^2 (if s2 != 0).");
  m.def("sde_row_grad", &unigrpo::cpu::sde_row_grad, nogil, py::arg("dtype"), py::arg("B"), py::arg("D"),
        py::arg("x"), py::arg("x_next"), py::arg("v"), py::arg("cx"), py::arg("cv"), py::arg("v_ref"),
        py::arg("weight"), py::arg("weight_row_stride"), py::arg("a"), py::arg("b"), py::arg("grad_out"),
        "grad_out = a (x_next - cx x - cv v) + b w (v - v_ref); a = 0 or b = 0 drops that term.");

  m.def("cpu_isa", &unigrpo::cpu::isa_in_use,
        "The ISA level the kernels run: x86-64-v4 (AVX-512), x86-64-v3 (AVX2) or baseline.");
  m.def(
      "cpu_isa_levels",
      []() {
        py::list out;
        for (const char* const* p = unigrpo::cpu::isa_levels_built(); *p; ++p) out.append(*p);
        return out;
      },
      "The ISA levels this module was built with, best first.");
  m.def("set_cpu_isa", &unigrpo::cpu::set_isa, py::arg("level"),
        "Run the kernels at `level` from now on (one of cpu_isa_levels(), supported by this CPU); "
        "the environment variable UNIGRPO_CPU_ISA does the same at load time.");

  m.def(
      "set_num_threads",
      [](int n) {
        if (n <= 0)
          throw std::invalid_argument("set_num_threads: argument 'n' must be > 0, got " + std::to_string(n));
#ifdef _OPENMP
        omp_set_num_threads(n);
#endif
      },
      py::arg("n"), "Number of OpenMP threads the kernels use (no-op without OpenMP).");
  m.def(
      "get_num_threads",
      []() {
#ifdef _OPENMP
        return omp_get_max_threads();
#else
        return 1;
#endif
      },
      "Number of OpenMP threads the kernels use (1 without OpenMP).");
  m.def(
      "has_openmp",
      []() {
#ifdef _OPENMP
        return true;
#else
        return false;
#endif
      },
      "Whether the module was built with OpenMP.");
}
