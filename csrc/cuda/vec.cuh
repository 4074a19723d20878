// 16-byte vectors and the launch helpers every CUDA kernel family uses.
#pragma once

#include <cstdint>
#include <type_traits>

#include <ATen/cuda/CUDAContext.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../plan.h"

namespace groupnorm_ext {
namespace cuda {

// Accumulation type of the elementwise math: double for double input, float otherwise.
template <typename T>
using acc_type = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Partial sums (moments, gradient sums) are carried in double whatever the input dtype,
// as on the CPU: float32 input up to |x| ~ 1e30 keeps a finite, exact-enough variance.
using reduce_t = double;

// float32 weight / bias beside float16 / bfloat16 input: the only mixed-dtype case.
template <typename T>
constexpr bool takes_float_params() {
  return std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;
}

constexpr int kVecBytes = 16;

// Elements per 16-byte vector.
template <typename T>
constexpr int vec_elems() {
  return kVecBytes / static_cast<int>(sizeof(T));
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

// Channels-last (NSC) chunk kernels: thread `item` of a block owns a column of VEC channels
// (col = item % cols) and the rows lane, lane + lanes, ... of the chunk (lane = item / cols);
// per-(lane, channel) sums meet in shared memory as [lane][channel] slots.
struct NscLayout {
  int64_t cols;   // C / VEC
  int64_t lanes;  // row lanes: threads / cols, at least 1
  int64_t slots;  // lanes * C: shared slots per sum
};

inline NscLayout nsc_layout(int64_t C, int vec, int threads) {
  NscLayout l;
  l.cols = C / vec;
  l.lanes = l.cols <= threads ? threads / l.cols : 1;
  l.slots = l.lanes * C;
  return l;
}

// Rows of a column a thread loads before it adds any of them: enough independent 16-byte
// loads in flight to cover DRAM latency (a plain row loop keeps one in flight); 4 for 8-wide
// vectors keeps their VEC double accumulators and the batch within ~100 registers.
template <int VEC>
constexpr int nsc_batch_rows() {
  return VEC >= 8 ? 4 : 8;
}

// Adds d = x - shift and d^2 for each of v's values, in order, to s1 and s2: the one-pass
// (shifted-data) chunk moments. In double: no overflow of x - shift or its square for any
// finite float input.
template <typename T, int VEC>
__device__ __forceinline__ void add_shifted(const Vec<T, VEC>& v, reduce_t shift, reduce_t& s1, reduce_t& s2) {
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    const reduce_t d = static_cast<reduce_t>(static_cast<acc_type<T>>(v.v[i])) - shift;
    s1 += d;
    s2 += d * d;
  }
}

inline bool aligned_to(const void* p, int bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

inline int64_t num_sms() {
  return at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}

inline unsigned grid_for(int64_t items, int64_t max_blocks) {
  const int64_t b = items < max_blocks ? items : max_blocks;
  return static_cast<unsigned>(b > 0 ? b : 1);
}

}  // namespace cuda
}  // namespace groupnorm_ext
