// Host-side pieces of the CUDA forward, one kernel family per .cu file.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

#include "../group_norm.h"

namespace groupnorm_ext {
namespace cuda {

// forward_stats.cu: mean and rstd of every (n, group) slab through the plan's chunks
// (chunk moments, then the fixed-tree combine), plus the per-(n, c) affine tables the apply
// pass reads, scale_shift[0] = scale and scale_shift[1] = shift (acc type, a row of at least
// N * C each): y = x * scale + shift, scale = rstd * w, shift = b - mean * scale.
void forward_stats(const ForwardProblem& p, double eps, at::Tensor& mean, at::Tensor& rstd,
                   at::Tensor& scale_shift, cudaStream_t stream);

// forward_apply.cu: y = x * scale + shift, elementwise in the input's memory order.
void forward_apply(const ForwardProblem& p, const at::Tensor& scale_shift, at::Tensor& out,
                   cudaStream_t stream);

// forward_apply_activation.cu: y = act(x * scale + shift) for a fused activation other than
// the identity, the same pass with the activation before the rounding.
void forward_apply_activation(const ForwardProblem& p, const at::Tensor& scale_shift, at::Tensor& out,
                              cudaStream_t stream);

// forward_fused.cu: the whole forward in one kernel when every slab fits on chip (one
// block, or a thread-block cluster on sm_90+): x is read once. Returns false, launching
// nothing, when the problem does not qualify.
bool forward_fused(const ForwardProblem& p, double eps, at::Tensor& out, at::Tensor& mean,
                   at::Tensor& rstd, cudaStream_t stream);

}  // namespace cuda
}  // namespace groupnorm_ext
