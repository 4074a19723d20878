// Micro-benchmark of the CUDA forward apply pass (y = x * scale[n, c] + shift[n, c]) against a
// device-to-device copy, for choosing the tiled elementwise kernel's launch shape and cache
// hints on a GPU without rebuilding the extension. Standalone (CUDA runtime only, plan.h for the
// channel arithmetic), built on a machine without a GPU and run where one is lent:
//   nvcc -O3 -std=c++17 -arch=sm_90 -o elementwise_variants elementwise_variants.cu
//   ./elementwise_variants [reps] [quick]
// The kernel mirrors csrc/cuda/tiled_elementwise.cuh (tiles of THREADS * VEC * UNROLL elements,
// UNROLL 16-byte loads in flight per thread, a grid-stride walk over the tiles, one 64-bit
// division per tile) with these knobs:
//   UNROLL, THREADS        compile time
//   HINT                   0 plain loads/stores, 1 __ldcs/__stcs (evict-first both), 2 plain
//                          loads and __stcs stores, 3 __ldlu loads (last use) and __stcs stores
//   grid                   blocks per SM (8 = the extension's), resident blocks per SM from the
//                          occupancy API (one wave) or one tile per block (no grid-stride loop)
//   direction              tiles from the end (the extension's default) or from the start
// Before each timed apply a read-only pass over x (the statistics pass's stand-in) leaves L2 as
// the real forward finds it. Times are medians of CUDA-event intervals; bandwidth counts bytes
// read + written, as the copy's does. Each variant's output is checked against the first's.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../../csrc/plan.h"
#include "micro.cuh"

using groupnorm_ext::GroupNormShape;
using groupnorm_ext::MemoryOrder;
using groupnorm_ext::TileChannels;


template <typename T, int N>
struct alignas(16) Vec {
  T v[N];
};

template <int HINT, typename V>
__device__ __forceinline__ V load16(const V* p) {
  if constexpr (HINT == 1) {
    float4 f = __ldcs(reinterpret_cast<const float4*>(p));
    return *reinterpret_cast<V*>(&f);
  } else if constexpr (HINT == 3) {
    float4 f = __ldlu(reinterpret_cast<const float4*>(p));
    return *reinterpret_cast<V*>(&f);
  } else {
    return *p;
  }
}

template <int HINT, typename V>
__device__ __forceinline__ void store16(V* p, const V& v) {
  if constexpr (HINT != 0) {
    __stcs(reinterpret_cast<float4*>(p), *reinterpret_cast<const float4*>(&v));
  } else {
    *p = v;
  }
}

struct Args {
  const void* x;
  const void* dy;  // the second input of the two-input (grad_input-like) variants
  void* y;
  const float* scale;
  const float* shift;
  int64_t C, sample_len, tiles_per_sample, total_tiles, first_tile, tile_step;
  TileChannels channels;
  bool consecutive;  // NSC with C % VEC == 0
};

