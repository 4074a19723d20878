// The library's public C++ API (groupnorm_ext/include/groupnorm_ext/groupnorm_ext.h).
#define GROUPNORM_EXT_BUILDING_LIBRARY
#include "groupnorm_ext/groupnorm_ext.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include "cpu/loops.h"
#include "cpu/output_pool.h"
#include "group_norm.h"

namespace groupnorm_ext {

Tensor group_norm(const Tensor& input, int64_t num_groups, const OptionalTensor& weight,
                  const OptionalTensor& bias, double eps, std::string_view activation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("groupnorm_ext::group_norm", "")
                       .typed<Tensor(const Tensor&, int64_t, const OptionalTensor&,
                                     const OptionalTensor&, double, std::string_view)>();
  return op.call(input, num_groups, weight, bias, eps, activation);
}

bool built_with_cuda() {
#ifdef GROUPNORM_EXT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

const char* cpu_capability() { return cpu::loops_isa(); }

int64_t empty_cache() { return cpu::release_cached_outputs(); }

// Not in the public header: for the tests (bound in the Python module).
GROUPNORM_EXT_API int64_t cached_output_bytes() { return cpu::cached_output_bytes(); }

}  // namespace groupnorm_ext
