// Linear's passes (linear.h): the GEMMs of gemm.h on strided views of the caller's
// arrays, in parts of output columns over the pool's threads (pool.h). A part
// holds whole elements' sums, and gemm.h's bits do not depend on the columns a
// call covers, so the bits are the same for any number of threads.
#include "linear.h"

#include <algorithm>
#include <vector>

#include "gemm.h"

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
