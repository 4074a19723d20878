// Deterministic block-level reductions: warp shuffles in a fixed tree, then the warps'
// results combined in warp order. No atomics, so every run gives the same bits.
#pragma once

#include <cuda_runtime.h>

#include "../plan.h"

namespace groupnorm_ext {
namespace cuda {

constexpr int kWarpSize = 32;

template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> warp_combine_moments(Moments<acc_t> m) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    Moments<acc_t> other;
    other.count = __shfl_down_sync(0xffffffffu, m.count, offset);
    other.mean = __shfl_down_sync(0xffffffffu, m.mean, offset);
    other.m2 = __shfl_down_sync(0xffffffffu, m.m2, offset);
    m = combine_moments(m, other);
  }
  return m;
}

// Combines every thread's moments; the result is valid in thread 0. `shared` holds one
// Moments per warp. blockDim.x must be a multiple of 32 and at most 1024.
template <typename acc_t>
__device__ Moments<acc_t> block_combine_moments(Moments<acc_t> m, Moments<acc_t>* shared) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  m = warp_combine_moments(m);
  if (lane == 0) shared[warp] = m;
  __syncthreads();
  if (warp == 0) {
    m = lane < num_warps ? shared[lane] : empty_moments<acc_t>();
    m = warp_combine_moments(m);
  }
  return m;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block of two values at once; valid in thread 0. `shared` holds 2 * 32.
template <typename acc_t>
__device__ void block_sum2(acc_t& a, acc_t& b, acc_t* shared) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  a = warp_sum(a);
  b = warp_sum(b);
  if (lane == 0) {
    shared[warp] = a;
    shared[kWarpSize + warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = warp_sum(lane < num_warps ? shared[lane] : acc_t(0));
    b = warp_sum(lane < num_warps ? shared[kWarpSize + lane] : acc_t(0));
  }
}

}  // namespace cuda
}  // namespace groupnorm_ext
