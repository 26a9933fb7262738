// Kernels of conv.h. The GEMMs run a 6×16 register tile of C over all of the
// inner dimension (broadcast A, multiply and add a 16-float row of B), and
// gemm_nt sums in the WebAssembly kernel's 4-lane order over a transposed A;
// all three give the wasm kernels' bits. GCC builds an AVX-512, an
// AVX2 and a baseline clone of each and picks one per machine at load
// (ifunc). The clones differ in vector width only (no FMA, see conv.h).
#include "conv.h"

#include <algorithm>
#include <cstring>
#include <vector>

// Defined on the command line only to build one ISA alone (checking that every clone gives the same bits).
#ifndef SYNCBN_CLONES
#define SYNCBN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif

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

namespace {
// A ROWS×16 tile of C kept in registers over all of t (6×16: 6 zmm with AVX-512,
// 12 ymm with AVX2), A broadcast, one 16-float load of B per t. Each c[i, j]
// is its old value plus u_t·b_t[j] added in t order, as the plain row update:
// the blocking changes speed, not bits.
typedef float v16 __attribute__((vector_size(64)));

__attribute__((always_inline)) inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <int ROWS>
__attribute__((always_inline)) inline void tile16(float* c, int64_t p, const float* a, int64_t aRow, int64_t aCol, const float* b, int kk) {
  v16 acc[ROWS];
  for (int r = 0; r < ROWS; r++) acc[r] = load16(c + r * p);
  for (int t = 0; t < kk; t++) {
    const v16 bv = load16(b + int64_t(t) * p);
    for (int r = 0; r < ROWS; r++) acc[r] += a[r * aRow + t * aCol] * bv;
  }
  for (int r = 0; r < ROWS; r++) std::memcpy(c + r * p, &acc[r], sizeof(v16));
}

// The row's last p mod 16 columns: the plain row update, the same order per element.
__attribute__((always_inline)) inline void tail(float* c, int64_t p, int rows, const float* a, int64_t aRow, int64_t aCol, const float* b,
                                                int kk, int64_t j0) {
  for (int r = 0; r < rows; r++)
    for (int t = 0; t < kk; t++) {
      const float u = a[r * aRow + t * aCol];
      const float* bt = b + int64_t(t) * p;
      for (int64_t j = j0; j < p; j++) c[r * p + j] += u * bt[j];
    }
}

template <int ROWS>
__attribute__((always_inline)) inline void rowBlock(float* c, int64_t p, const float* a, int64_t aRow, int64_t aCol, const float* b, int kk) {
  int64_t j = 0;
  for (; j + 16 <= p; j += 16) tile16<ROWS>(c + j, p, a, aRow, aCol, b + j, kk);
  if (j < p) tail(c, p, ROWS, a, aRow, aCol, b, kk, j);
}
}  // namespace

SYNCBN_CLONES
void gemmAcc(float* c, const float* a, int64_t aRow, int64_t aCol, const float* b, int m, int kk, int p, bool accumulate) {
  if (!accumulate) std::memset(c, 0, sizeof(float) * int64_t(m) * p);
  int i = 0;
  for (; i + 6 <= m; i += 6) rowBlock<6>(c + int64_t(i) * p, p, a + i * aRow, aRow, aCol, b, kk);
  for (; i + 2 <= m; i += 2) rowBlock<2>(c + int64_t(i) * p, p, a + i * aRow, aRow, aCol, b, kk);
  for (; i < m; i++) rowBlock<1>(c + int64_t(i) * p, p, a + i * aRow, aRow, aCol, b, kk);
}

namespace {
// gemm_nt in the WebAssembly kernel's order (wasm-kernels.ts gemm_nt), so dW has
// the same bits: each c[i, j] is 4 lanes, lane l the float32 sum in t order of
// a_i[t]·b_j[t] over t ≡ l mod 4 (from +0), then (l0 + l1) + (l2 + l3). The lanes
// of one c[i, j] are separate sums, so they vectorize across i instead: A is
// transposed (at[t, i], rows padded with zeros to 16) and a 16-float row of it,
// times b_j[t] broadcast, feeds 16 rows' lane t mod 4 at once.
constexpr int VI = 16;  // rows of A per vector
constexpr int NJ = 2;   // rows of B per block: 2 × 4 accumulators of 16 floats

template <int J>
__attribute__((always_inline)) inline void ntBlock(float* c32, const float* at, int64_t mPad, int i0, int m, const float* b, int j0, int kk,
                                                   int64_t p) {
  v16 acc[J][4];
  for (int q = 0; q < J; q++)
    for (int l = 0; l < 4; l++) acc[q][l] = v16{};
  const float* bq[J];
  for (int q = 0; q < J; q++) bq[q] = b + int64_t(j0 + q) * p;
  int64_t t = 0;
  for (; t + 4 <= p; t += 4)
    for (int l = 0; l < 4; l++) {
      const v16 av = load16(at + (t + l) * mPad + i0);
      for (int q = 0; q < J; q++) acc[q][l] += av * bq[q][t + l];
    }
  // The last p mod 4 terms go to lanes 0.. (wasm's masked step adds +0 to the rest, which changes nothing).
  for (int l = 0; t < p; t++, l++) {
    const v16 av = load16(at + t * mPad + i0);
    for (int q = 0; q < J; q++) acc[q][l] += av * bq[q][t];
  }
  for (int q = 0; q < J; q++) {
    const v16 sum = (acc[q][0] + acc[q][1]) + (acc[q][2] + acc[q][3]);
    float out[VI];
    std::memcpy(out, &sum, sizeof out);
    for (int r = 0; r < VI && i0 + r < m; r++) c32[int64_t(i0 + r) * kk + j0 + q] = out[r];
  }
}

SYNCBN_CLONES
void gemmNt(float* c32, const float* at, int64_t mPad, int m, const float* b, int kk, int64_t p) {
  for (int i0 = 0; i0 < m; i0 += VI) {
    int j = 0;
    for (; j + NJ <= kk; j += NJ) ntBlock<NJ>(c32, at, mPad, i0, m, b, j, kk, p);
    for (; j < kk; j++) ntBlock<1>(c32, at, mPad, i0, m, b, j, kk, p);
  }
}
}  // namespace

void gemmNtWiden(double* c64, float* c32, const float* a, const float* b, int m, int kk, int p, bool accumulate) {
  // A transposed into a per-thread scratch (grown, never shrunk), rows padded with zeros to a multiple of 16.
  thread_local std::vector<float> scratch;
  const int64_t mPad = (int64_t(m) + VI - 1) / VI * VI;
  if (int64_t(scratch.size()) < mPad * p) scratch.resize(mPad * p);
  float* at = scratch.data();
  for (int64_t t = 0; t < p; t++) {
    for (int i = 0; i < m; i++) at[t * mPad + i] = a[int64_t(i) * p + t];
    for (int64_t i = m; i < mPad; i++) at[t * mPad + i] = 0;
  }
  // c32 first, then one widening pass: the float32 product is the contract, the float64 sum is the caller's.
  gemmNt(c32, at, mPad, m, b, kk, p);
  const int64_t total = int64_t(m) * kk;
  if (accumulate) for (int64_t q = 0; q < total; q++) c64[q] += double(c32[q]);
  else for (int64_t q = 0; q < total; q++) c64[q] = double(c32[q]);
}

}  // namespace syncbn