// NIN = 1: y = x * scale + shift (the forward apply); NIN = 2: y = x * scale + dy * shift +
// scale * shift (the grad_input pass's shape: two inputs, three per-channel terms).
template <typename T, int UNROLL, int THREADS, int HINT, int NIN>
__global__ void __launch_bounds__(THREADS) apply_kernel(Args a) {
  constexpr int VEC = 16 / sizeof(T);
  using V = Vec<T, VEC>;
  constexpr int64_t kTile = int64_t(THREADS) * VEC * UNROLL;
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  T* y = static_cast<T*>(a.y);
  for (int64_t step = blockIdx.x; step < a.total_tiles; step += gridDim.x) {
    const int64_t tile = a.first_tile + a.tile_step * step;
    const int64_t n = groupnorm_ext::div_nonneg(tile, a.tiles_per_sample);
    const int64_t e0 = (tile - n * a.tiles_per_sample) * kTile;
    const int64_t base = n * a.sample_len + e0;
    int64_t q0, r0;
    a.channels.start(e0, &q0, &r0);
    V v[UNROLL], w[NIN > 1 ? UNROLL : 1];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int64_t l = (int64_t(u) * THREADS + threadIdx.x) * VEC;
      if (e0 + l < a.sample_len) {
        v[u] = load16<HINT>(reinterpret_cast<const V*>(x + base + l));
        if constexpr (NIN > 1) w[u] = load16<HINT>(reinterpret_cast<const V*>(dy + base + l));
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int64_t l = (int64_t(u) * THREADS + threadIdx.x) * VEC;
      if (e0 + l < a.sample_len) {
        const int64_t nc0 = n * a.C + a.channels.channel(q0, r0, l);
        float s[VEC], b[VEC];
        if (!a.consecutive) {
          s[0] = a.scale[nc0];
          b[0] = a.shift[nc0];
#pragma unroll
          for (int j = 1; j < VEC; ++j) s[j] = s[0], b[j] = b[0];
        } else {
#pragma unroll
          for (int j = 0; j < VEC; j += 4) {
            const float4 s4 = *reinterpret_cast<const float4*>(a.scale + nc0 + j);
            const float4 b4 = *reinterpret_cast<const float4*>(a.shift + nc0 + j);
            s[j] = s4.x, s[j + 1] = s4.y, s[j + 2] = s4.z, s[j + 3] = s4.w;
            b[j] = b4.x, b[j + 1] = b4.y, b[j + 2] = b4.z, b[j + 3] = b4.w;
          }
        }
        V o;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          if constexpr (NIN > 1) {
            o.v[j] = static_cast<T>(static_cast<float>(v[u].v[j]) * s[j] +
                                    (static_cast<float>(w[u].v[j]) * b[j] + s[j] * b[j]));
          } else {
            o.v[j] = static_cast<T>(static_cast<float>(v[u].v[j]) * s[j] + b[j]);
          }
        }
        store16<HINT>(reinterpret_cast<V*>(y + base + l), o);
      }
    }
  }
}

// The statistics pass's stand-in: reads x once from the start (sums into one float per block,
// kept so the loads are not dropped).
template <typename T>
__global__ void read_pass(const T* x, int64_t n, float* sink) {
  constexpr int VEC = 16 / sizeof(T);
  float acc = 0.f;
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; i < n; i += int64_t(gridDim.x) * blockDim.x * VEC) {
    const Vec<T, VEC> v = *reinterpret_cast<const Vec<T, VEC>*>(x + i);
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc += static_cast<float>(v.v[j]);
  }
  if (acc == 1234.5f) sink[blockIdx.x] = acc;
}

// Counts the 32-bit words where a and b differ (the bit-for-bit check of each variant's output).
__global__ void count_diff(const uint32_t* a, const uint32_t* b, int64_t n, unsigned long long* diff) {
  unsigned long long d = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    d += a[i] != b[i];
  if (d) atomicAdd(diff, d);
}

template <typename T>
__global__ void to_t(const float* src, T* dst, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = static_cast<T>(src[i]);
}

struct Case {
  const char* name;
  bool bf16;
  bool nsc;
  int64_t N, C, S;
};

static int g_sms = 0;
static int g_reps = 20;
static bool g_all = true;  // every one-input variant, or (argv[2] == "quick") the base alone

struct Bufs {
  void* x;
  void* dy;
  void* y;
  void* ref;  // the first variant's output
  unsigned long long* diff;
  float* scale;
  float* shift;
  float* sink;
  int64_t elems;
  size_t bytes;
};

// Times launch() after a read pass over x; returns the median in ms.
template <typename T, typename F>
float time_after_read(const Bufs& b, F launch, bool read_dy = false) {
  return median_event_ms(g_reps, 2, [&](int) {
    if (read_dy) read_pass<T><<<g_sms * 8, 256>>>(static_cast<const T*>(b.dy), b.elems, b.sink);
    read_pass<T><<<g_sms * 8, 256>>>(static_cast<const T*>(b.x), b.elems, b.sink);
  }, launch);
}

