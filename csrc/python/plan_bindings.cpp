// Python bindings of the plan (plan.h) for the tests: the chunking, the chunk element
// offsets and the moment combine are exactly the functions the CPU and CUDA executors
// call, exercised here on the CPU (the CUDA executor runs nowhere on a GPU-less machine).
#include <ATen/ATen.h>
#include <torch/extension.h>

#include "plan.h"

namespace groupnorm_ext {
namespace {

GroupNormShape make_shape(int64_t N, int64_t C, int64_t S, int64_t G, bool channels_last) {
  TORCH_CHECK(N >= 0 && C > 0 && S >= 0 && G > 0 && C % G == 0, "invalid plan shape");
  return GroupNormShape{N, C, S, G, channels_last ? MemoryOrder::NSC : MemoryOrder::NCS};
}

// (chunk_len, num_chunks) of make_chunk_plan.
std::pair<int64_t, int64_t> chunk_plan(int64_t S, int64_t elems_per_position, int64_t max_chunks) {
  const ChunkPlan p = make_chunk_plan(S, elems_per_position, max_chunks > 0 ? max_chunks : INT64_MAX);
  return {p.chunk_len, p.num_chunks};
}

// (chunk_len, num_chunks) of make_parallel_chunk_plan.
std::pair<int64_t, int64_t> parallel_chunk_plan(int64_t length, int64_t elems_per_unit, int64_t slabs,
                                                int64_t min_len, int64_t align) {
  const ChunkPlan p = make_parallel_chunk_plan(length, elems_per_unit, slabs, min_len, align);
  return {p.chunk_len, p.num_chunks};
}

// (chunk_len, num_chunks) of make_cpu_row_chunk_plan; max_elems 0: the default bound.
std::pair<int64_t, int64_t> cpu_row_chunk_plan(int64_t rows, int64_t C, int64_t max_elems) {
  const ChunkPlan p = max_elems > 0 ? make_cpu_row_chunk_plan(rows, C, max_elems) : make_cpu_row_chunk_plan(rows, C);
  return {p.chunk_len, p.num_chunks};
}

// Memory offsets of every element, in plan order: (n, g, chunk, element).
at::Tensor chunk_offsets(int64_t N, int64_t C, int64_t S, int64_t G, bool channels_last) {
  const GroupNormShape sh = make_shape(N, C, S, G, channels_last);
  const ChunkPlan plan = make_chunk_plan(sh);
  at::Tensor out = at::empty({sh.numel()}, at::kLong);
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t k = 0; k < plan.num_chunks; ++k)
        for (int64_t e = 0; e < chunk_elems(sh, plan, k); ++e) *o++ = chunk_element_offset(sh, plan, n, g, k, e);
  return out;
}

// (n, c) of every memory offset, as an (numel, 2) tensor.
at::Tensor element_channels(int64_t N, int64_t C, int64_t S, int64_t G, bool channels_last) {
  const GroupNormShape sh = make_shape(N, C, S, G, channels_last);
  at::Tensor out = at::empty({sh.numel(), 2}, at::kLong);
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < sh.numel(); ++i) element_nc(sh, i, o + 2 * i, o + 2 * i + 1);
  return out;
}

// Moments of each row of `chunks` (K, L), element by element.
template <typename acc_t>
std::vector<Moments<acc_t>> row_moments(const at::Tensor& chunks) {
  const at::Tensor c = chunks.contiguous();
  const int64_t K = c.size(0), L = c.size(1);
  std::vector<Moments<acc_t>> parts(K);
  const acc_t* p = c.data_ptr<acc_t>();
  for (int64_t k = 0; k < K; ++k) {
    Moments<acc_t> m = empty_moments<acc_t>();
    for (int64_t i = 0; i < L; ++i) m = combine_moments(m, Moments<acc_t>{1, p[k * L + i], 0});
    parts[k] = m;
  }
  return parts;
}

// Moments of each row of `chunks` (K, L), then their fixed-tree combine: (count, mean, m2).
template <typename acc_t>
std::tuple<double, double, double> combine_rows(const at::Tensor& chunks) {
  std::vector<Moments<acc_t>> parts = row_moments<acc_t>(chunks);
  const Moments<acc_t> m = combine_moments_tree(parts.data(), static_cast<int64_t>(parts.size()));
  return {m.count, m.mean, m.m2};
}

std::tuple<double, double, double> combine_chunks(const at::Tensor& chunks) {
  TORCH_CHECK(chunks.dim() == 2, "expected a (K, L) tensor");
  if (chunks.scalar_type() == at::kDouble) return combine_rows<double>(chunks);
  return combine_rows<float>(chunks.to(at::kFloat));
}

// (count, mean, M2) of float32 values by the CUDA chunk kernels' one-pass method: shift =
// values[shift_index], `lanes` interleaved double partial sums of x - shift and its square
// (thread i takes elements i, i + lanes, ...), added in order, then moments_from_deviations.
std::tuple<double, double, double> shifted_moments(const at::Tensor& values, int64_t shift_index, int64_t lanes) {
  const at::Tensor v = values.to(at::kFloat).contiguous();
  const float* x = v.data_ptr<float>();
  const int64_t n = v.numel();
  TORCH_CHECK(n > 0 && shift_index >= 0 && shift_index < n && lanes > 0, "bad shifted_moments arguments");
  const double shift = static_cast<double>(x[shift_index]);
  double s1 = 0, s2 = 0;
  for (int64_t lane = 0; lane < lanes; ++lane) {
    double a = 0, b = 0;
    for (int64_t i = lane; i < n; i += lanes) {
      const double d = static_cast<double>(x[i]) - shift;
      a += d;
      b += d * d;
    }
    s1 += a;
    s2 += b;
  }
  const Moments<double> m = moments_from_deviations(static_cast<double>(n), shift, s1, s2);
  return {m.count, m.mean, m.m2};
}

