// CPU forward: statistics by the shared plan (per-chunk partial moments, combined in a
// fixed tree per (n, group)), then the apply pass y = act((x - mean) * rstd * w + b) with
// per-(n, c) coefficients and the fused activation (identity by default). NCS and NSC
// inputs are read in place, never converted.
//
// Three schedules, bitwise identical results (same chunk partials, same combine):
//  - fused: one task per slab (NCS: an (n, group); NSC: a sample n) computes its
//    statistics and applies them while the slab is still in cache: one read of x from
//    memory. Used when there are enough slabs to keep every thread busy and they fit in
//    this thread's share of the cache (NCS) or its L2 (NSC).
//  - strips (NSC): a task per strip of a sample (whole groups' channels down all its rows),
//    fused as above; where samples do not fit in L2 or are too few for the threads.
//  - split: every chunk of every slab is a task (all cores busy even when N * G is 1),
//    then an elementwise apply pass: two reads of x.
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../group_norm.h"
#include "huge_pages.h"
#include "loops.h"
#include "params.h"
#include "schedule.h"

namespace groupnorm_ext {
namespace {

using cpu::opmath_t;
using cpu::reduce_t;
using Stats = Moments<reduce_t>;

// Elements one parallel task of an elementwise pass should touch at least, so that
// scheduling costs nothing.
constexpr int64_t kApplyGrainElems = 32768;
// Small NCS slabs (run_fused_small_slabs): at most kSmallSlabBytes each, batched by up to
// kSmallSlabBatchRows rows (n, c) (their coefficients: 12 KiB of float) and kSmallSlabBatchBytes
// of data, so that both stay in L1 from the statistics to the normalization.
constexpr int64_t kSmallSlabBytes = 4096;
constexpr int64_t kSmallSlabBatchRows = 1024;
constexpr int64_t kSmallSlabBatchBytes = 16384;

// NCS: the default plan (chunks of ~8K elements, each reduced by the two-pass loop_moments
// while it sits in L1/L2). NSC: blocks of whole rows, make_cpu_row_chunk_plan (a chunk's
// per-channel sums cost a pass over C doubles to set up and fold into groups, so rows are
// taken by the hundred). The plan depends on the sample's shape only, not on N: a sample gets
// the same bits in any batch.
ChunkPlan forward_plan(const GroupNormShape& sh) {
  if (sh.order == MemoryOrder::NCS) return make_chunk_plan(sh);
  return make_cpu_row_chunk_plan(sh.S, sh.C);
}

template <typename T>
struct Forward {
  using acc_t = opmath_t<T>;
  const GroupNormShape& sh;
  const ChunkPlan plan;
  const T* x;
  T* y;
  const acc_t* weight;  // null when absent
  const acc_t* bias;
  reduce_t eps;
  acc_t* mean_out;  // (N, G)
  acc_t* rstd_out;
  bool stream;    // write y with streaming stores (cpu::streaming_stores_pay)
  bool prefetch;       // the normalization prefetches in software (cpu::software_prefetch_pays)
  bool prefetch_sums;  // the NSC statistics do (cpu::sums_prefetch_pays)
  Activation act;  // fused after the affine transform, in the normalize loops
  // Channels per group, divided out once: a 64-bit division costs 40-90 cycles on
  // Skylake-class cores, more than a small image's whole row.
  const int64_t group_channels = sh.channels_per_group();

  int64_t D() const { return group_channels; }

  // Offset of slab (n, g) = ng, NCS: (n * C + g * D) * S, as C = G * D.
  int64_t slab_offset_ncs(int64_t ng) const { return ng * D() * sh.S; }

  // Moments of chunk k of slab (n, g) = ng, NCS: one contiguous run of the slab.
  Stats chunk_moments_ncs(int64_t ng, int64_t k) const {
    const int64_t b = plan.begin(k), len = plan.end(k, sh.group_elems()) - b;
    const T* run = x + slab_offset_ncs(ng) + b;
    Stats m{static_cast<reduce_t>(len), 0, 0};
    if (len > 0) cpu::loop_moments(run, len, &m.mean, &m.m2);
    return m;
  }

