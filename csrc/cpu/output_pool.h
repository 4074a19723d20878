// Large CPU outputs (the forward's y, the backward's grad_input) from a small cache of
// huge-page mappings, so that a repeated call does not pay the kernel for fresh pages.
//
// Why: glibc serves every allocation of 32 MiB and more with a fresh mmap and unmaps it on
// free, so each call's output arrives as untouched pages that the kernel must fault in and
// zero before the first write. For the volumes of the benchmark (67-134 MB outputs) that
// zeroing took as long as the whole normalization (perf, 2-core Xeon VM: clear_page 22% of
// a forward + backward loop, our loops 27%), for torch and us alike. A training loop calls
// the same layers with the same shapes every step, so a freed output can serve the next
// call of the same size, as the CUDA caching allocator does on the GPU.
//
// Bounds: a buffer is kept only when it is at most kMaxCachedBuffer bytes and the cache stays
// within kMaxCachedBytes (oldest unmapped first); nothing below 32 MiB goes through it (glibc's
// heap already reuses those). GROUPNORM_EXT_OUTPUT_POOL=0 turns the cache off (outputs then come
// from at::empty, with huge pages advised as before); groupnorm_ext.empty_cache() unmaps every
// cached buffer.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace groupnorm_ext {
namespace cpu {

// Outputs at least this large come from the pool (and get huge pages, see huge_pages.h).
constexpr int64_t kPooledOutputMinBytes = int64_t(32) << 20;

// An uninitialized contiguous CPU tensor of `sizes` and `dtype`: from the pool when its bytes
// reach kPooledOutputMinBytes and the pool is on, else at::empty.
at::Tensor empty_output(at::IntArrayRef sizes, at::ScalarType dtype);

// Unmaps every cached buffer; returns how many bytes that released.
int64_t release_cached_outputs();

// Bytes held by cached (free) buffers.
int64_t cached_output_bytes();

}  // namespace cpu
}  // namespace groupnorm_ext
