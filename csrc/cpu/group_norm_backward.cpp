// CPU backward. With xhat = (x - mean) * rstd and dxhat = dy * w:
//   grad_bias[c]   = sum_{n,s} dy
//   grad_weight[c] = sum_{n,s} dy * xhat
//   grad_input     = rstd * (dxhat - (A + xhat * B) / M),  A = sum_group dxhat,
//                                                         B = sum_group dxhat * xhat
// Every reduction is a per-(n, c) pair of sums, sum(dy) and sum(dy * (x - mean)),
// taken by chunks and combined in a fixed order (deterministic), centred on the saved
// mean so that a large offset in x cancels nothing. grad_input then needs one
// elementwise pass: dx = a * dy + kx * (x - mean) + kc with per-(n, c) coefficients.
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

constexpr int64_t kApplyGrainElems = 32768;
// Channels-last partials hold a row of C sums per chunk: cap the chunk count per sample
// so that their memory stays far below the tensor's.
constexpr int64_t kMaxRowChunks = 64;

// sum_dy[n * C + c] and sum_dy_xc[n * C + c] for every (n, c).
template <typename T, typename acc_t = opmath_t<T>>
void channel_grad_sums(const T* dy, const T* x, const acc_t* mean, const GroupNormShape& sh,
                       acc_t* sum_dy, acc_t* sum_dy_xc) {
  const int64_t N = sh.N, C = sh.C, G = sh.groups, D = sh.channels_per_group();
  if (sh.order == MemoryOrder::NCS) {
    const ChunkPlan plan = make_chunk_plan(sh.S, 1);
    const int64_t K = plan.num_chunks;
    std::vector<acc_t> part_dy(N * C * K), part_dy_xc(N * C * K);
    at::parallel_for(0, N * C * K, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t nc = task / K, k = task % K;
        const int64_t n = nc / C, c = nc % C;
        const int64_t s0 = plan.begin(k), len = plan.end(k, sh.S) - s0;
        const int64_t off = sh.offset(n, c, s0);
        cpu::loop_grad_sums(dy + off, x + off, len, mean[n * G + c / D], &part_dy[task], &part_dy_xc[task]);
      }
    });
    for (int64_t nc = 0; nc < N * C; ++nc) {
      acc_t a = 0, b = 0;
      for (int64_t k = 0; k < K; ++k) {
        a += part_dy[nc * K + k];
        b += part_dy_xc[nc * K + k];
      }
      sum_dy[nc] = a;
      sum_dy_xc[nc] = b;
    }
    return;
  }
  const ChunkPlan plan = make_chunk_plan(sh.S, C, kMaxRowChunks);
  const int64_t K = plan.num_chunks;
  std::vector<acc_t> part_dy(N * K * C, acc_t(0)), part_dy_xc(N * K * C, acc_t(0));
  at::parallel_for(0, N * K, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> channel_mean(C);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / K, k = task % K;
      for (int64_t c = 0; c < C; ++c) channel_mean[c] = mean[n * G + c / D];
      for (int64_t s = plan.begin(k); s < plan.end(k, sh.S); ++s) {
        const int64_t off = sh.offset(n, 0, s);
        cpu::loop_grad_sums_row(dy + off, x + off, C, channel_mean.data(), &part_dy[task * C],
                                &part_dy_xc[task * C]);
      }
    }
  });
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      acc_t a = 0, b = 0;
      for (int64_t k = 0; k < K; ++k) {
        a += part_dy[(n * K + k) * C + c];
        b += part_dy_xc[(n * K + k) * C + c];
      }
      sum_dy[n * C + c] = a;
      sum_dy_xc[n * C + c] = b;
    }
  }
}

