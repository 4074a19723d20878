// Weight and bias as the kernels' opmath values.
#pragma once

#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

namespace groupnorm_ext {
namespace cpu {

// The values of a 1-D contiguous parameter (weight or bias) as acc_t: the tensor's own data
// when it has that dtype, else converted into `buffer` (what .to(acc_t) gives, without an
// ATen call and a tensor, which cost more than a whole small bfloat16 op). Null when undefined.
template <typename acc_t>
const acc_t* param_values(const at::Tensor& p, std::vector<acc_t>& buffer) {
  if (!p.defined()) return nullptr;
  if (p.scalar_type() == c10::CppTypeToScalarType<acc_t>::value) return p.const_data_ptr<acc_t>();
  buffer.resize(p.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "param_values", [&] {
    const scalar_t* src = p.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < p.numel(); ++i) buffer[i] = static_cast<acc_t>(src[i]);
  });
  return buffer.data();
}

}  // namespace cpu
}  // namespace groupnorm_ext