  // Moments of chunk k of the groups of sample n whose channels are [c0, c0 + width) (all C, or
  // a strip, run_strips), NSC: rows reduced with per-channel accumulators (vectorized along the
  // channels), in one pass: sums of d = x - shift with each group's shift its first element in
  // the chunk's first row (the shifted-data algorithm, see moments_from_deviations; sums in
  // double, see loop_sum_dev_rows). Writes out[(g - c0 / D) * stride] for each of those groups g.
  // A group's moments depend on its own channels only: a strip gets the bits of the whole rows.
  void chunk_moments_nsc(int64_t n, int64_t k, int64_t c0, int64_t width, std::vector<reduce_t>& channel_acc,
                         std::vector<reduce_t>& channel_shift, Stats* out, int64_t stride) const {
    const int64_t groups = width / D();
    const int64_t s0 = plan.begin(k), s1 = plan.end(k, sh.S);
    const reduce_t count = static_cast<reduce_t>(D() * (s1 - s0));
    const T* rows = x + sh.offset(n, 0, s0) + c0;
    for (int64_t g = 0; g < groups; ++g) {
      const reduce_t shift = static_cast<reduce_t>(static_cast<acc_t>(rows[g * D()]));
      std::fill(channel_shift.begin() + g * D(), channel_shift.begin() + (g + 1) * D(), shift);
    }
    // channel_acc holds 2 * width sums: deviations, then their squares.
    reduce_t* acc_d = channel_acc.data();
    reduce_t* acc_d2 = channel_acc.data() + width;
    cpu::loop_sum_dev_rows(rows, s1 - s0, width, sh.C, channel_shift.data(), acc_d, acc_d2, prefetch_sums);
    for (int64_t g = 0; g < groups; ++g) {
      reduce_t sum_d = 0, sum_d2 = 0;
      for (int64_t c = g * D(); c < (g + 1) * D(); ++c) {
        sum_d += acc_d[c];
        sum_d2 += acc_d2[c];
      }
      out[g * stride] = moments_from_deviations(count, channel_shift[g * D()], sum_d, sum_d2);
    }
  }

  // Combines slab ng's K partials (consumed) into its mean and rstd.
  void finalize(int64_t ng, Stats* partials) const {
    const Stats m = combine_moments_tree(partials, plan.num_chunks);
    mean_out[ng] = static_cast<acc_t>(m.mean);
    rstd_out[ng] = static_cast<acc_t>(rstd_from_variance(moments_variance(m), eps));
  }

  acc_t scale(int64_t ng, int64_t c) const { return rstd_out[ng] * (weight ? weight[c] : acc_t(1)); }
  acc_t shift(int64_t c) const { return bias ? bias[c] : acc_t(0); }

  // Coefficients of NCS rows [row_begin, row_begin + rows), row = n * C + c: mean, scale,
  // bias. Divides once, then steps (c, ng) along: a row of a small image is a few dozen
  // elements, less work than the divisions that would locate it.
  void row_coefficients(int64_t row_begin, int64_t rows, acc_t* mean_r, acc_t* scale_r, acc_t* bias_r) const {
    if (rows <= 0) return;  // C == 0 (an empty output, before torch 2.14): nothing to divide by
    const int64_t d = D();
    int64_t c = row_begin % sh.C, ng = row_begin / sh.C * sh.groups + c / d, c_in_group = c % d;
    for (int64_t j = 0; j < rows; ++j) {
      mean_r[j] = mean_out[ng];
      scale_r[j] = scale(ng, c);
      bias_r[j] = shift(c);
      if (++c == sh.C) c = 0;
      if (++c_in_group == d) {
        c_in_group = 0;
        ++ng;
      }
    }
  }

  // The same for the D rows of slab (n, g) = ng, whose group g the caller knows: no division
  // (a slab of one 8x8 channel is ~64 elements of work).
  void slab_coefficients(int64_t ng, int64_t g, acc_t* mean_r, acc_t* scale_r, acc_t* bias_r) const {
    for (int64_t j = 0, c = g * D(); j < D(); ++j, ++c) {
      mean_r[j] = mean_out[ng];
      scale_r[j] = scale(ng, c);
      bias_r[j] = shift(c);
    }
  }

  // Apply to elements [i0, i1) of an NCS tensor, whole rows and parts of rows; coefficient
  // arrays indexed by row - row0. Whole rows go to loop_normalize_runs in one call (rows of
  // an 8x8 image are 64 elements: a call per row cost more than the row).
  void apply_ncs(int64_t i0, int64_t i1, const acc_t* mean_r, const acc_t* scale_r, const acc_t* bias_r,
                 int64_t row0) const {
    cpu::for_row_pieces(
        i0, i1, sh.S,
        [&](int64_t row, int64_t i, int64_t len) {
          const int64_t j = row - row0;
          cpu::loop_normalize(x + i, y + i, len, mean_r[j], scale_r[j], bias_r[j], act, stream, prefetch);
        },
        [&](int64_t row, int64_t i, int64_t rows) {
          const int64_t j = row - row0;
          cpu::loop_normalize_runs(x + i, y + i, rows, sh.S, mean_r + j, scale_r + j, bias_r + j, act, stream,
                                   prefetch);
        });
  }

