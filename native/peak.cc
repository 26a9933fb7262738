// The FMA peak of one core, for the bench (bench/native-conv.ts): 12 independent
// chains of vector FMAs (enough to cover the FMA latency on two ports), the widest
// the CPU has (AVX-512 or AVX2+FMA, chosen at run time), run until `seconds` of
// this thread's CPU time have passed (CPU time, not wall time: on a shared machine
// the peak per core-second is what the conv kernels' CPU time is compared with).
// This is the ceiling the conv GEMMs' GFLOP/s are reported against. Not used in training.
#include <time.h>

#include <cstdint>

#include "conv.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace syncbn {
#if defined(__x86_64__)
namespace {

constexpr int CHAINS = 12;

__attribute__((target("avx512f"))) double chains512(int64_t iters) {
  __m512 acc[CHAINS];
  for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps(1e-3f * float(i));
  const __m512 a = _mm512_set1_ps(0.9999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t t = 0; t < iters; t++)
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  float out[16];
  __m512 s = acc[0];
  for (int i = 1; i < CHAINS; i++) s = _mm512_add_ps(s, acc[i]);
  _mm512_storeu_ps(out, s);
  return out[0];
}

__attribute__((target("avx2,fma"))) double chains256(int64_t iters) {
  __m256 acc[CHAINS];
  for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_set1_ps(1e-3f * float(i));
  const __m256 a = _mm256_set1_ps(0.9999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t t = 0; t < iters; t++)
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  float out[8];
  __m256 s = acc[0];
  for (int i = 1; i < CHAINS; i++) s = _mm256_add_ps(s, acc[i]);
  _mm256_storeu_ps(out, s);
  return out[0];
}

}  // namespace

double fmaPeakGflops(double seconds, const char** isa) {
  __builtin_cpu_init();
  int lanes;
  double (*run)(int64_t);
  if (__builtin_cpu_supports("avx512f")) {
    lanes = 16, run = chains512, *isa = "avx512f";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    lanes = 8, run = chains256, *isa = "avx2+fma";
  } else {
    *isa = "none";
    return 0;
  }
  const auto cpuSeconds = [] {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  };
  volatile double sink = 0;
  for (int64_t iters = 1 << 16;; iters *= 2) {
    const double t0 = cpuSeconds();
    sink = sink + run(iters);
    const double s = cpuSeconds() - t0;
    if (s >= seconds || iters >= (int64_t(1) << 40)) return 2.0 * lanes * CHAINS * double(iters) / s / 1e9;
  }
}
#else
double fmaPeakGflops(double, const char** isa) {
  *isa = "none";
  return 0;
}
#endif

}  // namespace syncbn
