// CUDA forward, following the shared plan: one block per (n, group, chunk) computes the
// chunk's moments, one thread per (n, group) combines them in the plan's fixed tree, and
// an elementwise pass applies the normalization in the input's own memory order.
//
// This is the straightforward, correct executor; vector loads, on-chip single-read
// slabs and layout-specialised statistics come with the CUDA performance work.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../group_norm.h"
#include "block_reduce.cuh"

namespace groupnorm_ext {
namespace {

template <typename T>
using acc_type = std::conditional_t<std::is_same_v<T, double>, double, float>;

// 256 threads: 8 warps per chunk of ~8K elements, 32 elements per thread.
constexpr int kStatsThreads = 256;
constexpr int kApplyThreads = 256;

// Statistics are reduced in double, as on the CPU: (x - mean)^2 cannot overflow for
// |x| ~ 1e30 float input, and the kernel is memory-bound either way.
using reduce_t = double;

// Moments of one chunk by the corrected two-pass algorithm (plan.h,
// moments_from_deviations): the block sums the chunk, then the deviations from that
// first mean; the second read of the ~8K-element chunk hits L1/L2.
template <typename T>
__global__ void chunk_moments_kernel(const T* __restrict__ x, GroupNormShape sh, ChunkPlan plan,
                                     Moments<reduce_t>* __restrict__ partials) {
  __shared__ reduce_t shared[2 * cuda::kWarpSize];
  __shared__ reduce_t mean0_shared;
  const int64_t K = plan.num_chunks;
  const int64_t task = blockIdx.x;  // ((n * G) + g) * K + k
  const int64_t k = task % K, ng = task / K;
  const int64_t n = ng / sh.groups, g = ng % sh.groups;
  const int64_t count = chunk_elems(sh, plan, k);
  reduce_t sum = 0, unused = 0;
  for (int64_t e = threadIdx.x; e < count; e += blockDim.x) {
    sum += static_cast<reduce_t>(x[chunk_element_offset(sh, plan, n, g, k, e)]);
  }
  cuda::block_sum2(sum, unused, shared);
  if (threadIdx.x == 0) mean0_shared = sum / static_cast<reduce_t>(count);
  __syncthreads();
  const reduce_t mean0 = mean0_shared;
  reduce_t sum_d = 0, sum_d2 = 0;
  for (int64_t e = threadIdx.x; e < count; e += blockDim.x) {
    const reduce_t d = static_cast<reduce_t>(x[chunk_element_offset(sh, plan, n, g, k, e)]) - mean0;
    sum_d += d;
    sum_d2 += d * d;
  }
  __syncthreads();  // `shared` is reused
  cuda::block_sum2(sum_d, sum_d2, shared);
  if (threadIdx.x == 0) {
    partials[task] = moments_from_deviations(static_cast<reduce_t>(count), mean0, sum_d, sum_d2);
  }
}

template <typename acc_t>
__global__ void finalize_stats_kernel(Moments<reduce_t>* __restrict__ partials, int64_t num_slabs,
                                      int64_t K, reduce_t eps, acc_t* __restrict__ mean,
                                      acc_t* __restrict__ rstd) {
  const int64_t ng = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (ng >= num_slabs) return;
  const Moments<reduce_t> m = combine_moments_tree(partials + ng * K, K);
  mean[ng] = static_cast<acc_t>(m.mean);
  rstd[ng] = static_cast<acc_t>(rstd_from_variance(moments_variance(m), eps));
}

template <typename T, typename acc_t = acc_type<T>>
__global__ void apply_kernel(const T* __restrict__ x, T* __restrict__ y, GroupNormShape sh,
                             const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                             const acc_t* __restrict__ weight, const acc_t* __restrict__ bias) {
  const int64_t total = sh.numel();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t c;
    const int64_t ng = element_slab(sh, i, &c);
    const acc_t scale = rstd[ng] * (weight ? weight[c] : acc_t(1));
    y[i] = static_cast<T>((static_cast<acc_t>(x[i]) - mean[ng]) * scale + (bias ? bias[c] : acc_t(0)));
  }
}

int64_t elementwise_blocks(int64_t total, int threads) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t wanted = (total + threads - 1) / threads;
  return std::max<int64_t>(1, std::min<int64_t>(wanted, sms * 32));
}

template <typename T>
void forward_impl(const ForwardProblem& p, double eps, Tensor& out, Tensor& mean, Tensor& rstd) {
  using acc_t = acc_type<T>;
  const GroupNormShape& sh = p.shape;
  const ChunkPlan plan = make_chunk_plan(sh);
  const int64_t slabs = sh.N * sh.groups;
  const int64_t tasks = slabs * plan.num_chunks;
  auto stream = at::cuda::getCurrentCUDAStream();
  Tensor partials = at::empty({tasks * static_cast<int64_t>(sizeof(Moments<reduce_t>))},
                              p.input.options().dtype(at::kByte));
  auto* partials_ptr = reinterpret_cast<Moments<reduce_t>*>(partials.data_ptr());
  if (tasks > 0) {
    TORCH_CHECK(tasks <= INT32_MAX, "group_norm_forward (CUDA): too many chunks (", tasks, ")");
    chunk_moments_kernel<T><<<static_cast<unsigned>(tasks), kStatsThreads, 0, stream>>>(
        p.input.const_data_ptr<T>(), sh, plan, partials_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int threads = 128;
  finalize_stats_kernel<acc_t><<<static_cast<unsigned>((slabs + threads - 1) / threads), threads, 0, stream>>>(
      partials_ptr, slabs, plan.num_chunks, static_cast<reduce_t>(eps), mean.mutable_data_ptr<acc_t>(),
      rstd.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (sh.numel() == 0) return;
  const Tensor w = p.weight.defined() ? p.weight.to(mean.scalar_type()) : Tensor();
  const Tensor b = p.bias.defined() ? p.bias.to(mean.scalar_type()) : Tensor();
  apply_kernel<T><<<static_cast<unsigned>(elementwise_blocks(sh.numel(), kApplyThreads)), kApplyThreads, 0, stream>>>(
      p.input.const_data_ptr<T>(), out.mutable_data_ptr<T>(), sh, mean.const_data_ptr<acc_t>(),
      rstd.const_data_ptr<acc_t>(), w.defined() ? w.const_data_ptr<acc_t>() : nullptr,
      b.defined() ? b.const_data_ptr<acc_t>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

ForwardResult group_norm_forward_cuda(const Tensor& input, int64_t num_groups,
                                      const OptionalTensor& weight, const OptionalTensor& bias,
                                      double eps, std::string_view activation) {
  const ForwardProblem p = check_forward("group_norm_forward", input, num_groups, weight, bias, activation);
  TORCH_CHECK(p.activation == Activation::Identity, "group_norm_forward (CUDA): activation not implemented");
  const c10::cuda::CUDAGuard device_guard(input.device());
  Tensor out, mean, rstd;
  std::tie(out, mean, rstd) = allocate_forward_outputs(p, input);
  if (p.shape.N * num_groups == 0) return {out, mean, rstd};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "group_norm_forward_cuda",
                                  [&] { forward_impl<scalar_t>(p, eps, out, mean, rstd); });
  return {out, mean, rstd};
}

TORCH_LIBRARY_IMPL(groupnorm_ext, CUDA, m) {
  m.impl("group_norm_forward", &group_norm_forward_cuda);
}

}  // namespace groupnorm_ext