  // Per-channel coefficients of groups [g_begin, g_end) of sample n, for NSC rows (from index 0).
  void channel_coefficients(int64_t n, int64_t g_begin, int64_t g_end, acc_t* mean_c, acc_t* scale_c,
                            acc_t* bias_c) const {
    for (int64_t g = g_begin, c = g_begin * D(); g < g_end; ++g) {
      const int64_t ng = n * sh.groups + g;
      for (const int64_t end = c + D(); c < end; ++c) {
        const int64_t i = c - g_begin * D();
        mean_c[i] = mean_out[ng];
        scale_c[i] = scale(ng, c);
        bias_c[i] = shift(c);
      }
    }
  }

  void run() const {
    const int64_t N = sh.N, G = sh.groups, K = plan.num_chunks, C = sh.C;
    const bool ncs = sh.order == MemoryOrder::NCS;
    const int64_t slab_bytes = (ncs ? D() : C) * sh.S * static_cast<int64_t>(sizeof(T));
    const int64_t slabs = ncs ? N * G : N;
    // NSC samples are fused only while one fits in L2: a thread re-reading a sample of a few MB
    // from the shared last-level cache lost to all threads reading all samples twice in the split
    // schedule (2 cores, float32: 2x320x64x64 0.240 -> 0.208 ms, 2x1280x32x32 0.275 -> 0.233 ms,
    // 4x1280x32x32 0.95 -> 0.84 ms; in the benchmark's alternation with torch, 2x128x128x128 to
    // 4x1280x32x32, 1.00-1.12x torch fused, 1.03-1.21x split). NCS slabs keep the larger budget (a
    // 2x32x64^3 G = 8 volume, 4 MB slabs: 3.7 ms fused, 4.2 ms split).
    if (slab_bytes <= (ncs ? cpu::fuse_budget_bytes() : cpu::l2_cache_bytes()) && cpu::balances_threads(slabs)) {
      run_fused();
      return;
    }
    // Strips, unless x + y overfill the cache with y not streamed: there the split schedule, whose
    // normalization prefetches, was faster (2 cores, float32, calls in random order with torch's:
    // 16x1280x16x16 0.80 ms in strips, 0.64 ms split; 8x2560x16x16 0.84 -> 0.75 ms), where strips
    // won below (8x1280x16x16 0.254 -> 0.218 ms, 2x2560x16x16 0.126 -> 0.110 ms) and above it
    // (16x2560x16x16 3.3 -> 2.1 ms, 32x1280x16x16 2.3 -> 1.8 ms, y streamed).
    const int64_t x_bytes = N * C * sh.S * static_cast<int64_t>(sizeof(T));
    if (!ncs && (stream || 2 * x_bytes < cpu::usable_cache_bytes())) {
      const int64_t strips = cpu::channel_strips(N, C, G, sh.S, sizeof(T), 1, cpu::l2_cache_bytes());
      if (strips > 1) {
        run_strips(strips);
        return;
      }
    }
    std::vector<Stats> partials(N * G * K);  // ((n * G) + g) * K + k
    if (ncs) {
      at::parallel_for(0, N * G * K, cpu::grain_for(plan.chunk_len), [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) partials[t] = chunk_moments_ncs(t / K, t % K);
      });
    } else {
      at::parallel_for(0, N * K, cpu::grain_for(C * plan.chunk_len), [&](int64_t begin, int64_t end) {
        std::vector<reduce_t> acc(2 * C), mean_c(C);
        for (int64_t t = begin; t < end; ++t) {
          chunk_moments_nsc(t / K, t % K, 0, C, acc, mean_c, partials.data() + (t / K) * G * K + t % K, K);
        }
      });
    }
    for (int64_t ng = 0; ng < N * G; ++ng) finalize(ng, partials.data() + ng * K);
    if (ncs) {
      std::vector<acc_t> rows(3 * N * C);  // mean, scale, bias of every (n, c) row
      acc_t* const mean_r = rows.data();
      acc_t* const scale_r = mean_r + N * C;
      acc_t* const bias_r = scale_r + N * C;
      row_coefficients(0, N * C, mean_r, scale_r, bias_r);
      at::parallel_for(0, N * C * sh.S, kApplyGrainElems, [&](int64_t begin, int64_t end) {
        const cpu::StreamingStoresFence fence{stream};
        cpu::for_blocks(begin, end, kApplyGrainElems, [&](int64_t b, int64_t e) {
          apply_ncs(b, e, mean_r, scale_r, bias_r, 0);
        });
      });
      return;
    }
    std::vector<acc_t> coeffs(3 * N * C);
    for (int64_t n = 0; n < N; ++n) {
      channel_coefficients(n, 0, G, &coeffs[n * C], &coeffs[(N + n) * C], &coeffs[(2 * N + n) * C]);
    }
    const int64_t grain_rows = std::max<int64_t>(1, kApplyGrainElems / C);
    at::parallel_for(0, N * sh.S, grain_rows, [&](int64_t begin, int64_t end) {
      const cpu::StreamingStoresFence fence{stream};
      cpu::for_blocks(begin, end, grain_rows, [&](int64_t r0, int64_t r1) {
        cpu::for_sample_rows(r0, r1, sh.S, [&](int64_t n, int64_t s0, int64_t s1) {
          const int64_t o = sh.offset(n, 0, s0);
          cpu::loop_normalize_rows(x + o, y + o, s1 - s0, C, C, &coeffs[n * C], &coeffs[(N + n) * C],
                                   &coeffs[(2 * N + n) * C], act, stream, prefetch);
        });
      });
    });
  }

