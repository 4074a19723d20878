// Forward apply: y = x * scale[n, c] + shift[n, c], 16-byte vectors in the input's own
// memory order (tiled_elementwise.cuh).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "forward.h"
#include "tiled_elementwise.cuh"

namespace groupnorm_ext {
namespace cuda {
namespace {

template <typename acc_t>
struct AffineOp {
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
  __device__ __forceinline__ acc_t apply(const Params& p, acc_t x, acc_t) const { return x * p.scale + p.shift; }
};

}  // namespace

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
