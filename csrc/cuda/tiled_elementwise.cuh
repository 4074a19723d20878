// The elementwise passes (forward apply, grad_input): every sample's C * S elements are
// walked in tiles of THREADS * VEC * UNROLL elements, one tile per block; each thread loads
// UNROLL 16-byte vectors of every input before it computes (several loads in flight), and
// finds each element's channel through plan.h's TileChannels (one 64-bit division per tile).
#pragma once

#include <cstdlib>
#include <string_view>

#include "vec.cuh"

namespace groupnorm_ext {
namespace cuda {

// V consecutive entries of a planar table from index i (i % V == 0, table 16-byte aligned):
// 16-byte loads.
template <typename acc_t, int V>
__device__ __forceinline__ Vec<acc_t, V> load_table(const acc_t* __restrict__ table, int64_t i) {
  return load_vec<acc_t, V>(table + i);
}

// How the channel changes across the VEC elements of one vector (uniform over a launch):
enum class VecChannels : int {
  kSame = 0,        // NCS with S % VEC == 0: one channel per vector
  kConsecutive = 1, // NSC with C % VEC == 0: channels c0, c0 + 1, ... (no wrap)
  kGeneral = 2,     // anything else: each element's channel on its own
};

// Whether the passes walk their tiles from the tensor's end (default; GROUPNORM_EXT_CUDA_REVERSE_PASSES=0
// walks from the start, for benchmarking the two). Each pass follows a reduction over the same
// input (statistics, or the backward sums) that read it from the start: the last tens of MB it
// read are still in L2, and walking back from the end re-reads those first, from L2 instead of
// device memory (at most an L2's worth of the re-read, which is a third of the forward's bytes).
inline bool reverse_elementwise_passes() {
  static const bool reverse = [] {
    const char* env = std::getenv("GROUPNORM_EXT_CUDA_REVERSE_PASSES");
    return env == nullptr || std::string_view(env) != "0";
  }();
  return reverse;
}

template <typename T, int NIN>
struct ElementwiseArgs {
  const T* in[NIN];
  T* out;
  int64_t C;
  int64_t sample_len;  // C * S
  int64_t tiles_per_sample;
  int64_t total_tiles;
  TileChannels channels;
  VecChannels vec_channels;
  // Step s of the walk handles tile first_tile + tile_step * s: (0, 1) from the start,
  // (total_tiles - 1, -1) from the end (reverse_elementwise_passes). Kernel parameters are
  // read from the constant bank, so the walk's direction costs no register.
  int64_t first_tile;
  int64_t tile_step;
};

// Op reads per-(n, c) parameters from planar tables (one acc-type array per parameter,
// indexed by nc = n * C + c) and applies them:
//   typename Op::Params;                         the parameters of one channel
//   Params load(int64_t nc) const;               one channel
//   template <int V> void load_consecutive(int64_t nc0, Params (&p)[V]) const;
//                                                channels nc0 .. nc0 + V - 1 (nc0 % V == 0),
//                                                with vector loads from the tables
//   acc_t apply(const Params&, acc_t in0, acc_t in1) const;
template <typename T, int VEC, int UNROLL, int THREADS, int NIN, typename Op>
__global__ void __launch_bounds__(THREADS) tiled_elementwise_kernel(ElementwiseArgs<T, NIN> a, Op op) {
  using acc_t = acc_type<T>;
  constexpr int64_t kTile = int64_t(THREADS) * VEC * UNROLL;
  for (int64_t step = blockIdx.x; step < a.total_tiles; step += gridDim.x) {
    const int64_t tile = a.first_tile + a.tile_step * step;
    const int64_t n = div_nonneg(tile, a.tiles_per_sample);
    const int64_t e0 = (tile - n * a.tiles_per_sample) * kTile;
    const int64_t base = n * a.sample_len + e0;
    int64_t q0, r0;
    a.channels.start(e0, &q0, &r0);
    Vec<T, VEC> v[NIN][UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int64_t l = (int64_t(u) * THREADS + threadIdx.x) * VEC;
      if (e0 + l < a.sample_len) {
#pragma unroll
        for (int i = 0; i < NIN; ++i) v[i][u] = load_vec<T, VEC>(a.in[i] + base + l);
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int64_t l = (int64_t(u) * THREADS + threadIdx.x) * VEC;
      if (e0 + l < a.sample_len) {
        const int64_t nc0 = n * a.C + a.channels.channel(q0, r0, l);
        typename Op::Params prm[VEC];
        if (VEC == 1 || a.vec_channels == VecChannels::kSame) {
          prm[0] = op.load(nc0);
#pragma unroll
          for (int j = 1; j < VEC; ++j) prm[j] = prm[0];
        } else if (a.vec_channels == VecChannels::kConsecutive) {
          op.load_consecutive(nc0, prm);
        } else {
          prm[0] = op.load(nc0);
#pragma unroll
          for (int j = 1; j < VEC; ++j) prm[j] = op.load(n * a.C + a.channels.channel(q0, r0, l + j));
        }
        Vec<T, VEC> o;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const acc_t x0 = static_cast<acc_t>(v[0][u].v[j]);
          const acc_t x1 = NIN > 1 ? static_cast<acc_t>(v[NIN > 1 ? 1 : 0][u].v[j]) : acc_t(0);
          o.v[j] = static_cast<T>(op.apply(prm[j], x0, x1));
        }
        store_vec<T, VEC>(a.out + base + l, o);
      }
    }
  }
}

constexpr int kElementwiseThreads = 256;
constexpr int kElementwiseUnroll = 4;

// Launches op over the tensor: 16-byte vectors when every pointer is 16-byte aligned and
// each sample's length is a multiple of the vector, single elements otherwise.
template <typename T, int NIN, typename Op>
void launch_tiled_elementwise(const GroupNormShape& sh, const T* const (&in)[NIN], T* out, Op op,
                              cudaStream_t stream) {
  constexpr int kVec = vec_elems<T>();
  bool vectorized = (sh.C * sh.S) % kVec == 0 && aligned_to(out, kVecBytes);
  for (int i = 0; i < NIN; ++i) vectorized = vectorized && aligned_to(in[i], kVecBytes);
  auto launch = [&](auto vec_tag) {
    constexpr int V = decltype(vec_tag)::value;
    // Single float64 elements: two per thread in flight, not four (the float64 gelu gradient,
    // erfc and exp per element, kept a value on the stack across erfc's branches with four).
    constexpr int U = V == 1 && sizeof(T) == 8 ? 2 : kElementwiseUnroll;
    constexpr int64_t kTile = int64_t(kElementwiseThreads) * V * U;
    ElementwiseArgs<T, NIN> a;
    for (int i = 0; i < NIN; ++i) a.in[i] = in[i];
    a.out = out;
    a.C = sh.C;
    a.sample_len = sh.C * sh.S;
    a.tiles_per_sample = tiles_per_sample(sh, kTile);
    a.total_tiles = sh.N * a.tiles_per_sample;
    a.channels = TileChannels(sh, kTile);
    a.first_tile = reverse_elementwise_passes() ? a.total_tiles - 1 : 0;
    a.tile_step = reverse_elementwise_passes() ? -1 : 1;
    if (V == 1) {
      a.vec_channels = VecChannels::kSame;
    } else if (sh.order == MemoryOrder::NCS) {
      a.vec_channels = sh.S % V == 0 ? VecChannels::kSame : VecChannels::kGeneral;
    } else {
      a.vec_channels = sh.C % V == 0 ? VecChannels::kConsecutive : VecChannels::kGeneral;
    }
    // One tile per block (the loop above covers a grid capped at 2^31 - 1 blocks): on an H100
    // the forward apply and grad_input passes ran 4-7% faster than with a grid-stride walk of
    // 8 blocks per SM, at the device-to-device copy's bandwidth (bench/cuda_micro,
    // bench/results/cuda-notes.md, 2026-11-27).
    const unsigned blocks = grid_for(a.total_tiles, INT32_MAX);
    tiled_elementwise_kernel<T, V, U, kElementwiseThreads, NIN>
        <<<blocks, kElementwiseThreads, 0, stream>>>(a, op);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (vectorized) {
    launch(std::integral_constant<int, kVec>{});
  } else {
    launch(std::integral_constant<int, 1>{});
  }
}

}  // namespace cuda
}  // namespace groupnorm_ext
