// Micro-benchmark of the single-read CUDA forward (csrc/cuda/forward_fused.cu) on float32
// contiguous inputs whose (n, group) slabs fit on chip: launch-shape variants against a
// device-to-device copy, for choosing vectors per thread, block size and cluster size without
// rebuilding the extension. Standalone (CUDA runtime only), built on a machine without a GPU
// and run where one is lent (sm_90: thread-block clusters):
//   nvcc -O3 -std=c++17 -arch=sm_90 -o fused_forward_variants fused_forward_variants.cu
//   ./fused_forward_variants [reps]
// The kernel mirrors the extension's: a slab is split over a cluster of `cluster` blocks, each
// block keeps its piece in registers (VPT 16-byte vectors per thread), sums x - shift and its
// square in double (block reduction, then the blocks' partials added in rank order through
// distributed shared memory), and normalizes from registers. The extension's launch is
// VPT = 8, 256 threads, at most 3 blocks per SM, and the cluster rounded up to a power of two
// (a 160 KB slab: 5 blocks needed, 8 launched). Each call follows a 256 MB write (L2 flushed);
// times are medians of CUDA-event intervals; bandwidth counts x read + y written, as the copy's.
// Each variant's output is compared with the first's (max |difference|; NaN-poisoned before).
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "micro.cuh"

namespace cg = cooperative_groups;


struct Args {
  const float* x;
  float* y;
  const float* weight;
  const float* bias;
  int64_t slab_len, slab_vecs, piece_vecs, S, D, G;
  int cluster;
  double eps;
};

template <int THREADS>
__device__ __forceinline__ void block_sum2(double& a, double& b, double* shared) {
  for (int o = 16; o > 0; o /= 2) {
    a += __shfl_down_sync(0xffffffffu, a, o);
    b += __shfl_down_sync(0xffffffffu, b, o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    shared[2 * warp] = a;
    shared[2 * warp + 1] = b;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    a = 0;
    b = 0;
    for (int w = 0; w < THREADS / 32; ++w) {
      a += shared[2 * w];
      b += shared[2 * w + 1];
    }
  }
}

template <int VPT, int THREADS, int MIN_BLOCKS>
__global__ void __launch_bounds__(THREADS, MIN_BLOCKS) fused_kernel(Args a) {
  __shared__ double shared[2 * (THREADS / 32)];
  __shared__ double slot[2];
  __shared__ double bcast[2];
  const int64_t ng = blockIdx.x / a.cluster;
  const int rank = static_cast<int>(blockIdx.x - ng * a.cluster);
  const int64_t v_begin = rank * a.piece_vecs;
  const int64_t v_end = min(v_begin + a.piece_vecs, a.slab_vecs);
  const int count = static_cast<int>(v_end > v_begin ? v_end - v_begin : 0);
  const float* xs = a.x + ng * a.slab_len;
  float* ys = a.y + ng * a.slab_len;
  float4 v[VPT];
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const int i = j * THREADS + static_cast<int>(threadIdx.x);
    if (i < count) v[j] = reinterpret_cast<const float4*>(xs)[v_begin + i];
  }
  const double shift = xs[0];
  double s1 = 0, s2 = 0;
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    if (j * THREADS + static_cast<int>(threadIdx.x) < count) {
      const double d0 = v[j].x - shift, d1 = v[j].y - shift, d2 = v[j].z - shift, d3 = v[j].w - shift;
      s1 += d0 + d1 + d2 + d3;
      s2 += d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3;
    }
  }
  block_sum2<THREADS>(s1, s2, shared);
  if (threadIdx.x == 0) {
    slot[0] = s1;
    slot[1] = s2;
  }
  if (a.cluster > 1) {
    cg::cluster_group cl = cg::this_cluster();
    cl.sync();
    if (threadIdx.x == 0) {
      s1 = 0;
      s2 = 0;
      for (int r = 0; r < a.cluster; ++r) {
        const double* remote = cl.map_shared_rank(slot, r);
        s1 += remote[0];
        s2 += remote[1];
      }
    }
    cl.sync();
  }
  if (threadIdx.x == 0) {
    const double n = static_cast<double>(a.slab_len);
    const double md = s1 / n;
    const double var = fmax(s2 / n - md * md, 0.0);
    bcast[0] = shift + md;
    bcast[1] = 1.0 / sqrt(var + a.eps);
  }
  __syncthreads();
  const double mean = bcast[0], rstd = bcast[1];
  const int64_t c_base = (ng % a.G) * a.D;
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const int i = j * THREADS + static_cast<int>(threadIdx.x);
    if (i < count) {
      const int64_t c = c_base + (v_begin + i) * 4 / a.S;  // S % 4 == 0: one channel a vector
      const double s = rstd * a.weight[c];
      const float scale = static_cast<float>(s), sh = static_cast<float>(a.bias[c] - mean * s);
      float4 o;
      o.x = v[j].x * scale + sh;
      o.y = v[j].y * scale + sh;
      o.z = v[j].z * scale + sh;
      o.w = v[j].w * scale + sh;
      reinterpret_cast<float4*>(ys)[v_begin + i] = o;
    }
  }
}

