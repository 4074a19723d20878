// The backward's dL/dz of a fused activation, the CUDA counterpart of the CPU's
// loop_activation_grad: dz = dy * act'(z) (relu: a select, as torch's threshold_backward),
// z = x * scale + shift recomputed as the forward apply computes it (affine_op.cuh), with
// per-(n, c) tables built here from the saved statistics. One tiled pass over dy and x
// (tiled_elementwise.cuh) in place of the seven full-size ATen kernels that formed z and
// called the activation's backward op; the plain backward kernels then take dz as their dy.
// Its own translation unit: the four activations' instances build beside the others.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "affine_op.cuh"
#include "backward.h"

namespace groupnorm_ext {
namespace cuda {
namespace {

constexpr int kTableThreads = 256;

// scale[n * C + c] = rstd[n, g] * w[c], shift = b[c] - mean[n, g] * scale, formed in double
// as forward_stats's finalize forms them (there from the double statistics, here from the
// saved ones, rounded to the statistics dtype).
template <typename acc_t, typename param_t>
__global__ void __launch_bounds__(kTableThreads)
    activation_tables_kernel(const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                             const param_t* __restrict__ weight, const param_t* __restrict__ bias, int64_t C,
                             int64_t D, int64_t total, acc_t* __restrict__ scale, acc_t* __restrict__ shift) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t n = i / C, c = i - n * C, ng = n * (C / D) + c / D;
    const reduce_t s = static_cast<reduce_t>(rstd[ng]) * (weight ? static_cast<reduce_t>(weight[c]) : reduce_t(1));
    const reduce_t b = bias ? static_cast<reduce_t>(bias[c]) : reduce_t(0);
    scale[i] = static_cast<acc_t>(s);
    shift[i] = static_cast<acc_t>(b - static_cast<reduce_t>(mean[ng]) * s);
  }
}

// The forward apply's op with the activation's gradient in place of its value: the inputs are
// (dy, x).
template <typename acc_t, Activation act>
struct ActivationGradOp : AffineOp<acc_t> {
  __device__ __forceinline__ acc_t apply(const typename AffineOp<acc_t>::Params& p, acc_t dy, acc_t x) const {
    return activation_grad<act>(dy, x * p.scale + p.shift);
  }
};

template <typename acc_t, typename param_t>
void launch_tables(const BackwardProblem& bp, acc_t* scale, acc_t* shift, cudaStream_t stream) {
  const ForwardProblem& p = bp.fwd;
  const int64_t total = p.shape.N * p.shape.C;
  activation_tables_kernel<acc_t, param_t>
      <<<grid_for((total + kTableThreads - 1) / kTableThreads, num_sms() * 8), kTableThreads, 0, stream>>>(
          bp.mean.const_data_ptr<acc_t>(), bp.rstd.const_data_ptr<acc_t>(),
          p.weight.defined() ? p.weight.const_data_ptr<param_t>() : nullptr,
          p.bias.defined() ? p.bias.const_data_ptr<param_t>() : nullptr, p.shape.C, p.shape.channels_per_group(),
          total, scale, shift);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, Activation act>
void launch_grad(const BackwardProblem& bp, const acc_type<T>* scale, const acc_type<T>* shift, T* dz,
                 cudaStream_t stream) {
  const T* const in[2] = {bp.grad_out.const_data_ptr<T>(), bp.fwd.input.const_data_ptr<T>()};
  launch_tiled_elementwise<T, 2>(bp.fwd.shape, in, dz, ActivationGradOp<acc_type<T>, act>{{scale, shift}}, stream);
}

}  // namespace

at::Tensor activation_dz(const BackwardProblem& bp, cudaStream_t stream) {
  const ForwardProblem& p = bp.fwd;
  // dense in the input's memory order, as the tiled pass indexes dy, x and dz alike
  at::Tensor dz = empty_in_format(p.input, p.format, bp.grad_out.scalar_type());
  const int64_t nc = p.shape.N * p.shape.C;
  // planar: row 0 scale, row 1 shift, 16-byte aligned rows (the vector table loads)
  at::Tensor tables = at::empty({2, (nc + 7) / 8 * 8}, bp.mean.options());
  const at::ScalarType param_type = p.weight.defined() ? p.weight.scalar_type()
                                    : p.bias.defined() ? p.bias.scalar_type() : p.input.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.input.scalar_type(), "group_norm_activation_grad", [&] {
    using acc_t = acc_type<scalar_t>;
    acc_t* const scale = tables[0].mutable_data_ptr<acc_t>();
    acc_t* const shift = tables[1].mutable_data_ptr<acc_t>();
    bool tables_done = false;
    if constexpr (takes_float_params<scalar_t>()) {
      if (param_type == at::kFloat) {
        launch_tables<acc_t, float>(bp, scale, shift, stream);
        tables_done = true;
      }
    }
    if (!tables_done) launch_tables<acc_t, scalar_t>(bp, scale, shift, stream);
    scalar_t* const out = dz.mutable_data_ptr<scalar_t>();
    switch (p.activation) {
      case Activation::SiLU: return launch_grad<scalar_t, Activation::SiLU>(bp, scale, shift, out, stream);
      case Activation::ReLU: return launch_grad<scalar_t, Activation::ReLU>(bp, scale, shift, out, stream);
      case Activation::GELU: return launch_grad<scalar_t, Activation::GELU>(bp, scale, shift, out, stream);
      case Activation::GELUTanh: return launch_grad<scalar_t, Activation::GELUTanh>(bp, scale, shift, out, stream);
      case Activation::Identity: break;
    }
    TORCH_CHECK(false, "activation_dz: no activation to differentiate");
  });
  return dz;
}

}  // namespace cuda
}  // namespace groupnorm_ext
