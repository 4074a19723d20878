// CPU outputs of 128 KiB and up (the forward's y, the backward's grad_input) from a small cache
// of anonymous mappings, so that a repeated call does not pay the kernel for fresh pages.
//
// Why: glibc serves every allocation of 32 MiB and more with a fresh mmap and unmaps it on
// free, so each call's output arrives as untouched pages that the kernel must fault in and
// zero before the first write. For the volumes of the benchmark (67-134 MB outputs) that
// zeroing took as long as the whole normalization (perf, 2-core Xeon VM: clear_page 22% of
// a forward + backward loop, our loops 27%), for torch and us alike. Smaller buffers come
// from glibc's heap, which usually reuses them, but when a call pattern leaves them at the
// top of the heap glibc trims it on free and the next call faults the same megabytes in
// again (measured on 2 MiB tensors: a forward + backward loop took ~500 page faults a call
// for one implementation and none for the other, and calling the ops directly swapped the
// two; on 1.3 MB tensors, 4x1280x8x8 float32, ours took 44 a call, 387 against torch's 353 us,
// until they were pooled too). glibc maps requests from 128 KiB (its initial mmap threshold)
// and trims its heap's top, so outputs from that size can come back as fresh pages. A training
// loop calls the same layers with the same shapes every step, so a freed output can serve the
// next call of the same size, as the CUDA caching allocator does.
//
// Bounds: outputs of kPooledOutputMinBytes (128 KiB) and up use it, in whole 2 MiB units
// (2 MiB-aligned) from 2 MiB, in 64 KiB units below; a cached buffer serves a request it
// exceeds by at most a quarter; a freed buffer is kept only when it is at most 256 MiB and
// the cache stays within 1 GiB and 256 buffers (oldest unmapped first); when a mapping fails
// the cache is released and the mapping tried again.
// GROUPNORM_EXT_OUTPUT_POOL=0 turns it off (outputs then come from at::empty, huge pages
// advised from 32 MiB as before); GROUPNORM_EXT_HUGE_PAGES=0 keeps the pool on 4 KiB pages;
// groupnorm_ext.empty_cache() unmaps every cached buffer. Pooled tensors behave as at::empty's
// (simple data pointers, resizable storage); a forked child leaves the parent's buffers be.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace groupnorm_ext {
namespace cpu {

// Outputs at least this large come from the pool (in 2 MiB units from 2 MiB, 64 KiB units
// below; huge pages from 32 MiB).
constexpr int64_t kPooledOutputMinBytes = int64_t(128) << 10;

// An uninitialized CPU tensor of `sizes`, dense `strides` (a permutation of a contiguous
// layout) and `dtype`: from the pool when its bytes reach kPooledOutputMinBytes and the pool
// is on, else at::empty_strided.
at::Tensor empty_output(at::IntArrayRef sizes, at::IntArrayRef strides, at::ScalarType dtype);

// Unmaps every cached buffer; returns how many bytes that released.
int64_t release_cached_outputs();

// Bytes held by cached (free) buffers.
int64_t cached_output_bytes();

}  // namespace cpu
}  // namespace groupnorm_ext