__global__ void max_diff(const float* a, const float* b, int64_t n, float* out) {
  float m = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float d = fabsf(a[i] - b[i]);
    m = (d != d || d > m) ? (d != d ? INFINITY : d) : m;
  }
  for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_down_sync(0xffffffffu, m, o));
  if (threadIdx.x % 32 == 0) atomicMax(reinterpret_cast<int*>(out), __float_as_int(m));  // m >= 0
}

static int g_sms = 0, g_reps = 20;

template <typename F>
float time_flushed(F launch) {
  return median_event_ms(g_reps, 3, flush_l2, launch);
}

struct Case {
  const char* name;
  int64_t N, C, S, G;
};

struct Bufs {
  float *x, *y, *ref, *w, *b, *diff;
  int64_t n;
};

// cluster_mode: 0 = the blocks needed, 1 = rounded up to a power of two (the extension's)
template <int VPT, int THREADS, int MIN_BLOCKS>
void run_variant(const Case& cs, const Bufs& bf, const char* name, int cluster_mode, float copy_ms, bool& have_ref) {
  Args a;
  a.x = bf.x;
  a.y = bf.y;
  a.weight = bf.w;
  a.bias = bf.b;
  a.D = cs.C / cs.G;
  a.G = cs.G;
  a.S = cs.S;
  a.slab_len = a.D * cs.S;
  a.slab_vecs = a.slab_len / 4;
  a.eps = 1e-5;
  const int64_t block_vecs = int64_t(THREADS) * VPT;
  int64_t cluster = (a.slab_vecs + block_vecs - 1) / block_vecs;
  if (cluster_mode == 1) {
    int64_t p = 1;
    while (p < cluster) p *= 2;
    cluster = p;
  }
  auto kernel = fused_kernel<VPT, THREADS, MIN_BLOCKS>;
  if (cluster > 8) CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  a.cluster = static_cast<int>(cluster);
  a.piece_vecs = (a.slab_vecs + cluster - 1) / cluster;
  const int64_t slabs = cs.N * cs.G;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(slabs * cluster));
  cfg.blockDim = dim3(THREADS);
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(cluster);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = cluster > 1 ? 1 : 0;
  int max_clusters = 0;
  if (cluster > 1) {
    cudaError_t e = cudaOccupancyMaxActiveClusters(&max_clusters, kernel, &cfg);
    if (e != cudaSuccess || max_clusters == 0) {
      (void)cudaGetLastError();
      std::printf("| %s | %s | %d | %d | %lld | (cluster cannot run) | | | | |\n", cs.name, name, VPT, THREADS,
                  (long long)cluster);
      return;
    }
  }
  CHECK(cudaMemset(bf.y, 0xff, bf.n * sizeof(float)));  // NaN poison
  const float ms = time_flushed([&] { CHECK(cudaLaunchKernelEx(&cfg, kernel, a)); });
  CHECK(cudaDeviceSynchronize());
  float diff = 0;
  if (!have_ref) {
    CHECK(cudaMemcpy(bf.ref, bf.y, bf.n * sizeof(float), cudaMemcpyDeviceToDevice));
    have_ref = true;
  } else {
    CHECK(cudaMemset(bf.diff, 0, sizeof(float)));
    max_diff<<<g_sms * 8, 256>>>(bf.ref, bf.y, bf.n, bf.diff);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpy(&diff, bf.diff, sizeof(float), cudaMemcpyDeviceToHost));
  }
  std::printf("| %s | %s | %d | %d | %lld | %d | %.4f | %.0f | %.1f%% | %.2g |\n", cs.name, name, VPT, THREADS,
              (long long)cluster, max_clusters, ms, 2.0 * bf.n * 4 / ms / 1e6, 100.0 * copy_ms / ms, diff);
  std::fflush(stdout);
}