// Head / body / tail split of [begin, end) for vectors of `vec` elements.
std::pair<int64_t, int64_t> vector_split(int64_t begin, int64_t end, int64_t misalign, int64_t vec) {
  const VectorSplit s = split_for_vectors(begin, end, misalign, vec);
  return {s.head_end, s.body_end};
}

// FastDivU32(d).div(n) for every n of `numerators` (int64 values in [0, 2^31)).
at::Tensor fast_div(int64_t divisor, const at::Tensor& numerators) {
  TORCH_CHECK(divisor >= 1 && divisor <= (int64_t(1) << 31), "divisor out of range");
  const FastDivU32 d(static_cast<uint32_t>(divisor));
  const at::Tensor in = numerators.to(at::kLong).contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t* i = in.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t k = 0; k < in.numel(); ++k) {
    TORCH_CHECK(i[k] >= 0 && i[k] < (int64_t(1) << 31), "numerator out of range");
    o[k] = d.div(static_cast<uint32_t>(i[k]));
  }
  return out;
}

// The channel of every element offset of every sample, found as the CUDA elementwise
// passes find it: tile by tile (TileChannels), as a (N * C * S,) tensor in memory order.
at::Tensor tile_channels(int64_t N, int64_t C, int64_t S, int64_t G, bool channels_last, int64_t tile) {
  const GroupNormShape sh = make_shape(N, C, S, G, channels_last);
  TORCH_CHECK(tile >= 1 && tile <= (int64_t(1) << 30), "tile out of range");
  const TileChannels tc(sh, tile);
  const int64_t L = C * S, tiles = tiles_per_sample(sh, tile);
  at::Tensor out = at::empty({sh.numel()}, at::kLong);
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t e0 = t * tile;
      int64_t q0, r0;
      tc.start(e0, &q0, &r0);
      for (int64_t l = 0; l < tile && e0 + l < L; ++l) o[n * L + e0 + l] = tc.channel(q0, r0, l);
    }
  }
  return out;
}

// Every element of every slab as the single-read CUDA forward walks it (SlabVectors): an
// (N * G * D * S, 2) tensor of (memory offset, channel), slab by slab, vector by vector.
at::Tensor slab_vectors(int64_t N, int64_t C, int64_t S, int64_t G, bool channels_last, int64_t vec) {
  const GroupNormShape sh = make_shape(N, C, S, G, channels_last);
  const int64_t D = C / G, slab_len = D * S;
  TORCH_CHECK(vec >= 1 && slab_len % vec == 0 && (!channels_last || (D % vec == 0 && C % vec == 0)),
              "slab_vectors: the vector must divide the slab (and D and C for channels last)");
  const SlabVectors sv(sh, static_cast<int>(vec));
  at::Tensor out = at::empty({sh.numel(), 2}, at::kLong);
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t ng = 0; ng < N * G; ++ng) {
    const int64_t g = ng % G;
    for (int64_t i = 0; i < slab_len / vec; ++i) {
      for (int e = 0; e < vec; ++e) {
        *o++ = sv.slab_offset(ng) + sv.vector_offset(static_cast<uint32_t>(i)) + e;
        *o++ = g * D + sv.channel_in_group(static_cast<uint32_t>(i), e);
      }
    }
  }
  return out;
}

// The plan's fixed tree run level by level as the CUDA finalize runs it (pairs of a level
// in any order): must give the bits of combine_moments_tree.
std::tuple<double, double, double> combine_chunks_by_levels(const at::Tensor& chunks) {
  std::vector<Moments<double>> parts = row_moments<double>(chunks.to(at::kDouble));
  const int64_t K = static_cast<int64_t>(parts.size());
  for (int64_t stride = 1; stride < K; stride *= 2) {
    const int64_t pairs = tree_level_pairs(K, stride);
    for (int64_t q = pairs - 1; q >= 0; --q) {  // reverse order: the order inside a level must not matter
      const int64_t i = 2 * stride * q;
      parts[i] = combine_moments(parts[i], parts[i + stride]);
    }
  }
  const Moments<double> m = K > 0 ? parts[0] : empty_moments<double>();
  return {m.count, m.mean, m.m2};
}

}  // namespace

void bind_plan(pybind11::module& m) {
  m.def("_plan_chunk_plan", &chunk_plan);
  m.def("_plan_parallel_chunk_plan", &parallel_chunk_plan);
  m.def("_plan_cpu_row_chunk_plan", &cpu_row_chunk_plan, pybind11::arg("rows"), pybind11::arg("C"),
        pybind11::arg("max_elems") = 0);
  m.attr("_plan_cpu_grad_row_chunk_max_elems") = kCpuGradRowChunkMaxElems;
  m.def("_plan_chunk_offsets", &chunk_offsets);
  m.def("_plan_shifted_moments", &shifted_moments);
  m.def("_plan_element_channels", &element_channels);
  m.def("_plan_combine_chunks", &combine_chunks);
  m.def("_plan_vector_split", &vector_split);
  m.def("_plan_fast_div", &fast_div);
  m.def("_plan_tile_channels", &tile_channels);
  m.def("_plan_slab_vectors", &slab_vectors);
  m.def("_plan_combine_chunks_by_levels", &combine_chunks_by_levels);
}

}  // namespace groupnorm_ext
