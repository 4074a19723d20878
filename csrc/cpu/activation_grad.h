// dL/dz of a fused activation for the CPU backward (activation_grad.cpp).
#pragma once

#include <vector>

#include "../group_norm.h"
#include "loops.h"

namespace groupnorm_ext {
namespace cpu {

// dL/dz = grad_out * act'(z), z the pre-activation recomputed from the input and the saved
// statistics exactly as the forward computes it, written into `dz` (dense in the problem's
// memory order, in the input's dtype) piece by piece: the backward forms each piece just
// before its sums read it, so the sums and grad_input re-read dz from cache instead of after a
// separate pass over the whole tensor (backward alone, 2 cores: 2x320x64x64 float32 relu
// 1.70 -> 1.41 ms, silu 2.4 -> 2.0 ms; 2x32x64^3 float32 channels_last_3d relu 23 -> 19.6 ms).
// Same values as the separate pass. Each element must be formed once, before anything reads
// it; the backward's sums cover every element exactly once.
template <typename T>
class ActivationGrad {
 public:
  using acc_t = opmath_t<T>;
  ActivationGrad(const BackwardProblem& bp, T* dz);
  // mean_, scale_ and bias_ point into coeffs_: a copy would point into the original's.
  ActivationGrad(const ActivationGrad&) = delete;
  ActivationGrad& operator=(const ActivationGrad&) = delete;

  // NCS: `rows` whole (n, c) rows from row nc.
  void ncs_rows(int64_t nc, int64_t rows) const;
  // NCS: elements [s0, s1) of row nc.
  void ncs_piece(int64_t nc, int64_t s0, int64_t s1) const;
  // NSC: rows [s0, s1) of sample n.
  void nsc_rows(int64_t n, int64_t s0, int64_t s1) const;

 private:
  const T* x_;
  const T* dy_;
  T* dz_;
  int64_t C_, S_;
  Activation act_;
  std::vector<acc_t> coeffs_;  // per (n, c): mean, then scale = rstd * w, then bias
  const acc_t* mean_;
  const acc_t* scale_;
  const acc_t* bias_;
};

// The buffer for dL/dz: dense in the problem's memory order, like grad_out, from the output
// pool when large (a fresh 67 MB buffer faulted in per call cost as much as the pass itself).
Tensor activation_grad_buffer(const BackwardProblem& bp);

}  // namespace cpu
}  // namespace groupnorm_ext
