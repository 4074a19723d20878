// The plan: how one (n, group) slab is cut into chunks and how the chunks' partial
// statistics are combined. Shared, unchanged, by the CPU and CUDA executors, so both
// produce the same combine order by construction. Everything here is a plain inline
// function usable from host and device code, and is exercised by the CPU tests.
#pragma once

#include <cstdint>
#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define GN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GN_HOST_DEVICE inline
#endif

namespace groupnorm_ext {

// Partial moments of a set of values: element count, mean and the sum of squared
// deviations from that mean (M2). Never sum / sum-of-squares: those cancel when
// |mean| >> std.
template <typename acc_t>
struct Moments {
  acc_t count;
  acc_t mean;
  acc_t m2;
};

template <typename acc_t>
GN_HOST_DEVICE Moments<acc_t> empty_moments() {
  return Moments<acc_t>{acc_t(0), acc_t(0), acc_t(0)};
}

// Chan et al. parallel combine of two partials. Order matters for the bits of the
// result: callers always combine in a fixed order (lower chunk index on the left).
template <typename acc_t>
GN_HOST_DEVICE Moments<acc_t> combine_moments(const Moments<acc_t>& a, const Moments<acc_t>& b) {
  if (b.count == acc_t(0)) return a;
  if (a.count == acc_t(0)) return b;
  const acc_t count = a.count + b.count;
  const acc_t delta = b.mean - a.mean;
  const acc_t b_weight = b.count / count;
  Moments<acc_t> out;
  out.count = count;
  out.mean = a.mean + delta * b_weight;
  out.m2 = a.m2 + b.m2 + delta * delta * a.count * b_weight;
  return out;
}

// Combine partials[0..n) with a fixed pairwise tree (stride doubling): the same order on
// every executor and thread count, and error growing with log(n) instead of n.
template <typename acc_t>
GN_HOST_DEVICE Moments<acc_t> combine_moments_tree(Moments<acc_t>* partials, int64_t n) {
  if (n <= 0) return empty_moments<acc_t>();
  for (int64_t stride = 1; stride < n; stride *= 2) {
    for (int64_t i = 0; i + stride < n; i += 2 * stride) {
      partials[i] = combine_moments(partials[i], partials[i + stride]);
    }
  }
  return partials[0];
}

// Moments of one chunk from a shift `mean0` and the sums of d = x - mean0 and d^2 over its
// `count` elements: the corrected two-pass algorithm when mean0 is a first-pass mean, the
// shifted-data algorithm when it is one of the chunk's own values (the CUDA kernels: one
// pass). Exact for constant data (mean == the constant, M2 == 0). With a shift taken from
// the data, sum d^2 <= (count + 1) * M2, so double sums of float data lose at most about
// count * (terms per partial sum) * 2^-53 of M2 relative: < 1e-8 for the chunk lengths the
// plans make.
template <typename acc_t>
GN_HOST_DEVICE Moments<acc_t> moments_from_deviations(acc_t count, acc_t mean0, acc_t sum_d, acc_t sum_d2) {
  Moments<acc_t> m;
  m.count = count;
  m.mean = mean0 + sum_d / count;
  const acc_t m2 = sum_d2 - sum_d * (sum_d / count);
  m.m2 = m2 < acc_t(0) ? acc_t(0) : m2;  // rounding clamp; NaN passes
  return m;
}

// Biased variance (what GroupNorm normalizes with) and reciprocal standard deviation.
template <typename acc_t>
GN_HOST_DEVICE acc_t moments_variance(const Moments<acc_t>& m) {
  if (m.count <= acc_t(0)) return acc_t(0);
  const acc_t var = m.m2 / m.count;
  // M2 is >= 0 mathematically; clamp rounding below zero, but let NaN through so that a
  // non-finite value poisons its group's statistics instead of vanishing.
  return var < acc_t(0) ? acc_t(0) : var;
}

template <typename acc_t>
GN_HOST_DEVICE acc_t rstd_from_variance(acc_t var, acc_t eps) {
  return acc_t(1) / std::sqrt(var + eps);
}

// ---------------------------------------------------------------------------------
// Shapes. Every layout is described by the logical sizes N, C, S (S = product of the
// spatial sizes) plus the memory order: NCS ("contiguous") or NSC ("channels last",
// which covers channels_last, channels_last_3d and any rank whose channel dim is
// innermost). All offsets are 64-bit: a tensor may hold more than 2^31 elements.
enum class MemoryOrder : int { NCS = 0, NSC = 1 };

struct GroupNormShape {
  int64_t N;
  int64_t C;
  int64_t S;       // spatial elements per (n, c)
  int64_t groups;  // G
  MemoryOrder order;