void run_case(const Case& cs) {
  Bufs bf;
  bf.n = cs.N * cs.C * cs.S;
  CHECK(cudaMalloc(&bf.x, bf.n * sizeof(float)));
  CHECK(cudaMalloc(&bf.y, bf.n * sizeof(float)));
  CHECK(cudaMalloc(&bf.ref, bf.n * sizeof(float)));
  CHECK(cudaMalloc(&bf.w, cs.C * sizeof(float)));
  CHECK(cudaMalloc(&bf.b, cs.C * sizeof(float)));
  CHECK(cudaMalloc(&bf.diff, sizeof(float)));
  fill_uniform<<<g_sms * 8, 256>>>(bf.x, bf.n, 1u, 4.f, 0.5f);
  fill_uniform<<<g_sms, 256>>>(bf.w, cs.C, 2u, 2.f, 1.f);
  fill_uniform<<<g_sms, 256>>>(bf.b, cs.C, 3u, 2.f, 0.f);
  CHECK(cudaGetLastError());
  const float copy_ms = time_flushed(
      [&] { CHECK(cudaMemcpyAsync(bf.y, bf.x, bf.n * sizeof(float), cudaMemcpyDeviceToDevice)); });
  std::printf("| %s | copy | | | | | %.4f | %.0f | 100%% | |\n", cs.name, copy_ms, 2.0 * bf.n * 4 / copy_ms / 1e6);
  bool have_ref = false;
  run_variant<8, 256, 3>(cs, bf, "extension (pow2 cluster)", 1, copy_ms, have_ref);
  run_variant<8, 256, 3>(cs, bf, "cluster as needed", 0, copy_ms, have_ref);
  run_variant<4, 256, 4>(cs, bf, "4 vectors", 0, copy_ms, have_ref);
  run_variant<4, 512, 2>(cs, bf, "4 vectors, 512 thr", 0, copy_ms, have_ref);
  run_variant<16, 256, 2>(cs, bf, "16 vectors", 0, copy_ms, have_ref);
  run_variant<8, 128, 6>(cs, bf, "8 vectors, 128 thr", 0, copy_ms, have_ref);
  run_variant<2, 512, 3>(cs, bf, "2 vectors, 512 thr", 0, copy_ms, have_ref);
  CHECK(cudaFree(bf.x));
  CHECK(cudaFree(bf.y));
  CHECK(cudaFree(bf.ref));
  CHECK(cudaFree(bf.w));
  CHECK(cudaFree(bf.b));
  CHECK(cudaFree(bf.diff));
}

int main(int argc, char** argv) {
  if (argc > 1) g_reps = std::atoi(argv[1]);
  g_sms = print_device(g_reps);
  std::printf("| case | variant | vectors/thread | threads | cluster | max active clusters | ms | GB/s | of copy | max diff |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  // diffusion-UNet activations, float32 contiguous, G = 32
  run_case({"16x320x64x64 G32", 16, 320, 64 * 64, 32});
  run_case({"2x320x64x64 G32", 2, 320, 64 * 64, 32});
  run_case({"16x640x32x32 G32", 16, 640, 32 * 32, 32});
  run_case({"16x1280x16x16 G32", 16, 1280, 16 * 16, 32});
  run_case({"8x128x128x128 G32", 8, 128, 128 * 128, 32});
  return 0;
}
