// CUDA forward: the op entry point. When every (n, group) slab of the input fits on chip
// (forward_fused.cu) x is read once; otherwise statistics by the shared plan
// (forward_stats.cu) and an elementwise apply pass (forward_apply.cu).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../group_norm.h"
#include "forward.h"

namespace groupnorm_ext {

ForwardResult group_norm_forward_cuda(const Tensor& input, int64_t num_groups,
                                      const OptionalTensor& weight, const OptionalTensor& bias,
                                      double eps, std::string_view activation) {
  const ForwardProblem p = check_forward("group_norm_forward", input, num_groups, weight, bias, activation);
  const c10::cuda::CUDAGuard device_guard(input.device());
  Tensor out, mean, rstd;
  std::tie(out, mean, rstd) = allocate_forward_outputs(p, input);
  if (p.shape.N * num_groups == 0) return {out, mean, rstd};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // The single-read kernel has no activation in it: with one, statistics and then the apply
  // pass with the activation (two reads of x and one write, fewer bytes than the single-read
  // kernel followed by a separate activation pass).
  const bool identity = p.activation == Activation::Identity;
  if (identity && p.shape.S > 0 && cuda::forward_fused(p, eps, out, mean, rstd, stream)) return {out, mean, rstd};
  // planar: row 0 scale, row 1 shift (N * C each; 16-byte aligned rows when N * C is a
  // multiple of the vector, which the vector loads of the apply pass need)
  const int64_t nc = p.shape.N * p.shape.C;
  Tensor scale_shift = at::empty({2, (nc + 7) / 8 * 8}, mean.options());
  cuda::forward_stats(p, eps, mean, rstd, scale_shift, stream);
  if (p.shape.numel() > 0) {
    if (identity) {
      cuda::forward_apply(p, scale_shift, out, stream);
    } else {
      cuda::forward_apply_activation(p, scale_shift, out, stream);
    }
  }
  return {out, mean, rstd};
}

TORCH_LIBRARY_IMPL(groupnorm_ext, CUDA, m) {
  m.impl("group_norm_forward", &group_norm_forward_cuda);
}

}  // namespace groupnorm_ext
