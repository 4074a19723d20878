// Micro-benchmark of the CUDA forward's channels-last statistics pass (nsc_chunk_moments_kernel
// in csrc/cuda/forward_stats.cu) against a read-only pass over the same bytes: variants of the
// rows a thread keeps in flight, the block size and the accumulation, without rebuilding the
// extension. Standalone (CUDA runtime only), built on a machine without a GPU, run where one
// is lent:
//   nvcc -O3 -std=c++17 -arch=sm_90 -o nsc_stats_variants nsc_stats_variants.cu
//   ./nsc_stats_variants [reps]
// The kernel mirrors the extension's: one block per row chunk of a sample; thread `item` owns
// a column of VEC channels (col = item % cols) and the rows lane, lane + lanes, ... (lane =
// item / cols), sums x - shift and its square per channel in double (shift: the group's first
// value in the chunk), B rows loaded before any is added; the per-(lane, channel) sums meet in
// shared memory and one warp per group adds them up. Variants: B, the block size, and float
// sums of each batch of B rows before the double sums take them (fewer double operations).
// The extension's launch: 128 threads, at most 4 blocks per SM, B = 4 for 8-wide (bfloat16)
// vectors and 8 for 4-wide (float32), about 4096 chunks. The roofline: a plain read of x.
// Each call follows a 256 MB write (L2 flushed); medians of CUDA-event intervals. Each
// variant's per-group means (from its partials) are compared with a float64 reference.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "micro.cuh"

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}

template <typename T, int N>
struct alignas(16) Vec {
  T v[N];
};

struct Args {
  const void* x;
  int64_t C, S, G, D, chunk_rows, K;
  int64_t cols, lanes;  // C / VEC columns; threads / cols row lanes
  double* partials;     // [(n * G + g) * K + k][2]: sum of x - shift, of its square
};

template <typename T, int THREADS, int B, bool FLOAT_BATCH, int MIN_BLOCKS>
__global__ void __launch_bounds__(THREADS, MIN_BLOCKS) nsc_stats_kernel(Args a) {
  constexpr int VEC = 16 / sizeof(T);
  extern __shared__ double slots[];  // [2][lanes][C]
  double* sum_a = slots;
  double* sum_b = slots + a.lanes * a.C;
  const int64_t n = blockIdx.x / a.K, k = blockIdx.x - n * a.K;
  const int64_t r0 = k * a.chunk_rows, r1 = min(a.S, r0 + a.chunk_rows);
  const T* xs = static_cast<const T*>(a.x) + n * a.S * a.C;
  const T* first_row = xs + r0 * a.C;
  const int64_t lane_step = a.lanes * a.C;
  for (int64_t item = threadIdx.x; item < a.lanes * a.cols; item += THREADS) {
    const int64_t lane = item / a.cols, col = item - lane * a.cols;
    double shift[VEC], s1[VEC], s2[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      shift[i] = to_float(first_row[(col * VEC + i) / a.D * a.D]);
      s1[i] = 0;
      s2[i] = 0;
    }
    const T* p = xs + (r0 + lane) * a.C + col * VEC;
    for (int64_t r = r0 + lane; r < r1; r += B * a.lanes, p += B * lane_step) {
      Vec<T, VEC> v[B];
#pragma unroll
      for (int b = 0; b < B; ++b) {
        if (r + b * a.lanes < r1) v[b] = *reinterpret_cast<const Vec<T, VEC>*>(p + b * lane_step);
      }
      if constexpr (FLOAT_BATCH) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const float sh = static_cast<float>(shift[i]);
          float f1 = 0, f2 = 0;
#pragma unroll
          for (int b = 0; b < B; ++b) {
            if (r + b * a.lanes < r1) {
              const float d = to_float(v[b].v[i]) - sh;
              f1 += d;
              f2 += d * d;
            }
          }
          s1[i] += f1;
          s2[i] += f2;
        }
      } else {
#pragma unroll
        for (int b = 0; b < B; ++b) {
          if (r + b * a.lanes < r1) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
              const double d = static_cast<double>(to_float(v[b].v[i])) - shift[i];
              s1[i] += d;
              s2[i] += d * d;
            }
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      sum_a[lane * a.C + col * VEC + i] = s1[i];
      sum_b[lane * a.C + col * VEC + i] = s2[i];
    }
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane_id = threadIdx.x % 32;
  for (int64_t g = warp; g < a.G; g += THREADS / 32) {
    double t1 = 0, t2 = 0;
    for (int64_t j = lane_id; j < a.lanes * a.D; j += 32) {
      const int64_t l = j / a.D, c = g * a.D + j % a.D;
      t1 += sum_a[l * a.C + c];
      t2 += sum_b[l * a.C + c];
    }
    for (int o = 16; o > 0; o /= 2) {
      t1 += __shfl_down_sync(0xffffffffu, t1, o);
      t2 += __shfl_down_sync(0xffffffffu, t2, o);
    }
    if (lane_id == 0) {
      a.partials[2 * ((n * a.G + g) * a.K + k)] = t1;
      a.partials[2 * ((n * a.G + g) * a.K + k) + 1] = t2;
    }
  }
}

