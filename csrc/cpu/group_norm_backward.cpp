// CPU backward. With xhat = (x - mean) * rstd and dxhat = dy * w, over a group of M
// elements:
//   grad_bias[c]   = sum_{n,s} dy
//   grad_weight[c] = sum_{n,s} dy * xhat
//   grad_input     = rstd * (dxhat - (A + xhat * B) / M),  A = sum_group dxhat,
//                                                         B = sum_group dxhat * xhat
// Every reduction is a per-(n, c) pair of sums, sum(dy) and sum(dy * (x - mean)), taken
// by chunks in double and combined in chunk order (deterministic), centred on the saved
// mean so that a large offset in x cancels nothing. grad_input is then one elementwise
// pass dx = a * dy + xhat * kxhat + kc with per-(n, c) coefficients.
//
// Schedules as in the forward: fused (per slab: sums, then dx while the slab is in
// cache) or split (all chunks in parallel, then an elementwise pass); same bits.
//
// With a fused activation y = act(z), everything above holds for z with dL/dz = dy * act'(z)
// in place of dy: activation_grad.h forms it, piece by piece just before the sums read it.
#include <memory>
#include <optional>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../group_norm.h"
#include "activation_grad.h"
#include "huge_pages.h"
#include "loops.h"
#include "params.h"
#include "schedule.h"

namespace groupnorm_ext {
namespace {

using cpu::opmath_t;
using cpu::reduce_t;

constexpr int64_t kApplyGrainElems = 32768;
constexpr int64_t kMaxRowChunks = 64;
// Small NCS slabs (run_fused_ncs_small_slabs), as the forward's: x and dy of a slab at most
// kSmallSlabBytes, batches of at most kSmallSlabBatchRows rows (five coefficient arrays: 20 KiB
// of float) and kSmallSlabBatchBytes of x and dy, so that they stay in L1 between the passes.
constexpr int64_t kSmallSlabBytes = 8192;
constexpr int64_t kSmallSlabBatchRows = 1024;
constexpr int64_t kSmallSlabBatchBytes = 32768;

template <typename T>
struct Backward {
  using acc_t = opmath_t<T>;
  const GroupNormShape& sh;
  const T* x;
  const T* dy;
  const acc_t* mean;  // (N, G)
  const acc_t* rstd;
  const acc_t* weight;  // null when absent
  T* dx;                // null when grad_input is not wanted
  reduce_t* sum_dy;     // (N, C)
  reduce_t* sum_dy_xc;  // (N, C)
  bool stream;          // write dx with streaming stores (cpu::streaming_stores_pay)
  // Prefetch NSC rows of grad_input in software (cpu::software_prefetch_pays), judged on one
  // tensor's bytes as the forward's normalization is. Judged on x and dy together it also took
  // 4x256x32x32 and 2x640x32x32 float32 (4-5 MB a tensor): there grad_input ran 7% slower with it.
  // The same judgement tells the gradient sums their rows come from memory (loop_grad_sums_rows,
  // which then walks them a row at a time).
  bool prefetch;
  // A fused activation: dy above is dL/dz, which this forms piece by piece just before the
  // sums read it (every element once: the sums cover the tensor once). Null for identity.
  const cpu::ActivationGrad<T>* act_grad = nullptr;

  // Channels per group, divided out once (see Forward::group_channels).
  const int64_t group_channels = sh.channels_per_group();

  int64_t D() const { return group_channels; }
  // NSC: row chunks as the forward's (per sample, independent of N) but up to
  // kCpuGradRowChunkMaxElems long (plan.h), at most kMaxRowChunks a sample: each chunk's partial
  // is a row of C sums, and their memory must stay far below the tensor's.
  ChunkPlan plan() const {
    if (sh.order == MemoryOrder::NCS) return make_chunk_plan(sh.S, 1);
    const ChunkPlan p = make_cpu_row_chunk_plan(sh.S, sh.C, kCpuGradRowChunkMaxElems);
    return p.num_chunks <= kMaxRowChunks ? p : make_chunk_plan(sh.S, sh.C, kMaxRowChunks);
  }

