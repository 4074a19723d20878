// The output pool (output_pool.h): a c10::Allocator whose buffers are anonymous mappings
// (2 MiB-aligned from 2 MiB, transparent huge pages from 32 MiB), kept on free (within
// bounds) for a later request of about the same size.
#include "output_pool.h"

#include <cstdlib>
#include <mutex>
#include <new>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>

#include "huge_pages.h"

#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace groupnorm_ext {
namespace cpu {
namespace {

#if defined(__linux__) && defined(MADV_HUGEPAGE)
#define GN_OUTPUT_POOL 1

constexpr size_t kUnit = size_t(2) << 20;  // mapping granularity and alignment: one huge page
// Below one huge page, mappings come in 64 KiB steps at page alignment (rounding a 200 KiB
// output up to 2 MiB would waste most of it).
constexpr size_t kSmallUnit = size_t(64) << 10;
constexpr size_t kMaxCachedBuffer = size_t(256) << 20;
constexpr size_t kMaxCachedBytes = size_t(1) << 30;
// ... and at most this many cached buffers (each allocation scans the list): a network's
// normalization layers, forward and backward, with room to spare.
constexpr size_t kMaxCachedBuffers = 256;

// The mapping size for a request: whole huge pages from 2 MiB, 64 KiB steps below.
size_t mapping_bytes(size_t nbytes) {
  const size_t unit = nbytes >= kUnit ? kUnit : kSmallUnit;
  return (nbytes + unit - 1) / unit * unit;
}
constexpr size_t kHugePageAdviceMinBytes = size_t(32) << 20;

bool pool_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("GROUPNORM_EXT_OUTPUT_POOL");
    return env == nullptr || std::string_view(env) != "0";
  }();
  return enabled;
}

struct Mapping {
  void* ptr;
  size_t bytes;  // mapping_bytes() of a request: whole 2 MiB units, or 64 KiB units below 2 MiB
};

// A cached mapping serves a request of `bytes` when it is at least that large and at most a
// quarter larger: shapes that vary a little still reuse memory, and no small request pins a
// much larger buffer.
bool fits(size_t have, size_t need) { return have >= need && have - need <= need / 4; }

class OutputPool final : public c10::Allocator {
 public:
  OutputPool() { pthread_atfork(nullptr, nullptr, &OutputPool::after_fork_in_child); }

  c10::DataPtr allocate(size_t nbytes) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (nbytes == 0) return {nullptr, nullptr, &free_ptr, cpu};
    const size_t bytes = mapping_bytes(nbytes);
    Mapping m = take_cached(bytes);
    if (m.ptr == nullptr) {
      m = {map(bytes), bytes};
      if (m.ptr == nullptr) {  // out of address space or memory: give back the cache, once
        release_all();
        m.ptr = map(bytes);
      }
      TORCH_CHECK_WITH(OutOfMemoryError, m.ptr != nullptr, "groupnorm_ext: could not map ", bytes,
                       " bytes for an output tensor");
    }
    {
      std::lock_guard<std::mutex> lock(*mutex_);
      live_->emplace(m.ptr, m.bytes);
    }
    return {m.ptr, m.ptr, &free_ptr, cpu};  // context == data: a simple data pointer
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  int64_t release_all() {
    std::vector<Mapping> dropped;
    {
      std::lock_guard<std::mutex> lock(*mutex_);
      dropped.swap(*cached_);
      cached_bytes_ = 0;
    }
    int64_t released = 0;
    for (const Mapping& m : dropped) {
      released += static_cast<int64_t>(m.bytes);
      munmap(m.ptr, m.bytes);
    }
    return released;
  }

  int64_t cached_bytes() {
    std::lock_guard<std::mutex> lock(*mutex_);
    return static_cast<int64_t>(cached_bytes_);
  }

  static OutputPool& get() {
    static OutputPool* instance = new OutputPool();  // never destroyed: frees may come at exit
    return *instance;
  }

 private:
  // The smallest cached mapping that fits (the most recently freed among equals), or {}.
  Mapping take_cached(size_t bytes) {
    std::lock_guard<std::mutex> lock(*mutex_);
    size_t best = cached_->size();
    for (size_t i = cached_->size(); i-- > 0;) {
      const size_t have = (*cached_)[i].bytes;
      if (fits(have, bytes) && (best == cached_->size() || have < (*cached_)[best].bytes)) best = i;
    }
    if (best == cached_->size()) return {nullptr, 0};
    const Mapping m = (*cached_)[best];
    cached_->erase(cached_->begin() + static_cast<std::ptrdiff_t>(best));
    cached_bytes_ -= m.bytes;
    return m;
  }

