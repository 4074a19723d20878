// The op library's schemas (TORCH_LIBRARY) and the non-autograd group_norm kernel shared by
// every backend. Backends register their kernels in their own files (cpu/, cuda/, autograd/);
// the public C++ API is in api.cpp, the Python module (groupnorm_ext._C) in python/.
#include <ATen/ATen.h>
#include <torch/library.h>

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

}  // namespace groupnorm_ext
