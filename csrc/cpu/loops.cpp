// Bodies of the loops declared in loops.h. Each public function is a GCC
// `target_clones` wrapper around an always-inline template, so the template is compiled
// separately for every ISA in kClones and nothing else in the library changes ISA.
//
// Reductions keep kLanes independent accumulators (a whole number of vector registers
// for every clone): the compiler vectorizes them without -ffast-math, and the summation
// order is fixed by the code, not by the thread count or the vector width picked.
#include "loops.h"

namespace groupnorm_ext {
namespace cpu {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GN_CLONES
#endif
#define GN_INLINE __attribute__((always_inline)) inline

// 32 floats = two AVX-512 registers (or four AVX2 ones): two independent add chains
// hide the add latency; doubles get the same register count.
template <typename acc_t>
constexpr int kLanes = sizeof(acc_t) == 4 ? 32 : 16;

template <typename acc_t, typename T>
GN_INLINE acc_t load(const T* p) {
  return static_cast<acc_t>(*p);
}

// Fixed pairwise reduction of the lane accumulators.
template <typename acc_t>
GN_INLINE acc_t reduce_lanes(acc_t* lanes) {
  for (int width = kLanes<acc_t> / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  }
  return lanes[0];
}

template <typename T>
GN_INLINE reduce_t sum_impl(const T* x, int64_t n) {
  constexpr int L = kLanes<reduce_t>;
  reduce_t lanes[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    for (int l = 0; l < L; ++l) lanes[l] += load<reduce_t>(x + i + l);
  }
  for (int l = 0; i < n; ++i, ++l) lanes[l] += load<reduce_t>(x + i);
  return reduce_lanes(lanes);
}

template <typename T>
GN_INLINE void sum_dev_impl(const T* x, int64_t n, reduce_t mean, reduce_t* sum_d, reduce_t* sum_d2) {
  constexpr int L = kLanes<reduce_t>;
  reduce_t lanes_d[L] = {}, lanes_d2[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    for (int l = 0; l < L; ++l) {
      const reduce_t d = load<reduce_t>(x + i + l) - mean;
      lanes_d[l] += d;
      lanes_d2[l] += d * d;
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    const reduce_t d = load<reduce_t>(x + i) - mean;
    lanes_d[l] += d;
    lanes_d2[l] += d * d;
  }
  *sum_d = reduce_lanes(lanes_d);
  *sum_d2 = reduce_lanes(lanes_d2);
}

// Centre first, then scale: (x - mean) keeps full precision when |mean| >> std, which a
// folded x * scale + (bias - mean * scale) loses to cancellation.
template <typename T, typename acc_t = opmath_t<T>>
GN_INLINE void normalize_impl(const T* x, T* y, int64_t n, acc_t mean, acc_t scale, acc_t bias) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>((load<acc_t>(x + i) - mean) * scale + bias);
}

// Row loops take many rows per call: NSC rows can be as short as a few channels, where a
// call per row would cost more than its arithmetic.
template <typename T, typename acc_t = opmath_t<T>>
GN_INLINE void normalize_rows_impl(const T* x, T* y, int64_t rows, int64_t C, const acc_t* mean,
                                   const acc_t* scale, const acc_t* bias) {
  for (int64_t r = 0; r < rows; ++r, x += C, y += C) {
    for (int64_t i = 0; i < C; ++i) y[i] = static_cast<T>((load<acc_t>(x + i) - mean[i]) * scale[i] + bias[i]);
  }
}

template <typename T>
GN_INLINE void accumulate_rows_impl(const T* x, int64_t rows, int64_t C, reduce_t* acc) {
  for (int64_t r = 0; r < rows; ++r, x += C) {
    for (int64_t i = 0; i < C; ++i) acc[i] += load<reduce_t>(x + i);
  }
}

template <typename T>
GN_INLINE void accumulate_dev_rows_impl(const T* x, int64_t rows, int64_t C, const reduce_t* mean,
                                        reduce_t* acc_d, reduce_t* acc_d2) {
  for (int64_t r = 0; r < rows; ++r, x += C) {
    for (int64_t i = 0; i < C; ++i) {
      const reduce_t d = load<reduce_t>(x + i) - mean[i];
      acc_d[i] += d;
      acc_d2[i] += d * d;
    }
  }
}

template <typename T>
GN_INLINE void grad_sums_impl(const T* dy, const T* x, int64_t n, reduce_t mean, reduce_t* sum_dy,
                              reduce_t* sum_dy_xc) {
  constexpr int L = kLanes<reduce_t>;
  reduce_t lanes_dy[L] = {};
  reduce_t lanes_dy_xc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    for (int l = 0; l < L; ++l) {
      const reduce_t g = load<reduce_t>(dy + i + l);
      lanes_dy[l] += g;
      lanes_dy_xc[l] += g * (load<reduce_t>(x + i + l) - mean);
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    const reduce_t g = load<reduce_t>(dy + i);
    lanes_dy[l] += g;
    lanes_dy_xc[l] += g * (load<reduce_t>(x + i) - mean);
  }
  *sum_dy = reduce_lanes(lanes_dy);
  *sum_dy_xc = reduce_lanes(lanes_dy_xc);
}

template <typename T>
GN_INLINE void grad_sums_rows_impl(const T* dy, const T* x, int64_t rows, int64_t C, const reduce_t* mean,
                                   reduce_t* sum_dy, reduce_t* sum_dy_xc) {
  for (int64_t r = 0; r < rows; ++r, x += C, dy += C) {
    for (int64_t i = 0; i < C; ++i) {
      const reduce_t g = load<reduce_t>(dy + i);
      sum_dy[i] += g;
      sum_dy_xc[i] += g * (load<reduce_t>(x + i) - mean[i]);
    }
  }
}

template <typename T, typename acc_t = opmath_t<T>>
GN_INLINE void grad_input_impl(const T* dy, const T* x, T* dx, int64_t n, acc_t a, acc_t mean,
                               acc_t rstd, acc_t kxhat, acc_t kc) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t xhat = (load<acc_t>(x + i) - mean) * rstd;
    dx[i] = static_cast<T>(a * load<acc_t>(dy + i) + xhat * kxhat + kc);
  }
}

