// float16 loops on F16C (loops_half.h): loops_half.inc compiled twice, for x86-64-v3 (8 float
// lanes, AVX2) and x86-64-v4 (16 lanes, AVX-512), each inside a `#pragma GCC target` region and
// its own namespace, and the public functions that pick one. Every header is included before
// the first region, so nothing inline from a header is compiled here for a wider ISA (a COMDAT
// copy of it could otherwise be the one the linker keeps for the whole library).
#include "loops_half.h"

#include <algorithm>
#include <cstdlib>
#include <string_view>

#include "simd.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#include <immintrin.h>
#define GN_HAVE_F16C_LOOPS 1
#endif

namespace groupnorm_ext {
namespace cpu {
namespace {

// 0: the clones' emulating loops; 3 or 4: the x86-64-v3 or -v4 copy of loops_half.inc.
// GROUPNORM_EXT_CPU_F16C = off / v3 forces the emulation / the 8-lane copy (read once).
int f16c_level() {
  static const int level = [] {
#ifdef GN_HAVE_F16C_LOOPS
    const char* env = std::getenv("GROUPNORM_EXT_CPU_F16C");
    const std::string_view choice = env != nullptr ? env : "";
    if (choice == "off") return 0;
    __builtin_cpu_init();
    if (choice != "v3" && __builtin_cpu_supports("x86-64-v4")) return 4;
    if (__builtin_cpu_supports("x86-64-v3")) return 3;
#endif
    return 0;
  }();
  return level;
}

}  // namespace

bool f16c_loops() { return f16c_level() != 0; }

const char* f16c_loops_isa() {
  switch (f16c_level()) {
    case 4: return "F16C (x86-64-v4 copy)";
    case 3: return "F16C (x86-64-v3 copy)";
    default: return "emulated";
  }
}

#ifdef GN_HAVE_F16C_LOOPS

namespace {
// Round to nearest even whatever MXCSR says, as c10's conversion.
constexpr int kNearestEven = _MM_FROUND_TO_NEAREST_INT;
}  // namespace

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace f16c_v3 {
namespace {

inline float load_one_half(const c10::Half* p) { return _cvtsh_ss(p->x); }
inline void store_one_half(c10::Half* p, float v) { p->x = _cvtss_sh(v, kNearestEven); }

struct Lanes {
  static constexpr int kWidth = 8;
  using vf = __m256;
  using vd = __m256d;  // half of vf's lanes, as double
  static vf load_half(const c10::Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static vf load_float(const float* p) { return _mm256_loadu_ps(p); }
  static void store_float(float* p, vf v) { _mm256_storeu_ps(p, v); }
  // Streamed when asked and the destination is 16-byte aligned.
  static void store_half(c10::Half* p, vf v, bool stream) {
    const __m128i h = _mm256_cvtps_ph(v, kNearestEven);
    if (stream && reinterpret_cast<uintptr_t>(p) % 16 == 0) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(p), h);
    } else {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
    }
  }
  // p[0, 8) rounded to float, as static_cast<float> each.
  static vf load_double_as_float(const reduce_t* p) {
    return _mm256_set_m128(_mm256_cvtpd_ps(_mm256_loadu_pd(p + 4)), _mm256_cvtpd_ps(_mm256_loadu_pd(p)));
  }
  static vd low(vf v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
  static vd high(vf v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }
  // acc[0..1] += v's lanes as doubles; p[0, 8) += the same; p[0, 8) = acc[0..1].
  static void accumulate(vd* acc, vf v) {
    acc[0] += low(v);
    acc[1] += high(v);
  }
  static void add_to_doubles(reduce_t* p, vf v) {
    _mm256_storeu_pd(p, _mm256_loadu_pd(p) + low(v));
    _mm256_storeu_pd(p + 4, _mm256_loadu_pd(p + 4) + high(v));
  }
  static void store_doubles(reduce_t* p, const vd* acc) {
    _mm256_storeu_pd(p, acc[0]);
    _mm256_storeu_pd(p + 4, acc[1]);
  }
};

}  // namespace
#include "loops_half.inc"
}  // namespace f16c_v3
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
namespace f16c_v4 {
namespace {

inline float load_one_half(const c10::Half* p) { return _cvtsh_ss(p->x); }
inline void store_one_half(c10::Half* p, float v) { p->x = _cvtss_sh(v, kNearestEven); }

struct Lanes {
  static constexpr int kWidth = 16;
  using vf = __m512;
  using vd = __m512d;
  static vf load_half(const c10::Half* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static vf load_float(const float* p) { return _mm512_loadu_ps(p); }
  static void store_float(float* p, vf v) { _mm512_storeu_ps(p, v); }
  static void store_half(c10::Half* p, vf v, bool stream) {
    const __m256i h = _mm512_cvtps_ph(v, kNearestEven);
    if (stream && reinterpret_cast<uintptr_t>(p) % 32 == 0) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(p), h);
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
    }
  }
  static vf load_double_as_float(const reduce_t* p) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(_mm512_loadu_pd(p))),
                              _mm512_cvtpd_ps(_mm512_loadu_pd(p + 8)), 1);
  }
  static vd low(vf v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
  static vd high(vf v) { return _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)); }
  static void accumulate(vd* acc, vf v) {
    acc[0] += low(v);
    acc[1] += high(v);
  }
  static void add_to_doubles(reduce_t* p, vf v) {
    _mm512_storeu_pd(p, _mm512_loadu_pd(p) + low(v));
    _mm512_storeu_pd(p + 8, _mm512_loadu_pd(p + 8) + high(v));
  }
  static void store_doubles(reduce_t* p, const vd* acc) {
    _mm512_storeu_pd(p, acc[0]);
    _mm512_storeu_pd(p + 8, acc[1]);
  }
};

}  // namespace
#include "loops_half.inc"
}  // namespace f16c_v4
#pragma GCC pop_options