  // NSC, when samples are too few to share among the threads (N = 1 or odd N on 2 threads) or
  // too large to re-read from cache: each task takes a strip of a sample, the channels of a few
  // whole groups down all its rows, computes their statistics and normalizes them while the strip
  // is in L2 -- one parallel region and one read of x from memory, where the split schedule
  // takes two of each and leaves the statistics of a one-chunk sample to one thread (2 cores,
  // float32 channels_last: 1x1280x8x8 0.89x -> 1.05-1.17x torch, 1x2560x8x8 0.63x -> 0.94-1.06x,
  // 1x2560x16x16 0.69x -> 0.94-1.07x); when to take them: run().
  // Same chunks, same per-channel sums (loop_sum_dev_rows: a strip of the rows gets the bits of
  // the whole rows), same folds: the bits of the split schedule. One strip a sample is run_fused's
  // NSC schedule.
  void run_strips(int64_t strips) const {
    const int64_t G = sh.groups, K = plan.num_chunks, C = sh.C;
    const int64_t width = C / strips, strip_groups = G / strips;
    at::parallel_for(0, sh.N * strips, cpu::grain_for(width * sh.S), [&](int64_t begin, int64_t end) {
      const cpu::StreamingStoresFence fence{stream};
      std::vector<Stats> partials(strip_groups * K);
      std::vector<reduce_t> acc(2 * width), channel_shift(width);
      std::vector<acc_t> coeffs(3 * width);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / strips, g0 = t % strips * strip_groups, c0 = g0 * D();
        for (int64_t k = 0; k < K; ++k) {
          chunk_moments_nsc(n, k, c0, width, acc, channel_shift, partials.data() + k, K);
        }
        for (int64_t g = 0; g < strip_groups; ++g) finalize(n * G + g0 + g, partials.data() + g * K);
        channel_coefficients(n, g0, g0 + strip_groups, &coeffs[0], &coeffs[width], &coeffs[2 * width]);
        const int64_t block_rows = std::max<int64_t>(1, kApplyGrainElems / width);
        cpu::for_blocks(0, sh.S, block_rows, [&](int64_t s0, int64_t s1) {
          const int64_t o = sh.offset(n, 0, s0) + c0;
          cpu::loop_normalize_rows(x + o, y + o, s1 - s0, width, C, &coeffs[0], &coeffs[width], &coeffs[2 * width],
                                   act, stream, prefetch);
        });
      }
    });
  }

