// Backward reductions: per-(n, c, chunk) sums of dy and dy * (x - mean), in double, with
// 16-byte loads. NCS: one warp per (row, spatial chunk). NSC: one block per (sample, row
// chunk) reading whole rows; per-channel sums meet in shared memory in a fixed order.
// No atomics anywhere.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>

#include "backward.h"
#include "block_reduce.cuh"
#include "vec.cuh"

namespace groupnorm_ext {
namespace cuda {
namespace {

constexpr int kSumThreads = 256;
constexpr int kWarpsPerBlock = kSumThreads / kWarpSize;
// NSC row chunks (the parallel plan's) hold at least this many rows, so that the N * C * K
// partials stay a small fraction of the tensor (16 bytes per (n, c, chunk)).
constexpr int64_t kMinNscChunkRows = 64;

template <typename T, int VEC>
__global__ void __launch_bounds__(kSumThreads) ncs_row_sums_kernel(
    const T* __restrict__ dy, const T* __restrict__ x, const acc_type<T>* __restrict__ mean, GroupNormShape sh,
    ChunkPlan plan, reduce_t* __restrict__ part_dy, reduce_t* __restrict__ part_dy_xc) {
  using acc_t = acc_type<T>;
  const int64_t tasks = sh.N * sh.C * plan.num_chunks;
  const int64_t task = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (task >= tasks) return;  // whole warps only: the shuffles below stay full
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = task / plan.num_chunks, k = task - row * plan.num_chunks;
  const int64_t n = row / sh.C, c = row - n * sh.C;
  const reduce_t mu = static_cast<reduce_t>(mean[n * sh.groups + c / sh.channels_per_group()]);
  const int64_t begin = plan.begin(k), end = plan.end(k, sh.S);
  const T* dyr = dy + row * sh.S;
  const T* xr = x + row * sh.S;
  reduce_t s_dy = 0, s_dy_xc = 0;
#pragma unroll 4
  for (int64_t e = begin + int64_t(lane) * VEC; e < end; e += int64_t(kWarpSize) * VEC) {
    const Vec<T, VEC> g = load_vec<T, VEC>(dyr + e);
    const Vec<T, VEC> v = load_vec<T, VEC>(xr + e);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const reduce_t gi = static_cast<reduce_t>(static_cast<acc_t>(g.v[i]));
      s_dy += gi;
      s_dy_xc += gi * (static_cast<reduce_t>(static_cast<acc_t>(v.v[i])) - mu);
    }
  }
  s_dy = warp_sum(s_dy);
  s_dy_xc = warp_sum(s_dy_xc);
  if (lane == 0) {
    part_dy[task] = s_dy;
    part_dy_xc[task] = s_dy_xc;
  }
}

// 128 threads: at ~100-128 registers (VEC double sums and means per thread) that is 4
// blocks per SM, whose loads overlap each other's reductions.
constexpr int kNscSumThreads = 128;

template <typename T, int VEC>
__global__ void __launch_bounds__(kNscSumThreads, 4) nsc_chunk_sums_kernel(
    const T* __restrict__ dy, const T* __restrict__ x, const acc_type<T>* __restrict__ mean, GroupNormShape sh,
    ChunkPlan plan, NscLayout lay, FastDivU32 div_d, reduce_t* __restrict__ part_dy,
    reduce_t* __restrict__ part_dy_xc) {
  using acc_t = acc_type<T>;
  // rows per batch of loads: half the forward's, since each row here loads dy and x
  constexpr int B = nsc_batch_rows<VEC>() / 2;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  reduce_t* sa = reinterpret_cast<reduce_t*>(smem_raw);
  reduce_t* sb = sa + lay.slots;
  const int64_t C = sh.C, K = plan.num_chunks;
  const int64_t n = blockIdx.x / K, k = blockIdx.x - n * K;
  const int64_t r0 = plan.begin(k), r1 = plan.end(k, sh.S);
  const int64_t sample = n * sh.S * C;
  const int64_t lane_step = lay.lanes * C;  // elements between a thread's consecutive rows
  for (int64_t item = threadIdx.x; item < lay.lanes * lay.cols; item += blockDim.x) {
    const int64_t lane = item / lay.cols, col = item - lane * lay.cols;
    reduce_t mu[VEC], a[VEC], b[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      mu[i] = static_cast<reduce_t>(mean[n * sh.groups + div_d.div(static_cast<uint32_t>(col * VEC + i))]);
      a[i] = 0;
      b[i] = 0;
    }
    int64_t off = sample + (r0 + lane) * C + col * VEC;
    // rows in order r0 + lane, r0 + lane + lanes, ...: B of them loaded before any is added
    for (int64_t r = r0 + lane; r < r1; r += B * lay.lanes, off += B * lane_step) {
      Vec<T, VEC> g[B], v[B];
#pragma unroll
      for (int j = 0; j < B; ++j) {
        if (r + j * lay.lanes < r1) {
          g[j] = load_vec<T, VEC>(dy + off + j * lane_step);
          v[j] = load_vec<T, VEC>(x + off + j * lane_step);
        }
      }
#pragma unroll
      for (int j = 0; j < B; ++j) {
        if (r + j * lay.lanes < r1) {
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            const reduce_t gi = static_cast<reduce_t>(static_cast<acc_t>(g[j].v[i]));
            a[i] += gi;
            b[i] += gi * (static_cast<reduce_t>(static_cast<acc_t>(v[j].v[i])) - mu[i]);
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      sa[lane * C + col * VEC + i] = a[i];
      sb[lane * C + col * VEC + i] = b[i];
    }
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    reduce_t a = 0, b = 0;
    for (int64_t lane = 0; lane < lay.lanes; ++lane) {
      a += sa[lane * C + c];
      b += sb[lane * C + c];
    }
    part_dy[(n * C + c) * K + k] = a;
    part_dy_xc[(n * C + c) * K + k] = b;
  }
}

// Any NSC shape (C too large for the shared slots above): one block per (n, c, chunk),
// strided reads.
template <typename T>
__global__ void __launch_bounds__(kSumThreads) generic_channel_sums_kernel(
    const T* __restrict__ dy, const T* __restrict__ x, const acc_type<T>* __restrict__ mean, GroupNormShape sh,
    ChunkPlan plan, reduce_t* __restrict__ part_dy, reduce_t* __restrict__ part_dy_xc) {
  __shared__ reduce_t shared[2 * kWarpSize];
  const int64_t K = plan.num_chunks;
  const int64_t task = blockIdx.x;  // (n * C + c) * K + k
  const int64_t k = task % K, nc = task / K;
  const int64_t n = nc / sh.C, c = nc % sh.C;
  const reduce_t mu = mean[n * sh.groups + c / sh.channels_per_group()];
  reduce_t sum_dy = 0, sum_dy_xc = 0;
  for (int64_t s = plan.begin(k) + threadIdx.x; s < plan.end(k, sh.S); s += blockDim.x) {
    const int64_t off = sh.offset(n, c, s);
    const reduce_t g = static_cast<reduce_t>(dy[off]);
    sum_dy += g;
    sum_dy_xc += g * (static_cast<reduce_t>(x[off]) - mu);
  }
  block_sum2(sum_dy, sum_dy_xc, shared);
  if (threadIdx.x == 0) {
    part_dy[task] = sum_dy;
    part_dy_xc[task] = sum_dy_xc;
  }
}

template <typename T>
int64_t launch_sums(const BackwardProblem& bp, at::Tensor& part_dy, at::Tensor& part_dy_xc, cudaStream_t stream) {
  using acc_t = acc_type<T>;
  constexpr int kVec = vec_elems<T>();
  const GroupNormShape& sh = bp.fwd.shape;
  const T* x = bp.fwd.input.const_data_ptr<T>();
  const T* dy = bp.grad_out.const_data_ptr<T>();
  const acc_t* mean = bp.mean.const_data_ptr<acc_t>();
  const auto opts = bp.mean.options().dtype(at::kDouble);
  const bool aligned = aligned_to(x, kVecBytes) && aligned_to(dy, kVecBytes);
  const int64_t NC = sh.N * sh.C;
  if (sh.order == MemoryOrder::NCS) {
    const ChunkPlan plan = make_chunk_plan(sh.S, 1);
    const int64_t tasks = NC * plan.num_chunks;
    part_dy = at::empty({tasks}, opts);
    part_dy_xc = at::empty({tasks}, opts);
    const int64_t blocks = (tasks + kWarpsPerBlock - 1) / kWarpsPerBlock;
    TORCH_CHECK(blocks <= INT32_MAX, "group_norm_backward (CUDA): too many chunks (", tasks, ")");
    if (aligned && sh.S % kVec == 0) {
      ncs_row_sums_kernel<T, kVec><<<static_cast<unsigned>(blocks), kSumThreads, 0, stream>>>(
          dy, x, mean, sh, plan, part_dy.mutable_data_ptr<reduce_t>(), part_dy_xc.mutable_data_ptr<reduce_t>());
    } else {
      ncs_row_sums_kernel<T, 1><<<static_cast<unsigned>(blocks), kSumThreads, 0, stream>>>(
          dy, x, mean, sh, plan, part_dy.mutable_data_ptr<reduce_t>(), part_dy_xc.mutable_data_ptr<reduce_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return plan.num_chunks;
  }
  const ChunkPlan plan = make_parallel_chunk_plan(sh.S, sh.C, sh.N, kMinNscChunkRows);
  const int64_t K = plan.num_chunks;
  part_dy = at::empty({NC * K}, opts);
  part_dy_xc = at::empty({NC * K}, opts);
  const bool vec = aligned && sh.C % kVec == 0;
  const NscLayout lay = nsc_layout(sh.C, vec ? kVec : 1, kNscSumThreads);
  const size_t smem = 2 * lay.slots * sizeof(reduce_t);
  if (smem <= 48 * 1024 && sh.C < INT32_MAX) {
    const int64_t blocks = sh.N * K;
    const FastDivU32 div_d(static_cast<uint32_t>(sh.channels_per_group()));
    TORCH_CHECK(blocks <= INT32_MAX, "group_norm_backward (CUDA): too many chunks (", blocks, ")");
    if (vec) {
      nsc_chunk_sums_kernel<T, kVec><<<static_cast<unsigned>(blocks), kNscSumThreads, smem, stream>>>(
          dy, x, mean, sh, plan, lay, div_d, part_dy.mutable_data_ptr<reduce_t>(), part_dy_xc.mutable_data_ptr<reduce_t>());
    } else {
      nsc_chunk_sums_kernel<T, 1><<<static_cast<unsigned>(blocks), kNscSumThreads, smem, stream>>>(
          dy, x, mean, sh, plan, lay, div_d, part_dy.mutable_data_ptr<reduce_t>(), part_dy_xc.mutable_data_ptr<reduce_t>());
    }
  } else {
    const int64_t tasks = NC * K;
    TORCH_CHECK(tasks <= INT32_MAX, "group_norm_backward (CUDA): too many chunks (", tasks, ")");
    generic_channel_sums_kernel<T><<<static_cast<unsigned>(tasks), kSumThreads, 0, stream>>>(
        dy, x, mean, sh, plan, part_dy.mutable_data_ptr<reduce_t>(), part_dy_xc.mutable_data_ptr<reduce_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return K;
}

}  // namespace

int64_t backward_channel_sums(const BackwardProblem& bp, at::Tensor& part_dy, at::Tensor& part_dy_xc,
                              cudaStream_t stream) {
  int64_t K = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bp.fwd.input.scalar_type(), "group_norm_backward_sums",
                                  [&] { K = launch_sums<scalar_t>(bp, part_dy, part_dy_xc, stream); });
  return K;
}

}  // namespace cuda
}  // namespace groupnorm_ext
