// The output pool (output_pool.h): a c10::Allocator whose buffers are 2 MiB-aligned anonymous
// mappings (transparent huge pages from 32 MiB), kept on free (within bounds) for the next
// request of the same size.
#include "output_pool.h"

#include <cstdlib>
#include <mutex>
#include <new>
#include <string_view>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace groupnorm_ext {
namespace cpu {
namespace {

#if defined(__linux__) && defined(MADV_HUGEPAGE)

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kMaxCachedBuffer = size_t(256) << 20;
constexpr size_t kMaxCachedBytes = size_t(1) << 30;
constexpr size_t kHugePageAdviceMinBytes = size_t(32) << 20;

bool pool_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("GROUPNORM_EXT_OUTPUT_POOL");
    return env == nullptr || std::string_view(env) != "0";
  }();
  return enabled;
}

// One mapping: `bytes` (a multiple of 2 MiB) at a 2 MiB-aligned address.
struct Block {
  void* ptr;
  size_t bytes;
};

class OutputPool final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override {
    if (nbytes == 0) return {nullptr, nullptr, &free_block, c10::Device(c10::DeviceType::CPU)};
    const size_t bytes = (nbytes + kHugePage - 1) / kHugePage * kHugePage;
    Block* block = take_cached(bytes);
    if (block == nullptr) block = new Block{map(bytes), bytes};
    return {block->ptr, block, &free_block, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  int64_t release_all() {
    std::vector<Block*> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      dropped.swap(cached_);
      cached_bytes_ = 0;
    }
    int64_t released = 0;
    for (Block* b : dropped) {
      released += static_cast<int64_t>(b->bytes);
      unmap(b);
    }
    return released;
  }

  int64_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(cached_bytes_);
  }

 private:
  // The most recently freed buffer of exactly `bytes`, or null.
  Block* take_cached(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = cached_.size(); i-- > 0;) {
      if (cached_[i]->bytes == bytes) {
        Block* b = cached_[i];
        cached_.erase(cached_.begin() + static_cast<std::ptrdiff_t>(i));
        cached_bytes_ -= bytes;
        return b;
      }
    }
    return nullptr;
  }

  static void* map(size_t bytes) {
    // Over-map by one huge page and trim both ends, so that the buffer starts on a 2 MiB
    // boundary and every page of it can be a huge page.
    const size_t span = bytes + kHugePage;
    void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK_WITH(OutOfMemoryError, raw != MAP_FAILED, "groupnorm_ext: could not map ", bytes,
                     " bytes for an output tensor");
    const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = (start + kHugePage - 1) & ~(uintptr_t(kHugePage) - 1);
    if (aligned > start) munmap(raw, aligned - start);
    const size_t tail = span - (aligned - start) - bytes;
    if (tail > 0) munmap(reinterpret_cast<void*>(aligned + bytes), tail);
    // Huge pages only from 32 MiB: a huge-page fault may compact memory first, which in a VM
    // stalled the first calls of a process for ~150 ms; below that the 4 KiB faults of a
    // buffer's first use cost less, and reuse skips them anyway.
    if (bytes >= kHugePageAdviceMinBytes) (void)madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);
    return reinterpret_cast<void*>(aligned);
  }

  static void unmap(Block* b) {
    munmap(b->ptr, b->bytes);
    delete b;
  }

  static void free_block(void* ctx);

  std::mutex mutex_;
  std::vector<Block*> cached_;  // oldest first
  size_t cached_bytes_ = 0;

  friend void keep_or_unmap(Block* b);
};

// Never destroyed: tensors may be freed during or after static destruction at exit.
OutputPool& pool() {
  static OutputPool* instance = new OutputPool();
  return *instance;
}

void keep_or_unmap(Block* b) {
  OutputPool& p = pool();
  std::vector<Block*> evicted;
  if (b->bytes <= kMaxCachedBuffer) {
    std::lock_guard<std::mutex> lock(p.mutex_);
    p.cached_.push_back(b);
    p.cached_bytes_ += b->bytes;
    b = nullptr;
    size_t drop = 0;
    while (p.cached_bytes_ > kMaxCachedBytes && drop < p.cached_.size()) {
      p.cached_bytes_ -= p.cached_[drop]->bytes;
      evicted.push_back(p.cached_[drop++]);
    }
    p.cached_.erase(p.cached_.begin(), p.cached_.begin() + static_cast<std::ptrdiff_t>(drop));
  }
  if (b != nullptr) evicted.push_back(b);
  for (Block* e : evicted) OutputPool::unmap(e);  // outside the lock: munmap can be slow
}

void OutputPool::free_block(void* ctx) {
  if (ctx != nullptr) keep_or_unmap(static_cast<Block*>(ctx));
}

#else  // no mmap / transparent huge pages: plain at::empty, nothing cached

bool pool_enabled() { return false; }

#endif

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const int64_t nbytes = numel * static_cast<int64_t>(c10::elementSize(dtype));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (pool_enabled() && nbytes >= kPooledOutputMinBytes) {
    return at::detail::empty_generic(sizes, &pool(), c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                     c10::MemoryFormat::Contiguous);
  }
#else
  (void)nbytes;
#endif
  return at::empty(sizes, at::TensorOptions().dtype(dtype).device(at::kCPU));
}

int64_t release_cached_outputs() {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  return pool().release_all();
#else
  return 0;
#endif
}

int64_t cached_output_bytes() {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  return pool().cached_bytes();
#else
  return 0;
#endif
}

}  // namespace cpu
}  // namespace groupnorm_ext
