// CPU backward of a fused activation: dL/dz = dy * act'(z), formed piece by piece (see
// activation_grad.h) from z = (x - mean) * (rstd * w) + b, recomputed from x and the saved
// statistics as the forward computed it (nothing but what autograd already holds is saved).
// group_norm_backward_cpu then runs the identity backward on dz: the per-(n, c) sums,
// grad_input, grad_weight and grad_bias of y = act(z) are those of z with dz for dy.
//
// dz is rounded to the input's dtype, as an unfused torch pipeline (group_norm, then the
// activation) rounds the gradient between its two backward ops.
#include "activation_grad.h"

#include <ATen/ATen.h>

#include "params.h"

namespace groupnorm_ext {
namespace cpu {

template <typename T>
ActivationGrad<T>::ActivationGrad(const BackwardProblem& bp, T* dz)
    : x_(bp.fwd.input.const_data_ptr<T>()),
      dy_(bp.grad_out.const_data_ptr<T>()),
      dz_(dz),
      C_(bp.fwd.shape.C),
      S_(bp.fwd.shape.S),
      act_(bp.fwd.activation) {
  const GroupNormShape& sh = bp.fwd.shape;
  const int64_t N = sh.N, C = sh.C, G = sh.groups, D = sh.channels_per_group();
  const acc_t* mean = bp.mean.const_data_ptr<acc_t>();
  const acc_t* rstd = bp.rstd.const_data_ptr<acc_t>();
  std::vector<acc_t> weight_values, bias_values;
  const acc_t* w = param_values(bp.fwd.weight, weight_values);
  const acc_t* b = param_values(bp.fwd.bias, bias_values);
  // Per-(n, c) coefficients, the forward's: mean, scale = rstd * w, bias.
  coeffs_.resize(3 * N * C);
  mean_ = coeffs_.data();
  scale_ = mean_ + N * C;
  bias_ = scale_ + N * C;
  acc_t* const m = coeffs_.data();
  for (int64_t n = 0, row = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c, ++row) {
      const int64_t ng = n * G + c / D;
      m[row] = mean[ng];
      m[N * C + row] = rstd[ng] * (w ? w[c] : acc_t(1));
      m[2 * N * C + row] = b ? b[c] : acc_t(0);
    }
  }
}

template <typename T>
void ActivationGrad<T>::ncs_rows(int64_t nc, int64_t rows) const {
  const int64_t i = nc * S_;
  loop_activation_grad_runs(dy_ + i, x_ + i, dz_ + i, rows, S_, mean_ + nc, scale_ + nc, bias_ + nc, act_);
}

template <typename T>
void ActivationGrad<T>::ncs_piece(int64_t nc, int64_t s0, int64_t s1) const {
  const int64_t i = nc * S_ + s0;
  loop_activation_grad(dy_ + i, x_ + i, dz_ + i, s1 - s0, mean_[nc], scale_[nc], bias_[nc], act_);
}

template <typename T>
void ActivationGrad<T>::nsc_rows(int64_t n, int64_t s0, int64_t s1) const {
  const int64_t o = (n * S_ + s0) * C_;
  loop_activation_grad_rows(dy_ + o, x_ + o, dz_ + o, s1 - s0, C_, mean_ + n * C_, scale_ + n * C_,
                            bias_ + n * C_, act_);
}

template class ActivationGrad<float>;
template class ActivationGrad<double>;
template class ActivationGrad<c10::Half>;
template class ActivationGrad<c10::BFloat16>;

Tensor activation_grad_buffer(const BackwardProblem& bp) {
  return empty_in_format(bp.fwd.input, bp.fwd.format, bp.grad_out.scalar_type());
}

}  // namespace cpu
}  // namespace groupnorm_ext
