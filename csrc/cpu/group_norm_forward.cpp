// CPU forward: statistics by the shared plan (per-chunk partial moments, combined in a
// fixed tree per (n, group)), then one apply pass with the affine folded into a
// per-(n, c) scale. NCS and NSC inputs are read in place, never converted.
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../group_norm.h"
#include "loops.h"

namespace groupnorm_ext {
namespace {

using cpu::opmath_t;

// Elements one parallel task should touch at least, so that scheduling costs nothing.
constexpr int64_t kApplyGrainElems = 32768;

// Partial moments of every (n, g, chunk), stored at ((n * G) + g) * K + k.
template <typename T, typename acc_t = opmath_t<T>>
void chunk_moments_ncs(const T* x, const GroupNormShape& sh, const ChunkPlan& plan,
                       Moments<acc_t>* partials) {
  const int64_t G = sh.groups, K = plan.num_chunks, D = sh.channels_per_group();
  at::parallel_for(0, sh.N * G * K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t k = task % K, ng = task / K;
      const int64_t n = ng / G, g = ng % G;
      const int64_t s0 = plan.begin(k), len = plan.end(k, sh.S) - s0;
      acc_t sum = 0;
      for (int64_t c = g * D; c < (g + 1) * D; ++c) sum += cpu::loop_sum(x + sh.offset(n, c, s0), len);
      const acc_t count = static_cast<acc_t>(D * len);
      const acc_t mean = sum / count;
      // Second pass over the chunk while it is still in cache: exact deviations from
      // the chunk mean, no cancellation whatever the offset of the data.
      acc_t m2 = 0;
      for (int64_t c = g * D; c < (g + 1) * D; ++c) {
        m2 += cpu::loop_sum_sq_dev(x + sh.offset(n, c, s0), len, mean);
      }
      partials[task] = Moments<acc_t>{count, mean, m2};
    }
  });
}

// Same result layout for NSC: a chunk is a range of rows of C channels, reduced for all
// groups at once with per-channel accumulators (vectorized along C).
template <typename T, typename acc_t = opmath_t<T>>
void chunk_moments_nsc(const T* x, const GroupNormShape& sh, const ChunkPlan& plan,
                       Moments<acc_t>* partials) {
  const int64_t C = sh.C, G = sh.groups, K = plan.num_chunks, D = sh.channels_per_group();
  at::parallel_for(0, sh.N * K, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> channel_sum(C), channel_mean(C), group_mean(G);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / K, k = task % K;
      const int64_t s0 = plan.begin(k), s1 = plan.end(k, sh.S);
      const acc_t count = static_cast<acc_t>(D * (s1 - s0));
      std::fill(channel_sum.begin(), channel_sum.end(), acc_t(0));
      for (int64_t s = s0; s < s1; ++s) cpu::loop_accumulate_row(x + sh.offset(n, 0, s), channel_sum.data(), C);
      for (int64_t g = 0; g < G; ++g) {
        acc_t sum = 0;
        for (int64_t c = g * D; c < (g + 1) * D; ++c) sum += channel_sum[c];
        group_mean[g] = sum / count;
        std::fill(channel_mean.begin() + g * D, channel_mean.begin() + (g + 1) * D, group_mean[g]);
      }
      std::fill(channel_sum.begin(), channel_sum.end(), acc_t(0));
      for (int64_t s = s0; s < s1; ++s) {
        cpu::loop_accumulate_sq_dev_row(x + sh.offset(n, 0, s), channel_sum.data(), channel_mean.data(), C);
      }
      for (int64_t g = 0; g < G; ++g) {
        acc_t m2 = 0;
        for (int64_t c = g * D; c < (g + 1) * D; ++c) m2 += channel_sum[c];
        partials[(n * G + g) * K + k] = Moments<acc_t>{count, group_mean[g], m2};
      }
    }
  });
}