  // NCS: sums of row nc = n * C + c over spatial chunk k; the row's group is nc / D, as
  // C = G * D.
  void chunk_sums_ncs(const ChunkPlan& p, int64_t nc, acc_t group_mean, int64_t k, reduce_t* s_dy,
                      reduce_t* s_dy_xc) const {
    const int64_t s0 = p.begin(k), off = nc * sh.S + s0;
    if (act_grad) act_grad->ncs_piece(nc, s0, p.end(k, sh.S));
    cpu::loop_grad_sums(dy + off, x + off, p.end(k, sh.S) - s0, group_mean, s_dy, s_dy_xc);
  }

  // NSC: per-channel sums of sample n over rows of chunk k, channels [c0, c0 + width) (all C, or
  // a strip: run_strips with several strips a sample, no fused activation), into
  // part_dy[0..width), part_dy_xc[0..width); channel_mean[0..width) of those channels.
  void chunk_sums_nsc(const ChunkPlan& p, int64_t n, int64_t k, int64_t c0, int64_t width,
                      const reduce_t* channel_mean, reduce_t* part_dy, reduce_t* part_dy_xc) const {
    const int64_t off = sh.offset(n, 0, p.begin(k)) + c0;
    if (act_grad) act_grad->nsc_rows(n, p.begin(k), p.end(k, sh.S));
    cpu::loop_grad_sums_rows(dy + off, x + off, p.end(k, sh.S) - p.begin(k), width, sh.C, channel_mean, part_dy,
                             part_dy_xc, prefetch);
  }

  void channel_means(int64_t n, reduce_t* channel_mean) const {
    for (int64_t g = 0, c = 0; g < sh.groups; ++g) {
      for (const int64_t end = c + D(); c < end; ++c) channel_mean[c] = mean[n * sh.groups + g];
    }
  }

  // Coefficients of dx = a * dy + xhat * kxhat + kc for the channels of slab (n, g),
  // written per channel into coeffs[0..5) rows of stride `ld`: a, mean, rstd, kxhat, kc.
  void group_coefficients(int64_t n, int64_t g, acc_t* coeffs, int64_t ld, int64_t col0) const {
    const int64_t ng = n * sh.groups + g;
    reduce_t sum_dxhat = 0, sum_dxhat_xc = 0;
    for (int64_t c = g * D(); c < (g + 1) * D(); ++c) {
      const reduce_t w = weight ? weight[c] : acc_t(1);
      sum_dxhat += w * sum_dy[n * sh.C + c];
      sum_dxhat_xc += w * sum_dy_xc[n * sh.C + c];
    }
    const reduce_t r = rstd[ng];
    const reduce_t inv_m = 1.0 / static_cast<reduce_t>(D() * sh.S);
    // B = sum dxhat * xhat = r * sum_dxhat_xc;  kxhat = -r * B / M;  kc = -r * A / M
    const acc_t kxhat = static_cast<acc_t>(-r * (r * sum_dxhat_xc) * inv_m);
    const acc_t kc = static_cast<acc_t>(-r * sum_dxhat * inv_m);
    for (int64_t c = g * D(); c < (g + 1) * D(); ++c) {
      const int64_t j = col0 + c - g * D();
      coeffs[j] = static_cast<acc_t>(r * (weight ? weight[c] : acc_t(1)));
      coeffs[ld + j] = mean[ng];
      coeffs[2 * ld + j] = rstd[ng];
      coeffs[3 * ld + j] = kxhat;
      coeffs[4 * ld + j] = kc;
    }
  }