// The roofline: every 16-byte vector of x read once (a sum kept so the loads stay).
__global__ void read_all(const float4* x, int64_t n, float* sink) {
  float acc = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float4 v = x[i];
    acc += v.x + v.y + v.z + v.w;
  }
  if (acc == 1234.5f) sink[0] = acc;
}

template <typename T>
__global__ void convert(const float* src, T* dst, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = static_cast<T>(src[i]);
}

template <typename T>
__global__ void widen(const T* src, float* dst, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = to_float(src[i]);
}

// Reference group means in float64 from the values as stored (one block per (n, g)).
template <typename T>
__global__ void reference_means(const T* x, int64_t C, int64_t S, int64_t G, int64_t D, double* out) {
  const int64_t n = blockIdx.x / G, g = blockIdx.x % G;
  double s = 0;
  for (int64_t j = threadIdx.x; j < S * D; j += blockDim.x) {
    const int64_t r = j / D, c = g * D + j % D;
    s += to_float(x[(n * S + r) * C + c]);
  }
  __shared__ double sh[256];
  sh[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int i = 0; i < 256; ++i) t += sh[i];
    out[blockIdx.x] = t / double(S * D);
  }
}

static int g_sms = 0, g_reps = 20;

struct Case {
  const char* name;
  bool bf16;
  int64_t N, C, S, G;
};

template <typename T, int THREADS, int B, bool FLOAT_BATCH, int MIN_BLOCKS>
void run_variant(const Case& cs, const void* x, const std::vector<float>& host_x, double* partials,
                 const std::vector<double>& ref_means, const char* name, int64_t target_chunks, float read_ms, size_t bytes) {
  constexpr int VEC = 16 / sizeof(T);
  Args a;
  a.x = x;
  a.C = cs.C;
  a.S = cs.S;
  a.G = cs.G;
  a.D = cs.C / cs.G;
  a.cols = cs.C / VEC;
  a.lanes = a.cols <= THREADS ? THREADS / a.cols : 1;
  // the extension's plan: about target_chunks chunks over the batch, 8192..65536 elements each
  int64_t len = (cs.N * cs.S + target_chunks - 1) / target_chunks;
  len = std::max<int64_t>(len, 8192 / cs.C);
  len = std::min<int64_t>(len, std::max<int64_t>(65536 / cs.C, 8192 / cs.C));
  len = std::max<int64_t>(len, 1);
  a.chunk_rows = len;
  a.K = (cs.S + len - 1) / len;
  a.partials = partials;
  const size_t smem = 2 * a.lanes * a.C * sizeof(double);
  auto kernel = nsc_stats_kernel<T, THREADS, B, FLOAT_BATCH, MIN_BLOCKS>;
  if (smem > 48 * 1024) CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const unsigned blocks = static_cast<unsigned>(cs.N * a.K);
  const float ms = median_event_ms(g_reps, 3, flush_l2, [&] { kernel<<<blocks, THREADS, smem>>>(a); });
  CHECK(cudaDeviceSynchronize());
  std::vector<double> part(2 * cs.N * cs.G * a.K);
  CHECK(cudaMemcpy(part.data(), partials, part.size() * sizeof(double), cudaMemcpyDeviceToHost));
  // group means from the partials (each chunk's shift is its group's first value in the chunk)
  double worst = 0;
  for (int64_t ng = 0; ng < cs.N * cs.G; ++ng) {
    const int64_t n = ng / cs.G, g = ng % cs.G;
    double total = 0;
    for (int64_t k = 0; k < a.K; ++k) {
      const int64_t r0 = k * a.chunk_rows, rows = std::min(cs.S, r0 + a.chunk_rows) - r0;
      const float first = host_x[(n * cs.S + r0) * cs.C + g * a.D];
      total += part[2 * (ng * a.K + k)] + double(first) * double(rows * a.D);
    }
    const double mean = total / double(cs.S * a.D);
    worst = std::max(worst, std::fabs(mean - ref_means[ng]));
  }
  std::printf("| %s | %s | %d | %d | %s | %lld | %lld | %.4f | %.0f | %.1f%% | %.2g |\n", cs.name, name, THREADS, B,
              FLOAT_BATCH ? "float" : "double", (long long)a.K, (long long)a.chunk_rows, ms, bytes / ms / 1e6,
              100.0 * read_ms / ms, worst);
  std::fflush(stdout);
}