template <typename T, int UNROLL, int THREADS, int HINT, int NIN = 1>
void run_variant(const Case& cs, const Bufs& b, const char* kname, float copy_ms, bool& have_ref) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr int64_t kTile = int64_t(THREADS) * VEC * UNROLL;
  GroupNormShape sh{};
  sh.N = cs.N;
  sh.C = cs.C;
  sh.S = cs.S;
  sh.order = cs.nsc ? MemoryOrder::NSC : MemoryOrder::NCS;
  Args a;
  a.x = b.x;
  a.dy = b.dy;
  a.y = b.y;
  a.scale = b.scale;
  a.shift = b.shift;
  a.C = cs.C;
  a.sample_len = cs.C * cs.S;
  a.tiles_per_sample = groupnorm_ext::tiles_per_sample(sh, kTile);
  a.total_tiles = cs.N * a.tiles_per_sample;
  a.channels = TileChannels(sh, kTile);
  a.consecutive = cs.nsc;
  int resident = 0;
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, apply_kernel<T, UNROLL, THREADS, HINT, NIN>, THREADS, 0));
  struct Grid {
    std::string name;
    int64_t blocks;
  };
  const std::vector<Grid> grids = {
      {"8/SM", int64_t(g_sms) * 8},
      {"wave(" + std::to_string(resident) + "/SM)", int64_t(g_sms) * resident},
      {"tile/block", a.total_tiles},
  };
  for (const Grid& g : grids) {
    for (int reverse = 1; reverse >= 0; --reverse) {
      a.first_tile = reverse ? a.total_tiles - 1 : 0;
      a.tile_step = reverse ? -1 : 1;
      const unsigned blocks = unsigned(std::min<int64_t>(g.blocks, a.total_tiles));
      CHECK(cudaMemset(b.y, 0xff, b.bytes));
      const float ms = time_after_read<T>(b, [&] { apply_kernel<T, UNROLL, THREADS, HINT, NIN><<<blocks, THREADS>>>(a); }, NIN > 1);
      CHECK(cudaDeviceSynchronize());
      bool same = true;
      if (!have_ref) {
        CHECK(cudaMemcpy(b.ref, b.y, b.bytes, cudaMemcpyDeviceToDevice));
        have_ref = true;
      } else {
        unsigned long long diff = 0;
        CHECK(cudaMemset(b.diff, 0, sizeof(diff)));
        count_diff<<<g_sms * 8, 256>>>(static_cast<const uint32_t*>(b.ref), static_cast<const uint32_t*>(b.y),
                                       int64_t(b.bytes / 4), b.diff);
        CHECK(cudaGetLastError());
        CHECK(cudaMemcpy(&diff, b.diff, sizeof(diff), cudaMemcpyDeviceToHost));
        same = diff == 0;
      }
      // a two-input pass moves 3 tensors, the copy 2: "of copy" compares bandwidths
      const double moved = (NIN + 1.0) * b.bytes;
      std::printf("| %s | %s | %d | %d | %d | %s | %s | %.4f | %.0f | %.1f%% | %s |\n", cs.name, kname, UNROLL, THREADS,
                  HINT, g.name.c_str(), reverse ? "rev" : "fwd", ms, moved / ms / 1e6,
                  100.0 * (moved / ms) / (2.0 * b.bytes / copy_ms), same ? "ok" : "MISMATCH");
      std::fflush(stdout);
    }
  }
}