  GN_HOST_DEVICE int64_t channels_per_group() const { return C / groups; }
  GN_HOST_DEVICE int64_t group_elems() const { return channels_per_group() * S; }
  GN_HOST_DEVICE int64_t numel() const { return N * C * S; }
  // Offset of element (n, c, s) in memory.
  GN_HOST_DEVICE int64_t offset(int64_t n, int64_t c, int64_t s) const {
    return order == MemoryOrder::NCS ? (n * C + c) * S + s : (n * S + s) * C + c;
  }
};

// ---------------------------------------------------------------------------------
// Chunking. A slab is cut into chunks along its memory order. An NCS slab is one
// contiguous run of D * S elements, cut into runs of `chunk_len` elements. An NSC slab is
// cut along the spatial axis into chunks of `chunk_len` rows; a chunk there covers all C
// channels of its rows, so it reduces every group of the sample at once. The chunk size
// depends only on the shape, never on the number of threads or blocks, so results are
// bitwise identical whatever executes them.
struct ChunkPlan {
  int64_t chunk_len;   // units per chunk: elements (NCS) or spatial rows (NSC)
  int64_t num_chunks;  // chunks per slab: ceil(length / chunk_len)

  GN_HOST_DEVICE int64_t begin(int64_t k) const { return k * chunk_len; }
  GN_HOST_DEVICE int64_t end(int64_t k, int64_t length) const {
    const int64_t e = (k + 1) * chunk_len;
    return e < length ? e : length;
  }
};

// Target number of elements one chunk reduces: small enough that the chunk stays in a
// CPU core's L1/L2 (the in-chunk two-pass re-reads it) and that a slab yields many
// chunks to spread across cores or SMs, large enough that the per-chunk partial and its
// combine cost nothing against the data.
constexpr int64_t kChunkTargetElems = 8192;

// Chunks over `length` units of `elems_per_unit` tensor elements each. `max_chunks`
// bounds the chunk count when each chunk's partial is large (a row of C per-channel sums
// in the channels-last backward).
GN_HOST_DEVICE ChunkPlan make_chunk_plan(int64_t length, int64_t elems_per_unit,
                                         int64_t max_chunks = INT64_MAX) {
  ChunkPlan plan;
  const int64_t per = elems_per_unit > 0 ? elems_per_unit : 1;
  int64_t len = kChunkTargetElems / per;
  if (len < 1) len = 1;
  if (max_chunks > 0 && length > 0 && (length + len - 1) / len > max_chunks) {
    len = (length + max_chunks - 1) / max_chunks;
  }
  if (length > 0 && len > length) len = length;
  plan.chunk_len = len;
  plan.num_chunks = length > 0 ? (length + len - 1) / len : 0;
  return plan;
}

// Chunks for an executor with thousands of parallel workers (the CUDA kernels), where a
// chunk is one block's work: long enough that a block's fixed cost (its reductions) is small
// against its loads, short enough that the batch still has about kParallelChunks of them to
// spread over the SMs. The length lies between the default plan's and
// kParallelChunkMaxElems elements (which bounds the error of shifted sums, see
// moments_from_deviations), is at least `min_len` units and a multiple of `align` units (so
// every chunk of an aligned slab starts on a 16-byte vector), and depends only on the shape,
// so the results' bits do too. `target_chunks` is the batch's chunk count to aim for:
// kParallelChunks for thousands of GPU workers. kCpuRowChunks: the CPU's channels-last chunks
// a sample (make_cpu_row_chunk_plan; a few cores, and a chunk's fixed cost, setting up and
// folding C per-channel sums, wants long chunks: 8 a sample against 32 made the medium
// channels-last forward 3-20% faster on 2 cores; large samples get more, capped chunks anyway).
constexpr int64_t kParallelChunks = 4096;
constexpr int64_t kCpuRowChunks = 8;
constexpr int64_t kParallelChunkMaxElems = 65536;

GN_HOST_DEVICE ChunkPlan make_parallel_chunk_plan(int64_t length, int64_t elems_per_unit, int64_t slabs,
                                                  int64_t min_len = 1, int64_t align = 1,
                                                  int64_t target_chunks = kParallelChunks) {
  const int64_t per = elems_per_unit > 0 ? elems_per_unit : 1;
  const int64_t total = length * (slabs > 0 ? slabs : 1);
  const int64_t target = target_chunks > 0 ? target_chunks : 1;
  int64_t len = (total + target - 1) / target;
  const int64_t shortest = kChunkTargetElems / per > 0 ? kChunkTargetElems / per : 1;
  const int64_t longest = kParallelChunkMaxElems / per > shortest ? kParallelChunkMaxElems / per : shortest;
  if (len < shortest) len = shortest;
  if (len > longest) len = longest;
  if (len < min_len) len = min_len;
  if (align > 1) len = (len + align - 1) / align * align;
  if (length > 0 && len > length) len = length;
  ChunkPlan plan;
  plan.chunk_len = len;
  plan.num_chunks = length > 0 ? (length + len - 1) / len : 0;
  return plan;
}

// The CPU's channels-last chunks: a sample's `rows` rows of C channels, cut into chunks of
// whole rows. A chunk has a fixed cost of O(C) (setting up, checking and folding into groups C
// per-channel sums), so it holds at least kCpuRowChunkMinElems elements and kCpuRowChunkMinRows
// rows; the count is a power of two up to kCpuRowChunks, so that the chunks of a small sample
// split evenly over 2, 4 or 8 threads (a 1280-channel 8x8 sample as 26 + 26 + 12 rows kept one
// of two threads busy for 52 rows, the other for 12: 2 chunks of 32 rows took 30% less time),
// and no chunk exceeds max_elems (kCpuRowChunkMaxElems unless given), so large samples get more
// (the split schedules spread chunks over the threads): a power of two up to kCpuRowChunks, then
// a multiple of it, of chunks of equal length (but the last). Chunks of the longest length and a short last one
// split unevenly (a 640-channel 64x64 sample as 10 chunks of 409 rows and one of 6: 2454 rows
// for one of two threads, 1642 for the other; as 16 of 256 rows its float32 forward + backward
// took 0.84 -> 0.75 ms on 2 cores, the forward 0.214 -> 0.199 ms). The minimum rows: chunks of
// 32-64 rows of 1280 channels spent as long on that fixed cost and on their short columns as
// on the data; at least 128 rows (and up to 256K elements, where 64K were the cap) made the
// float32 channels-last forward 10-30% faster on 2 cores (2x1280x16x16 0.073 -> 0.055 ms, 2x320x64x64 0.27 -> 0.22 ms,
// 1x1280x32x32 0.19 -> 0.13 ms; the 1280-channel 16x16 backward 0.116 -> 0.103 ms).
// The shifted sums' error (moments_from_deviations) grows with the chunk: count * terms * 2^-53
// of M2 at worst, with terms = rows / 4 four-row float partials per channel's double sum: about
// 6e-8 for C >= 32, and random roundings grow as the square root of that.
// Depends on the sample's shape only, as every plan.
// The backward's gradient sums are centred on the saved mean and carried in double from every
// 32-row float block on (csrc/cpu/loops_backward.cpp), so their chunks have no accuracy bound:
// they take kCpuGradRowChunkMaxElems, fewer chunks of a large sample, each a fixed cost less
// (2 cores, float32 channels_last, the sums from memory: 1x1280x64x64 as 24 chunks of 171 rows
// 0.529 ms, as 8 of 512 0.500 ms; 2x640x64x64 as 16 of 256 per sample 0.479, as 8 of 512 0.471).
constexpr int64_t kCpuRowChunkMinElems = 32768;
constexpr int64_t kCpuRowChunkMinRows = 128;
constexpr int64_t kCpuRowChunkMaxElems = 262144;
constexpr int64_t kCpuGradRowChunkMaxElems = 1048576;

GN_HOST_DEVICE ChunkPlan make_cpu_row_chunk_plan(int64_t rows, int64_t C, int64_t max_elems = kCpuRowChunkMaxElems) {
  const int64_t per = C > 0 ? C : 1;
  const int64_t longest = max_elems / per > 1 ? max_elems / per : 1;
  int64_t count = 1;
  while (count * 2 <= kCpuRowChunks && count * 2 * kCpuRowChunkMinElems <= rows * per &&
         count * 2 * kCpuRowChunkMinRows <= rows) {
    count *= 2;
  }
  int64_t len = (rows + count - 1) / count;
  if (len > longest) {  // capped: the fewest chunks within the bound that split evenly
    const int64_t needed = (rows + longest - 1) / longest;
    count = 1;
    while (count < needed && count < kCpuRowChunks) count *= 2;
    if (count < needed) count = (needed + kCpuRowChunks - 1) / kCpuRowChunks * kCpuRowChunks;
    len = (rows + count - 1) / count;
  }
  if (len < 1) len = 1;
  ChunkPlan plan;
  plan.chunk_len = len;
  plan.num_chunks = rows > 0 ? (rows + len - 1) / len : 0;
  return plan;
}

// Units of one (n, group) slab along which make_chunk_plan(shape) cuts.
GN_HOST_DEVICE int64_t slab_length(const GroupNormShape& sh) {
  return sh.order == MemoryOrder::NCS ? sh.group_elems() : sh.S;
}

GN_HOST_DEVICE ChunkPlan make_chunk_plan(const GroupNormShape& sh) {
  return make_chunk_plan(slab_length(sh), sh.order == MemoryOrder::NCS ? 1 : sh.C);
}

// Elements in chunk k of one (n, group) slab, and the memory offset of its e-th element
// (e in [0, chunk_elems)). Element order inside a chunk follows memory.
GN_HOST_DEVICE int64_t chunk_elems(const GroupNormShape& sh, const ChunkPlan& plan, int64_t k) {
  const int64_t units = plan.end(k, slab_length(sh)) - plan.begin(k);
  return sh.order == MemoryOrder::NCS ? units : sh.channels_per_group() * units;
}

GN_HOST_DEVICE int64_t chunk_element_offset(const GroupNormShape& sh, const ChunkPlan& plan,
                                            int64_t n, int64_t g, int64_t k, int64_t e) {
  const int64_t D = sh.channels_per_group();
  if (sh.order == MemoryOrder::NCS) return sh.offset(n, g * D, 0) + plan.begin(k) + e;
  return sh.offset(n, g * D + e % D, plan.begin(k) + e / D);
}

// (n, c) of the element at memory offset i: what an elementwise pass needs to find its
// statistics and affine parameters.
GN_HOST_DEVICE void element_nc(const GroupNormShape& sh, int64_t i, int64_t* n, int64_t* c) {
  if (sh.order == MemoryOrder::NCS) {
    const int64_t row = i / sh.S;
    *n = row / sh.C;
    *c = row % sh.C;
  } else {
    *n = i / (sh.S * sh.C);
    *c = i % sh.C;
  }
}

// Slab (n * G + g) of the element at memory offset i, and its channel in *c: the
// statistics and affine parameters an elementwise pass needs.
GN_HOST_DEVICE int64_t element_slab(const GroupNormShape& sh, int64_t i, int64_t* c) {
  int64_t n;
  element_nc(sh, i, &n, c);
  return n * sh.groups + *c / sh.channels_per_group();
}

// ---------------------------------------------------------------------------------
// Vector split of a contiguous run [begin, end) for loads of `vec` elements: the
// scalar head up to the first address aligned to vec elements, the aligned body, and
// the scalar tail. `misalign` is (address of element 0 / sizeof(T)) % vec.
struct VectorSplit {
  int64_t head_end;  // [begin, head_end): scalar
  int64_t body_end;  // [head_end, body_end): whole vectors
  // [body_end, end): scalar
};

GN_HOST_DEVICE VectorSplit split_for_vectors(int64_t begin, int64_t end, int64_t misalign,
                                             int64_t vec) {
  VectorSplit split;
  const int64_t phase = (misalign + begin) % vec;
  int64_t head_end = begin + (phase == 0 ? 0 : vec - phase);
  if (head_end > end) head_end = end;
  const int64_t body = ((end - head_end) / vec) * vec;
  split.head_end = head_end;
  split.body_end = head_end + body;
  return split;
}

// ---------------------------------------------------------------------------------
// Elementwise passes walk each sample (the C * S elements of one n, contiguous in both
// memory orders) in tiles of a fixed number of elements. What an element needs is its
// channel c: e / S in NCS order, e % C in NSC order (e = offset inside the sample). A
// tile computes one 64-bit division at its start; inside the tile the offsets are small,
// so a 32-bit multiply-shift division (or one compare, when the divisor is at least the
// tile) finishes the job.

// Unsigned division by a fixed divisor d in [1, 2^31] for numerators n < 2^31: one
// high multiply, one add, one shift (Granlund-Montgomery; the same scheme as ATen's
// IntDivider), on host and device alike so the CPU tests check the device arithmetic.
struct FastDivU32 {
  uint32_t divisor = 1;
  uint32_t magic = 1;
  uint32_t shift = 0;