  // dx for elements [i0, i1) of an NCS tensor; coeffs hold one column per (n, c), column
  // row - row0. Whole rows go to loop_grad_input_runs in one call (see Forward::apply_ncs).
  void grad_input_ncs(int64_t i0, int64_t i1, const acc_t* coeffs, int64_t ld, int64_t row0) const {
    cpu::for_row_pieces(
        i0, i1, sh.S,
        [&](int64_t row, int64_t i, int64_t len) {
          const int64_t j = row - row0;
          cpu::loop_grad_input(dy + i, x + i, dx + i, len, coeffs[j], coeffs[ld + j], coeffs[2 * ld + j],
                               coeffs[3 * ld + j], coeffs[4 * ld + j], stream);
        },
        [&](int64_t row, int64_t i, int64_t rows) {
          const int64_t j = row - row0;
          cpu::loop_grad_input_runs(dy + i, x + i, dx + i, rows, sh.S, coeffs + j, coeffs + ld + j,
                                    coeffs + 2 * ld + j, coeffs + 3 * ld + j, coeffs + 4 * ld + j, stream);
        });
  }

  // dx for rows [s0, s1) of sample n of an NSC tensor, channels [c0, c0 + width).
  void grad_input_nsc(int64_t n, int64_t s0, int64_t s1, int64_t c0, int64_t width, const acc_t* coeffs, int64_t ld,
                      int64_t col0) const {
    const int64_t o = sh.offset(n, 0, s0) + c0;
    cpu::loop_grad_input_rows(dy + o, x + o, dx + o, s1 - s0, width, sh.C, coeffs + col0, coeffs + ld + col0,
                              coeffs + 2 * ld + col0, coeffs + 3 * ld + col0, coeffs + 4 * ld + col0, stream,
                              prefetch);
  }

