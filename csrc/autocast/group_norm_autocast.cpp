// CUDA autocast. torch's group_norm is on autocast's float32 list (AT_FORALL_FP32 in
// ATen/autocast_mode.h): under torch.autocast("cuda") it runs in float32 and returns float32,
// whatever dtype the previous layer handed it. group_norm does the same here, so that swapping
// nn.GroupNorm for ours changes no dtype in an autocast model. CPU autocast leaves torch's
// group_norm alone (not on its lists), and so no AutocastCPU kernel is registered: the op then
// runs in the input's dtype, as torch's does.
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "../group_norm.h"
#include "groupnorm_ext/groupnorm_ext.h"

namespace groupnorm_ext {
namespace {

Tensor group_norm_autocast_cuda(const Tensor& input, int64_t num_groups, const OptionalTensor& weight,
                                const OptionalTensor& bias, double eps, std::string_view activation) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  constexpr auto cuda = c10::DeviceType::CUDA;
  // cached_cast converts float16 / bfloat16 CUDA tensors only (float64 and CPU tensors pass).
  return group_norm(at::autocast::cached_cast(at::kFloat, input, cuda), num_groups,
                    at::autocast::cached_cast(at::kFloat, weight, cuda),
                    at::autocast::cached_cast(at::kFloat, bias, cuda), eps, activation);
}

}  // namespace

TORCH_LIBRARY_IMPL(groupnorm_ext, AutocastCUDA, m) {
  m.impl("group_norm", &group_norm_autocast_cuda);
}

}  // namespace groupnorm_ext