template <typename T>
void backward_impl(const BackwardProblem& bp, std::array<bool, 3> mask, Tensor& grad_input,
                   Tensor& grad_weight, Tensor& grad_bias) {
  using acc_t = opmath_t<T>;
  const ForwardProblem& p = bp.fwd;
  const GroupNormShape& sh = p.shape;
  const int64_t N = sh.N, C = sh.C, G = sh.groups, S = sh.S, D = sh.channels_per_group();
  const T* x = p.input.const_data_ptr<T>();
  const T* dy = bp.grad_out.const_data_ptr<T>();
  const acc_t* mean = bp.mean.const_data_ptr<acc_t>();
  const acc_t* rstd = bp.rstd.const_data_ptr<acc_t>();
  Tensor w = p.weight.defined() ? p.weight.to(bp.mean.scalar_type()) : Tensor();
  const acc_t* w_ptr = w.defined() ? w.const_data_ptr<acc_t>() : nullptr;

  std::vector<acc_t> sum_dy(N * C), sum_dy_xc(N * C);
  channel_grad_sums<T>(dy, x, mean, sh, sum_dy.data(), sum_dy_xc.data());

  if (grad_weight.defined() || grad_bias.defined()) {
    std::vector<acc_t> gw(C, acc_t(0)), gb(C, acc_t(0));
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        gw[c] += sum_dy_xc[n * C + c] * rstd[n * G + c / D];
        gb[c] += sum_dy[n * C + c];
      }
    }
    const auto acc_opts = at::TensorOptions().dtype(bp.mean.scalar_type());
    if (grad_weight.defined()) grad_weight.copy_(at::from_blob(gw.data(), {C}, acc_opts));
    if (grad_bias.defined()) grad_bias.copy_(at::from_blob(gb.data(), {C}, acc_opts));
  }
  if (!mask[0]) return;

  // Per-(n, c) coefficients of dx = a * dy + kx * (x - mean) + kc.
  const acc_t inv_m = acc_t(1) / static_cast<acc_t>(D * S);
  std::vector<acc_t> a(N * C), kx(N * C), kc(N * C), mean_c(N * C);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < G; ++g) {
      const int64_t ng = n * G + g;
      acc_t sum_dxhat = 0, sum_dxhat_xc = 0;  // A, and B / rstd
      for (int64_t c = g * D; c < (g + 1) * D; ++c) {
        const acc_t wc = w_ptr ? w_ptr[c] : acc_t(1);
        sum_dxhat += wc * sum_dy[n * C + c];
        sum_dxhat_xc += wc * sum_dy_xc[n * C + c];
      }
      const acc_t r = rstd[ng];
      const acc_t group_kx = -r * r * r * sum_dxhat_xc * inv_m;
      const acc_t group_kc = -r * sum_dxhat * inv_m;
      for (int64_t c = g * D; c < (g + 1) * D; ++c) {
        a[n * C + c] = r * (w_ptr ? w_ptr[c] : acc_t(1));
        kx[n * C + c] = group_kx;
        kc[n * C + c] = group_kc;
        mean_c[n * C + c] = mean[ng];
      }
    }
  }
  T* dx = grad_input.mutable_data_ptr<T>();
  if (sh.order == MemoryOrder::NCS) {
    at::parallel_for(0, N * C * S, kApplyGrainElems, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end;) {
        const int64_t row = i / S, s = i % S;
        const int64_t len = std::min(S - s, end - i);
        cpu::loop_grad_input(dy + i, x + i, dx + i, len, a[row], kx[row], mean_c[row], kc[row]);
        i += len;
      }
    });
  } else {
    const int64_t grain_rows = std::max<int64_t>(1, kApplyGrainElems / C);
    at::parallel_for(0, N * S, grain_rows, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t o = (r / S) * C;
        cpu::loop_grad_input_row(dy + r * C, x + r * C, dx + r * C, C, a.data() + o, kx.data() + o,
                                 mean_c.data() + o, kc.data() + o);
      }
    });
  }
}

}  // namespace

BackwardResult group_norm_backward_cpu(const Tensor& grad_out, const Tensor& input,
                                       const Tensor& mean, const Tensor& rstd,
                                       const OptionalTensor& weight, const OptionalTensor& bias,
                                       int64_t num_groups, std::string_view activation,
                                       std::array<bool, 3> output_mask) {
  const BackwardProblem bp = check_backward("group_norm_backward", grad_out, input, mean, rstd,
                                            weight, bias, num_groups, activation);
  TORCH_CHECK(bp.fwd.activation == Activation::Identity,
              "group_norm_backward (CPU): activation not implemented");
  const ForwardProblem& p = bp.fwd;
  Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[0]) grad_input = empty_in_order(input, p.shape.order, input.scalar_type());
  if (output_mask[1] && p.weight.defined()) grad_weight = at::empty_like(p.weight);
  if (output_mask[2] && p.bias.defined()) grad_bias = at::empty_like(p.bias);
  if (!grad_input.defined() && !grad_weight.defined() && !grad_bias.defined()) {
    return {grad_input, grad_weight, grad_bias};
  }
  if (input.numel() == 0) {  // empty batch or channels: gradients are empty or zero
    if (grad_weight.defined()) grad_weight.zero_();
    if (grad_bias.defined()) grad_bias.zero_();
    return {grad_input, grad_weight, grad_bias};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "group_norm_backward_cpu",
                                  [&] { backward_impl<scalar_t>(bp, output_mask, grad_input, grad_weight, grad_bias); });
  return {grad_input, grad_weight, grad_bias};
}

TORCH_LIBRARY_IMPL(groupnorm_ext, CPU, m) {
  m.impl("group_norm_backward", &group_norm_backward_cpu);
}

}  // namespace groupnorm_ext