  void run() const {
    const int64_t N = sh.N, C = sh.C, G = sh.groups;
    const bool ncs = sh.order == MemoryOrder::NCS;
    const int64_t slab_bytes = 2 * (ncs ? D() : C) * sh.S * static_cast<int64_t>(sizeof(T));  // x and dy
    // The fuse budget of the NCS slabs for NSC samples too, unlike the forward's: fused backwards
    // of a few MB of x and dy a sample were as fast as or faster than the split schedule
    // (2 cores, float32: 2x1280x16x16 0.093 ms fused, 0.101 ms in strips; 2x640x32x32 0.168 ms
    // fused, 0.175 ms split).
    // NSC strips (not with a fused activation, whose dL/dz pass runs over whole rows): of one L2
    // of x and dy, or of two where dx streams (x, dy and dx past the last-level cache). Streaming,
    // they come first, ahead of fused samples: the re-read comes from L2 and the victim last-level
    // cache behind it while dx bypasses both (2 cores, float32 backward alone: 8x2560x16x16
    // 2.80 -> 2.15 ms, 16x1280x16x16 2.20 -> 1.95 ms, 32x1280x16x16 4.13 -> 3.80 ms, in strips of
    // 1.3 MB). The forward keeps strips of one L2 (its 1.3 MB strips were 10-20% slower than the
    // per-sample schedule: 8x640x32x32, 16x640x32x32, 8x1280x32x32).
    const int64_t strips = !ncs && dx && !act_grad
                               ? cpu::channel_strips(N, C, G, sh.S, sizeof(T), 2,  // x and dy
                                                     (stream ? 2 : 1) * cpu::l2_cache_bytes())
                               : 1;
    if (strips > 1 && stream) {
      run_strips(strips);
      return;
    }
    if (dx && slab_bytes <= cpu::fuse_budget_bytes() && cpu::balances_threads(ncs ? N * G : N)) {
      ncs ? run_fused_ncs() : run_strips(1);  // NSC: a sample per task
      return;
    }
    if (strips > 1) {
      run_strips(strips);
      return;
    }
    const ChunkPlan p = plan();
    const int64_t K = p.num_chunks;
    if (ncs) {
      // (n * C + c) * K + k, then the same for dy * xc; every element written by its chunk.
      const std::unique_ptr<reduce_t[]> part(new reduce_t[2 * N * C * K]);
      at::parallel_for(0, N * C * K, cpu::grain_for(2 * p.chunk_len), [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          chunk_sums_ncs(p, t / K, mean[t / K / D()], t % K, &part[t], &part[N * C * K + t]);
        }
      });
      for (int64_t nc = 0; nc < N * C; ++nc) {
        reduce_t a = 0, b = 0;
        for (int64_t k = 0; k < K; ++k) {
          a += part[nc * K + k];
          b += part[N * C * K + nc * K + k];
        }
        sum_dy[nc] = a;
        sum_dy_xc[nc] = b;
      }
    } else {
      // ((n * K + k) * C + c), then dy * xc; every element written by its chunk (no zeroing).
      const std::unique_ptr<reduce_t[]> part(new reduce_t[2 * N * K * C]);
      at::parallel_for(0, N * K, cpu::grain_for(2 * C * p.chunk_len), [&](int64_t begin, int64_t end) {
        std::vector<reduce_t> channel_mean(C);
        for (int64_t t = begin; t < end; ++t) {
          channel_means(t / K, channel_mean.data());
          chunk_sums_nsc(p, t / K, t % K, 0, C, channel_mean.data(), &part[t * C], &part[(N * K + t) * C]);
        }
      });
      // Chunk by chunk over whole rows of partials (vectorized): each sum still adds its chunks'
      // partials in chunk order from zero, as the fused schedules do (channel by channel down
      // the chunks, the walk took 5% of a 1x1280x64x64 float32 backward's sums). The threads
      // take a range of channels each: on one thread, which read the other's half of the
      // partials from that core's cache, the sums took 12-30 us longer (2 cores, float32
      // channels_last, in one process: 1x1280x64x64 0.906 -> 0.877 ms, 2x640x64x64 0.936 ->
      // 0.923, 4x1280x16x16 0.250 -> 0.237; the whole backward 1.854 -> 1.821 ms).
      at::parallel_for(0, N * C, cpu::grain_for(2 * K), [&](int64_t begin, int64_t end) {
        for (int64_t nc = begin; nc < end;) {
          const int64_t n = nc / C, c0 = nc - n * C, c1 = std::min(C, c0 + (end - nc));
          reduce_t* s_dy = sum_dy + n * C;
          reduce_t* s_dy_xc = sum_dy_xc + n * C;
          std::fill(s_dy + c0, s_dy + c1, reduce_t(0));
          std::fill(s_dy_xc + c0, s_dy_xc + c1, reduce_t(0));
          for (int64_t k = 0; k < K; ++k) {
            const reduce_t* p_dy = &part[(n * K + k) * C];
            const reduce_t* p_dy_xc = &part[(N * K + n * K + k) * C];
            for (int64_t c = c0; c < c1; ++c) {
              s_dy[c] += p_dy[c];
              s_dy_xc[c] += p_dy_xc[c];
            }
          }
          nc += c1 - c0;
        }
      });
    }
    if (!dx) return;
    std::vector<acc_t> coeffs(5 * N * C);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t g = 0; g < G; ++g) group_coefficients(n, g, coeffs.data(), N * C, n * C + g * D());
    }
    if (ncs) {
      at::parallel_for(0, N * C * sh.S, kApplyGrainElems, [&](int64_t begin, int64_t end) {
        const cpu::StreamingStoresFence fence{stream};
        cpu::for_blocks(begin, end, kApplyGrainElems,
                        [&](int64_t b, int64_t e) { grad_input_ncs(b, e, coeffs.data(), N * C, 0); });
      });
      return;
    }
    const int64_t grain_rows = std::max<int64_t>(1, kApplyGrainElems / C);
    at::parallel_for(0, N * sh.S, grain_rows, [&](int64_t begin, int64_t end) {
      const cpu::StreamingStoresFence fence{stream};
      cpu::for_blocks(begin, end, grain_rows, [&](int64_t r0, int64_t r1) {
        cpu::for_sample_rows(r0, r1, sh.S, [&](int64_t n, int64_t s0, int64_t s1) {
          grad_input_nsc(n, s0, s1, 0, C, coeffs.data(), N * C, n * C);
        });
      });
    });
  }

  // NCS slabs of one chunk per row whose x and dy take at most kSmallSlabBytes: batches of
  // consecutive slabs take one sums call and one grad_input call (the per-slab calls would cost
  // more than the arithmetic), with the same sums and coefficients as run_fused_ncs.
  void run_fused_ncs_small_slabs() const {
    const int64_t G = sh.groups, rows = D(), len = D() * sh.S;
    const int64_t most = std::max<int64_t>(
        1, std::min(kSmallSlabBatchRows / rows, kSmallSlabBatchBytes / (2 * len * static_cast<int64_t>(sizeof(T)))));
    at::parallel_for(0, sh.N * G, cpu::grain_for(2 * len), [&](int64_t begin, int64_t end) {
      const cpu::StreamingStoresFence fence{stream};
      const int64_t batch = std::min(most, end - begin), ld = batch * rows;
      std::vector<acc_t> coeffs(5 * ld);
      for (int64_t b0 = begin, n = begin / G, g = begin % G; b0 < end; b0 += batch) {
        const int64_t slabs = std::min(batch, end - b0), first = b0 * len;  // NCS: slab ng starts at ng * D * S
        if (act_grad) act_grad->ncs_rows(b0 * rows, slabs * rows);
        cpu::loop_grad_sums_slabs(dy + first, x + first, slabs, rows, sh.S, mean + b0, sum_dy + b0 * rows,
                                  sum_dy_xc + b0 * rows);
        for (int64_t i = 0; i < slabs; ++i) {
          group_coefficients(n, g, coeffs.data(), ld, i * rows);
          if (++g == G) {
            g = 0;
            ++n;
          }
        }
        cpu::loop_grad_input_runs(dy + first, x + first, dx + first, slabs * rows, sh.S, coeffs.data(),
                                  coeffs.data() + ld, coeffs.data() + 2 * ld, coeffs.data() + 3 * ld,
                                  coeffs.data() + 4 * ld, stream);
      }
    });
  }

  void run_fused_ncs() const {
    const ChunkPlan p = plan();
    const int64_t K = p.num_chunks, G = sh.groups, C = sh.C;
    if (K == 1 && 2 * D() * sh.S * static_cast<int64_t>(sizeof(T)) <= kSmallSlabBytes) {
      run_fused_ncs_small_slabs();
      return;
    }
    at::parallel_for(0, sh.N * G, cpu::grain_for(2 * D() * sh.S), [&](int64_t begin, int64_t end) {
      const cpu::StreamingStoresFence fence{stream};
      std::vector<acc_t> coeffs(5 * D());
      for (int64_t ng = begin, n = begin / G, g = begin % G; ng < end; ++ng) {
        if (K == 1) {  // whole rows, in one call (the same sums as a call per row)
          const int64_t first = sh.offset(n, g * D(), 0);
          if (act_grad) act_grad->ncs_rows(n * C + g * D(), D());
          cpu::loop_grad_sums_runs(dy + first, x + first, D(), sh.S, mean[ng], sum_dy + n * C + g * D(),
                                   sum_dy_xc + n * C + g * D());
        } else {
          for (int64_t c = g * D(); c < (g + 1) * D(); ++c) {
            reduce_t a = 0, b = 0;
            for (int64_t k = 0; k < K; ++k) {
              reduce_t pa, pb;
              chunk_sums_ncs(p, n * C + c, mean[ng], k, &pa, &pb);
              a += pa;
              b += pb;
            }
            sum_dy[n * C + c] = a;
            sum_dy_xc[n * C + c] = b;
          }
        }
        group_coefficients(n, g, coeffs.data(), D(), 0);
        const int64_t first = sh.offset(n, g * D(), 0);
        cpu::for_blocks(first, first + D() * sh.S, kApplyGrainElems, [&](int64_t b, int64_t e) {
          grad_input_ncs(b, e, coeffs.data(), D(), n * C + g * D());
        });
        if (++g == G) {
          g = 0;
          ++n;
        }
      }
    });
  }

  // NSC strips as Forward::run_strips: each task sums a strip of a sample (a few whole groups'
  // channels, all rows) and forms its dx while x and dy are in L2, where the split schedule
  // leaves the sums of a one-chunk sample to one thread and reads x and dy twice. The same
  // chunks, per-channel sums (loop_grad_sums_rows: a strip of the rows gets the bits of the whole
  // rows) and chunk order: the bits of the other schedules. One strip a sample is the fused NSC
  // schedule, and the only one that takes a fused activation (chunk_sums_nsc forms dL/dz over
  // whole rows).
  void run_strips(int64_t strips) const {
    const ChunkPlan p = plan();
    const int64_t K = p.num_chunks, G = sh.groups, C = sh.C;
    const int64_t width = C / strips, strip_groups = G / strips;
    at::parallel_for(0, sh.N * strips, cpu::grain_for(2 * width * sh.S), [&](int64_t begin, int64_t end) {
      const cpu::StreamingStoresFence fence{stream};
      std::vector<reduce_t> channel_mean(C), part(2 * width);
      std::vector<acc_t> coeffs(5 * width);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / strips, g0 = t % strips * strip_groups, c0 = g0 * D();
        channel_means(n, channel_mean.data());
        reduce_t* const s_dy = sum_dy + n * C + c0;
        reduce_t* const s_dy_xc = sum_dy_xc + n * C + c0;
        std::fill(s_dy, s_dy + width, reduce_t(0));
        std::fill(s_dy_xc, s_dy_xc + width, reduce_t(0));
        for (int64_t k = 0; k < K; ++k) {
          chunk_sums_nsc(p, n, k, c0, width, channel_mean.data() + c0, part.data(), part.data() + width);
          for (int64_t c = 0; c < width; ++c) {
            s_dy[c] += part[c];
            s_dy_xc[c] += part[width + c];
          }
        }
        for (int64_t g = 0; g < strip_groups; ++g) group_coefficients(n, g0 + g, coeffs.data(), width, g * D());
        const int64_t block_rows = std::max<int64_t>(1, kApplyGrainElems / width);
        cpu::for_blocks(0, sh.S, block_rows, [&](int64_t s0, int64_t s1) {
          grad_input_nsc(n, s0, s1, c0, width, coeffs.data(), width, 0);
        });
      }
    });
  }
};

}  // namespace

