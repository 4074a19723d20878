// Scheduling choices shared by the CPU forward and backward. They pick between
// schedules that give bitwise-identical results, so they only ever affect speed.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <string_view>

#include <ATen/Parallel.h>

namespace groupnorm_ext {
namespace cpu {

// The data (or unified) cache of `level` that CPU 0 sits behind, as Linux's sysfs describes it
// (/sys/devices/system/cpu/cpu0/cache/index*/: level, type, size such as "32768K"); 0 where
// absent. That is the cache domain the cores share: glibc's sysconf reports an AMD EPYC's L3
// as the whole package's (384 MiB on a 12-CCD part) where a core reaches only its CCD's 32 MiB.
inline int64_t sysfs_cache_bytes(int level) {
  for (int index = 0; index < 16; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    std::ifstream level_file(dir + "level"), type_file(dir + "type"), size_file(dir + "size");
    int cache_level = 0;
    std::string type, size;
    if (!(level_file >> cache_level)) break;
    if (cache_level != level || !(type_file >> type) || type == "Instruction" || !(size_file >> size)) continue;
    int64_t value = 0;
    size_t i = 0;
    for (; i < size.size() && size[i] >= '0' && size[i] <= '9'; ++i) value = value * 10 + (size[i] - '0');
    const char unit = i < size.size() ? size[i] : 'B';
    return unit == 'K' ? value << 10 : unit == 'M' ? value << 20 : unit == 'G' ? value << 30 : value;
  }
  return 0;
}

// A 0 / 1 environment switch that overrides a heuristic below: 0 or 1, or -1 when unset or
// anything else (callers read it once).
inline int env_switch(const char* name) {
  const char* env = std::getenv(name);
  if (env == nullptr) return -1;
  const std::string_view v(env);
  return v == "0" ? 0 : v == "1" ? 1 : -1;
}

// Cache sizes as the OS reports them: sysfs, else sysconf (read once by the callers below; 0
// where neither says).
inline int64_t reported_cache_bytes(int level) {
  const int64_t sysfs = sysfs_cache_bytes(level);
  if (sysfs > 0) return sysfs;
#if defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL3_CACHE_SIZE)
  const long bytes = sysconf(level == 2 ? _SC_LEVEL2_CACHE_SIZE : _SC_LEVEL3_CACHE_SIZE);
  return bytes > 0 ? bytes : 0;
#else
  return 0;
#endif
}

// L2 per core; 1 MiB where not reported.
inline int64_t l2_cache_bytes() {
  static const int64_t bytes = reported_cache_bytes(2);
  return bytes > 0 ? bytes : int64_t(1) << 20;
}

// The last-level cache; 0 where not reported (callers say what that means to them).
inline int64_t last_level_cache_bytes() {
  static const int64_t bytes = reported_cache_bytes(3);
  return bytes;
}

// Bytes of a slab that one thread can re-read from cache: its L2, or its share of a
// shared last-level cache (half of it, leaving room for the other threads' streams).
inline int64_t fuse_budget_bytes() {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  return std::max<int64_t>(l2_cache_bytes(), last_level_cache_bytes() / (2 * threads));
}

// Whether an elementwise pass whose input and output together take `footprint_bytes`
// should write its output with streaming stores (loops.h). Plain stores first read every
// destination line into the cache and later write it back; when the pass cannot keep its
// data in the last-level cache anyway, streaming skips that read and leaves the cache to the
// input, which the fused schedules re-read: a 2x32x64^3 float32 forward went from 9.5 to
// 6.3 ms contiguous, 11.6 to 10.3 ms channels_last_3d (2 cores, 260 MiB L3 shared with other
// guests; both modes in one process, torch's calls between them). Below the threshold plain
// stores win, as the output then stays in cache for whatever reads it next. The threshold was
// 1/8 of the last-level cache (32 MiB of x + y there). With nothing but this op and a consumer
// of y running, plain stores stayed ahead up to ~96 MiB; but with other work between calls
// (torch's own group_norm, which writes its output to fresh pages) streaming won at 67 MB,
// op + a consumer reading y: 1x32x512^2 float32 11.1-11.4 -> 9.2-9.5 ms, 1x8x1024^2 float32
// 6.3-7.1 -> 4.5-5.1 ms, 2x32x64^3 bfloat16 8.7 -> 8.2 ms. A network has such other work, and
// its other activations and weights in the cache too; the medium activations of the
// benchmark (x + y <= 21 MB) keep plain stores.
// On an AMD EPYC guest (2 cores of a CCD, 32 MiB L3 shared with other guests), 1/8 of the L3
// was far too early: 2x320x64x64 float32 channels_last (x + y = 21 MB) took 0.29 ms with plain
// stores and 0.37 ms streamed, while 4x320x64x64 (42 MB) took 0.90 ms plain and 0.75 ms
// streamed. Both machines agree on the threshold below: x + y past the last-level cache of
// the cores' domain, and at most kStreamingFootprintCap (the Xeon's 1/8: other guests and
// other work fill the rest of a large shared L3).
// The forward passes x's bytes alone, streaming only once x itself is past that cache: in the
// benchmark, where ours and torch alternate call by call, streaming y with x + y past the cache but
// x within it left 9-11 of 16 float32 forwards between 16 and 32 MB under torch's speed
// (2x128x128x128, 2x640x64x64, 4x320x64x64, 8x128x64x64 channels_last 0.73-0.85x), plain stores
// 1-2 (0.98-0.99x): torch's plain stores leave its y dirty in the cache for our call to write
// back, ours streamed left a clean cache to torch's; and plain stores keep part of y in the cache
// for its consumer. The backward passes x + dy + dx, doubled for the float32 channels-last rows
// that stream from registers (group_norm_backward.cpp, stream_grad_input).
// GROUPNORM_EXT_STREAMING_STORES=0 never streams, =1 always does (read once).
inline constexpr int64_t kStreamingFootprintCap = int64_t(32) << 20;
// The cache the thresholds here measure against: the last-level cache of the cores' domain, at
// most kStreamingFootprintCap.
inline int64_t usable_cache_bytes() {
  const int64_t llc = last_level_cache_bytes();
  return llc > 0 ? std::min(llc, kStreamingFootprintCap) : kStreamingFootprintCap;
}
inline bool streaming_stores_pay(int64_t footprint_bytes) {
  static const int mode = env_switch("GROUPNORM_EXT_STREAMING_STORES");
  if (mode >= 0) return mode == 1;
  return footprint_bytes >= usable_cache_bytes();
}

// Whether an elementwise pass (the normalization, grad_input) over `bytes` of input should
// prefetch its rows in software (simd.h, for_prefetched_steps: input and output ahead): when
// they are well beyond what the threads' L2 caches hold, so that they come from the far slices of
// the last-level cache or from memory (2x320x64x64 float32 channels_last forward, x just written
// by another op: 0.35 -> 0.28 ms); on a few MB already near it cost up to 7%.
// GROUPNORM_EXT_CPU_PREFETCH=0 / 1 forces it, and sums_prefetch_pays, off / on (read once; for
// measurements and tests).
inline bool software_prefetch_pays(int64_t bytes) {
  static const int mode = env_switch("GROUPNORM_EXT_CPU_PREFETCH");
  if (mode >= 0) return mode == 1;
  return bytes >= 4 * l2_cache_bytes() * std::max<int64_t>(1, at::get_num_threads());
}

// Whether the forward's channels-last statistics (row loops, simd.h prefetch_block_ahead) should
// prefetch the `bytes` they read: only when those come from memory, past 3/4 of the last-level cache of the cores' domain (capped as in
// streaming_stores_pay). From memory the four-row loops ran 1.4-2x faster with it (2x32x64^3
// float32 channels_last_3d forward, 67 MB: 9.5-11.8 -> 5.4-6.3 ms; 1x32x512x512 G = 1, 32 MiB:
// 1.86 -> 1.76 ms); from the last-level cache it made them 15-25% slower (statistics of
// 4x640x32x32 and 2x320x64x64 float32, 10 MB: 0.083 -> 0.107 and 0.072 -> 0.087 ms; whole
// forward of 2x640x64x64, 21 MB: 0.72 -> 0.78 ms). The backward's gradient sums, which read x
// and dy, kept software_prefetch_pays on one tensor's bytes: the sums of 2x320x64x64 (10 MB a
// tensor, split schedule) ran 5% faster with it.
inline bool sums_prefetch_pays(int64_t bytes) {
  static const int mode = env_switch("GROUPNORM_EXT_CPU_PREFETCH");
  if (mode >= 0) return mode == 1;
  return bytes >= usable_cache_bytes() / 4 * 3;
}

// Whether `tasks` equal tasks keep every thread busy (few idle thread-slots at the end).
inline bool balances_threads(int64_t tasks) {
  const int64_t threads = at::get_num_threads();
  return tasks >= threads && (tasks % threads == 0 || tasks >= 4 * threads);
}

// Channels-last strips (Forward::run_strips, Backward::run_strips): at least kMinStripBytes of
// each row, so that the hardware prefetchers see long runs of whole lines (strips of 120 bytes
// ran 2x slower than whole rows, of 256 bytes 1.3x), and a multiple of kStripChannelMultiple
// channels: no channel of a strip falls in a vector loop's tail where it did not in the whole
// rows.
constexpr int64_t kMinStripBytes = 1024;
constexpr int64_t kStripChannelMultiple = 16;

// The strips a channels-last sample (S rows of C channels in G groups, `tensors` tensors of
// `elem_bytes` elements read: x, or x and dy) is cut into for the strip schedules: the fewest,
// a power of two dividing G, that give the threads equal work over the N samples with each
// strip's data within `budget_bytes` (the forward: L2; the backward: see Backward::run); strips
// of whole groups, of at least kMinStripBytes a row and a multiple of kStripChannelMultiple
// channels. 1 (no strips) where none qualifies: there the split schedule was as fast or faster
// (2 cores, float32 forward: strips of 256-byte row pieces 1.3x slower on 1x128x64x64, strips of
// 1.3-2.6 MB 1.2x slower on 1x640x32x32 and 1x1280x32x32).
inline int64_t channel_strips(int64_t N, int64_t C, int64_t G, int64_t S, int64_t elem_bytes, int64_t tensors,
                              int64_t budget_bytes) {
  for (int64_t strips = 2; strips <= G && G % strips == 0; strips *= 2) {
    const int64_t width = C / strips;
    if (width * elem_bytes < kMinStripBytes || width % kStripChannelMultiple != 0) break;
    if (balances_threads(N * strips) && tensors * S * width * elem_bytes <= budget_bytes) return strips;
  }
  return 1;
}

// Elements a parallel task should hold at least: below that, waking threads costs more
// than the work (tiny tensors then run inline on the calling thread).
constexpr int64_t kMinTaskElems = 16384;

// parallel_for grain for tasks of `elems_per_task` elements each.
inline int64_t grain_for(int64_t elems_per_task) {
  return std::max<int64_t>(1, kMinTaskElems / std::max<int64_t>(1, elems_per_task));
}

// Visits [begin, end) in consecutive blocks of `block`, first to last: f(lo, hi). The
// elementwise passes once walked their blocks last first, to start with what the reduction
// pass before them had read last (still in L2 or the last-level cache). On this project's AMD
// EPYC machines each jump back to an earlier block restarted the hardware prefetchers'
// streams, and that cost more than the cache hits gained: walking forward was as fast or
// faster in every case measured, with the input just written by another op as in a network
// (2 cores): forward 2x320x64x64 float32 channels_last 0.42 -> 0.35 ms, 1x32x512x512 G=1
// 2.0 -> 1.75 ms, 2x32x64^3 channels_last_3d 4.6 -> 4.4 ms; forward + backward 1x32x512x512
// G=1 3.0 -> 2.8 ms, the others within 2%. Walking back in 1 or 4 MiB blocks instead of 128 KiB
// recovered most of the difference: the jumps, not the order, were the cost.
template <typename F>
void for_blocks(int64_t begin, int64_t end, int64_t block, const F& f) {
  for (int64_t lo = begin; lo < end; lo += block) f(lo, std::min(end, lo + block));
}

// Splits elements [i0, i1) of rows of length S into a partial first row, whole rows and a
// partial last row: part(row, i, len) for the pieces of rows, whole(row, i, rows) for the
// whole rows in one call (a call per short row costs more than the row).
template <typename Part, typename Whole>
void for_row_pieces(int64_t i0, int64_t i1, int64_t S, const Part& part, const Whole& whole) {
  int64_t row = i0 / S, i = i0;
  if (const int64_t s = i0 - row * S; s > 0) {  // the end of a row
    const int64_t len = std::min(S - s, i1 - i0);
    part(row, i, len);
    i += len;
    ++row;
  }
  if (const int64_t rows = (i1 - i) / S; rows > 0) {
    whole(row, i, rows);
    i += rows * S;
    row += rows;
  }
  if (i < i1) part(row, i, i1 - i);  // the start of a row
}

// Splits rows [r0, r1) of an (N, S) row space at sample boundaries: f(n, s0, s1).
template <typename F>
void for_sample_rows(int64_t r0, int64_t r1, int64_t S, const F& f) {
  while (r0 < r1) {
    const int64_t n = r0 / S, s0 = r0 % S, s1 = std::min(S, s0 + (r1 - r0));
    f(n, s0, s1);
    r0 += s1 - s0;
  }
}

}  // namespace cpu
}  // namespace groupnorm_ext