template <typename T>
void run_case(const Case& cs) {
  const int64_t n = cs.N * cs.C * cs.S;
  const size_t bytes = size_t(n) * sizeof(T);
  float* tmp;
  T* x;
  double *partials, *ref;
  float* sink;
  CHECK(cudaMalloc(&tmp, n * sizeof(float)));
  CHECK(cudaMalloc(&x, bytes));
  CHECK(cudaMalloc(&partials, 2 * cs.N * cs.G * 65536 * sizeof(double)));
  CHECK(cudaMalloc(&ref, cs.N * cs.G * sizeof(double)));
  CHECK(cudaMalloc(&sink, sizeof(float)));
  fill_uniform<<<g_sms * 8, 256>>>(tmp, n, 7u, 4.f, 0.5f);
  convert<T><<<g_sms * 8, 256>>>(tmp, x, n);
  reference_means<T><<<static_cast<unsigned>(cs.N * cs.G), 256>>>(x, cs.C, cs.S, cs.G, cs.C / cs.G, ref);
  CHECK(cudaGetLastError());
  std::vector<float> host_x(n);  // x as stored, widened: the chunks' shifts
  {
    float* wide;
    CHECK(cudaMalloc(&wide, n * sizeof(float)));
    widen<T><<<g_sms * 8, 256>>>(x, wide, n);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpy(host_x.data(), wide, n * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(cudaFree(wide));
  }
  CHECK(cudaFree(tmp));
  std::vector<double> ref_means(cs.N * cs.G);
  CHECK(cudaMemcpy(ref_means.data(), ref, ref_means.size() * sizeof(double), cudaMemcpyDeviceToHost));
  const float read_ms = median_event_ms(g_reps, 3, flush_l2, [&] {
    read_all<<<g_sms * 8, 512>>>(reinterpret_cast<const float4*>(x), int64_t(bytes / 16), sink);
  });
  std::printf("| %s | read x | | | | | | %.4f | %.0f | 100%% | |\n", cs.name, read_ms, bytes / read_ms / 1e6);
  constexpr int kB = sizeof(T) == 2 ? 4 : 8;  // the extension's nsc_batch_rows
  run_variant<T, 128, kB, false, 4>(cs, x, host_x, partials, ref_means, "extension", 4096, read_ms, bytes);
  run_variant<T, 128, 2 * kB, false, 3>(cs, x, host_x, partials, ref_means, "2x rows in flight", 4096, read_ms, bytes);
  run_variant<T, 128, kB, true, 4>(cs, x, host_x, partials, ref_means, "float batch sums", 4096, read_ms, bytes);
  run_variant<T, 128, 2 * kB, true, 3>(cs, x, host_x, partials, ref_means, "float, 2x rows", 4096, read_ms, bytes);
  run_variant<T, 256, kB, false, 2>(cs, x, host_x, partials, ref_means, "256 threads", 4096, read_ms, bytes);
  run_variant<T, 128, kB, false, 4>(cs, x, host_x, partials, ref_means, "2048 chunks", 2048, read_ms, bytes);
  run_variant<T, 128, kB, false, 4>(cs, x, host_x, partials, ref_means, "8192 chunks", 8192, read_ms, bytes);
  CHECK(cudaFree(x));
  CHECK(cudaFree(partials));
  CHECK(cudaFree(ref));
  CHECK(cudaFree(sink));
}

int main(int argc, char** argv) {
  if (argc > 1) g_reps = std::atoi(argv[1]);
  g_sms = print_device(g_reps);
  std::printf("| case | variant | threads | rows in flight | batch sums | chunks/sample | rows/chunk | ms | GB/s | of read | max mean error |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  run_case<__nv_bfloat16>({"2x64x128^3 G4 bf16 cl3d", true, 2, 64, 128 * 128 * 128, 4});
  run_case<__nv_bfloat16>({"8x320x64x64 G32 bf16 cl", true, 8, 320, 64 * 64, 32});
  run_case<float>({"2x64x128^3 G4 fp32 cl3d", false, 2, 64, 128 * 128 * 128, 4});
  run_case<float>({"1x128x512x512 G32 fp32 cl", false, 1, 128, 512 * 512, 32});
  return 0;
}
