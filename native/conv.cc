// Kernels of conv.h. The GEMMs are row updates on a 4-row register block
// (broadcast 4 values of A, multiply-add into 4 rows of C from one row of B), so the
// inner loop is contiguous and vectorizes; GCC builds an AVX-512, an AVX2+FMA
// and a baseline clone of each and picks one per machine at load (ifunc).
#include "conv.h"

#include <algorithm>
#include <cstring>

#define SYNCBN_CLONES __attribute__((target_clones("avx512f", "avx2,fma", "default")))

namespace syncbn {

namespace {
// First output column ow with ow·s − pad + kw ≥ 0, and one past the last inside inW (never below first).
int firstValid(int kw, int s, int pad) { return std::max(0, (pad - kw + s - 1 >= 0 ? (pad - kw + s - 1) / s : 0)); }
int endValid(int kw, int s, int pad, int inW, int outW, int first) {
  const int num = inW - 1 + pad - kw;
  const int last = num >= 0 ? num / s + 1 : 0;
  return std::max(first, std::min(outW, last));
}
}  // namespace

void im2col(float* cols, const float* x, const Geometry& g) {
  const int k = g.kernel, s = g.stride, pad = g.padding, outW = g.outW;
  const int64_t plane = int64_t(g.outH) * outW;
  for (int ci = 0; ci < g.cin; ci++)
    for (int kh = 0; kh < k; kh++)
      for (int kw = 0; kw < k; kw++) {
        float* row = cols + (int64_t(ci * k + kh) * k + kw) * plane;
        const int lo = firstValid(kw, s, pad), hi = endValid(kw, s, pad, g.inW, outW, lo);
        for (int oh = 0; oh < g.outH; oh++) {
          float* dst = row + int64_t(oh) * outW;
          const int ih = oh * s - pad + kh;
          if (ih < 0 || ih >= g.inH) {
            std::memset(dst, 0, sizeof(float) * outW);
            continue;
          }
          const float* src = x + (int64_t(ci) * g.inH + ih) * g.inW - pad + kw;
          for (int ow = 0; ow < lo; ow++) dst[ow] = 0;
          if (s == 1) std::memcpy(dst + lo, src + lo, sizeof(float) * (hi - lo));
          else for (int ow = lo; ow < hi; ow++) dst[ow] = src[int64_t(ow) * s];
          for (int ow = hi; ow < outW; ow++) dst[ow] = 0;
        }
      }
}

void col2imAdd(float* dx, const float* dcols, const Geometry& g) {
  const int k = g.kernel, s = g.stride, pad = g.padding, outW = g.outW;
  const int64_t plane = int64_t(g.outH) * outW;
  for (int ci = 0; ci < g.cin; ci++)
    for (int kh = 0; kh < k; kh++)
      for (int kw = 0; kw < k; kw++) {
        const float* row = dcols + (int64_t(ci * k + kh) * k + kw) * plane;
        const int lo = firstValid(kw, s, pad), hi = endValid(kw, s, pad, g.inW, outW, lo);
        for (int oh = 0; oh < g.outH; oh++) {
          const int ih = oh * s - pad + kh;
          if (ih < 0 || ih >= g.inH) continue;
          const float* src = row + int64_t(oh) * outW;
          float* dst = dx + (int64_t(ci) * g.inH + ih) * g.inW - pad + kw;
          for (int ow = lo; ow < hi; ow++) dst[int64_t(ow) * s] += src[ow];
        }
      }
}

SYNCBN_CLONES
void gemmAcc(float* c, const float* a, int64_t aRow, int64_t aCol, const float* b, int m, int kk, int p, bool accumulate) {
  if (!accumulate) std::memset(c, 0, sizeof(float) * int64_t(m) * p);
  int i = 0;
  for (; i + 3 < m; i += 4) {
    float* __restrict c0 = c + int64_t(i) * p;
    float* __restrict c1 = c0 + p;
    float* __restrict c2 = c1 + p;
    float* __restrict c3 = c2 + p;
    const float* ai = a + i * aRow;
    for (int t = 0; t < kk; t++) {
      const float u0 = ai[t * aCol], u1 = ai[aRow + t * aCol], u2 = ai[2 * aRow + t * aCol], u3 = ai[3 * aRow + t * aCol];
      const float* __restrict bt = b + int64_t(t) * p;
      for (int j = 0; j < p; j++) {
        const float w = bt[j];
        c0[j] += u0 * w;
        c1[j] += u1 * w;
        c2[j] += u2 * w;
        c3[j] += u3 * w;
      }
    }
  }
  for (; i < m; i++) {
    float* __restrict c0 = c + int64_t(i) * p;
    const float* ai = a + i * aRow;
    for (int t = 0; t < kk; t++) {
      const float u0 = ai[t * aCol];
      const float* __restrict bt = b + int64_t(t) * p;
      for (int j = 0; j < p; j++) c0[j] += u0 * bt[j];
    }
  }
}

namespace {
// Σ_j a[j]·b[j] in 16 lanes summed in a fixed tree: a fixed order, so run-to-run the same bits.
SYNCBN_CLONES
float dot(const float* __restrict a, const float* __restrict b, int p) {
  float lane[16] = {0};
  int j = 0;
  for (; j + 15 < p; j += 16)
    for (int l = 0; l < 16; l++) lane[l] += a[j + l] * b[j + l];
  for (int l = 0; j < p; j++, l++) lane[l] += a[j] * b[j];
  for (int w = 8; w > 0; w /= 2)
    for (int l = 0; l < w; l++) lane[l] += lane[l + w];
  return lane[0];
}
}  // namespace

void gemmNtWiden(double* c64, float* c32, const float* a, const float* b, int m, int kk, int p, bool accumulate) {
  for (int i = 0; i < m; i++) {
    const float* ai = a + int64_t(i) * p;
    float* ci = c32 + int64_t(i) * kk;
    double* di = c64 + int64_t(i) * kk;
    for (int t = 0; t < kk; t++) {
      const float v = dot(ai, b + int64_t(t) * p, p);
      ci[t] = v;
      di[t] = accumulate ? di[t] + double(v) : double(v);
    }
  }
}

}  // namespace syncbn