  FastDivU32() = default;
  GN_HOST_DEVICE explicit FastDivU32(uint32_t d) : divisor(d) {
    shift = 0;
    while (shift < 32 && (uint64_t(1) << shift) < d) ++shift;
    magic = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
  }
  GN_HOST_DEVICE uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t t = __umulhi(n, magic);
#else
    const uint32_t t = static_cast<uint32_t>((static_cast<uint64_t>(n) * magic) >> 32);
#endif
    return (t + n) >> shift;
  }
};

// The vectors of one (n, group) slab, for the kernel that holds whole slabs on chip. An NCS
// slab is one run of D * S elements; an NSC slab is S rows of D channels, C apart in memory.
// With VEC dividing D and C (NSC) every vector lies inside one row, so vector i starts at row
// i / (D / VEC), column (i % (D / VEC)) * VEC, and its VEC channels are consecutive. Slabs are
// at most 2^31 elements (the on-chip limit is far below), so in-slab arithmetic is 32-bit; the
// slab's own offset is 64-bit.
struct SlabVectors {
  int64_t C;            // channels (the NSC row stride)
  int64_t S;
  int64_t D;            // channels per group
  int64_t groups;
  int vec;              // elements per vector
  bool nsc;
  uint32_t row_vecs;    // NSC: D / vec
  FastDivU32 div_row;   // NSC: vector -> row
  FastDivU32 div_s;     // NCS: slab offset -> channel in the group

