// CPU backward of a fused activation: dL/dz = dy * act'(z) for the whole tensor, in one
// elementwise pass that recomputes z = (x - mean) * (rstd * w) + b from x and the saved
// statistics as the forward computed it (nothing but what autograd already holds is
// saved). group_norm_backward_cpu then runs the identity backward on dz: the per-(n, c)
// sums, grad_input, grad_weight and grad_bias of y = act(z) are those of z with dz for dy.
//
// dz is rounded to the input's dtype, as an unfused torch pipeline (group_norm, then the
// activation) rounds the gradient between its two backward ops.
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "../group_norm.h"
#include "activation_grad.h"
#include "loops.h"
#include "params.h"
#include "schedule.h"

namespace groupnorm_ext {
namespace cpu {
namespace {

constexpr int64_t kGrainElems = 32768;

template <typename T>
void activation_grad(const BackwardProblem& bp, T* dz) {
  using acc_t = opmath_t<T>;
  const ForwardProblem& p = bp.fwd;
  const GroupNormShape& sh = p.shape;
  const int64_t N = sh.N, C = sh.C, G = sh.groups, D = sh.channels_per_group();
  const T* x = p.input.const_data_ptr<T>();
  const T* dy = bp.grad_out.const_data_ptr<T>();
  const acc_t* mean = bp.mean.const_data_ptr<acc_t>();
  const acc_t* rstd = bp.rstd.const_data_ptr<acc_t>();
  std::vector<acc_t> weight_values, bias_values;
  const acc_t* w = param_values(p.weight, weight_values);
  const acc_t* b = param_values(p.bias, bias_values);
  // Per-(n, c) coefficients, the forward's: mean, scale = rstd * w, bias.
  std::vector<acc_t> coeffs(3 * N * C);
  acc_t* const mean_r = coeffs.data();
  acc_t* const scale_r = mean_r + N * C;
  acc_t* const bias_r = scale_r + N * C;
  for (int64_t n = 0, row = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c, ++row) {
      const int64_t ng = n * G + c / D;
      mean_r[row] = mean[ng];
      scale_r[row] = rstd[ng] * (w ? w[c] : acc_t(1));
      bias_r[row] = b ? b[c] : acc_t(0);
    }
  }
  const Activation act = p.activation;
  if (sh.order == MemoryOrder::NCS) {
    at::parallel_for(0, N * C * sh.S, kGrainElems, [&](int64_t i0, int64_t i1) {
      for_row_pieces(
          i0, i1, sh.S,
          [&](int64_t row, int64_t i, int64_t len) {
            loop_activation_grad(dy + i, x + i, dz + i, len, mean_r[row], scale_r[row], bias_r[row], act);
          },
          [&](int64_t row, int64_t i, int64_t rows) {
            loop_activation_grad_runs(dy + i, x + i, dz + i, rows, sh.S, mean_r + row, scale_r + row, bias_r + row,
                                      act);
          });
    });
    return;
  }
  const int64_t grain_rows = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(C, 1));
  at::parallel_for(0, N * sh.S, grain_rows, [&](int64_t r0, int64_t r1) {
    for_sample_rows(r0, r1, sh.S, [&](int64_t n, int64_t s0, int64_t s1) {
      const int64_t o = sh.offset(n, 0, s0);
      loop_activation_grad_rows(dy + o, x + o, dz + o, s1 - s0, C, mean_r + n * C, scale_r + n * C,
                                bias_r + n * C, act);
    });
  });
}

}  // namespace

Tensor activation_grad_cpu(const BackwardProblem& bp) {
  // Dense in the problem's memory order, as grad_out; from the output pool when large (a fresh
  // 67 MB buffer faulted in per call cost as much as the pass itself).
  Tensor dz = empty_in_order(bp.fwd.input, bp.fwd.shape.order, bp.grad_out.scalar_type());
  if (dz.numel() == 0) return dz;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dz.scalar_type(), "group_norm_activation_grad_cpu", [&] {
    activation_grad<scalar_t>(bp, dz.mutable_data_ptr<scalar_t>());
  });
  return dz;
}

}  // namespace cpu
}  // namespace groupnorm_ext
