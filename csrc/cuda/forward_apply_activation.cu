// Forward apply with a fused activation: y = act(x * scale[n, c] + shift[n, c]), the same
// tiled 16-byte-vector pass and op as forward_apply.cu (affine_op.cuh) with the activation
// (activation.h, the CPU loops' formulas) before the one rounding to the output dtype. Its own
// translation unit: the four activations' instances build beside the plain apply's.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "affine_op.cuh"
#include "forward.h"

namespace groupnorm_ext {
namespace cuda {
namespace {

template <typename scalar_t, Activation act>
void launch(const ForwardProblem& p, const at::Tensor& scale_shift, at::Tensor& out, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* const in[1] = {p.input.const_data_ptr<scalar_t>()};
  launch_tiled_elementwise<scalar_t, 1>(p.shape, in, out.mutable_data_ptr<scalar_t>(),
                                        AffineOp<acc_t, act>{scale_shift[0].const_data_ptr<acc_t>(),
                                                             scale_shift[1].const_data_ptr<acc_t>()},
                                        stream);
}

}  // namespace

void forward_apply_activation(const ForwardProblem& p, const at::Tensor& scale_shift, at::Tensor& out,
                              cudaStream_t stream) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.input.scalar_type(), "group_norm_forward_apply_act", [&] {
    switch (p.activation) {
      case Activation::SiLU: return launch<scalar_t, Activation::SiLU>(p, scale_shift, out, stream);
      case Activation::ReLU: return launch<scalar_t, Activation::ReLU>(p, scale_shift, out, stream);
      case Activation::GELU: return launch<scalar_t, Activation::GELU>(p, scale_shift, out, stream);
      case Activation::GELUTanh: return launch<scalar_t, Activation::GELUTanh>(p, scale_shift, out, stream);
      case Activation::Identity: break;
    }
    TORCH_CHECK(false, "forward_apply_activation: no activation to apply");
  });
}

}  // namespace cuda
}  // namespace groupnorm_ext