template <typename T, typename acc_t = opmath_t<T>>
GN_INLINE void grad_input_rows_impl(const T* dy, const T* x, T* dx, int64_t rows, int64_t C, const acc_t* a,
                                    const acc_t* mean, const acc_t* rstd, const acc_t* kxhat,
                                    const acc_t* kc) {
  for (int64_t r = 0; r < rows; ++r, x += C, dy += C, dx += C) {
    for (int64_t i = 0; i < C; ++i) {
      const acc_t xhat = (load<acc_t>(x + i) - mean[i]) * rstd[i];
      dx[i] = static_cast<T>(a[i] * load<acc_t>(dy + i) + xhat * kxhat[i] + kc[i]);
    }
  }
}

}  // namespace

#define GN_DEFINE_LOOPS(T)                                                                     \
  GN_CLONES reduce_t loop_sum(const T* x, int64_t n) { return sum_impl(x, n); }                \
  GN_CLONES void loop_sum_dev(const T* x, int64_t n, reduce_t mean, reduce_t* sum_d,           \
                             reduce_t* sum_d2) {                                               \
    sum_dev_impl(x, n, mean, sum_d, sum_d2);                                                   \
  }                                                                                            \
  GN_CLONES void loop_normalize(const T* x, T* y, int64_t n, opmath_t<T> mean,                 \
                                opmath_t<T> scale, opmath_t<T> bias) {                         \
    normalize_impl(x, y, n, mean, scale, bias);                                                \
  }                                                                                            \
  GN_CLONES void loop_normalize_rows(const T* x, T* y, int64_t rows, int64_t C,                \
                                     const opmath_t<T>* mean, const opmath_t<T>* scale,        \
                                     const opmath_t<T>* bias) {                                \
    normalize_rows_impl(x, y, rows, C, mean, scale, bias);                                     \
  }                                                                                            \
  GN_CLONES void loop_accumulate_rows(const T* x, int64_t rows, int64_t C, reduce_t* acc) {    \
    accumulate_rows_impl(x, rows, C, acc);                                                     \
  }                                                                                            \
  GN_CLONES void loop_accumulate_dev_rows(const T* x, int64_t rows, int64_t C,                 \
                                          const reduce_t* mean, reduce_t* acc_d,               \
                                          reduce_t* acc_d2) {                                  \
    accumulate_dev_rows_impl(x, rows, C, mean, acc_d, acc_d2);                                 \
  }                                                                                            \
  GN_CLONES void loop_grad_sums(const T* dy, const T* x, int64_t n, reduce_t mean,             \
                                reduce_t* sum_dy, reduce_t* sum_dy_xc) {                       \
    grad_sums_impl(dy, x, n, mean, sum_dy, sum_dy_xc);                                         \
  }                                                                                            \
  GN_CLONES void loop_grad_sums_rows(const T* dy, const T* x, int64_t rows, int64_t C,        \
                                     const reduce_t* mean, reduce_t* sum_dy,                   \
                                     reduce_t* sum_dy_xc) {                                    \
    grad_sums_rows_impl(dy, x, rows, C, mean, sum_dy, sum_dy_xc);                              \
  }                                                                                            \
  GN_CLONES void loop_grad_input(const T* dy, const T* x, T* dx, int64_t n, opmath_t<T> a,     \
                                 opmath_t<T> mean, opmath_t<T> rstd, opmath_t<T> kxhat,        \
                                 opmath_t<T> kc) {                                             \
    grad_input_impl(dy, x, dx, n, a, mean, rstd, kxhat, kc);                                   \
  }                                                                                            \
  GN_CLONES void loop_grad_input_rows(const T* dy, const T* x, T* dx, int64_t rows, int64_t C, \
                                      const opmath_t<T>* a, const opmath_t<T>* mean,           \
                                      const opmath_t<T>* rstd, const opmath_t<T>* kxhat,       \
                                      const opmath_t<T>* kc) {                                 \
    grad_input_rows_impl(dy, x, dx, rows, C, a, mean, rstd, kxhat, kc);                        \
  }

GN_DEFINE_LOOPS(float)
GN_DEFINE_LOOPS(double)
GN_DEFINE_LOOPS(c10::Half)
GN_DEFINE_LOOPS(c10::BFloat16)
#undef GN_DEFINE_LOOPS

const char* loops_isa() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  __builtin_cpu_init();
  // Mirrors the loader's choice for GN_CLONES: the highest level this CPU supports.
  if (__builtin_cpu_supports("x86-64-v4")) return "avx512 (x86-64-v4 clone)";
  if (__builtin_cpu_supports("x86-64-v3")) return "avx2 (x86-64-v3 clone)";
#endif
  return "baseline";
}

}  // namespace cpu
}  // namespace groupnorm_ext
