// Forward apply with a fused activation: y = act(x * scale[n, c] + shift[n, c]), the same
// tiled 16-byte-vector pass as forward_apply.cu with the activation (activation.h, the CPU
// loops' formulas) before the one rounding to the output dtype. Its own translation unit, so
// that the plain apply's compile and code stay as they were and the two build in parallel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "../activation.h"
#include "forward.h"
#include "tiled_elementwise.cuh"

namespace groupnorm_ext {
namespace cuda {
namespace {

template <typename acc_t, Activation act>
struct ActivatedAffineOp {
  const acc_t* __restrict__ scale;  // [N * C]
  const acc_t* __restrict__ shift;  // [N * C]
  struct Params {
    acc_t scale, shift;
  };
  __device__ __forceinline__ Params load(int64_t nc) const { return {scale[nc], shift[nc]}; }
  template <int V>
  __device__ __forceinline__ void load_consecutive(int64_t nc0, Params (&p)[V]) const {
    const Vec<acc_t, V> s = load_table<acc_t, V>(scale, nc0), b = load_table<acc_t, V>(shift, nc0);
#pragma unroll
    for (int j = 0; j < V; ++j) p[j] = {s.v[j], b.v[j]};
  }
  __device__ __forceinline__ acc_t apply(const Params& p, acc_t x, acc_t) const {
    return activation_forward<act>(x * p.scale + p.shift);
  }
};

template <typename scalar_t, Activation act>
void launch(const ForwardProblem& p, const at::Tensor& scale_shift, at::Tensor& out, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* const in[1] = {p.input.const_data_ptr<scalar_t>()};
  launch_tiled_elementwise<scalar_t, 1>(p.shape, in, out.mutable_data_ptr<scalar_t>(),
                                        ActivatedAffineOp<acc_t, act>{scale_shift[0].const_data_ptr<acc_t>(),
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
