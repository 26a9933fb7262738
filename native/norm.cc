// Batch normalization's passes over (N, C, S) float32 rows on caller memory, the
// order of shared/stats.ts exactly (see norm.h). The reductions keep one float64
// chain per row, summed from 0 element after element, and ROWS rows side by side
// so the chains overlap; each row's total is then added to its channel in row
// order. The elementwise passes are plain float64 loops, vectorized by the
// compiler (lane-wise IEEE operations: the same bits at any width).
#pragma GCC optimize("fp-contract=off")

#include <cmath>

#include "norm.h"

#define SYNCBN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

namespace syncbn {

namespace {

// Row r's statistics into dst: OUT outputs per row, `term(k, j, out)` the terms of row k's element j.
template <int ROWS, int OUT, class Term>
inline void reduceGroup(double (&acc)[OUT][ROWS], int64_t s, const Term& term) {
  for (int o = 0; o < OUT; o++)
    for (int k = 0; k < ROWS; k++) acc[o][k] = 0;
  for (int64_t j = 0; j < s; j++) {
    for (int k = 0; k < ROWS; k++) {
      double t[OUT];
      term(k, j, t);
      for (int o = 0; o < OUT; o++) acc[o][k] += t[o];
    }
  }
}

// Σ over each row (i, ch) of term(row pointer(s), j), added to dst[o·c + ch] in row order.
template <int ROWS, int OUT, class Term>
inline void reduceRows(double* dst, int64_t n, int64_t c, int64_t s, const Term& term) {
  const int64_t rows = n * c;
  int64_t r = 0;
  for (; r + ROWS <= rows; r += ROWS) {
    double acc[OUT][ROWS];
    reduceGroup<ROWS, OUT>(acc, s, [&](int k, int64_t j, double* t) { term(r + k, j, t); });
    for (int k = 0; k < ROWS; k++)
      for (int o = 0; o < OUT; o++) dst[o * c + (r + k) % c] += acc[o][k];
  }
  for (; r < rows; r++) {
    double acc[OUT][1];
    reduceGroup<1, OUT>(acc, s, [&](int, int64_t j, double* t) { term(r, j, t); });
    for (int o = 0; o < OUT; o++) dst[o * c + r % c] += acc[o][0];
  }
}

SYNCBN_CLONES void sumRows(double* dst, const float* x, int64_t n, int64_t c, int64_t s) {
  reduceRows<8, 1>(dst, n, c, s, [&](int64_t r, int64_t j, double* t) { t[0] = double(x[r * s + j]); });
}

SYNCBN_CLONES void sqdevRows(double* dst, const float* x, const double* mean, int64_t n, int64_t c, int64_t s) {
  reduceRows<8, 1>(dst, n, c, s, [&](int64_t r, int64_t j, double* t) {
    const double d = double(x[r * s + j]) - mean[r % c];
    t[0] = d * d;
  });
}

SYNCBN_CLONES void gradSumRows(double* out, const float* dy, const float* xhat, int64_t n, int64_t c, int64_t s) {
  reduceRows<4, 2>(out, n, c, s, [&](int64_t r, int64_t j, double* t) {
    const double g = double(dy[r * s + j]);
    t[0] = g;
    t[1] = g * double(xhat[r * s + j]);
  });
}

}  // namespace

void bnMoments(double* mean, double* m2, const float* x, int64_t n, int64_t c, int64_t s) {
  for (int64_t ch = 0; ch < c; ch++) mean[ch] = m2[ch] = 0;
  const int64_t count = n * s;
  if (count == 0) return;
  sumRows(mean, x, n, c, s);
  for (int64_t ch = 0; ch < c; ch++) mean[ch] /= double(count);
  sqdevRows(m2, x, mean, n, c, s);
}

SYNCBN_CLONES void bnNormalize(float* y, float* xhat, const float* x, const double* mean, const double* invStd, const float* gamma,
                               const float* beta, int64_t n, int64_t c, int64_t s) {
  for (int64_t i = 0; i < n; i++) {
    for (int64_t ch = 0; ch < c; ch++) {
      const int64_t base = (i * c + ch) * s;
      const double mu = mean[ch], is = invStd[ch], g = gamma[ch], b = beta[ch];
      for (int64_t j = 0; j < s; j++) {
        const double h = (double(x[base + j]) - mu) * is;
        xhat[base + j] = float(h);
        y[base + j] = float(g * h + b);
      }
    }
  }
}

void bnGradSums(double* out, const float* dy, const float* xhat, int64_t n, int64_t c, int64_t s) {
  for (int64_t k = 0; k < 2 * c; k++) out[k] = 0;
  gradSumRows(out, dy, xhat, n, c, s);
}

SYNCBN_CLONES void bnDx(float* dx, const float* dy, const float* xhat, const double* sums, double count, const double* invStd,
                        const float* gamma, int64_t n, int64_t c, int64_t s) {
  for (int64_t i = 0; i < n; i++) {
    for (int64_t ch = 0; ch < c; ch++) {
      const int64_t base = (i * c + ch) * s;
      const double k = double(gamma[ch]) * invStd[ch], a = sums[ch] / count, b = sums[c + ch] / count;
      for (int64_t j = 0; j < s; j++) dx[base + j] = float(k * ((double(dy[base + j]) - a) - double(xhat[base + j]) * b));
    }
  }
}

SYNCBN_CLONES void bnEval(float* y, const float* x, const double* mean, const double* var, const float* gamma, const float* beta, double eps,
                          int64_t n, int64_t c, int64_t s) {
  for (int64_t ch = 0; ch < c; ch++) {
    const double k = double(gamma[ch]) / std::sqrt(var[ch] + eps), mu = mean[ch], b = beta[ch];
    for (int64_t i = 0; i < n; i++) {
      const int64_t base = (i * c + ch) * s;
      for (int64_t j = 0; j < s; j++) y[base + j] = float((double(x[base + j]) - mu) * k + b);
    }
  }
}

}  // namespace syncbn
