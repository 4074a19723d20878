// The pybind11 module groupnorm_ext._C. The ops live in the op library libgroupnorm_ext.so,
// which this module links (found through its rpath): importing it loads the library, whose
// static initializers register torch.ops.groupnorm_ext.*. What it adds is Python-only:
// build information and the plan bindings the tests use.
#include <torch/extension.h>

#include "groupnorm_ext/groupnorm_ext.h"

namespace groupnorm_ext {
void bind_plan(pybind11::module& m);  // plan_bindings.cpp
int64_t cached_output_bytes();        // api.cpp (exported for this module, not in the public header)
}  // namespace groupnorm_ext

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "groupnorm_ext: fused GroupNorm ops (registered as torch.ops.groupnorm_ext.*)";
  m.def("cpu_capability", &groupnorm_ext::cpu_capability,
        "Which vectorized clone of the CPU loops runs on this CPU.");
  m.def("built_with_cuda", &groupnorm_ext::built_with_cuda,
        "Whether the op library carries the CUDA kernels.");
  m.def("empty_cache", &groupnorm_ext::empty_cache,
        "Unmaps the large CPU output buffers kept for reuse; returns the bytes released.");
  m.def("_cached_output_bytes", &groupnorm_ext::cached_output_bytes,
        "Bytes of free CPU output buffers the pool holds (tests).");
  // The functional API's eager call (functional.py): the same op through the dispatcher's
  // typed entry, so every dispatch key (autograd, autocast, functorch, tracing, Python modes)
  // still applies, without the boxed torch.ops path's Python frame, schema matching and
  // argument boxing: ~2 us of a ~10 us call on small tensors. The GIL is released around it,
  // as torch's own bindings release it.
  m.def(
      "_group_norm",
      [](const at::Tensor& input, int64_t num_groups, const std::optional<at::Tensor>& weight,
         const std::optional<at::Tensor>& bias, double eps, const std::string& activation) {
        return groupnorm_ext::group_norm(input, num_groups, weight, bias, eps, activation);
      },
      pybind11::call_guard<pybind11::gil_scoped_release>(),
      "torch.ops.groupnorm_ext.group_norm for eager callers that checked the argument types.");
  groupnorm_ext::bind_plan(m);
}