template <typename T>
void forward_impl(const ForwardProblem& p, double eps, Tensor& out, Tensor& mean_out, Tensor& rstd_out) {
  using acc_t = opmath_t<T>;
  const GroupNormShape& sh = p.shape;
  const int64_t N = sh.N, C = sh.C, G = sh.groups, S = sh.S, D = sh.channels_per_group();
  const T* x = p.input.const_data_ptr<T>();
  T* y = out.mutable_data_ptr<T>();
  acc_t* mean = mean_out.mutable_data_ptr<acc_t>();
  acc_t* rstd = rstd_out.mutable_data_ptr<acc_t>();

  // 1. statistics
  const ChunkPlan plan = make_chunk_plan(sh);
  const int64_t K = plan.num_chunks;
  std::vector<Moments<acc_t>> partials(N * G * K);
  if (sh.order == MemoryOrder::NCS) {
    chunk_moments_ncs<T>(x, sh, plan, partials.data());
  } else {
    chunk_moments_nsc<T>(x, sh, plan, partials.data());
  }
  const acc_t eps_acc = static_cast<acc_t>(eps);
  at::parallel_for(0, N * G, 64, [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const Moments<acc_t> m = combine_moments_tree(partials.data() + ng * K, K);
      mean[ng] = m.mean;
      rstd[ng] = rstd_from_variance(moments_variance(m), eps_acc);
    }
  });

  // 2. y = (x - mean[n, g]) * scale[n, c] + bias[c], with scale = rstd * w, per (n, c)
  Tensor w = p.weight.defined() ? p.weight.to(mean_out.scalar_type()) : Tensor();
  Tensor b = p.bias.defined() ? p.bias.to(mean_out.scalar_type()) : Tensor();
  const acc_t* w_ptr = w.defined() ? w.const_data_ptr<acc_t>() : nullptr;
  const acc_t* b_ptr = b.defined() ? b.const_data_ptr<acc_t>() : nullptr;
  std::vector<acc_t> mean_c(N * C), scale(N * C), bias_c(N * C);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t ng = n * G + c / D;
      mean_c[n * C + c] = mean[ng];
      scale[n * C + c] = rstd[ng] * (w_ptr ? w_ptr[c] : acc_t(1));
      bias_c[n * C + c] = b_ptr ? b_ptr[c] : acc_t(0);
    }
  }
  if (sh.order == MemoryOrder::NCS) {
    at::parallel_for(0, N * C * S, kApplyGrainElems, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end;) {
        const int64_t row = i / S, s = i % S;
        const int64_t len = std::min(S - s, end - i);
        cpu::loop_normalize(x + i, y + i, len, mean_c[row], scale[row], bias_c[row]);
        i += len;
      }
    });
  } else {
    const int64_t grain_rows = std::max<int64_t>(1, kApplyGrainElems / C);
    at::parallel_for(0, N * S, grain_rows, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t o = (r / S) * C;
        cpu::loop_normalize_row(x + r * C, y + r * C, C, mean_c.data() + o, scale.data() + o, bias_c.data() + o);
      }
    });
  }
}

}  // namespace

ForwardResult group_norm_forward_cpu(const Tensor& input, int64_t num_groups,
                                     const OptionalTensor& weight, const OptionalTensor& bias,
                                     double eps, std::string_view activation) {
  const ForwardProblem p = check_forward("group_norm_forward", input, num_groups, weight, bias, activation);
  TORCH_CHECK(p.activation == Activation::Identity, "group_norm_forward (CPU): activation not implemented");
  const auto stats_t = stats_dtype(input.scalar_type());
  Tensor out = empty_in_order(input, p.shape.order, input.scalar_type());
  Tensor mean = at::empty({p.shape.N, num_groups}, input.options().dtype(stats_t));
  Tensor rstd = at::empty({p.shape.N, num_groups}, input.options().dtype(stats_t));
  if (p.shape.N * num_groups == 0) return {out, mean, rstd};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "group_norm_forward_cpu",
                                  [&] { forward_impl<scalar_t>(p, eps, out, mean, rstd); });
  return {out, mean, rstd};
}

TORCH_LIBRARY_IMPL(groupnorm_ext, CPU, m) {
  m.impl("group_norm_forward", &group_norm_forward_cpu);
}

}  // namespace groupnorm_ext
