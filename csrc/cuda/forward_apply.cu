// Forward apply: y = x * scale[n, c] + shift[n, c], 16-byte vectors in the input's own
// memory order (tiled_elementwise.cuh, affine_op.cuh).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "affine_op.cuh"
#include "forward.h"

namespace groupnorm_ext {
namespace cuda {

void forward_apply(const ForwardProblem& p, const at::Tensor& scale_shift, at::Tensor& out, cudaStream_t stream) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.input.scalar_type(), "group_norm_forward_apply", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* const in[1] = {p.input.const_data_ptr<scalar_t>()};
    launch_tiled_elementwise<scalar_t, 1>(p.shape, in, out.mutable_data_ptr<scalar_t>(),
                                          AffineOp<acc_t>{scale_shift[0].const_data_ptr<acc_t>(),
                                                          scale_shift[1].const_data_ptr<acc_t>()},
                                          stream);
  });
}

}  // namespace cuda
}  // namespace groupnorm_ext