// Whether dx goes out with streaming stores: x + dy + dx past the cache (streaming_stores_pay),
// or past half of it for float32 channels-last rows of whole lines, which stream straight from
// the registers (loops_backward.cpp, grad_input_rows_stream_lines). Streamed at x + dy + dx = 31.5
// MB, 2 cores, float32 channels_last backward, flushed cache / warm: 1x640x64x64 1.05 -> 0.91 /
// 0.61 -> 0.52 ms, 4x640x32x32 1.01 -> 0.83 / 0.65 -> 0.53, 2x1280x32x32 0.94 -> 0.86 / 0.69 -> 0.65,
// 8x320x32x32 1.12 -> 1.04 / 0.50 -> 0.49; 2x320x64x64 0.87 -> 1.02 / 0.49 -> 0.51 (torch 0.89 /
// 0.71) went the other way.
static bool stream_grad_input(const GroupNormShape& sh, int64_t elem_bytes, bool float32) {
  const int64_t footprint = 3 * sh.N * sh.C * sh.S * elem_bytes;
  const bool register_rows = float32 && sh.order == MemoryOrder::NSC && sh.C % 16 == 0;
  return cpu::streaming_stores_pay(register_rows ? 2 * footprint : footprint);
}

BackwardResult group_norm_backward_cpu(const Tensor& grad_out, const Tensor& input,
                                       const Tensor& mean, const Tensor& rstd,
                                       const OptionalTensor& weight, const OptionalTensor& bias,
                                       int64_t num_groups, std::string_view activation,
                                       std::array<bool, 3> output_mask) {
  const BackwardProblem bp = check_backward("group_norm_backward", grad_out, input, mean, rstd,
                                            weight, bias, num_groups, activation);
  const ForwardProblem& p = bp.fwd;
  const GroupNormShape& sh = p.shape;
  BackwardResult grads;
  if (!allocate_backward_outputs(p, input, output_mask, grads)) return grads;
  Tensor& grad_input = std::get<0>(grads);
  Tensor& grad_weight = std::get<1>(grads);
  Tensor& grad_bias = std::get<2>(grads);
  cpu::advise_huge_pages(grad_input);
  // Per-(n, c) sums, then grad_weight / grad_bias reduced over n in order (double). A plain
  // vector: an ATen tensor and its row views cost more than the whole op on small inputs.
  std::vector<reduce_t> sums(2 * sh.N * sh.C);
  // A fused activation: the identity backward of z on dL/dz (activation_grad.h).
  const bool fused_activation = p.activation != Activation::Identity;
  const Tensor grad_z = fused_activation ? cpu::activation_grad_buffer(bp) : bp.grad_out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "group_norm_backward_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    std::vector<acc_t> weight_values;
    std::optional<cpu::ActivationGrad<scalar_t>> act_grad;
    if (fused_activation) act_grad.emplace(bp, grad_z.data_ptr<scalar_t>());
    const Backward<scalar_t> bwd{sh,
                                 p.input.const_data_ptr<scalar_t>(),
                                 grad_z.const_data_ptr<scalar_t>(),
                                 bp.mean.const_data_ptr<acc_t>(),
                                 bp.rstd.const_data_ptr<acc_t>(),
                                 cpu::param_values(p.weight, weight_values),
                                 grad_input.defined() ? grad_input.mutable_data_ptr<scalar_t>() : nullptr,
                                 sums.data(),
                                 sums.data() + sh.N * sh.C,
                                 stream_grad_input(sh, sizeof(scalar_t), std::is_same_v<scalar_t, float>),
                                 cpu::software_prefetch_pays(static_cast<int64_t>(input.nbytes())),
                                 act_grad ? &*act_grad : nullptr};
    bwd.run();
  });
  if (grad_weight.defined() || grad_bias.defined()) {
    // Summed over n in batch order (deterministic), in double, written straight into the
    // outputs in the parameters' dtype: no temporaries, no extra ATen calls (they dominate
    // small problems).
    const int64_t N = sh.N, C = sh.C, D = sh.channels_per_group();
    const reduce_t* s_dy = sums.data();
    const reduce_t* s_dy_xc = sums.data() + N * C;
    std::vector<reduce_t> gw(C, reduce_t(0)), gb(C, reduce_t(0));
    AT_DISPATCH_FLOATING_TYPES(bp.rstd.scalar_type(), "group_norm_backward_cpu_params", [&] {
      const scalar_t* r = bp.rstd.const_data_ptr<scalar_t>();
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t g = 0, c = 0; g < sh.groups; ++g) {
          const reduce_t r_ng = static_cast<reduce_t>(r[n * sh.groups + g]);
          for (const int64_t end = c + D; c < end; ++c) {
            gw[c] += s_dy_xc[n * C + c] * r_ng;
            gb[c] += s_dy[n * C + c];
          }
        }
      }
    });
    const at::ScalarType param_t = grad_weight.defined() ? grad_weight.scalar_type() : grad_bias.scalar_type();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param_t, "group_norm_backward_cpu_params", [&] {
      for (Tensor* out : {&grad_weight, &grad_bias}) {
        if (!out->defined()) continue;
        const std::vector<reduce_t>& src = out == &grad_weight ? gw : gb;
        scalar_t* dst = out->mutable_data_ptr<scalar_t>();
        for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(src[c]);
      }
    });
  }
  return {grad_input, grad_weight, grad_bias};
}

TORCH_LIBRARY_IMPL(groupnorm_ext, CPU, m) {
  m.impl("group_norm_backward", &group_norm_backward_cpu);
}

}  // namespace groupnorm_ext
