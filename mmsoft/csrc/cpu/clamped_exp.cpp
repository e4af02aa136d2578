// Vectorised exp(clamp(x, floor, 0)) for float32 (see clamped_exp.h).
//
// Method: x = n ln2 + r with n = round(x / ln2) and r in [-ln2/2, ln2/2] (ln2 split in two parts, Cody & Waite, so
// that r is exact), exp(r) = 1 + r + r^2 p(r) with the degree-5 polynomial p of Cephes' expf (S. Moshier, max error
// ~1 ulp on this interval), then the product with 2^n. The clamp puts n in [-126, 0], so 2^n is a normal number and
// is built from its exponent bits. Each vector function is compiled for its instruction set with a target attribute
// (the rest of the extension stays generic x86-64) and chosen once from the CPU's features.
#include "clamped_exp.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized inside their own set1 / undefined intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#define MMSOFT_X86_VECTOR_EXP 1
#endif

#include "../soft_attention.h"

namespace mmsoft {
namespace cpu {
namespace {

constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;      // ln 2 = kLn2Hi + kLn2Lo; kLn2Hi has 9 significant bits: n * kLn2Hi is exact
constexpr float kLn2Lo = -2.12194440e-4f;
// Cephes expf: exp(r) = 1 + r + r^2 (((((p0 r + p1) r + p2) r + p3) r + p4) r + p5)
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

// The same computation, one element at a time (tails of the vector loops).
inline float clamped_exp_scalar(float x, float floor) {
  if (std::isnan(x)) return x;
  x = std::min(std::max(x, floor), 0.0f);
  const float n = std::nearbyint(x * kLog2e);
  const float r = std::fma(-n, kLn2Lo, std::fma(-n, kLn2Hi, x));
  float p = std::fma(kP0, r, kP1);
  p = std::fma(p, r, kP2);
  p = std::fma(p, r, kP3);
  p = std::fma(p, r, kP4);
  p = std::fma(p, r, kP5);
  const float y = std::fma(p, r * r, r) + 1.0f;
  return std::ldexp(y, static_cast<int>(n));
}

#ifdef MMSOFT_X86_VECTOR_EXP
__attribute__((target("avx512f"))) void clamped_exp_avx512(float* p, int64_t count, float floor) {
  const __m512 lo = _mm512_set1_ps(floor), hi = _mm512_setzero_ps(), log2e = _mm512_set1_ps(kLog2e);
  const __m512 ln2_hi = _mm512_set1_ps(kLn2Hi), ln2_lo = _mm512_set1_ps(kLn2Lo), one = _mm512_set1_ps(1.0f);
  const __m512 p0 = _mm512_set1_ps(kP0), p1 = _mm512_set1_ps(kP1), p2 = _mm512_set1_ps(kP2),
               p3 = _mm512_set1_ps(kP3), p4 = _mm512_set1_ps(kP4), p5 = _mm512_set1_ps(kP5);
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    __m512 x = _mm512_loadu_ps(p + i);
    // max / min return their second operand when either is NaN: x last keeps a NaN.
    x = _mm512_min_ps(hi, _mm512_max_ps(lo, x));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_fnmadd_ps(n, ln2_lo, _mm512_fnmadd_ps(n, ln2_hi, x));
    __m512 y = _mm512_fmadd_ps(p0, r, p1);
    y = _mm512_fmadd_ps(y, r, p2);
    y = _mm512_fmadd_ps(y, r, p3);
    y = _mm512_fmadd_ps(y, r, p4);
    y = _mm512_fmadd_ps(y, r, p5);
    y = _mm512_add_ps(_mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r), one);
    _mm512_storeu_ps(p + i, _mm512_scalef_ps(y, n));
  }
  for (; i < count; ++i) p[i] = clamped_exp_scalar(p[i], floor);
}

__attribute__((target("avx2,fma"))) void clamped_exp_avx2(float* p, int64_t count, float floor) {
  const __m256 lo = _mm256_set1_ps(floor), hi = _mm256_setzero_ps(), log2e = _mm256_set1_ps(kLog2e);
  const __m256 ln2_hi = _mm256_set1_ps(kLn2Hi), ln2_lo = _mm256_set1_ps(kLn2Lo), one = _mm256_set1_ps(1.0f);
  const __m256 p0 = _mm256_set1_ps(kP0), p1 = _mm256_set1_ps(kP1), p2 = _mm256_set1_ps(kP2),
               p3 = _mm256_set1_ps(kP3), p4 = _mm256_set1_ps(kP4), p5 = _mm256_set1_ps(kP5);
  const __m256i bias = _mm256_set1_epi32(127);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 raw = _mm256_loadu_ps(p + i);
    const __m256 x = _mm256_min_ps(hi, _mm256_max_ps(lo, raw));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 r = _mm256_fnmadd_ps(n, ln2_lo, _mm256_fnmadd_ps(n, ln2_hi, x));
    __m256 y = _mm256_fmadd_ps(p0, r, p1);
    y = _mm256_fmadd_ps(y, r, p2);
    y = _mm256_fmadd_ps(y, r, p3);
    y = _mm256_fmadd_ps(y, r, p4);
    y = _mm256_fmadd_ps(y, r, p5);
    y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r), one);
    // 2^n for n in [-126, 0] from its exponent bits; a NaN lane (n = NaN) is restored from the input below.
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), bias), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
    _mm256_storeu_ps(p + i, _mm256_blendv_ps(y, raw, _mm256_cmp_ps(raw, raw, _CMP_UNORD_Q)));
  }
  for (; i < count; ++i) p[i] = clamped_exp_scalar(p[i], floor);
}
#endif