template <typename T>
void run_case(const Case& cs) {
  Bufs b;
  b.elems = cs.N * cs.C * cs.S;
  b.bytes = size_t(b.elems) * sizeof(T);
  CHECK(cudaMalloc(&b.x, b.bytes));
  CHECK(cudaMalloc(&b.y, b.bytes));
  CHECK(cudaMalloc(&b.dy, b.bytes));
  CHECK(cudaMalloc(&b.ref, b.bytes));
  CHECK(cudaMalloc(&b.diff, sizeof(unsigned long long)));
  CHECK(cudaMalloc(&b.scale, cs.N * cs.C * sizeof(float)));
  CHECK(cudaMalloc(&b.shift, cs.N * cs.C * sizeof(float)));
  CHECK(cudaMalloc(&b.sink, g_sms * 8 * sizeof(float)));
  float* tmp;
  CHECK(cudaMalloc(&tmp, b.elems * sizeof(float)));
  fill_uniform<<<g_sms * 8, 256>>>(tmp, b.elems, 1u, 4.f, 0.f);
  to_t<T><<<g_sms * 8, 256>>>(tmp, static_cast<T*>(b.x), b.elems);
  fill_uniform<<<g_sms * 8, 256>>>(tmp, b.elems, 4u, 4.f, 0.f);
  to_t<T><<<g_sms * 8, 256>>>(tmp, static_cast<T*>(b.dy), b.elems);
  fill_uniform<<<g_sms, 256>>>(b.scale, cs.N * cs.C, 2u, 4.f, 0.f);
  fill_uniform<<<g_sms, 256>>>(b.shift, cs.N * cs.C, 3u, 4.f, 0.f);
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaFree(tmp));
  const float copy_ms = time_after_read<T>(b, [&] { CHECK(cudaMemcpyAsync(b.y, b.x, b.bytes, cudaMemcpyDeviceToDevice)); });
  std::printf("| %s | copy | | | | | | %.4f | %.0f | 100%% | |\n", cs.name, copy_ms, 2.0 * b.bytes / copy_ms / 1e6);
  bool have_ref = false;
  run_variant<T, 4, 256, 0>(cs, b, "base", copy_ms, have_ref);
  if (g_all) {
    run_variant<T, 8, 256, 0>(cs, b, "unroll8", copy_ms, have_ref);
    run_variant<T, 2, 256, 0>(cs, b, "unroll2", copy_ms, have_ref);
    run_variant<T, 4, 128, 0>(cs, b, "128thr", copy_ms, have_ref);
    run_variant<T, 4, 256, 1>(cs, b, "ldcs+stcs", copy_ms, have_ref);
    run_variant<T, 4, 256, 2>(cs, b, "stcs", copy_ms, have_ref);
    run_variant<T, 4, 256, 3>(cs, b, "ldlu+stcs", copy_ms, have_ref);
  }
  // two inputs (the grad_input pass's traffic)
  have_ref = false;
  run_variant<T, 4, 256, 0, 2>(cs, b, "2in base", copy_ms, have_ref);
  run_variant<T, 2, 256, 0, 2>(cs, b, "2in unroll2", copy_ms, have_ref);
  run_variant<T, 4, 128, 0, 2>(cs, b, "2in 128thr", copy_ms, have_ref);
  CHECK(cudaFree(b.x));
  CHECK(cudaFree(b.dy));
  CHECK(cudaFree(b.y));
  CHECK(cudaFree(b.ref));
  CHECK(cudaFree(b.diff));
  CHECK(cudaFree(b.scale));
  CHECK(cudaFree(b.shift));
  CHECK(cudaFree(b.sink));
}

int main(int argc, char** argv) {
  if (argc > 1) g_reps = std::atoi(argv[1]);
  if (argc > 2) g_all = std::string(argv[2]) != "quick";
  g_sms = print_device(g_reps);
  std::printf("| case | variant | unroll | threads | hint | grid | walk | ms | GB/s | of copy | bits |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  // the seed shape's forward apply (1 GB float32, contiguous), N = 1 G = 32 (134 MB), and the
  // channels-last bfloat16 3-D volume (537 MB)
  run_case<float>({"2x64x128^3 fp32", false, false, 2, 64, 128 * 128 * 128});
  run_case<float>({"1x128x512^2 fp32", false, false, 1, 128, 512 * 512});
  run_case<__nv_bfloat16>({"2x64x128^3 bf16 cl", true, true, 2, 64, 128 * 128 * 128});
  return 0;
}