  // NCS slabs of one chunk and at most kSmallSlabBytes (one channel of a small image, a few
  // channels of a 1-D signal): the loop calls, not the arithmetic, would cost the most,
  // so a batch of consecutive slabs takes one moments call (a run per slab: the same bits as a
  // call per slab) and one normalize call over all of its rows.
  void run_fused_small_slabs() const {
    const int64_t G = sh.groups, len = D() * sh.S;
    // Slabs per batch: their rows' coefficients and their data stay in L1 between the passes.
    const int64_t most = std::max<int64_t>(
        1, std::min(kSmallSlabBatchRows / D(), kSmallSlabBatchBytes / (len * static_cast<int64_t>(sizeof(T)))));
    at::parallel_for(0, sh.N * G, cpu::grain_for(len), [&](int64_t begin, int64_t end) {
      const cpu::StreamingStoresFence fence{stream};
      const int64_t batch = std::min(most, end - begin);
      std::vector<reduce_t> moments(2 * batch);  // mean, then M2, of each slab of a batch
      std::vector<acc_t> rows(3 * batch * D());   // mean, scale, bias of each row of a batch
      acc_t* const mean_r = rows.data();
      acc_t* const scale_r = mean_r + batch * D();
      acc_t* const bias_r = scale_r + batch * D();
      for (int64_t b0 = begin, g = begin % G; b0 < end; b0 += batch) {
        const int64_t slabs = std::min(batch, end - b0), first = slab_offset_ncs(b0);
        cpu::loop_moments_runs(x + first, slabs, len, moments.data(), moments.data() + batch);
        for (int64_t i = 0; i < slabs; ++i) {
          Stats m{static_cast<reduce_t>(len), moments[i], moments[batch + i]};
          finalize(b0 + i, &m);
          slab_coefficients(b0 + i, g, mean_r + i * D(), scale_r + i * D(), bias_r + i * D());
          if (++g == G) g = 0;
        }
        cpu::loop_normalize_runs(x + first, y + first, slabs * D(), sh.S, mean_r, scale_r, bias_r, act, stream,
                                 prefetch);
      }
    });
  }

  void run_fused() const {
    const int64_t G = sh.groups, K = plan.num_chunks;
    if (sh.order == MemoryOrder::NCS) {
      if (K == 1 && D() * sh.S * static_cast<int64_t>(sizeof(T)) <= kSmallSlabBytes) {
        run_fused_small_slabs();
        return;
      }
      at::parallel_for(0, sh.N * G, cpu::grain_for(D() * sh.S), [&](int64_t begin, int64_t end) {
        const cpu::StreamingStoresFence fence{stream};
        std::vector<Stats> partials(K);
        std::vector<acc_t> rows(3 * D());  // mean, scale, bias of the slab's rows
        acc_t* const mean_r = rows.data();
        acc_t* const scale_r = mean_r + D();
        acc_t* const bias_r = scale_r + D();
        for (int64_t ng = begin, g = begin % G; ng < end; ++ng) {
          for (int64_t k = 0; k < K; ++k) partials[k] = chunk_moments_ncs(ng, k);
          finalize(ng, partials.data());
          slab_coefficients(ng, g, mean_r, scale_r, bias_r);
          const int64_t first = slab_offset_ncs(ng);  // the slab is contiguous
          cpu::for_blocks(first, first + D() * sh.S, kApplyGrainElems, [&](int64_t b, int64_t e) {
            apply_ncs(b, e, mean_r, scale_r, bias_r, ng * D());
          });
          if (++g == G) g = 0;
        }
      });
      return;
    }
    run_strips(1);  // NSC: a sample per task
  }
};

}  // namespace

ForwardResult group_norm_forward_cpu(const Tensor& input, int64_t num_groups,
                                     const OptionalTensor& weight, const OptionalTensor& bias,
                                     double eps, std::string_view activation) {
  const ForwardProblem p = check_forward("group_norm_forward", input, num_groups, weight, bias, activation);
  Tensor out, mean, rstd;
  std::tie(out, mean, rstd) = allocate_forward_outputs(p, input);
  if (p.shape.N * num_groups == 0) return {out, mean, rstd};
  cpu::advise_huge_pages(out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "group_norm_forward_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    std::vector<acc_t> weight_values, bias_values;
    const Forward<scalar_t> fwd{p.shape,
                                forward_plan(p.shape),
                                p.input.const_data_ptr<scalar_t>(),
                                out.mutable_data_ptr<scalar_t>(),
                                cpu::param_values(p.weight, weight_values),
                                cpu::param_values(p.bias, bias_values),
                                eps,
                                mean.mutable_data_ptr<acc_t>(),
                                rstd.mutable_data_ptr<acc_t>(),
                                // x alone past the cache, not x + y (schedule.h, streaming_stores_pay)
                                cpu::streaming_stores_pay(static_cast<int64_t>(input.nbytes())),
                                cpu::software_prefetch_pays(static_cast<int64_t>(input.nbytes())),
                                cpu::sums_prefetch_pays(static_cast<int64_t>(input.nbytes())),
                                p.activation};
    fwd.run();
  });
  return {out, mean, rstd};
}

TORCH_LIBRARY_IMPL(groupnorm_ext, CPU, m) {
  m.impl("group_norm_forward", &group_norm_forward_cpu);
}

}  // namespace groupnorm_ext
