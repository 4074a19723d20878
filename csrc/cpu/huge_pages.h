// Transparent huge pages for the large tensors the CPU executors write into fresh. With the
// output pool on (output_pool.h, the default) large outputs are already huge-page mappings
// and this call changes nothing; it matters with GROUPNORM_EXT_OUTPUT_POOL=0.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include <ATen/core/Tensor.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace groupnorm_ext {
namespace cpu {

// A freshly allocated output of 32 MiB and up comes from the system allocator as untouched
// pages: the first write to each 4 KiB page faults into the kernel, which zeroes it. For
// tensors of tens of MB that costs more than the kernel's own work (a 67 MB output, measured
// on one core: ~28 ms of faults against ~12 ms to write it). Asking for transparent huge pages
// on the buffer's 2 MiB-aligned interior before the first write takes 1/512 of the faults
// (PyTorch does the same for its own allocations under THP_MEM_ALLOC_ENABLE=1). Advisory
// only: errors are ignored, and it changes nothing where THP is off or the memory was touched.
// The first few calls of a process can be slower while the kernel finds free 2 MiB blocks (in a
// VM, fresh guest memory the host has not backed yet: ~150 ms per 67 MB output for the first
// ~5 calls, measured on this project's 2-core Firecracker machines, then 12-20 ms against
// 20-25 ms without). GROUPNORM_EXT_HUGE_PAGES=0 turns it off.
// GROUPNORM_EXT_HUGE_PAGES=0 turns huge pages off, here and in the output pool.
inline bool huge_pages_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("GROUPNORM_EXT_HUGE_PAGES");
    return env == nullptr || std::string_view(env) != "0";
  }();
  return enabled;
}

inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const bool enabled = huge_pages_enabled();
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  // Below 32 MiB (glibc's largest mmap threshold) freed buffers go back to malloc's heap and
  // the next call reuses them without faults; at and above it every buffer is a fresh mmap.
  constexpr size_t kMinBytes = size_t(32) << 20;
  if (!enabled || !t.defined() || t.nbytes() < kMinBytes) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (begin + t.nbytes()) & ~(kHuge - 1);
  if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), static_cast<size_t>(hi - lo), MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

}  // namespace cpu
}  // namespace groupnorm_ext
