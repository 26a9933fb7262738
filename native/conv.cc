// Kernels of conv.h. The GEMMs run a 6×16 register tile of C over all of the
// inner dimension (broadcast A, multiply and add a 16-float row of B), and
// gemm_nt a 4×2 block of 16-lane dot products; GCC builds an AVX-512, an
// AVX2 and a baseline clone of each and picks one per machine at load
// (ifunc). The clones differ in vector width only (no FMA, see conv.h).
#include "conv.h"

#include <algorithm>
#include <cstring>

#define SYNCBN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

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
constexpr int LANES = 16;

// Lanes summed in a fixed tree: the same order for every clone.
inline float reduceLanes(float* lane) {
  for (int w = LANES / 2; w > 0; w /= 2)
    for (int l = 0; l < w; l++) lane[l] += lane[l + w];
  return lane[0];
}

// out[r·2 + q] = Σ_j a_r[j]·b_q[j] for 4 rows of A and 2 of B: each loaded 16-float
// chunk of A feeds 2 dot products and of B 4 (8 accumulators of 16 lanes). Every
// dot product is summed lane l over j ≡ l mod 16, then the fixed tree: the same
// order as dot() below, so blocked and tail entries round alike.
SYNCBN_CLONES
void dot4x2(float* out, const float* a, const float* b, int64_t p) {
  float acc[8][LANES] = {};
  const float* a0 = a; const float* a1 = a + p; const float* a2 = a1 + p; const float* a3 = a2 + p;
  const float* b0 = b; const float* b1 = b + p;
  int64_t j = 0;
  for (; j + LANES <= p; j += LANES)
    for (int l = 0; l < LANES; l++) {
      const float x0 = a0[j + l], x1 = a1[j + l], x2 = a2[j + l], x3 = a3[j + l], w0 = b0[j + l], w1 = b1[j + l];
      acc[0][l] += x0 * w0; acc[1][l] += x0 * w1;
      acc[2][l] += x1 * w0; acc[3][l] += x1 * w1;
      acc[4][l] += x2 * w0; acc[5][l] += x2 * w1;
      acc[6][l] += x3 * w0; acc[7][l] += x3 * w1;
    }
  for (int l = 0; j < p; j++, l++) {
    acc[0][l] += a0[j] * b0[j]; acc[1][l] += a0[j] * b1[j];
    acc[2][l] += a1[j] * b0[j]; acc[3][l] += a1[j] * b1[j];
    acc[4][l] += a2[j] * b0[j]; acc[5][l] += a2[j] * b1[j];
    acc[6][l] += a3[j] * b0[j]; acc[7][l] += a3[j] * b1[j];
  }
  for (int q = 0; q < 8; q++) out[q] = reduceLanes(acc[q]);
}

// Σ_j a[j]·b[j] in the order of dot4x2.
SYNCBN_CLONES
float dot(const float* __restrict a, const float* __restrict b, int64_t p) {
  float lane[LANES] = {};
  int64_t j = 0;
  for (; j + LANES <= p; j += LANES)
    for (int l = 0; l < LANES; l++) lane[l] += a[j + l] * b[j + l];
  for (int l = 0; j < p; j++, l++) lane[l] += a[j] * b[j];
  return reduceLanes(lane);
}
}  // namespace

void gemmNtWiden(double* c64, float* c32, const float* a, const float* b, int m, int kk, int p, bool accumulate) {
  // c32 first, then one widening pass: the float32 product is the contract, the float64 sum is the caller's.
  int i = 0;
  for (; i + 3 < m; i += 4) {
    int t = 0;
    for (; t + 1 < kk; t += 2) {
      float out[8];
      dot4x2(out, a + int64_t(i) * p, b + int64_t(t) * p, p);
      for (int r = 0; r < 4; r++) {
        c32[int64_t(i + r) * kk + t] = out[2 * r];
        c32[int64_t(i + r) * kk + t + 1] = out[2 * r + 1];
      }
    }
    for (; t < kk; t++)
      for (int r = 0; r < 4; r++) c32[int64_t(i + r) * kk + t] = dot(a + int64_t(i + r) * p, b + int64_t(t) * p, p);
  }
  for (; i < m; i++)
    for (int t = 0; t < kk; t++) c32[int64_t(i) * kk + t] = dot(a + int64_t(i) * p, b + int64_t(t) * p, p);
  const int64_t total = int64_t(m) * kk;
  if (accumulate) for (int64_t q = 0; q < total; q++) c64[q] += double(c32[q]);
  else for (int64_t q = 0; q < total; q++) c64[q] = double(c32[q]);
}

}  // namespace syncbn