enum class Path { kAvx512, kAvx2, kAten };

Path detect_path() {
#ifdef MMSOFT_X86_VECTOR_EXP
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Path::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Path::kAvx2;
#endif
  return Path::kAten;
}

Path path() {
  static const Path chosen = detect_path();
  return chosen;
}

// clamped_exp_ by `loop`; ATen's clamp_ + exp_ where the loop does not take a (not float32 contiguous, the ATen
// path, or no vector loops in this build).
void run_loop(at::Tensor& a, Path loop) {
#ifdef MMSOFT_X86_VECTOR_EXP
  if (a.scalar_type() == at::kFloat && a.is_contiguous() && loop != Path::kAten) {
    const float floor = static_cast<float>(exp_floor_of(a.scalar_type()));
    if (loop == Path::kAvx512) {
      clamped_exp_avx512(a.data_ptr<float>(), a.numel(), floor);
    } else {
      clamped_exp_avx2(a.data_ptr<float>(), a.numel(), floor);
    }
    return;
  }
#endif
  (void)loop;
  a.clamp_(exp_floor_of(a.scalar_type()), 0).exp_();
}

const char* path_name(Path loop) {
  switch (loop) {
    case Path::kAvx512:
      return "avx512";
    case Path::kAvx2:
      return "avx2";
    default:
      return "aten";
  }
}

}  // namespace

void clamped_exp_(at::Tensor& a) { run_loop(a, path()); }

const char* clamped_exp_path() { return path_name(path()); }

void clamped_exp_by_(at::Tensor& a, const std::string& loop) {
  for (Path candidate : {Path::kAvx512, Path::kAvx2, Path::kAten}) {
    if (loop != path_name(candidate)) continue;
    // A wider loop than detected is refused; a narrower one runs (AVX-512F CPUs have AVX2 and FMA).
    TORCH_CHECK(static_cast<int>(candidate) >= static_cast<int>(path()), "mmsoft clamped_exp: this CPU cannot run the ",
                loop, " loop (it runs ", path_name(path()), ")");
    run_loop(a, candidate);
    return;
  }
  TORCH_CHECK(false, "mmsoft clamped_exp: loop must be 'auto', 'avx512', 'avx2' or 'aten', got '", loop, "'");
}

}  // namespace cpu
}  // namespace mmsoft
