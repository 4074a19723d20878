// The forward apply's elementwise op (tiled_elementwise.cuh): y = act(x * scale[n, c] +
// shift[n, c]) with the per-(n, c) tables of forward_stats. The identity instance lives in
// forward_apply.cu, the activations' in forward_apply_activation.cu.
#pragma once

#include "../activation.h"
#include "tiled_elementwise.cuh"

namespace groupnorm_ext {
namespace cuda {

template <typename acc_t, Activation act = Activation::Identity>
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
  __device__ __forceinline__ acc_t apply(const Params& p, acc_t x, acc_t) const {
    return activation_forward<act>(x * p.scale + p.shift);
  }
};

}  // namespace cuda
}  // namespace groupnorm_ext