  SlabVectors() = default;
  GN_HOST_DEVICE SlabVectors(const GroupNormShape& sh, int vec_elems)
      : C(sh.C), S(sh.S), D(sh.channels_per_group()), groups(sh.groups), vec(vec_elems),
        nsc(sh.order == MemoryOrder::NSC), row_vecs(static_cast<uint32_t>(D / vec_elems)),
        div_row(static_cast<uint32_t>(D / vec_elems > 0 ? D / vec_elems : 1)),
        div_s(static_cast<uint32_t>(sh.S > 0 ? sh.S : 1)) {}

  // Offset of slab ng = n * groups + g (its first element) in the tensor.
  GN_HOST_DEVICE int64_t slab_offset(int64_t ng) const {
    return nsc ? slab_offset_as<true>(ng) : slab_offset_as<false>(ng);
  }
  // Offset of vector i's first element from the slab's first element.
  GN_HOST_DEVICE int64_t vector_offset(uint32_t i) const {
    return nsc ? vector_offset_as<true>(i) : vector_offset_as<false>(i);
  }
  // Channel, within the group, of element e of vector i.
  GN_HOST_DEVICE int64_t channel_in_group(uint32_t i, int e) const {
    return nsc ? channel_in_group_as<true>(i, e) : channel_in_group_as<false>(i, e);
  }

