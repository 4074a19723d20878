// Public C++ API of the op library libgroupnorm_ext.so (pure C++: depends on libtorch only).
//
// Loading the library registers the ops torch::jit::load needs for models that call
// torch.ops.groupnorm_ext.* (group_norm, group_norm_forward, group_norm_backward) with the
// dispatcher: CPU and, when built with CUDA, CUDA kernels, plus the autograd formula.
// Link it with CMake: find_package(GroupNormExt) and target GroupNormExt::GroupNormExt
// (see the README, "Use from C++").
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include <ATen/core/Tensor.h>

// Exported from the library, which is otherwise built with hidden visibility (Linux, GCC/Clang).
#define GROUPNORM_EXT_API __attribute__((visibility("default")))

namespace groupnorm_ext {

// y = GroupNorm(input) * weight + bias, through the dispatcher (the same op as
// torch.ops.groupnorm_ext.group_norm: differentiable, any device the library was built for).
GROUPNORM_EXT_API at::Tensor group_norm(const at::Tensor& input, int64_t num_groups,
                                        const std::optional<at::Tensor>& weight = std::nullopt,
                                        const std::optional<at::Tensor>& bias = std::nullopt,
                                        double eps = 1e-5, std::string_view activation = "identity");

// Whether this build of the library carries the CUDA kernels.
GROUPNORM_EXT_API bool built_with_cuda();

// Which vectorized clone of the CPU loops runs on this CPU: "avx512", "avx2" or "baseline".
GROUPNORM_EXT_API const char* cpu_capability();

// Unmaps the CPU output buffers (128 KiB and up) the library keeps for reuse by later calls
// of the same size (at most 1 GiB and 256 buffers; GROUPNORM_EXT_OUTPUT_POOL=0 keeps none), as
// torch.cuda.empty_cache does for the GPU. Returns the bytes released.
GROUPNORM_EXT_API int64_t empty_cache();

}  // namespace groupnorm_ext

#ifndef GROUPNORM_EXT_BUILDING_LIBRARY
// A program that only runs TorchScript models never calls into the library, and a linker
// that drops unreferenced shared libraries (--as-needed, the default on many distributions)
// would then leave it out, ops unregistered. This weak reference, emitted by every
// translation unit that includes the header, keeps it in (torchvision's vision.h does the same).
extern "C" {
__attribute__((weak)) bool (*groupnorm_ext_keep_library_linked)() = &groupnorm_ext::built_with_cuda;
}
#endif
