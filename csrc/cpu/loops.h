// The CPU inner loops: contiguous runs of one dtype, accumulated in its opmath type.
// Each is a plain function compiled several times by GCC `target_clones` (loops_forward.cpp,
// loops_backward.cpp): the dynamic loader picks the AVX-512, AVX2 or baseline clone for the
// running CPU, so the default build stays portable (no -march=native) and still uses wide
// vectors.
#pragma once

#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../activation.h"

namespace groupnorm_ext {
namespace cpu {

template <typename T>
struct Opmath { using type = float; };
template <>
struct Opmath<double> { using type = double; };
template <typename T>
using opmath_t = typename Opmath<T>::type;

// Reductions (statistics and gradient sums) accumulate in double whatever the input:
// the data come from memory far slower than even 8-wide double adds retire, and double
// keeps (x - mean)^2 from overflowing for |x| ~ 1e30 and the mean exact to float
// precision on huge groups. Elementwise passes run in opmath_t. Three exceptions inside one
// chunk, all falling back to double where float could lose: the moments of a contiguous
// run (loops_forward.cpp, moments_impl), the channels_last deviations (four-row partial sums,
// sum_dev_rows_impl) and the gradient sums of bfloat16 / half data.
using reduce_t = double;

#define GN_DECLARE_LOOPS(T)                                                                  \
  /* sum of x[0..n) */                                                                       \
  reduce_t loop_sum(const T* x, int64_t n);                                                  \
  /* sums of d = x - mean and of d^2 over x[0..n) (corrected two-pass moments) */            \
  void loop_sum_dev(const T* x, int64_t n, reduce_t mean, reduce_t* sum_d, reduce_t* sum_d2); \
  /* moments (count, mean, M2) of x[0..n), n > 0: the corrected two-pass algorithm, in      \
     float lanes when the data allow it (see loops_forward.cpp), else in double */          \
  void loop_moments(const T* x, int64_t n, reduce_t* mean, reduce_t* m2);                    \
  /* loop_moments of `runs` consecutive runs of `len` elements, run r into mean[r], m2[r]:    \
     the same values as a call per run (the NCS statistics of many small slabs) */            \
  void loop_moments_runs(const T* x, int64_t runs, int64_t len, reduce_t* mean, reduce_t* m2); \
  /* y = act((x - mean) * scale + bias), one coefficient set for the run (NCS apply). The   \
     elementwise loops take `stream`: write the output with streaming stores (see           \
     streaming_stores_pay in schedule.h); the values are the same either way. They take      \
     `prefetch` too: software-prefetch input and output ahead (software_prefetch_pays; only    \
     without `stream`). */                                                                   \
  void loop_normalize(const T* x, T* y, int64_t n, opmath_t<T> mean, opmath_t<T> scale,      \
                      opmath_t<T> bias, Activation act, bool stream, bool prefetch);         \
  /* loop_normalize over `runs` consecutive runs of `len` elements, run r with mean[r],       \
     scale[r], bias[r]: the NCS apply of many short (n, c) rows in one call, same values */  \
  void loop_normalize_runs(const T* x, T* y, int64_t runs, int64_t len, const opmath_t<T>* mean, \
                           const opmath_t<T>* scale, const opmath_t<T>* bias, Activation act, \
                           bool stream, bool prefetch);                                      \
  /* NSC apply over `rows` rows of C channels, rows `ld` >= C elements apart (ld > C: a strip \
     of each row): y[r, c] = act((x[r, c] - mean[c]) * scale[c] + bias[c]); `prefetch`:       \
     software-prefetch input and output rows ahead (see software_prefetch_pays; only with     \
     ld == C, not with `stream`) */                                                          \
  void loop_normalize_rows(const T* x, T* y, int64_t rows, int64_t C, int64_t ld,            \
                           const opmath_t<T>* mean, const opmath_t<T>* scale,                \
                           const opmath_t<T>* bias, Activation act, bool stream, bool prefetch); \
  /* The backward's dL/dz of a fused activation (loops_activation.cpp): dz = dy * act'(z),    \
     z = (x - mean) * scale + bias recomputed as the forward computes it; one coefficient     \
     set for the run (NCS), per run (NCS rows), per channel (NSC rows). */                    \
  void loop_activation_grad(const T* dy, const T* x, T* dz, int64_t n, opmath_t<T> mean,     \
                            opmath_t<T> scale, opmath_t<T> bias, Activation act);            \
  void loop_activation_grad_runs(const T* dy, const T* x, T* dz, int64_t runs, int64_t len,   \
                                 const opmath_t<T>* mean, const opmath_t<T>* scale,          \
                                 const opmath_t<T>* bias, Activation act);                   \
  void loop_activation_grad_rows(const T* dy, const T* x, T* dz, int64_t rows, int64_t C,     \
                                 const opmath_t<T>* mean, const opmath_t<T>* scale,          \
                                 const opmath_t<T>* bias, Activation act);                   \
  /* per-channel sums over `rows` rows of C channels, `ld` >= C apart, of d = x[r, c] -       \
     shift[c] (shift[c] a value of the data): sets sum_d[c] = sum of d, sum_d2[c] = sum of   \
     d^2; each channel's sums are the same whatever C and ld (a strip of the rows gets the    \
     bits of the whole rows). `prefetch`: software-prefetch rows ahead (sums_prefetch_pays) */ \
  void loop_sum_dev_rows(const T* x, int64_t rows, int64_t C, int64_t ld, const reduce_t* shift, \
                         reduce_t* sum_d, reduce_t* sum_d2, bool prefetch);                  \
  /* sums of dy and of dy * (x - mean) over a run */                                         \
  void loop_grad_sums(const T* dy, const T* x, int64_t n, reduce_t mean, reduce_t* sum_dy,   \
                      reduce_t* sum_dy_xc);                                                  \
  /* loop_grad_sums of `runs` consecutive runs of `len` elements (one mean), into          \
     sum_dy[r], sum_dy_xc[r]: the same values as a call per run */                           \
  void loop_grad_sums_runs(const T* dy, const T* x, int64_t runs, int64_t len, reduce_t mean,  \
                           reduce_t* sum_dy, reduce_t* sum_dy_xc);                           \
  /* loop_grad_sums_runs of `slabs` consecutive slabs of `runs` runs each, slab s with       \
     mean[s], into sum_dy[s * runs + r]: the NCS sums of many small slabs in one call */    \
  void loop_grad_sums_slabs(const T* dy, const T* x, int64_t slabs, int64_t runs, int64_t len, \
                            const opmath_t<T>* mean, reduce_t* sum_dy, reduce_t* sum_dy_xc);  \
  /* per-channel sums over rows of C channels, `ld` >= C apart: sum_dy[c] = sum of dy[r, c],   \
     sum_dy_xc[c] = sum of dy * (x - mean[c]); each channel's the same whatever C and ld (a    \
     strip of the rows gets the bits of the whole rows) and from_memory (whether the rows     \
     come from memory rather than cache: how the rows are walked, not what is added) */       \
  void loop_grad_sums_rows(const T* dy, const T* x, int64_t rows, int64_t C, int64_t ld,     \
                           const reduce_t* mean, reduce_t* sum_dy, reduce_t* sum_dy_xc,      \
                           bool from_memory);                                                \
  /* dx = a * dy + ((x - mean) * rstd) * kxhat + kc, one coefficient set for the run.       \
     xhat is formed first so no coefficient needs rstd^2 or rstd^3 (they underflow). */     \
  void loop_grad_input(const T* dy, const T* x, T* dx, int64_t n, opmath_t<T> a,             \
                       opmath_t<T> mean, opmath_t<T> rstd, opmath_t<T> kxhat,                \
                       opmath_t<T> kc, bool stream);                                         \
  /* loop_grad_input over `runs` consecutive runs of `len` elements, run r with the r-th     \
     coefficients (NCS rows, many in one call; same values) */                               \
  void loop_grad_input_runs(const T* dy, const T* x, T* dx, int64_t runs, int64_t len,        \
                            const opmath_t<T>* a, const opmath_t<T>* mean,                   \
                            const opmath_t<T>* rstd, const opmath_t<T>* kxhat,               \
                            const opmath_t<T>* kc, bool stream);                             \
  /* the same over `rows` rows of C channels, `ld` >= C apart, with per-channel coefficients \
     (NSC); `prefetch`: software-prefetch dy, x and dx rows ahead (as loop_normalize_rows;     \
     only with ld == C, not with `stream`) */                                                \
  void loop_grad_input_rows(const T* dy, const T* x, T* dx, int64_t rows, int64_t C, int64_t ld, \
                            const opmath_t<T>* a, const opmath_t<T>* mean,                   \
                            const opmath_t<T>* rstd, const opmath_t<T>* kxhat,               \
                            const opmath_t<T>* kc, bool stream, bool prefetch);

GN_DECLARE_LOOPS(float)
GN_DECLARE_LOOPS(double)
GN_DECLARE_LOOPS(c10::Half)
GN_DECLARE_LOOPS(c10::BFloat16)
#undef GN_DECLARE_LOOPS

// The loops that take `stream` leave their streaming stores unfenced: a parallel task that
// passes stream = true fences once before it ends (before the thread reports done and another
// reads the output), with a StreamingStoresFence at the top of its body.
void fence_streaming_stores();
struct StreamingStoresFence {
  bool active;
  ~StreamingStoresFence() {
    if (active) fence_streaming_stores();
  }
};

// Which clone the loader picked on this CPU ("avx512", "avx2" or "baseline").
const char* loops_isa();

}  // namespace cpu
}  // namespace groupnorm_ext
