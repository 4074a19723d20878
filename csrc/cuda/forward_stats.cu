// Forward statistics by the plan (plan.h): one block per chunk of the parallel plan
// computes the chunk's moments in one pass, from sums of x - shift with the shift one of the
// chunk's own values (the shifted-data algorithm, in double: see moments_from_deviations),
// then one block per (n, group) combines its chunks with the plan's fixed tree, a level at
// a time in parallel, and writes mean, rstd and the per-channel affine table. No atomics:
// the same bits on every run.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>

#include "block_reduce.cuh"
#include "forward.h"
#include "vec.cuh"

namespace groupnorm_ext {
namespace cuda {
namespace {

constexpr int kStatsThreads = 256;
// 16-byte loads a thread issues before it adds any of them (NCS): enough bytes in flight
// to cover DRAM latency, where a plain strided loop keeps one load per thread in flight.
constexpr int kNcsBatch = 4;

// NCS: the chunk is a contiguous run of the slab; the shift is its first element. VEC > 1
// needs a 16-byte aligned x and slab length (so that every chunk, a multiple of 8 elements
// long, starts aligned and holds whole vectors).
template <typename T, int VEC>
__global__ void __launch_bounds__(kStatsThreads) ncs_chunk_moments_kernel(
    const T* __restrict__ x, int64_t slab_len, ChunkPlan plan, Moments<reduce_t>* __restrict__ partials) {
  using acc_t = acc_type<T>;
  __shared__ reduce_t shared[2 * kWarpSize];
  const int64_t task = blockIdx.x;  // ng * K + k
  const int64_t ng = task / plan.num_chunks, k = task - ng * plan.num_chunks;
  const int64_t begin = plan.begin(k);
  const int64_t count = plan.end(k, slab_len) - begin;
  const T* p = x + ng * slab_len + begin;
  const reduce_t shift = static_cast<reduce_t>(static_cast<acc_t>(p[0]));
  constexpr int64_t kStep = int64_t(kStatsThreads) * VEC;
  reduce_t s1 = 0, s2 = 0;
  for (int64_t e = int64_t(threadIdx.x) * VEC; e < count; e += kNcsBatch * kStep) {
    Vec<T, VEC> v[kNcsBatch];
#pragma unroll
    for (int b = 0; b < kNcsBatch; ++b) {
      if (e + b * kStep < count) v[b] = load_vec<T, VEC>(p + e + b * kStep);
    }
#pragma unroll
    for (int b = 0; b < kNcsBatch; ++b) {
      if (e + b * kStep < count) add_shifted(v[b], shift, s1, s2);
    }
  }
  block_sum2(s1, s2, shared);
  if (threadIdx.x == 0) partials[task] = moments_from_deviations(static_cast<reduce_t>(count), shift, s1, s2);
}

// NSC: a chunk is rows [r0, r1) of one sample with all C channels, so one block reduces
// every group of the sample; each group's shift is its first element in row r0. Thread
// `item` owns a column of VEC channels and the rows lane, lane + lanes, ... (NscLayout),
// loaded nsc_batch_rows<VEC>() at a time; per-channel sums meet in shared memory
// ([lane][channel]) and one warp per group adds them in a fixed order.

// Sum over the lanes and channels of group g of the [lane][channel] slots, by one warp in
// a fixed order (lane-strided partial sums, then the shuffle tree).
__device__ __forceinline__ void warp_group_sum2(const reduce_t* a, const reduce_t* b, int64_t C, int64_t D,
                                                int64_t lanes, int64_t g, FastDivU32 div_d, reduce_t& sa,
                                                reduce_t& sb) {
  const int lane_id = threadIdx.x % kWarpSize;
  sa = 0;
  sb = 0;
  const int64_t items = D * lanes;
  for (int64_t i = lane_id; i < items; i += kWarpSize) {
    const int64_t row_lane = div_d.div(static_cast<uint32_t>(i));
    const int64_t slot = row_lane * C + g * D + (i - row_lane * D);
    sa += a[slot];
    sb += b[slot];
  }
  sa = warp_sum(sa);
  sb = warp_sum(sb);
}

// 128 threads: at ~100-128 registers (VEC double sums and shifts per thread) that is 4
// blocks per SM, whose loads overlap each other's reductions.
constexpr int kNscStatsThreads = 128;

template <typename T, int VEC>
__global__ void __launch_bounds__(kNscStatsThreads, 4) nsc_chunk_moments_kernel(
    const T* __restrict__ x, GroupNormShape sh, ChunkPlan plan, NscLayout lay, FastDivU32 div_d,
    Moments<reduce_t>* __restrict__ partials) {
  using acc_t = acc_type<T>;
  constexpr int B = nsc_batch_rows<VEC>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  reduce_t* sum_a = reinterpret_cast<reduce_t*>(smem_raw);
  reduce_t* sum_b = sum_a + lay.slots;
  const int64_t C = sh.C, G = sh.groups, D = sh.channels_per_group();
  const int64_t K = plan.num_chunks;
  const int64_t n = blockIdx.x / K, k = blockIdx.x - n * K;
  const int64_t r0 = plan.begin(k), r1 = plan.end(k, sh.S);
  const int64_t lane_step = lay.lanes * C;  // elements between a thread's consecutive rows
  const T* xs = x + n * sh.S * C;
  const T* first_row = xs + r0 * C;
  const int warp = threadIdx.x / kWarpSize, num_warps = blockDim.x / kWarpSize;

  for (int64_t item = threadIdx.x; item < lay.lanes * lay.cols; item += blockDim.x) {
    const int64_t lane = item / lay.cols, col = item - lane * lay.cols;
    reduce_t shift[VEC], s1[VEC], s2[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const int64_t group_first = int64_t(div_d.div(static_cast<uint32_t>(col * VEC + i))) * D;
      shift[i] = static_cast<reduce_t>(static_cast<acc_t>(first_row[group_first]));
      s1[i] = 0;
      s2[i] = 0;
    }
    const T* p = xs + (r0 + lane) * C + col * VEC;
    // rows in order r0 + lane, r0 + lane + lanes, ...: B of them loaded before any is added
    for (int64_t r = r0 + lane; r < r1; r += B * lay.lanes, p += B * lane_step) {
      Vec<T, VEC> v[B];
#pragma unroll
      for (int b = 0; b < B; ++b) {
        if (r + b * lay.lanes < r1) v[b] = load_vec<T, VEC>(p + b * lane_step);
      }
#pragma unroll
      for (int b = 0; b < B; ++b) {
        if (r + b * lay.lanes < r1) {
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            const reduce_t d = static_cast<reduce_t>(static_cast<acc_t>(v[b].v[i])) - shift[i];
            s1[i] += d;
            s2[i] += d * d;
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      sum_a[lane * C + col * VEC + i] = s1[i];
      sum_b[lane * C + col * VEC + i] = s2[i];
    }
  }
  __syncthreads();
  const reduce_t count = static_cast<reduce_t>(D * (r1 - r0));
  for (int64_t g = warp; g < G; g += num_warps) {
    reduce_t sd, sd2;
    warp_group_sum2(sum_a, sum_b, C, D, lay.lanes, g, div_d, sd, sd2);
    if (threadIdx.x % kWarpSize == 0) {
      const reduce_t shift = static_cast<reduce_t>(static_cast<acc_t>(first_row[g * D]));
      partials[(n * G + g) * K + k] = moments_from_deviations(count, shift, sd, sd2);
    }
  }
}

// NSC chunks for any C (the shared-memory slots of the kernel above grow with C): one block
// per (n, group, chunk), element by element through the plan's offsets.
template <typename T>
__global__ void __launch_bounds__(kStatsThreads) generic_chunk_moments_kernel(
    const T* __restrict__ x, GroupNormShape sh, ChunkPlan plan, Moments<reduce_t>* __restrict__ partials) {
  __shared__ reduce_t shared[2 * kWarpSize];
  const int64_t K = plan.num_chunks;
  const int64_t task = blockIdx.x;  // ((n * G) + g) * K + k
  const int64_t k = task % K, ng = task / K;
  const int64_t n = ng / sh.groups, g = ng % sh.groups;
  const int64_t count = chunk_elems(sh, plan, k);
  const reduce_t shift = static_cast<reduce_t>(x[chunk_element_offset(sh, plan, n, g, k, 0)]);
  reduce_t sum_d = 0, sum_d2 = 0;
  for (int64_t e = threadIdx.x; e < count; e += blockDim.x) {
    const reduce_t d = static_cast<reduce_t>(x[chunk_element_offset(sh, plan, n, g, k, e)]) - shift;
    sum_d += d;
    sum_d2 += d * d;
  }
  block_sum2(sum_d, sum_d2, shared);
  if (threadIdx.x == 0) {
    partials[task] = moments_from_deviations(static_cast<reduce_t>(count), shift, sum_d, sum_d2);
  }
}

// One block per (n, group): the plan's fixed combine tree over the slab's K partials, one
// level at a time (pairs of a level in parallel: the bits of the sequential tree), then
// mean, rstd and the group's channels' {scale, shift}.
template <typename acc_t, typename param_t>
__global__ void __launch_bounds__(kStatsThreads) finalize_kernel(
    Moments<reduce_t>* __restrict__ partials, int64_t K, GroupNormShape sh, reduce_t eps,
    const param_t* __restrict__ weight, const param_t* __restrict__ bias, acc_t* __restrict__ mean,
    acc_t* __restrict__ rstd, acc_t* __restrict__ scale, acc_t* __restrict__ shift) {
  __shared__ reduce_t stats[2];
  const int64_t ng = blockIdx.x;
  Moments<reduce_t>* part = partials + ng * K;
  // Each thread loads kPairBatch pairs before it stores any: independent L2 loads in flight
  // instead of one round trip per pair (the pairs of a level are disjoint, so the bits
  // are those of the sequential tree).
  constexpr int kPairBatch = 4;
  for (int64_t stride = 1; stride < K; stride *= 2) {
    const int64_t pairs = tree_level_pairs(K, stride);
    for (int64_t p0 = threadIdx.x; p0 < pairs; p0 += kPairBatch * static_cast<int64_t>(blockDim.x)) {
      Moments<reduce_t> lo[kPairBatch], hi[kPairBatch];
#pragma unroll
      for (int u = 0; u < kPairBatch; ++u) {
        const int64_t p = p0 + u * static_cast<int64_t>(blockDim.x);
        if (p < pairs) {
          lo[u] = part[2 * stride * p];
          hi[u] = part[2 * stride * p + stride];
        }
      }
#pragma unroll
      for (int u = 0; u < kPairBatch; ++u) {
        const int64_t p = p0 + u * static_cast<int64_t>(blockDim.x);
        if (p < pairs) part[2 * stride * p] = combine_moments(lo[u], hi[u]);
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const Moments<reduce_t> m = K > 0 ? part[0] : empty_moments<reduce_t>();
    const reduce_t r = rstd_from_variance(moments_variance(m), eps);
    mean[ng] = static_cast<acc_t>(m.mean);
    rstd[ng] = static_cast<acc_t>(r);
    stats[0] = m.mean;
    stats[1] = r;
  }
  __syncthreads();
  const int64_t D = sh.channels_per_group();
  const int64_t n = ng / sh.groups, g = ng - n * sh.groups;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const int64_t c = g * D + j;
    const reduce_t s = stats[1] * (weight ? static_cast<reduce_t>(weight[c]) : reduce_t(1));
    const reduce_t b = bias ? static_cast<reduce_t>(bias[c]) : reduce_t(0);
    scale[n * sh.C + c] = static_cast<acc_t>(s);
    shift[n * sh.C + c] = static_cast<acc_t>(b - stats[0] * s);
  }
}

template <typename T>
void launch_chunk_moments(const ForwardProblem& p, const ChunkPlan& plan, Moments<reduce_t>* partials,
                          cudaStream_t stream) {
  const GroupNormShape& sh = p.shape;
  constexpr int kVec = vec_elems<T>();
  const T* x = p.input.const_data_ptr<T>();
  const int64_t slabs = sh.N * sh.groups;
  if (sh.order == MemoryOrder::NCS) {
    const int64_t tasks = slabs * plan.num_chunks;
    TORCH_CHECK(tasks <= INT32_MAX, "group_norm_forward (CUDA): too many chunks (", tasks, ")");
    const int64_t slab_len = sh.group_elems();
    if (aligned_to(x, kVecBytes) && slab_len % kVec == 0) {
      ncs_chunk_moments_kernel<T, kVec><<<static_cast<unsigned>(tasks), kStatsThreads, 0, stream>>>(
          x, slab_len, plan, partials);
    } else {
      ncs_chunk_moments_kernel<T, 1><<<static_cast<unsigned>(tasks), kStatsThreads, 0, stream>>>(
          x, slab_len, plan, partials);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const bool vec = aligned_to(x, kVecBytes) && sh.C % kVec == 0;
  const NscLayout lay = nsc_layout(sh.C, vec ? kVec : 1, kNscStatsThreads);
  const size_t smem = 2 * lay.slots * sizeof(reduce_t);
  const int64_t blocks = sh.N * plan.num_chunks;
  if (smem <= 48 * 1024 && sh.channels_per_group() * lay.lanes < INT32_MAX && sh.C < INT32_MAX) {
    TORCH_CHECK(blocks <= INT32_MAX, "group_norm_forward (CUDA): too many chunks (", blocks, ")");
    const FastDivU32 div_d(static_cast<uint32_t>(sh.channels_per_group()));
    if (vec) {
      nsc_chunk_moments_kernel<T, kVec><<<static_cast<unsigned>(blocks), kNscStatsThreads, smem, stream>>>(
          x, sh, plan, lay, div_d, partials);
    } else {
      nsc_chunk_moments_kernel<T, 1><<<static_cast<unsigned>(blocks), kNscStatsThreads, smem, stream>>>(
          x, sh, plan, lay, div_d, partials);
    }
  } else {
    const int64_t tasks = slabs * plan.num_chunks;
    TORCH_CHECK(tasks <= INT32_MAX, "group_norm_forward (CUDA): too many chunks (", tasks, ")");
    generic_chunk_moments_kernel<T><<<static_cast<unsigned>(tasks), kStatsThreads, 0, stream>>>(
        x, sh, plan, partials);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t, typename param_t>
void launch_finalize(const ForwardProblem& p, Moments<reduce_t>* partials, int64_t K, double eps,
                     at::Tensor& mean, at::Tensor& rstd, at::Tensor& scale_shift, cudaStream_t stream) {
  const GroupNormShape& sh = p.shape;
  finalize_kernel<acc_t, param_t><<<static_cast<unsigned>(sh.N * sh.groups), kStatsThreads, 0, stream>>>(
      partials, K, sh, static_cast<reduce_t>(eps),
      p.weight.defined() ? p.weight.const_data_ptr<param_t>() : nullptr,
      p.bias.defined() ? p.bias.const_data_ptr<param_t>() : nullptr, mean.mutable_data_ptr<acc_t>(),
      rstd.mutable_data_ptr<acc_t>(), scale_shift[0].mutable_data_ptr<acc_t>(),
      scale_shift[1].mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void forward_stats(const ForwardProblem& p, double eps, at::Tensor& mean, at::Tensor& rstd,
                   at::Tensor& scale_shift, cudaStream_t stream) {
  const GroupNormShape& sh = p.shape;
  const ChunkPlan plan = sh.order == MemoryOrder::NCS
                             ? make_parallel_chunk_plan(sh.group_elems(), 1, sh.N * sh.groups, 1, 8)
                             : make_parallel_chunk_plan(sh.S, sh.C, sh.N);
  const int64_t slabs = sh.N * sh.groups;
  TORCH_CHECK(slabs <= INT32_MAX, "group_norm_forward (CUDA): too many (n, group) slabs (", slabs, ")");
  at::Tensor partials = at::empty({slabs * plan.num_chunks * static_cast<int64_t>(sizeof(Moments<reduce_t>))},
                                  p.input.options().dtype(at::kByte));
  auto* part = reinterpret_cast<Moments<reduce_t>*>(partials.data_ptr());
  // Parameters are read in their own dtype (float32 weight with half input, say).
  const at::ScalarType param_type = p.weight.defined() ? p.weight.scalar_type()
                                    : p.bias.defined() ? p.bias.scalar_type() : p.input.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.input.scalar_type(), "group_norm_forward_stats", [&] {
    using acc_t = acc_type<scalar_t>;
    if (plan.num_chunks > 0) launch_chunk_moments<scalar_t>(p, plan, part, stream);
    if constexpr (takes_float_params<scalar_t>()) {
      if (param_type == at::kFloat) {
        launch_finalize<acc_t, float>(p, part, plan.num_chunks, eps, mean, rstd, scale_shift, stream);
        return;
      }
    }
    launch_finalize<acc_t, scalar_t>(p, part, plan.num_chunks, eps, mean, rstd, scale_shift, stream);
  });
}

}  // namespace cuda
}  // namespace groupnorm_ext
