// Linear's passes (linear.h): the GEMMs of gemm.h on strided views of the caller's
// arrays, in parts of output columns over the pool's threads (pool.h). A part
// holds whole elements' sums, and gemm.h's bits do not depend on the columns a
// call covers, so the bits are the same for any number of threads.
#include "linear.h"

#include <algorithm>
#include <vector>

#include "gemm.h"

// One FMA a lane (vfmadd: zmm with AVX-512, ymm with FMA3) where the CPU has it, libm's fmaf
// elsewhere: correctly rounded everywhere, so the same bits on every clone.
#if defined(__x86_64__)
#define SYNCBN_FUSED_CLONES __attribute__((target_clones("avx512f", "fma", "default")))
#else
#define SYNCBN_FUSED_CLONES
#endif

namespace syncbn {

namespace {
// Columns per part: fewer would spend more on packing panels than they save.
constexpr int64_t MIN_PART_COLUMNS = 64;

// f(lo, hi) over the columns [0, total) in up to t.count parts of at least MIN_PART_COLUMNS.
template <class F>
void columnParts(const Threads& t, int64_t total, const F& f) {
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(t.count, total / MIN_PART_COLUMNS));
  if (parts <= 1 || !t.pool) {
    if (total > 0) f(int64_t(0), total);
    return;
  }
  t.pool->run(t.count, parts, [&](int64_t p) { f(total * p / parts, total * (p + 1) / parts); });
}

// Segments of at most this many samples take segmentGradsFused: a GEMM call with an inner
// dimension this small is mostly overhead, and each segment's product passed through memory.
constexpr int64_t FUSED_SEGMENT_SAMPLES = 4;
// segmentGradsFused's columns per block: a row's float32 chain and float64 sum stay in L1.
constexpr int64_t FUSED_BLOCK = 512;

// sum[r][j] += float64(chain_rj) for R rows r and j < w, chain_rj = the GEMM's sum of B products
// from +0 (one FMA per sample in order, gemm.h): a[r·B + i] row r's dy value of sample i, x + i·in the
// samples' rows. R and B fixed, so the chains stay in registers and each x value is loaded once for R rows.
template <int R, int B>
SYNCBN_FUSED_CLONES void addSegmentRows(double* const* sum, const float* a, const float* __restrict x, int64_t in, int64_t w) {
  double* __restrict s0 = sum[0];
  double* __restrict s1 = sum[R > 1 ? 1 : 0];
  double* __restrict s2 = sum[R > 2 ? 2 : 0];
  double* __restrict s3 = sum[R > 3 ? 3 : 0];
  for (int64_t j = 0; j < w; j++) {
    float acc[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
#pragma GCC unroll 4
    for (int i = 0; i < B; i++) {
      const float xv = x[i * in + j];
#pragma GCC unroll 4
      for (int r = 0; r < R; r++) acc[r] = __builtin_fmaf(a[r * B + i], xv, acc[r]);
    }
    s0[j] += double(acc[0]);
    if (R > 1) s1[j] += double(acc[R > 1 ? 1 : 0]);
    if (R > 2) s2[j] += double(acc[R > 2 ? 2 : 0]);
    if (R > 3) s3[j] += double(acc[R > 3 ? 3 : 0]);
  }
}

template <int B>
void addSegment(int64_t rows, double* const* sum, const float* a, const float* x, int64_t in, int64_t w) {
  switch (rows) {
    case 1: addSegmentRows<1, B>(sum, a, x, in, w); break;
    case 2: addSegmentRows<2, B>(sum, a, x, in, w); break;
    case 3: addSegmentRows<3, B>(sum, a, x, in, w); break;
    default: addSegmentRows<4, B>(sum, a, x, in, w); break;
  }
}

// linearSegmentGrads for segments of b ≤ FUSED_SEGMENT_SAMPLES samples, columns k0..k1−1: each element
// of a segment's dW made as the GEMM path makes it and added to the float64 sum at once, segment by
// segment, 4 rows of dW at a time in blocks of columns whose sums stay in L1: the same bits as the GEMM path.
void segmentGradsFused(double* dw64, float* dw, const float* dy, const float* x, int64_t segments, int64_t b, int64_t in, int64_t out,
                       int64_t k0, int64_t k1) {
  float a[4 * FUSED_SEGMENT_SAMPLES];
  double* sum[4];
  for (int64_t c0 = k0; c0 < k1; c0 += FUSED_BLOCK) {
    const int64_t w = std::min(k1 - c0, FUSED_BLOCK);
    for (int64_t o0 = 0; o0 < out; o0 += 4) {
      const int64_t rows = std::min<int64_t>(4, out - o0);
      for (int64_t r = 0; r < rows; r++) {
        sum[r] = dw64 + (o0 + r) * in + c0;
        std::fill(sum[r], sum[r] + w, 0.0);
      }
      for (int64_t s = 0; s < segments; s++) {
        for (int64_t r = 0; r < rows; r++)
          for (int64_t i = 0; i < b; i++) a[r * b + i] = dy[(s * b + i) * out + o0 + r];
        const float* xs = x + s * b * in + c0;
        switch (b) {
          case 1: addSegment<1>(rows, sum, a, xs, in, w); break;
          case 2: addSegment<2>(rows, sum, a, xs, in, w); break;
          case 3: addSegment<3>(rows, sum, a, xs, in, w); break;
          default: addSegment<4>(rows, sum, a, xs, in, w); break;
        }
      }
      for (int64_t r = 0; r < rows; r++) {
        float* d = dw + (o0 + r) * in + c0;
        for (int64_t j = 0; j < w; j++) d[j] = float(sum[r][j]);
      }
    }
  }
}
}  // namespace

void linearForward(float* y, const float* x, const float* w, const float* b, int64_t n, int64_t in, int64_t out, const Threads& t) {
  if (n == 0) return;
  columnParts(t, out, [&](int64_t o0, int64_t o1) {
    for (int64_t i = 0; i < n; i++) std::copy(b + o0, b + o1, y + i * out + o0);
    // y[:, o0..o1) (n, o1−o0) += x (n, in)·Wᵀ[:, o0..o1): Wᵀ's element (k, o) is w[o·in + k].
    gemm(View::plain(y + o0, out, 1), View::plain(x, in, 1), View::plain(w + o0 * in, 1, in), n, o1 - o0, in, true);
  });
}

void linearBackward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int64_t first, int64_t count,
                    int64_t in, int64_t out, const Threads& t) {
  const float* dys = dy + first * out;
  const float* xs = x + first * in;
  if (dx && count > 0)
    // dx rows (count, in) = dy (count, out)·W (out, in), by columns of in.
    columnParts(t, in, [&](int64_t k0, int64_t k1) {
      gemm(View::plain(dx + first * in + k0, in, 1), View::plain(dys, out, 1), View::plain(w + k0, in, 1), count, k1 - k0, out, false);
    });
  if (dw) {
    if (count == 0) std::fill(dw, dw + out * in, 0.0f);
    else
      // dW (out, in) = dyᵀ (out, count)·x (count, in): dyᵀ's element (o, i) is dy[i·out + o]; by columns of in.
      columnParts(t, in, [&](int64_t k0, int64_t k1) {
        gemm(View::plain(dw + k0, in, 1), View::plain(dys, 1, out), View::plain(xs + k0, in, 1), out, k1 - k0, count, false);
      });
  }
  if (db)
    for (int64_t o = 0; o < out; o++) {
      double s = 0;
      for (int64_t i = 0; i < count; i++) s += double(dys[i * out + o]);
      db[o] = float(s);
    }
}

