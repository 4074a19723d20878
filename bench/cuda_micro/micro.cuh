// What the standalone micro-benchmarks in this folder share: error checks, random fill, and
// median CUDA-event timing with a step before each timed call (a cache flush, or a pass that
// leaves the cache as the real kernel finds it).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(call)                                                                              \
  do {                                                                                           \
    cudaError_t e_ = (call);                                                                     \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

// p[i] = (u - 0.5) * scale + offset, u uniform in [0, 1) from a hash of (i, seed): fresh,
// reproducible data (never zeros).
__global__ void fill_uniform(float* p, int64_t n, uint32_t seed, float scale, float offset) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
    p[i] = ((h & 0xffffff) * (1.f / 16777216.f) - 0.5f) * scale + offset;
  }
}

// Median of `reps` timed calls of launch() after `warmup` untimed ones, each preceded by
// before() outside the timed interval.
template <typename Before, typename Launch>
float median_event_ms(int reps, int warmup, const Before& before, const Launch& launch) {
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  std::vector<float> ts;
  for (int r = 0; r < reps + warmup; ++r) {
    before(r);
    CHECK(cudaGetLastError());
    CHECK(cudaEventRecord(e0));
    launch();
    CHECK(cudaGetLastError());
    CHECK(cudaEventRecord(e1));
    CHECK(cudaEventSynchronize(e1));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (r >= warmup) ts.push_back(ms);
  }
  CHECK(cudaEventDestroy(e0));
  CHECK(cudaEventDestroy(e1));
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

// Writes 256 MB before a timed call (its `r` varies the bytes), so that the call finds its
// data in device memory, not in L2; the buffer is allocated on first use.
inline void flush_l2(int r) {
  static const size_t kBytes = size_t(256) << 20;
  static void* buffer = [] {
    void* p = nullptr;
    CHECK(cudaMalloc(&p, kBytes));
    return p;
  }();
  CHECK(cudaMemsetAsync(buffer, r & 0xff, kBytes));
}

// Prints the device line every table starts with; returns the number of SMs.
inline int print_device(int reps) {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs, L2 %d MB, reps %d\n\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, reps);
  return prop.multiProcessorCount;
}
