// The single-read forward for inputs whose (n, group) slabs fit on chip. A slab (one
// contiguous run of D * S elements in NCS; S rows of D channels, C apart, in NSC: the
// plan's SlabVectors walks both) is split over a thread-block cluster of `cs` blocks
// (cs = 1 below sm_90); each block keeps its piece in registers, so x is read from memory
// once and y written once. The statistics come from one pass over the registers (shifted
// sums in double); the blocks exchange their partial sums once through distributed shared
// memory and add them in rank order, so every block gets the same bits (no atomics), then
// each normalizes its piece from registers. Loads are 16-byte vectors, or single elements
// for small inputs whose slabs do not split into vectors (VEC = 1). GROUPNORM_EXT_CUDA_FUSED=0
// turns this path off (the chunked path then runs: for benchmarking the two).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <cooperative_groups.h>

#include <cstdlib>
#include <string_view>

#include "block_reduce.cuh"
#include "forward.h"
#include "vec.cuh"

namespace groupnorm_ext {
namespace cuda {
namespace {

constexpr int kFusedThreads = 256;
// 16-byte vectors of x a thread keeps in registers: 8 (32 KB per block) for 4- and 8-byte
// types; 4 for 2-byte ones, whose 8 values per vector take twice the registers once
// converted (8 vectors there cost ~128 registers, two blocks per SM, and measured slower
// than the chunked path on an H200).
template <typename T>
constexpr int fused_vecs_per_thread() {
  return sizeof(T) >= 4 ? 8 : 4;
}
constexpr int kMaxCluster = 8;          // the portable cluster size limit

struct FusedArgs {
  int64_t slab_len;    // D * S
  int64_t slab_vecs;   // slab_len / VEC
  int64_t piece_vecs;  // vectors per block of a cluster
  SlabVectors sv;      // where each vector of a slab lies, and its channels
  int cluster;         // blocks per slab
  reduce_t eps;
};

// Sums a[0..2) over the blocks of the cluster in rank order; `slot` is this block's shared
// copy of its own values (written by thread 0 before the call). Valid in thread 0; every
// thread of every block must call it.
__device__ __forceinline__ void cluster_sum2(reduce_t* slot, int cluster, reduce_t& a, reduce_t& b) {
  if (cluster == 1) return;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cl = cg::this_cluster();
  cl.sync();  // every block's slot is written
  if (threadIdx.x == 0) {
    a = 0;
    b = 0;
    for (int r = 0; r < cluster; ++r) {
      const reduce_t* remote = cl.map_shared_rank(slot, r);
      a += remote[0];
      b += remote[1];
    }
  }
  cl.sync();  // no block leaves (or rewrites its slot) while another still reads it
#else
  __trap();  // the host launches clusters only on sm_90+
#endif
}

// kNsc: the slab's layout (a.sv.nsc), one instantiation per layout.
template <typename T, typename param_t, int VEC, bool kNsc>
__global__ void __launch_bounds__(kFusedThreads, 3) fused_forward_kernel(
    const T* __restrict__ x, T* __restrict__ y, const param_t* __restrict__ weight,
    const param_t* __restrict__ bias, FusedArgs a, acc_type<T>* __restrict__ mean_out,
    acc_type<T>* __restrict__ rstd_out) {
  using acc_t = acc_type<T>;
  constexpr int kVecs = fused_vecs_per_thread<T>();
  __shared__ reduce_t shared[2 * kWarpSize];
  __shared__ reduce_t slot[2];
  __shared__ reduce_t bcast[2];
  const int64_t ng = blockIdx.x / a.cluster;
  const int rank = static_cast<int>(blockIdx.x - ng * a.cluster);
  const int64_t v_begin = rank * a.piece_vecs;
  const int64_t v_end = min(v_begin + a.piece_vecs, a.slab_vecs);
  const int count_vecs = static_cast<int>(v_end > v_begin ? v_end - v_begin : 0);
  const int64_t slab = a.sv.slab_offset_as<kNsc>(ng);
  const T* xs = x + slab;
  T* ys = y + slab;

  Vec<T, VEC> v[kVecs];
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {
    const int i = j * kFusedThreads + static_cast<int>(threadIdx.x);
    if (i < count_vecs) v[j] = load_vec<T, VEC>(xs + a.sv.vector_offset_as<kNsc>(static_cast<uint32_t>(v_begin + i)));
  }
  // One pass over the registers: sums of d = x - shift with the shift the slab's first
  // element in memory (the shifted-data algorithm in double, see moments_from_deviations),
  // so the cluster exchanges its partial sums once.
  const reduce_t shift = static_cast<reduce_t>(static_cast<acc_t>(xs[0]));
  reduce_t sum_d = 0, sum_d2 = 0;
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {
    if (j * kFusedThreads + static_cast<int>(threadIdx.x) < count_vecs) add_shifted(v[j], shift, sum_d, sum_d2);
  }
  block_sum2(sum_d, sum_d2, shared);
  if (threadIdx.x == 0) {
    slot[0] = sum_d;
    slot[1] = sum_d2;
  }
  cluster_sum2(slot, a.cluster, sum_d, sum_d2);
  if (threadIdx.x == 0) {
    const Moments<reduce_t> m =
        moments_from_deviations(static_cast<reduce_t>(a.slab_len), shift, sum_d, sum_d2);
    const reduce_t r = rstd_from_variance(moments_variance(m), a.eps);
    bcast[0] = m.mean;
    bcast[1] = r;
    if (rank == 0) {
      mean_out[ng] = static_cast<acc_t>(m.mean);
      rstd_out[ng] = static_cast<acc_t>(r);
    }
  }
  __syncthreads();
  const reduce_t mean = bcast[0], rstd = bcast[1];
  const int64_t c_base = (ng % a.sv.groups) * a.sv.D;  // first channel of the group

  // y = x * scale[c] + shift[c], from registers. NCS: a vector's elements share a channel
  // unless it straddles two; NSC: its VEC channels are consecutive, one table entry each.
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {
    const int i = j * kFusedThreads + static_cast<int>(threadIdx.x);
    if (i < count_vecs) {
      const uint32_t vi = static_cast<uint32_t>(v_begin + i);
      Vec<T, VEC> o;
      int64_t c_prev = -1;
      acc_t scale = 0, shift = 0;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const int64_t c = c_base + a.sv.channel_in_group_as<kNsc>(vi, e);
        if (c != c_prev) {
          const reduce_t s = rstd * (weight ? static_cast<reduce_t>(weight[c]) : reduce_t(1));
          scale = static_cast<acc_t>(s);
          shift = static_cast<acc_t>((bias ? static_cast<reduce_t>(bias[c]) : reduce_t(0)) - mean * s);
          c_prev = c;
        }
        o.v[e] = static_cast<T>(static_cast<acc_t>(v[j].v[e]) * scale + shift);
      }
      store_vec<T, VEC>(ys + a.sv.vector_offset_as<kNsc>(vi), o);
    }
  }
}

// Whether the kernel's machine code for this device is sm_90+ (built for it, not JIT-ed
// from older PTX): only such code may be launched in clusters.
template <typename Kernel>
bool has_cluster_code(Kernel kernel) {
  cudaFuncAttributes attr;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  return attr.binaryVersion >= 90;
}

// Returns false, launching nothing, when a cluster of that size cannot run here (e.g. the
// device reserves SMs); the caller then takes the chunked path, which gives the same
// statistics up to rounding.
template <typename T, typename param_t, int kVec>
bool launch_fused(const ForwardProblem& p, const FusedArgs& a, at::Tensor& out, at::Tensor& mean,
                  at::Tensor& rstd, cudaStream_t stream) {
  using acc_t = acc_type<T>;
  auto kernel = a.sv.nsc ? fused_forward_kernel<T, param_t, kVec, true> : fused_forward_kernel<T, param_t, kVec, false>;
  if (a.cluster > 1 && !has_cluster_code(kernel)) return false;
  const int64_t blocks = p.shape.N * p.shape.groups * a.cluster;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(blocks));
  cfg.blockDim = dim3(kFusedThreads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(a.cluster);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = a.cluster > 1 ? 1 : 0;
  const T* x = p.input.const_data_ptr<T>();
  T* y = out.mutable_data_ptr<T>();
  const param_t* w = p.weight.defined() ? p.weight.const_data_ptr<param_t>() : nullptr;
  const param_t* b = p.bias.defined() ? p.bias.const_data_ptr<param_t>() : nullptr;
  const cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, x, y, w, b, a, mean.mutable_data_ptr<acc_t>(),
                                             rstd.mutable_data_ptr<acc_t>());
  if (err != cudaSuccess && a.cluster > 1) {
    (void)cudaGetLastError();  // clear it: nothing ran
    return false;
  }
  C10_CUDA_CHECK(err);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

}  // namespace

bool forward_fused(const ForwardProblem& p, double eps, at::Tensor& out, at::Tensor& mean, at::Tensor& rstd,
                   cudaStream_t stream) {
  static const bool enabled = [] {
    const char* env = std::getenv("GROUPNORM_EXT_CUDA_FUSED");
    return env == nullptr || std::string_view(env) != "0";
  }();
  const GroupNormShape& sh = p.shape;
  if (!enabled) return false;
  const int full_vec = static_cast<int>(kVecBytes / p.input.element_size());
  const int64_t slab_len = sh.group_elems();
  if (slab_len == 0) return false;
  // NSC: every vector inside one row of the group's channels (see SlabVectors)
  const bool rows_split =
      sh.order == MemoryOrder::NSC && (sh.channels_per_group() % full_vec != 0 || sh.C % full_vec != 0);
  const bool vectorizable = slab_len % full_vec == 0 && !rows_split &&
                            aligned_to(p.input.const_data_ptr(), kVecBytes) && aligned_to(out.const_data_ptr(), kVecBytes);
  // Otherwise one element per load (a group of 1 or 2 channels in channels_last, an odd
  // slab, a misaligned view), on small inputs only: there the chunked path's three launches
  // cost more than scalar loads (~20 us against ~6 us for torch's one kernel, on an 8x64x8x8
  // channels_last G=64 input); on large ones its row-wide vectors win.
  constexpr int64_t kMaxScalarNumel = int64_t(1) << 20;
  if (!vectorizable && sh.N * sh.C * sh.S > kMaxScalarNumel) return false;
  const int vec = vectorizable ? full_vec : 1;
  const int64_t slabs = sh.N * sh.groups;
  const int64_t slab_vecs = slab_len / vec;
  const int64_t block_vecs =
      int64_t(kFusedThreads) * (p.input.element_size() >= 4 ? fused_vecs_per_thread<float>()
                                                             : fused_vecs_per_thread<c10::Half>());
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  const int max_cluster = prop->major >= 9 ? kMaxCluster : 1;
  const int64_t needed = (slab_vecs + block_vecs - 1) / block_vecs;
  if (needed > max_cluster) return false;
  // More blocks per slab when slabs are fewer than the GPU holds blocks, as long as each
  // block keeps at least one vector per thread.
  const int64_t fill = (2 * int64_t(prop->multiProcessorCount) + slabs - 1) / slabs;
  const int64_t most_useful = std::max<int64_t>(1, slab_vecs / kFusedThreads);
  int64_t cluster = std::max(needed, std::min<int64_t>({fill, most_useful, max_cluster}));
  int64_t pow2 = 1;  // cluster sizes 1, 2, 4, 8: the shapes every sm_90+ part schedules
  while (pow2 < cluster) pow2 *= 2;
  cluster = pow2;
  if (slabs * cluster > INT32_MAX) return false;
  FusedArgs a;
  a.slab_len = slab_len;
  a.slab_vecs = slab_vecs;
  a.cluster = static_cast<int>(cluster);
  a.piece_vecs = (slab_vecs + cluster - 1) / cluster;
  a.sv = SlabVectors(sh, vec);
  a.eps = static_cast<reduce_t>(eps);
  const at::ScalarType param_type = p.weight.defined() ? p.weight.scalar_type()
                                    : p.bias.defined() ? p.bias.scalar_type() : p.input.scalar_type();
  bool launched = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.input.scalar_type(), "group_norm_forward_fused", [&] {
    constexpr int kVec = vec_elems<scalar_t>();
    if constexpr (takes_float_params<scalar_t>()) {
      if (param_type == at::kFloat) {
        launched = vectorizable ? launch_fused<scalar_t, float, kVec>(p, a, out, mean, rstd, stream)
                                : launch_fused<scalar_t, float, 1>(p, a, out, mean, rstd, stream);
        return;
      }
    }
    launched = vectorizable ? launch_fused<scalar_t, scalar_t, kVec>(p, a, out, mean, rstd, stream)
                            : launch_fused<scalar_t, scalar_t, 1>(p, a, out, mean, rstd, stream);
  });
  return launched;
}

}  // namespace cuda
}  // namespace groupnorm_ext
