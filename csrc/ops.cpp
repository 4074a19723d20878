// The op library: schemas (TORCH_LIBRARY), the non-autograd group_norm kernel shared by
// every backend, and the pybind11 module `groupnorm_ext._C` whose import loads it all.
// Backends register their kernels in their own files (cpu/, cuda/, autograd/).
#include <ATen/ATen.h>
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu/loops.h"
#include "group_norm.h"

namespace groupnorm_ext {
namespace {

// group_norm below autograd: the forward op's output, statistics dropped.
Tensor group_norm_inference(const Tensor& input, int64_t num_groups, const OptionalTensor& weight,
                            const OptionalTensor& bias, double eps, std::string_view activation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("groupnorm_ext::group_norm_forward", "")
                       .typed<ForwardResult(const Tensor&, int64_t, const OptionalTensor&,
                                            const OptionalTensor&, double, std::string_view)>();
  return std::get<0>(op.call(input, num_groups, weight, bias, eps, activation));
}

}  // namespace

TORCH_LIBRARY(groupnorm_ext, m) {
  m.def(
      "group_norm(Tensor input, int num_groups, Tensor? weight=None, Tensor? bias=None, "
      "float eps=1e-05, str activation=\"identity\") -> Tensor");
  m.def(
      "group_norm_forward(Tensor input, int num_groups, Tensor? weight, Tensor? bias, "
      "float eps, str activation) -> (Tensor out, Tensor mean, Tensor rstd)");
  m.def(
      "group_norm_backward(Tensor grad_out, Tensor input, Tensor mean, Tensor rstd, "
      "Tensor? weight, Tensor? bias, int num_groups, str activation, bool[3] output_mask) "
      "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
}

TORCH_LIBRARY_IMPL(groupnorm_ext, CPU, m) {
  m.impl("group_norm", &group_norm_inference);
}

#ifdef GROUPNORM_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(groupnorm_ext, CUDA, m) {
  m.impl("group_norm", &group_norm_inference);
}
#endif

void bind_plan(pybind11::module& m);  // plan_bindings.cpp

}  // namespace groupnorm_ext

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "groupnorm_ext: fused GroupNorm ops (registered as torch.ops.groupnorm_ext.*)";
  m.def("cpu_capability", &groupnorm_ext::cpu::loops_isa,
        "Which vectorized clone of the CPU loops runs on this CPU.");
  groupnorm_ext::bind_plan(m);
  m.def("built_with_cuda", [] {
#ifdef GROUPNORM_EXT_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}
