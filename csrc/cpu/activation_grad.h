// The CPU backward's pre-pass for a fused activation (activation_grad.cpp).
#pragma once

#include "../group_norm.h"

namespace groupnorm_ext {
namespace cpu {

// dL/dz = grad_out * act'(z), z the pre-activation recomputed from the input and the saved
// statistics; dense in the problem's memory order, in the input's dtype.
Tensor activation_grad_cpu(const BackwardProblem& bp);

}  // namespace cpu
}  // namespace groupnorm_ext
