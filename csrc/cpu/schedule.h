// Scheduling choices shared by the CPU forward and backward. They pick between
// schedules that give bitwise-identical results, so they only ever affect speed.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>

#include <ATen/Parallel.h>

namespace groupnorm_ext {
namespace cpu {

// Bytes of a slab that one thread can re-read from cache: its L2, or its share of a
// shared last-level cache (half of it, leaving room for the other threads' streams).
inline int64_t fuse_budget_bytes() {
  int64_t l2 = 0, l3 = 0;
#if defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL3_CACHE_SIZE)
  static const int64_t l2_bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
  static const int64_t l3_bytes = sysconf(_SC_LEVEL3_CACHE_SIZE);
  l2 = l2_bytes;
  l3 = l3_bytes;
#endif
  if (l2 <= 0) l2 = 1 << 20;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  return std::max<int64_t>(l2, l3 > 0 ? l3 / (2 * threads) : 0);
}

// Whether `tasks` equal tasks keep every thread busy (few idle thread-slots at the end).
inline bool balances_threads(int64_t tasks) {
  const int64_t threads = at::get_num_threads();
  return tasks >= threads && (tasks % threads == 0 || tasks >= 4 * threads);
}

}  // namespace cpu
}  // namespace groupnorm_ext