  // The same with the layout a template argument (kNsc == nsc): a kernel instantiated per
  // layout carries one walk, not both (registers: the two walks in one bfloat16 kernel
  // spilled on sm_100).
  template <bool kNsc>
  GN_HOST_DEVICE int64_t slab_offset_as(int64_t ng) const {
    if constexpr (!kNsc) {
      return ng * D * S;
    } else {
      const int64_t n = ng / groups;
      return n * S * C + (ng - n * groups) * D;
    }
  }
  template <bool kNsc>
  GN_HOST_DEVICE int64_t vector_offset_as(uint32_t i) const {
    if constexpr (!kNsc) {
      return static_cast<int64_t>(i) * vec;
    } else {
      const uint32_t row = div_row.div(i);
      return static_cast<int64_t>(row) * C + static_cast<int64_t>(i - row * row_vecs) * vec;
    }
  }
  template <bool kNsc>
  GN_HOST_DEVICE int64_t channel_in_group_as(uint32_t i, int e) const {
    if constexpr (!kNsc) {
      return div_s.div(i * static_cast<uint32_t>(vec) + static_cast<uint32_t>(e));
    } else {
      return static_cast<int64_t>(i - div_row.div(i) * row_vecs) * vec + e;
    }
  }
};

// a / b for a >= 0, b > 0, with 32-bit arithmetic when both fit (an inline instruction
// sequence on the GPU instead of the 64-bit division subroutine).
GN_HOST_DEVICE int64_t div_nonneg(int64_t a, int64_t b) {
  if (((a | b) >> 31) == 0) return static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b));
  return a / b;
}

