// CUDA backward (same math as cpu/group_norm_backward.cpp): per-(n, c, chunk) partial sums
// of dy and dy * (x - mean) (backward_sums.cu), then one block per (n, group) adds each
// channel's chunks and the group's channels in a fixed order and writes the grad_input
// coefficients, a per-channel sum over n for grad_weight / grad_bias, and an elementwise
// grad_input pass. No atomics anywhere.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../group_norm.h"
#include "backward.h"
#include "block_reduce.cuh"
#include "tiled_elementwise.cuh"

namespace groupnorm_ext {
namespace cuda {
namespace {

constexpr int kCoefThreads = 256;

// Per (n, c): dx = a * dy + ((x - mean) * rstd) * kx + kc. xhat is formed per element, so
// no coefficient needs rstd^2 or rstd^3 (they underflow for large inputs). Five planar
// tables (rows of `coef`, each a 16-byte aligned row of at least N * C entries).
enum CoefRow : int { kA = 0, kMean = 1, kRstd = 2, kKx = 3, kKc = 4, kCoefRows = 5 };

// One block per (n, g). Each channel's K chunk partials are added by `wpc` warps (every
// warp busy when the group has fewer channels than the block has warps: 4 channels of
// thousands of chunks each, a 3-D volume's group, took one warp apiece and 32 us), each
// lane-strided over its share of k, then the shuffle tree, then the warps' results in warp
// order; warp 0 then adds the channels. Fixed assignment and order: the same bits every run.
template <typename acc_t, typename param_t>
__global__ void __launch_bounds__(kCoefThreads) group_coefficients_kernel(
    const reduce_t* __restrict__ part_dy, const reduce_t* __restrict__ part_dy_xc, int64_t K, GroupNormShape sh,
    const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd, const param_t* __restrict__ weight,
    reduce_t* sum_dy, reduce_t* sum_dy_xc, acc_t* __restrict__ coef, int64_t coef_stride) {
  constexpr int kWarps = kCoefThreads / kWarpSize;
  __shared__ reduce_t group[2];
  __shared__ reduce_t warp_a[kWarps], warp_b[kWarps];
  const int64_t ng = blockIdx.x;
  const int64_t n = ng / sh.groups, g = ng - n * sh.groups, D = sh.channels_per_group();
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int wpc = D < kWarps ? kWarps / static_cast<int>(D) : 1;  // warps per channel
  const int per_pass = kWarps / wpc;                               // channels per pass
  for (int64_t j0 = 0; j0 < D; j0 += per_pass) {
    const int64_t j = j0 + warp / wpc;  // this warp's channel, and its share of k
    const int share = warp % wpc;
    reduce_t a = 0, b = 0;
    if (warp < per_pass * wpc && j < D) {
      const int64_t row = (n * sh.C + g * D + j) * K;
#pragma unroll 4
      for (int64_t k = share * kWarpSize + lane; k < K; k += wpc * kWarpSize) {
        a += part_dy[row + k];
        b += part_dy_xc[row + k];
      }
    }
    a = warp_sum(a);
    b = warp_sum(b);
    if (lane == 0) {
      warp_a[warp] = a;
      warp_b[warp] = b;
    }
    __syncthreads();
    if (threadIdx.x < per_pass && j0 + threadIdx.x < D) {
      reduce_t sa = warp_a[threadIdx.x * wpc], sb = warp_b[threadIdx.x * wpc];
      for (int s = 1; s < wpc; ++s) {
        sa += warp_a[threadIdx.x * wpc + s];
        sb += warp_b[threadIdx.x * wpc + s];
      }
      const int64_t nc = n * sh.C + g * D + j0 + threadIdx.x;
      sum_dy[nc] = sa;
      sum_dy_xc[nc] = sb;
    }
    __syncthreads();  // the slots are free again; the channel sums (global memory) are visible
  }
  if (warp == 0) {
    reduce_t s_dxhat = 0, s_dxhat_xc = 0;
    for (int64_t j = lane; j < D; j += kWarpSize) {
      const int64_t c = g * D + j;
      const reduce_t w = weight ? static_cast<reduce_t>(weight[c]) : reduce_t(1);
      s_dxhat += w * sum_dy[n * sh.C + c];
      s_dxhat_xc += w * sum_dy_xc[n * sh.C + c];
    }
    s_dxhat = warp_sum(s_dxhat);
    s_dxhat_xc = warp_sum(s_dxhat_xc);
    if (lane == 0) {
      const reduce_t r = rstd[ng];
      const reduce_t inv_m = reduce_t(1) / static_cast<reduce_t>(D * sh.S);
      group[0] = -r * (r * s_dxhat_xc) * inv_m;  // kx
      group[1] = -r * s_dxhat * inv_m;            // kc
    }
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const int64_t c = g * D + j;
    const reduce_t r = rstd[ng];
    const int64_t nc = n * sh.C + c;
    coef[kA * coef_stride + nc] = static_cast<acc_t>(r * (weight ? static_cast<reduce_t>(weight[c]) : reduce_t(1)));
    coef[kMean * coef_stride + nc] = mean[ng];
    coef[kRstd * coef_stride + nc] = rstd[ng];
    coef[kKx * coef_stride + nc] = static_cast<acc_t>(group[0]);
    coef[kKc * coef_stride + nc] = static_cast<acc_t>(group[1]);
  }
}

// One thread per channel: sums over the batch in order n = 0, 1, ...
template <typename acc_t, typename param_t>
__global__ void param_grads_kernel(const reduce_t* __restrict__ sum_dy, const reduce_t* __restrict__ sum_dy_xc,
                                   const acc_t* __restrict__ rstd, GroupNormShape sh,
                                   param_t* __restrict__ grad_weight, param_t* __restrict__ grad_bias) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= sh.C) return;
  const int64_t g = c / sh.channels_per_group();
  reduce_t gw = 0, gb = 0;
  for (int64_t n = 0; n < sh.N; ++n) {
    gw += sum_dy_xc[n * sh.C + c] * static_cast<reduce_t>(rstd[n * sh.groups + g]);
    gb += sum_dy[n * sh.C + c];
  }
  if (grad_weight) grad_weight[c] = static_cast<param_t>(gw);
  if (grad_bias) grad_bias[c] = static_cast<param_t>(gb);
}

template <typename acc_t>
struct GradInputOp {
  const acc_t* __restrict__ coef;  // kCoefRows rows of `stride` entries
  int64_t stride;
  struct Params {
    acc_t a, mean, rstd, kx, kc;
  };
  __device__ __forceinline__ Params load(int64_t nc) const {
    return {coef[kA * stride + nc], coef[kMean * stride + nc], coef[kRstd * stride + nc],
            coef[kKx * stride + nc], coef[kKc * stride + nc]};
  }
  template <int V>
  __device__ __forceinline__ void load_consecutive(int64_t nc0, Params (&p)[V]) const {
    const Vec<acc_t, V> a = load_table<acc_t, V>(coef + kA * stride, nc0);
    const Vec<acc_t, V> m = load_table<acc_t, V>(coef + kMean * stride, nc0);
    const Vec<acc_t, V> r = load_table<acc_t, V>(coef + kRstd * stride, nc0);
    const Vec<acc_t, V> kx = load_table<acc_t, V>(coef + kKx * stride, nc0);
    const Vec<acc_t, V> kc = load_table<acc_t, V>(coef + kKc * stride, nc0);
#pragma unroll
    for (int j = 0; j < V; ++j) p[j] = {a.v[j], m.v[j], r.v[j], kx.v[j], kc.v[j]};
  }
  __device__ __forceinline__ acc_t apply(const Params& p, acc_t dy, acc_t x) const {
    return p.a * dy + ((x - p.mean) * p.rstd) * p.kx + p.kc;
  }
};

template <typename T, typename param_t>
void backward_impl(const BackwardProblem& bp, Tensor& grad_input, Tensor& grad_weight, Tensor& grad_bias) {
  using acc_t = acc_type<T>;
  const ForwardProblem& p = bp.fwd;
  const GroupNormShape& sh = p.shape;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t NC = sh.N * sh.C, NG = sh.N * sh.groups;
  Tensor part_dy, part_dy_xc;
  const int64_t K = backward_channel_sums(bp, part_dy, part_dy_xc, stream);

  const auto acc_opts = bp.mean.options();
  Tensor sums = at::empty({2, NC}, acc_opts.dtype(at::kDouble));
  const int64_t coef_stride = (NC + 7) / 8 * 8;  // rows stay 16-byte aligned for the vector loads
  Tensor coef = at::empty({kCoefRows, coef_stride}, acc_opts);
  const param_t* w = p.weight.defined() ? p.weight.const_data_ptr<param_t>() : nullptr;
  TORCH_CHECK(NG <= INT32_MAX, "group_norm_backward (CUDA): too many (n, group) slabs (", NG, ")");
  group_coefficients_kernel<acc_t, param_t><<<static_cast<unsigned>(NG), kCoefThreads, 0, stream>>>(
      part_dy.const_data_ptr<reduce_t>(), part_dy_xc.const_data_ptr<reduce_t>(), K, sh,
      bp.mean.const_data_ptr<acc_t>(), bp.rstd.const_data_ptr<acc_t>(), w, sums[0].mutable_data_ptr<reduce_t>(),
      sums[1].mutable_data_ptr<reduce_t>(), coef.mutable_data_ptr<acc_t>(), coef_stride);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  if (grad_weight.defined() || grad_bias.defined()) {
    param_grads_kernel<acc_t, param_t><<<grid_for((sh.C + 127) / 128, INT32_MAX), 128, 0, stream>>>(
        sums[0].const_data_ptr<reduce_t>(), sums[1].const_data_ptr<reduce_t>(), bp.rstd.const_data_ptr<acc_t>(), sh,
        grad_weight.defined() ? grad_weight.mutable_data_ptr<param_t>() : nullptr,
        grad_bias.defined() ? grad_bias.mutable_data_ptr<param_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (grad_input.defined()) {
    const T* const in[2] = {bp.grad_out.const_data_ptr<T>(), p.input.const_data_ptr<T>()};
    launch_tiled_elementwise<T, 2>(sh, in, grad_input.mutable_data_ptr<T>(),
                                   GradInputOp<acc_t>{coef.const_data_ptr<acc_t>(), coef_stride}, stream);
  }
}

}  // namespace
}  // namespace cuda

BackwardResult group_norm_backward_cuda(const Tensor& grad_out, const Tensor& input,
                                        const Tensor& mean, const Tensor& rstd,
                                        const OptionalTensor& weight, const OptionalTensor& bias,
                                        int64_t num_groups, std::string_view activation,
                                        std::array<bool, 3> output_mask) {
  BackwardProblem bp = check_backward("group_norm_backward", grad_out, input, mean, rstd,
                                      weight, bias, num_groups, activation);
  const c10::cuda::CUDAGuard device_guard(input.device());
  if (bp.fwd.activation != Activation::Identity && input.numel() > 0) {
    // A fused activation: the identity backward of z on dL/dz, formed first in one pass
    // (backward_activation.cu; z recomputed from x and the saved statistics).
    bp.grad_out = cuda::activation_dz(bp, at::cuda::getCurrentCUDAStream());
  }
  const ForwardProblem& p = bp.fwd;
  BackwardResult grads;
  if (!allocate_backward_outputs(p, input, output_mask, grads)) return grads;
  Tensor& grad_input = std::get<0>(grads);
  Tensor& grad_weight = std::get<1>(grads);
  Tensor& grad_bias = std::get<2>(grads);
  const at::ScalarType param_type = p.weight.defined() ? p.weight.scalar_type()
                                    : p.bias.defined() ? p.bias.scalar_type() : input.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "group_norm_backward_cuda", [&] {
    if constexpr (cuda::takes_float_params<scalar_t>()) {
      if (param_type == at::kFloat) {
        cuda::backward_impl<scalar_t, float>(bp, grad_input, grad_weight, grad_bias);
        return;
      }
    }
    cuda::backward_impl<scalar_t, scalar_t>(bp, grad_input, grad_weight, grad_bias);
  });
  return {grad_input, grad_weight, grad_bias};
}

TORCH_LIBRARY_IMPL(groupnorm_ext, CUDA, m) {
  m.impl("group_norm_backward", &group_norm_backward_cuda);
}

}  // namespace groupnorm_ext
