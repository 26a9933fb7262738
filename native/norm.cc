// Batch normalization's passes over (N, C, S) float32 rows on caller memory, the
// order of shared/stats.ts exactly (see norm.h). The reductions keep one float64
// chain per row, summed from 0 element after element, and ROWS rows side by side
// so the chains overlap; each row's total is then added to its channel in row
// order. The elementwise passes are plain float64 loops, vectorized by the
// compiler (lane-wise IEEE operations: the same bits at any width).
#pragma GCC optimize("fp-contract=off")

#include <algorithm>
#include <cmath>
#include <vector>

#include "norm.h"

#include "clones.h"

namespace syncbn {

namespace {

// Four rows side by side: lane k of a v4d is row k's value. Loads take 4 floats of
// each of 4 rows, widen them and transpose, so cols[t] holds the 4 rows' column j + t:
// every lane still adds its own row's elements in order (the twins' sums exactly).
typedef float v4f __attribute__((vector_size(16)));
typedef double v4d __attribute__((vector_size(32)));
typedef long long v4i __attribute__((vector_size(32)));

inline v4d widen4(const float* p) {
  v4f f;
  __builtin_memcpy(&f, p, sizeof f);
  return __builtin_convertvector(f, v4d);
}

// cols[t] = (r0[j + t], r1[j + t], r2[j + t], r3[j + t]) for rows at p, p + s, p + 2s, p + 3s.
inline void columns4(const float* p, int64_t s, int64_t j, v4d (&cols)[4]) {
  const v4d a = widen4(p + j), b = widen4(p + s + j), c = widen4(p + 2 * s + j), d = widen4(p + 3 * s + j);
  const v4d abLo = __builtin_shuffle(a, b, v4i{0, 4, 2, 6}), abHi = __builtin_shuffle(a, b, v4i{1, 5, 3, 7});
  const v4d cdLo = __builtin_shuffle(c, d, v4i{0, 4, 2, 6}), cdHi = __builtin_shuffle(c, d, v4i{1, 5, 3, 7});
  cols[0] = __builtin_shuffle(abLo, cdLo, v4i{0, 1, 4, 5});
  cols[1] = __builtin_shuffle(abHi, cdHi, v4i{0, 1, 4, 5});
  cols[2] = __builtin_shuffle(abLo, cdLo, v4i{2, 3, 6, 7});
  cols[3] = __builtin_shuffle(abHi, cdHi, v4i{2, 3, 6, 7});
}

// Rows r0..r1−1 of (N·C, S), in blocks of 4·BLOCKS rows or one at a time: `vec(r, block, chs, j, acc)`
// adds columns j..j+3 of the block's rows (channels chs[0..3]) to its accumulators, `one(r, ch, j, acc)`
// one element of row r (channel ch) to its scalar accumulators. Each row's OUT totals go to
// tot[r·OUT + o]: a row's chain does not depend on which rows share its block or its thread, so any
// split of the rows gives the same totals. The channel of a row is counted along, not divided out
// (rows of S = 1 made divisions the cost).
template <int OUT, int BLOCKS, class Vec, class One>
inline void rowTotals(double* tot, int64_t r0, int64_t r1, int64_t c, int64_t s, const Vec& vec, const One& one) {
  const int64_t s4 = s - s % 4;
  int64_t r = r0, ch = r0 % c;  // ch = r mod c
  const auto advance = [c](int64_t& x) {
    if (++x == c) x = 0;
  };
  for (; r + 4 * BLOCKS <= r1; r += 4 * BLOCKS) {
    int64_t chs[4 * BLOCKS];
    for (int k = 0; k < 4 * BLOCKS; k++) {
      chs[k] = ch;
      advance(ch);
    }
    v4d acc[BLOCKS][OUT] = {};
    for (int64_t j = 0; j < s4; j += 4)
      for (int b = 0; b < BLOCKS; b++) vec(r + 4 * b, b, chs + 4 * b, j, acc[b]);
    for (int k = 0; k < 4 * BLOCKS; k++) {
      double a[OUT];
      for (int o = 0; o < OUT; o++) a[o] = acc[k / 4][o][k % 4];
      for (int64_t j = s4; j < s; j++) one(r + k, chs[k], j, a);
      for (int o = 0; o < OUT; o++) tot[(r + k) * OUT + o] = a[o];
    }
  }
  for (; r < r1; r++, advance(ch)) {
    double a[OUT] = {};
    for (int64_t j = 0; j < s; j++) one(r, ch, j, a);
    for (int o = 0; o < OUT; o++) tot[r * OUT + o] = a[o];
  }
}

// dst[o·c + ch] += tot[r·OUT + o] for the rows in order (each channel's rows in sample order: the twins' sums).
template <int OUT>
void addTotals(double* dst, const double* tot, int64_t rows, int64_t c) {
  for (int64_t r = 0, ch = 0; r < rows; r++) {
    for (int o = 0; o < OUT; o++) dst[o * c + ch] += tot[r * OUT + o];
    if (++ch == c) ch = 0;
  }
}

SYNCBN_CLONES void sumRows(double* tot, const float* x, int64_t r0, int64_t r1, int64_t c, int64_t s) {
  rowTotals<1, 2>(
      tot, r0, r1, c, s,
      [&](int64_t r, int, const int64_t*, int64_t j, v4d* acc) {
        v4d t[4];
        columns4(x + r * s, s, j, t);
        acc[0] += t[0];
        acc[0] += t[1];
        acc[0] += t[2];
        acc[0] += t[3];
      },
      [&](int64_t r, int64_t, int64_t j, double* a) { a[0] += double(x[r * s + j]); });
}

SYNCBN_CLONES void sqdevRows(double* tot, const float* x, const double* mean, int64_t r0, int64_t r1, int64_t c, int64_t s) {
  v4d mu[2];  // the group's rows' means, set when its first columns come
  rowTotals<1, 2>(
      tot, r0, r1, c, s,
      [&](int64_t r, int block, const int64_t* chs, int64_t j, v4d* acc) {
        if (j == 0) mu[block] = v4d{mean[chs[0]], mean[chs[1]], mean[chs[2]], mean[chs[3]]};
        v4d t[4];
        columns4(x + r * s, s, j, t);
        for (int k = 0; k < 4; k++) {
          const v4d d = t[k] - mu[block];
          acc[0] += d * d;
        }
      },
      [&](int64_t r, int64_t ch, int64_t j, double* a) {
        const double d = double(x[r * s + j]) - mean[ch];
        a[0] += d * d;
      });
}

SYNCBN_CLONES void gradSumRows(double* tot, const float* dy, const float* xhat, int64_t r0, int64_t r1, int64_t c, int64_t s) {
  rowTotals<2, 1>(
      tot, r0, r1, c, s,
      [&](int64_t r, int, const int64_t*, int64_t j, v4d* acc) {
        v4d g[4], h[4];
        columns4(dy + r * s, s, j, g);
        columns4(xhat + r * s, s, j, h);
        for (int k = 0; k < 4; k++) {
          acc[0] += g[k];
          acc[1] += g[k] * h[k];
        }
      },
      [&](int64_t r, int64_t, int64_t j, double* a) {
        const double g = double(dy[r * s + j]);
        a[0] += g;
        a[1] += g * double(xhat[r * s + j]);
      });
}

// S = 1 ((N, C) input after a Linear): each row is one value, its sum 0 + value
// (kept: +0 for −0, as the twins get), added per channel in sample order; these
// loops run along channels, so the compiler vectorizes them. One thread: C·N values.
SYNCBN_CLONES void sumColumns(double* dst, const float* x, int64_t n, int64_t c) {
  for (int64_t i = 0; i < n; i++)
    for (int64_t ch = 0; ch < c; ch++) dst[ch] += 0.0 + double(x[i * c + ch]);
}

SYNCBN_CLONES void sqdevColumns(double* dst, const float* x, const double* mean, int64_t n, int64_t c) {
  for (int64_t i = 0; i < n; i++)
    for (int64_t ch = 0; ch < c; ch++) {
      const double d = double(x[i * c + ch]) - mean[ch];
      dst[ch] += 0.0 + d * d;
    }
}

SYNCBN_CLONES void gradSumColumns(double* out, const float* dy, const float* xhat, int64_t n, int64_t c) {
  for (int64_t i = 0; i < n; i++)
    for (int64_t ch = 0; ch < c; ch++) {
      const double g = dy[i * c + ch];
      out[ch] += 0.0 + g;
      out[c + ch] += 0.0 + g * double(xhat[i * c + ch]);
    }
}

// A pass over rows (i, ch) of S elements runs in chunks of about this many elements (a smaller pass: one chunk, on
// the calling thread alone).
constexpr int64_t GRAIN_ELEMENTS = 32768;

int64_t grainRows(int64_t s) { return (GRAIN_ELEMENTS + s - 1) / std::max<int64_t>(s, 1); }

// The reduction's rows' totals on t's threads, then added to dst in row order on this thread.
template <int OUT, class Rows>
void reduce(double* dst, int64_t n, int64_t c, int64_t s, const Threads& t, const Rows& rows) {
  const int64_t count = n * c;
  thread_local std::vector<double> totBuf;
  if (int64_t(totBuf.size()) < count * OUT) totBuf.resize(count * OUT);
  double* tot = totBuf.data();
  splitOver(t, count, grainRows(s), [&](int64_t r0, int64_t r1) { rows(tot, r0, r1); });
  addTotals<OUT>(dst, tot, count, c);
}

}  // namespace

void bnMoments(double* mean, double* m2, const float* x, int64_t n, int64_t c, int64_t s, const Threads& t) {
  for (int64_t ch = 0; ch < c; ch++) mean[ch] = m2[ch] = 0;
  const int64_t count = n * s;
  if (count == 0) return;
  if (s == 1) sumColumns(mean, x, n, c);
  else reduce<1>(mean, n, c, s, t, [&](double* tot, int64_t r0, int64_t r1) { sumRows(tot, x, r0, r1, c, s); });
  for (int64_t ch = 0; ch < c; ch++) mean[ch] /= double(count);
  if (s == 1) sqdevColumns(m2, x, mean, n, c);
  else reduce<1>(m2, n, c, s, t, [&](double* tot, int64_t r0, int64_t r1) { sqdevRows(tot, x, mean, r0, r1, c, s); });
}

namespace {
// Rows r0..r1−1 of the elementwise passes (row r = (i, ch), its S elements at r·S).
SYNCBN_CLONES void normalizeRows(float* y, float* xhat, const float* x, const double* mean, const double* invStd, const float* gamma,
                                 const float* beta, int64_t r0, int64_t r1, int64_t c, int64_t s) {
  for (int64_t r = r0, ch = r0 % c; r < r1; r++, ch = ch + 1 == c ? 0 : ch + 1) {
    const int64_t base = r * s;
    const double mu = mean[ch], is = invStd[ch], g = gamma[ch], b = beta[ch];
    for (int64_t j = 0; j < s; j++) {
      const double h = (double(x[base + j]) - mu) * is;
      xhat[base + j] = float(h);
      y[base + j] = float(g * h + b);
    }
  }
}

SYNCBN_CLONES void dxRows(float* dx, const float* dy, const float* xhat, const double* sums, double count, const double* invStd,
                          const float* gamma, int64_t r0, int64_t r1, int64_t c, int64_t s) {
  for (int64_t r = r0, ch = r0 % c; r < r1; r++, ch = ch + 1 == c ? 0 : ch + 1) {
    const int64_t base = r * s;
    const double k = double(gamma[ch]) * invStd[ch], a = sums[ch] / count, b = sums[c + ch] / count;
    for (int64_t j = 0; j < s; j++) dx[base + j] = float(k * ((double(dy[base + j]) - a) - double(xhat[base + j]) * b));
  }
}

SYNCBN_CLONES void evalRows(float* y, const float* x, const double* mean, const double* var, const float* gamma, const float* beta,
                            double eps, int64_t r0, int64_t r1, int64_t c, int64_t s) {
  for (int64_t r = r0, ch = r0 % c; r < r1; r++, ch = ch + 1 == c ? 0 : ch + 1) {
    const int64_t base = r * s;
    const double k = double(gamma[ch]) / std::sqrt(var[ch] + eps), mu = mean[ch], b = beta[ch];
    for (int64_t j = 0; j < s; j++) y[base + j] = float((double(x[base + j]) - mu) * k + b);
  }
}
}  // namespace

void bnNormalize(float* y, float* xhat, const float* x, const double* mean, const double* invStd, const float* gamma, const float* beta,
                 int64_t n, int64_t c, int64_t s, const Threads& t) {
  splitOver(t, n * c, grainRows(s), [&](int64_t r0, int64_t r1) { normalizeRows(y, xhat, x, mean, invStd, gamma, beta, r0, r1, c, s); });
}

void bnGradSums(double* out, const float* dy, const float* xhat, int64_t n, int64_t c, int64_t s, const Threads& t) {
  for (int64_t k = 0; k < 2 * c; k++) out[k] = 0;
  if (s == 1) gradSumColumns(out, dy, xhat, n, c);
  else reduce<2>(out, n, c, s, t, [&](double* tot, int64_t r0, int64_t r1) { gradSumRows(tot, dy, xhat, r0, r1, c, s); });
}

void bnDx(float* dx, const float* dy, const float* xhat, const double* sums, double count, const double* invStd, const float* gamma,
          int64_t n, int64_t c, int64_t s, const Threads& t) {
  splitOver(t, n * c, grainRows(s), [&](int64_t r0, int64_t r1) { dxRows(dx, dy, xhat, sums, count, invStd, gamma, r0, r1, c, s); });
}

void bnEval(float* y, const float* x, const double* mean, const double* var, const float* gamma, const float* beta, double eps,
            int64_t n, int64_t c, int64_t s, const Threads& t) {
  splitOver(t, n * c, grainRows(s), [&](int64_t r0, int64_t r1) { evalRows(y, x, mean, var, gamma, beta, eps, r0, r1, c, s); });
}

}  // namespace syncbn