void linearSegmentGrads(double* dw64, double* db64, float* dw, float* db, const float* dy, const float* x, int64_t n, int64_t segments,
                        int64_t in, int64_t out, const Threads& t) {
  const int64_t b = segments > 0 ? n / segments : 0;
  if (b > 0 && b <= FUSED_SEGMENT_SAMPLES) {
    columnParts(t, in, [&](int64_t k0, int64_t k1) { segmentGradsFused(dw64, dw, dy, x, segments, b, in, out, k0, k1); });
  } else {
    columnParts(t, in, [&](int64_t k0, int64_t k1) {
      const int64_t width = k1 - k0;
      thread_local std::vector<float> scratch;
      if (int64_t(scratch.size()) < out * width) scratch.resize(out * width);
      float* seg = scratch.data();
      for (int64_t o = 0; o < out; o++) std::fill(dw64 + o * in + k0, dw64 + o * in + k1, 0.0);
      for (int64_t s = 0; s < segments && b > 0; s++) {
        // This segment's dW columns k0..k1−1, as linearBackward's gemm makes them, widened into the float64 sum.
        gemm(View::plain(seg, width, 1), View::plain(dy + s * b * out, 1, out), View::plain(x + s * b * in + k0, in, 1), out, width, b, false);
        for (int64_t o = 0; o < out; o++)
          for (int64_t j = 0; j < width; j++) dw64[o * in + k0 + j] += double(seg[o * width + j]);
      }
      for (int64_t o = 0; o < out; o++)
        for (int64_t j = k0; j < k1; j++) dw[o * in + j] = float(dw64[o * in + j]);
    });
  }
  for (int64_t o = 0; o < out; o++) {
    double sum = 0;
    for (int64_t s = 0; s < segments; s++) {
      double part = 0;
      for (int64_t i = s * b; i < (s + 1) * b; i++) part += double(dy[i * out + o]);
      sum += double(float(part));
    }
    db64[o] = sum;
    db[o] = float(sum);
  }
}

}  // namespace syncbn