  // `bytes` at a kUnit-aligned address (mapped one unit larger, both ends trimmed), so that
  // every 2 MiB of it can be a huge page; below kUnit, where no huge page fits, wherever mmap
  // puts it. Null on failure.
  static void* map(size_t bytes) {
    if (bytes < kUnit) {
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      return p == MAP_FAILED ? nullptr : p;
    }
    const size_t span = bytes + kUnit;
    void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = (start + kUnit - 1) & ~(uintptr_t(kUnit) - 1);
    if (aligned > start) munmap(raw, aligned - start);
    const size_t tail = span - (aligned - start) - bytes;
    if (tail > 0) munmap(reinterpret_cast<void*>(aligned + bytes), tail);
    // Huge pages only from 32 MiB: a huge-page fault may compact memory first, which in a VM
    // stalled the first calls of a process for ~150 ms; below that the 4 KiB faults of a
    // buffer's first use cost less, and reuse skips them anyway.
    if (bytes >= kHugePageAdviceMinBytes && huge_pages_enabled()) {
      (void)madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);
    }
    return reinterpret_cast<void*>(aligned);
  }

  // The deleter of every DataPtr above. Keeps the mapping when it is small enough, evicting the
  // oldest beyond kMaxCachedBytes; unmaps outside the lock (munmap can take a while). Never
  // throws: a failure to grow the cache's list unmaps instead.
  static void free_ptr(void* ptr) {
    if (ptr == nullptr) return;
    OutputPool& pool = get();
    std::vector<Mapping> evicted;
    Mapping m{ptr, 0};
    {
      std::lock_guard<std::mutex> lock(*pool.mutex_);
      const auto it = pool.live_->find(ptr);
      if (it == pool.live_->end()) return;  // mapped before a fork(): the child leaves it be
      m.bytes = it->second;
      pool.live_->erase(it);
      if (m.bytes <= kMaxCachedBuffer) {
        try {
          pool.cached_->push_back(m);
          pool.cached_bytes_ += m.bytes;
          m.ptr = nullptr;
          size_t drop = 0;
          while (pool.cached_bytes_ > kMaxCachedBytes || pool.cached_->size() - drop > kMaxCachedBuffers) {
            pool.cached_bytes_ -= (*pool.cached_)[drop].bytes;
            evicted.push_back((*pool.cached_)[drop++]);
          }
          pool.cached_->erase(pool.cached_->begin(), pool.cached_->begin() + static_cast<std::ptrdiff_t>(drop));
        } catch (...) {  // bad_alloc of a list: nothing is lost by unmapping instead
        }
      }
    }
    if (m.ptr != nullptr) munmap(m.ptr, m.bytes);
    for (const Mapping& e : evicted) munmap(e.ptr, e.bytes);
  }

  // fork() copies the pool as it was, possibly mid-update by another thread with the lock held:
  // the child starts over with a fresh lock and empty lists (the parent's cached mappings stay
  // mapped in the child, unused; tensors it inherited are never unmapped there).
  static void after_fork_in_child() {
    OutputPool& pool = get();
    pool.mutex_ = new std::mutex();
    pool.cached_ = new std::vector<Mapping>();
    pool.live_ = new std::unordered_map<void*, size_t>();
    pool.cached_bytes_ = 0;
  }

  // Heap-allocated and never freed, so that after_fork_in_child can replace them without
  // touching a possibly inconsistent copy.
  std::mutex* mutex_ = new std::mutex();
  std::vector<Mapping>* cached_ = new std::vector<Mapping>();  // oldest first
  std::unordered_map<void*, size_t>* live_ = new std::unordered_map<void*, size_t>();
  size_t cached_bytes_ = 0;
};

#endif

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, at::IntArrayRef strides, at::ScalarType dtype) {
#ifdef GN_OUTPUT_POOL
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  if (pool_enabled() && numel * static_cast<int64_t>(c10::elementSize(dtype)) >= kPooledOutputMinBytes) {
    return at::detail::empty_strided_generic(sizes, strides, &OutputPool::get(),
                                             c10::DispatchKeySet(c10::DispatchKey::CPU), dtype);
  }
#endif
  return at::empty_strided(sizes, strides, at::TensorOptions().dtype(dtype).device(at::kCPU));
}

int64_t release_cached_outputs() {
#ifdef GN_OUTPUT_POOL
  return OutputPool::get().release_all();
#else
  return 0;
#endif
}

int64_t cached_output_bytes() {
#ifdef GN_OUTPUT_POOL
  return OutputPool::get().cached_bytes();
#else
  return 0;
#endif
}

}  // namespace cpu
}  // namespace groupnorm_ext