// Channel of each element of a tile. The divisor is S (NCS) or C (NSC); at the tile start
// e0, (q0, r0) = divmod(e0, divisor). An element at e0 + l (0 <= l < tile) has
// m = r0 + l < divisor + tile: when divisor >= tile, m / divisor is 0 or 1 (a compare),
// otherwise m < 2 * tile fits the 32-bit division.
struct TileChannels {
  int64_t divisor;  // S for NCS, C for NSC
  int64_t tile;     // elements per tile (<= 2^30)
  bool ncs;
  FastDivU32 fast;  // valid when divisor < tile

  TileChannels() = default;
  GN_HOST_DEVICE TileChannels(const GroupNormShape& sh, int64_t tile_elems)
      : divisor(sh.order == MemoryOrder::NCS ? sh.S : sh.C), tile(tile_elems),
        ncs(sh.order == MemoryOrder::NCS),
        fast(static_cast<uint32_t>(divisor >= 1 && divisor < tile_elems ? divisor : 1)) {}

  // (q0, r0) of the tile starting at sample offset e0.
  GN_HOST_DEVICE void start(int64_t e0, int64_t* q0, int64_t* r0) const {
    *q0 = div_nonneg(e0, divisor);
    *r0 = e0 - *q0 * divisor;
  }
  // Channel of the element at e0 + l.
  GN_HOST_DEVICE int64_t channel(int64_t q0, int64_t r0, int64_t l) const {
    const int64_t m = r0 + l;
    int64_t q;
    if (divisor >= tile) {
      q = m >= divisor ? 1 : 0;
    } else {
      q = fast.div(static_cast<uint32_t>(m));
    }
    return ncs ? q0 + q : m - q * divisor;
  }
};

// Tiles per sample and their size for an elementwise pass over a tensor of `shape`.
GN_HOST_DEVICE int64_t tiles_per_sample(const GroupNormShape& sh, int64_t tile) {
  const int64_t L = sh.C * sh.S;
  return (L + tile - 1) / tile;
}

// The fixed combine tree of combine_moments_tree, one level at a time: at level `stride`
// (1, 2, 4, ...) pair p combines partials[2 * stride * p] with partials[2 * stride * p +
// stride] when that exists. Pairs of one level are independent, so a CUDA block runs a
// level in parallel and gets the bits of the sequential loop.
GN_HOST_DEVICE int64_t tree_level_pairs(int64_t n, int64_t stride) {
  return n > stride ? (n - stride + 2 * stride - 1) / (2 * stride) : 0;
}

}  // namespace groupnorm_ext
