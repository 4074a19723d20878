// Host-side pieces of the CUDA backward.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

#include "../group_norm.h"

namespace groupnorm_ext {
namespace cuda {

// backward_sums.cu: per-(n, c, chunk) partial sums of dy and dy * (x - mean) (double),
// written to part_dy / part_dy_xc at [(n * C + c) * K + k]. Returns K, the number of chunks
// per (n, c) (the plan of the layout: spatial chunks of one channel in NCS, row chunks of
// a sample in NSC).
int64_t backward_channel_sums(const BackwardProblem& bp, at::Tensor& part_dy, at::Tensor& part_dy_xc,
                              cudaStream_t stream);

// backward_activation.cu: dL/dz = dy * act'(z) of the problem's fused activation (not the
// identity), z recomputed from x and the saved statistics, dense in the input's memory order
// and dtype: the dy that the plain backward kernels then take.
at::Tensor activation_dz(const BackwardProblem& bp, cudaStream_t stream);

}  // namespace cuda
}  // namespace groupnorm_ext