// The public entry points: one branch per call on the level picked at load.
#define GN_F16C_DISPATCH(call) \
  if (f16c_level() == 4) {     \
    f16c_v4::call;             \
  } else {                     \
    f16c_v3::call;             \
  }

void half_to_float_f16c(const c10::Half* src, float* dst, int64_t n) { GN_F16C_DISPATCH(half_to_float(src, dst, n)) }
void float_to_half_f16c(const float* src, c10::Half* dst, int64_t n, bool stream) {
  GN_F16C_DISPATCH(float_to_half(src, dst, n, stream))
}
void normalize_runs_f16c(const c10::Half* x, c10::Half* y, int64_t runs, int64_t len, const float* mean,
                         const float* scale, const float* bias, bool stream) {
  GN_F16C_DISPATCH(normalize_runs(x, y, runs, len, mean, scale, bias, stream))
}
void normalize_rows_f16c(const c10::Half* x, c10::Half* y, int64_t rows, int64_t C, const float* mean,
                         const float* scale, const float* bias, bool stream) {
  GN_F16C_DISPATCH(normalize_rows(x, y, rows, C, mean, scale, bias, stream))
}
void sum_dev_rows_f16c(const c10::Half* x, int64_t rows, int64_t C, int64_t ld, const reduce_t* shift, reduce_t* sum_d,
                       reduce_t* sum_d2, bool prefetch) {
  GN_F16C_DISPATCH(sum_dev_rows(x, rows, C, ld, shift, sum_d, sum_d2, prefetch))
}
void grad_input_runs_f16c(const c10::Half* dy, const c10::Half* x, c10::Half* dx, int64_t runs, int64_t len,
                          const float* a, const float* mean, const float* rstd, const float* kxhat, const float* kc,
                          bool stream) {
  GN_F16C_DISPATCH(grad_input_runs(dy, x, dx, runs, len, a, mean, rstd, kxhat, kc, stream))
}
void grad_input_rows_f16c(const c10::Half* dy, const c10::Half* x, c10::Half* dx, int64_t rows, int64_t C,
                          const float* a, const float* mean, const float* rstd, const float* kxhat, const float* kc,
                          bool stream) {
  GN_F16C_DISPATCH(grad_input_rows(dy, x, dx, rows, C, a, mean, rstd, kxhat, kc, stream))
}
void grad_sums_rows_f16c(const c10::Half* dy, const c10::Half* x, int64_t rows, int64_t C, int64_t ld, const reduce_t* mean,
                         reduce_t* sum_dy, reduce_t* sum_dy_xc, bool from_memory) {
  GN_F16C_DISPATCH(grad_sums_rows(dy, x, rows, C, ld, mean, sum_dy, sum_dy_xc, from_memory))
}
#undef GN_F16C_DISPATCH

#else  // no F16C loops on this compiler / architecture: f16c_loops() is false, these never run

void half_to_float_f16c(const c10::Half*, float*, int64_t) { std::abort(); }
void float_to_half_f16c(const float*, c10::Half*, int64_t, bool) { std::abort(); }
void normalize_runs_f16c(const c10::Half*, c10::Half*, int64_t, int64_t, const float*, const float*, const float*,
                         bool) {
  std::abort();
}
void normalize_rows_f16c(const c10::Half*, c10::Half*, int64_t, int64_t, const float*, const float*, const float*,
                         bool) {
  std::abort();
}
void sum_dev_rows_f16c(const c10::Half*, int64_t, int64_t, int64_t, const reduce_t*, reduce_t*, reduce_t*, bool) {
  std::abort();
}
void grad_input_runs_f16c(const c10::Half*, const c10::Half*, c10::Half*, int64_t, int64_t, const float*,
                          const float*, const float*, const float*, const float*, bool) {
  std::abort();
}
void grad_input_rows_f16c(const c10::Half*, const c10::Half*, c10::Half*, int64_t, int64_t, const float*,
                          const float*, const float*, const float*, const float*, bool) {
  std::abort();
}
void grad_sums_rows_f16c(const c10::Half*, const c10::Half*, int64_t, int64_t, int64_t, const reduce_t*, reduce_t*,
                         reduce_t*, bool) {
  std::abort();
}

#endif

}  // namespace cpu
}  // namespace groupnorm_ext
