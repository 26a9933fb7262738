// Whole conv passes over a batch, in chunks run by the pool's threads (pool.h):
// forward and dx by groups of samples (several samples side by side in one GEMM
// when a plane is small, so the GEMM's n is at least about GEMM_COLUMNS), dW by
// blocks of its R column rows (the in-place tile's rows), every dW chunk looping
// over all the samples in order, db by output channels. No element's sum is split
// across chunks, and gemm.h's bits do not depend on how the columns are grouped,
// so the bits are the same for any number of threads.
#include <algorithm>
#include <vector>

#include "clones.h"
#include "conv.h"
#include "gemm.h"

namespace syncbn {

// dW's float64 sum of the samples' float32 products: sum[t] = f64(p[t]) for the first sample, += for the
// next. One conversion and at most one add per element, so every clone gives the same bits (−0 kept).
SYNCBN_CLONES void widenFirst(double* sum, const float* p, int64_t n) {
  for (int64_t t = 0; t < n; t++) sum[t] = double(p[t]);
}
SYNCBN_CLONES void widenAdd(double* sum, const float* p, int64_t n) {
  for (int64_t t = 0; t < n; t++) sum[t] += double(p[t]);
}

namespace {
constexpr int64_t GEMM_COLUMNS = 384;  // samples per GEMM: ⌈384 / P⌉ (P = 49: 8 samples, 392 columns)

void partRange(int64_t count, int p, int of, int64_t* lo, int64_t* hi) {
  *lo = count * p / of;
  *hi = count * (p + 1) / of;
}

int64_t samplesPerGemm(int64_t P) { return std::max<int64_t>(1, (GEMM_COLUMNS + P - 1) / std::max<int64_t>(P, 1)); }

// Σ a[0..len−1] in float32 in the WebAssembly row_sums order (conv-native.ts's rowSum, the twins' db):
// 4 lanes over the first len − len mod 4, then (l0 + l1) + (l2 + l3), then the rest one by one.
float rowSum(const float* a, int64_t len) {
  float l0 = 0, l1 = 0, l2 = 0, l3 = 0;
  int64_t j = 0;
  for (; j + 4 <= len; j += 4) {
    l0 += a[j];
    l1 += a[j + 1];
    l2 += a[j + 2];
    l3 += a[j + 3];
  }
  float s = (l0 + l1) + (l2 + l3);
  for (; j < len; j++) s += a[j];
  return s;
}

// dW's columns j0..j1−1 (and CBN's colSums of those rows) over samples first..first+count−1, in sample order; dw (cout, R)
// ← float32 of them (count = 0: dw64 left as it was, dw zero).
void dwColumns(double* dw64, float* dw, double* colSums, const float* dy, const float* x, const float* keptCols, const Geometry& g, int64_t R,
               int64_t P, int64_t inSize, int64_t cout, int64_t first, int64_t count, int64_t j0, int64_t j1, bool direct) {
  const int64_t width = j1 - j0;
  thread_local std::vector<float> dw32Buf, colsBuf;
  thread_local std::vector<double> sumBuf;
  float* dw32 = grown(dw32Buf, cout * width);
  // This chunk's float64 sum in dw32's layout (width, cout): each sample's product added in one contiguous pass,
  // transposed into dw64 (cout, R) once at the end (the same sums, in the same sample order).
  if (int64_t(sumBuf.size()) < cout * width) sumBuf.resize(cout * width);
  double* sum = sumBuf.data();
  // Rows j0..j1−1 of one sample's columns, made again from x_i (the values forward's GEMM read: the same dW bits).
  float* scratchCols = keptCols || direct ? nullptr : grown(colsBuf, width * P);
  if (colSums) std::fill(colSums + j0, colSums + j1, 0.0);
  for (int64_t s = 0; width > 0 && s < count; s++) {
    const int64_t i = first + s;
    const float* cols = keptCols ? keptCols + (i * R + j0) * P : scratchCols;
    // dw32 (width, cout) = cols_i[j0..j1) (width, P)·dy_i (cout, P)ᵀ = this block of dW_iᵀ, widened into the float64 sum.
    if (direct) {
      directDwProduct(dw32, x + i * inSize, dy + i * cout * P, g, int(cout), j0, j1);
    } else {
      if (!keptCols) im2colRows(scratchCols, x + i * inSize, g, j0, j1);
      gemmInPlaceA(dw32, cout, cols, P, View::plain(dy + i * cout * P, 1, P), width, cout, P);
    }
    // colSums[j] += f64(rowSum(cols_i row j)) while the block is in cache (CBN's statsSums: ConvWasm's bits).
    if (colSums)
      for (int64_t j = j0; j < j1; j++) colSums[j] += double(rowSum(cols + (j - j0) * P, P));
    if (s == 0) widenFirst(sum, dw32, width * cout);
    else widenAdd(sum, dw32, width * cout);
  }
  if (count > 0)
    for (int64_t co = 0; co < cout; co++)
      for (int64_t j = 0; j < width; j++) dw64[co * R + j0 + j] = sum[j * cout + co];
  if (dw)
    for (int64_t co = 0; co < cout; co++)
      for (int64_t j = j0; j < j1; j++) dw[co * R + j] = count > 0 ? float(dw64[co * R + j]) : 0.0f;
}
}  // namespace

void convForward(Pool& pool, float* y, const float* x, float* xSaved, float* cols, const float* w, const float* bias, const Geometry& g, int cout, int n,
                 int threads) {
  const int64_t R = int64_t(g.cin) * g.kernel * g.kernel, P = int64_t(g.outH) * g.outW, inSize = int64_t(g.cin) * g.inH * g.inW;
  if (!cols && directConv(g)) return directForward(pool, y, x, xSaved, w, bias, g, cout, n, threads);
  const int64_t group = samplesPerGemm(P);
  // One chunk per group of samples.
  pool.run(threads, (n + group - 1) / group, [&](int64_t chunk) {
    // One group's columns (count·R·P floats: 451 KB at 16→16 on 28×28, 903 KB for 8 samples at 64→64 on 7×7), made and used while in L2.
    thread_local std::vector<float> colsBuf;
    const int64_t i0 = chunk * group, count = std::min<int64_t>(group, n - i0);
    float* c = cols ? cols + i0 * R * P : grown(colsBuf, count * R * P);
    // y_i (cout, P) ← the bias, each sample's rows just before the GEMM adds into them.
    for (int64_t s = 0; s < count; s++)
      for (int64_t co = 0; co < cout; co++) std::fill_n(y + ((i0 + s) * cout + co) * P, P, bias[co]);
    for (int64_t s = 0; s < count; s++) im2col(c + s * R * P, x + (i0 + s) * inSize, g);
    if (xSaved) std::copy(x + i0 * inSize, x + (i0 + count) * inSize, xSaved + i0 * inSize);
    // y (cout, count·P) += W (cout, R)·cols (R, count·P)
    gemm(View::batched(y + i0 * cout * P, P, cout * P), View::plain(w, R, 1), View::batched(c, P, R * P), cout, count * P, R, true);
  });
}

void convBackward(Pool& pool, float* dx, const float* dy, const float* x, const float* keptCols, const float* w, double* dw64, float* dw, float* db, double* colSums,
                  const Geometry& g, int cout, int first, int count, int threads) {
  const int64_t R = int64_t(g.cin) * g.kernel * g.kernel, P = int64_t(g.outH) * g.outW, inSize = int64_t(g.cin) * g.inH * g.inW;
  // The direct path (direct.cc) for dx when the geometry takes it, and for dW unless the columns are kept or their sums wanted.
  const bool direct = directConv(g), directDw = direct && !keptCols && !colSums;
  const float* wT = direct && dx ? directDxWeights(w, g, cout) : nullptr;
  const int64_t group = direct ? directDxGroup(g) : samplesPerGemm(P);
  // The chunks: dW's column blocks (as many as threads), then db's channel ranges (as many), then dx's groups of samples.
  const int64_t parts = std::max(1, threads), dxChunks = dx ? (count + group - 1) / group : 0;
  pool.run(threads, 2 * parts + dxChunks, [&](int64_t chunk) {
    if (chunk < parts) {
      // dW columns j0..j1−1 over every sample, in sample order (none without dw64: a dx-only pass).
      if (!dw64) return;
      int64_t j0, j1;
      // In blocks of the in-place tile's rows (8 on AVX-512, 6 otherwise), so only R's last block is partial:
      // R = 144 splits 72 : 72 over 2 threads, the 1×1 convs' R = 16 and 32 split too (48-row blocks left them on one thread).
      const int64_t block = gemmInPlaceRows();
      partRange((R + block - 1) / block, int(chunk), int(parts), &j0, &j1);
      j0 = std::min(R, j0 * block);
      j1 = std::min(R, j1 * block);
      dwColumns(dw64, dw, colSums, dy, x, keptCols, g, R, P, inSize, cout, first, count, j0, j1, directDw);
    } else if (chunk < 2 * parts) {
      // db[co] ← Σ over the samples of each row's float32 rowSum, in float64 in sample order; this chunk's channels.
      if (!db) return;
      int64_t c0, c1;
      partRange(cout, int(chunk - parts), int(parts), &c0, &c1);
      for (int64_t co = c0; co < c1; co++) {
        double sum = 0;
        for (int64_t i = first; i < first + count; i++) sum += double(rowSum(dy + (i * cout + co) * P, P));
        db[co] = float(sum);
      }
    } else {
      // dx for this group of samples: dcols (R, k·P) = Wᵀ (R, cout)·dy (cout, k·P), the k samples side by side in
      // each row (a plain matrix: no tile spans two samples' memory), then col2im per sample.
      thread_local std::vector<float> dcolsBuf;
      const int64_t i0 = first + (chunk - 2 * parts) * group, k = std::min<int64_t>(group, first + count - i0);
      if (direct) {
        directDx(dx + i0 * inSize, dy + i0 * cout * P, k, wT, g, cout);
        return;
      }
      std::fill_n(dx + i0 * inSize, k * inSize, 0.0f);
      float* dcols = grown(dcolsBuf, k * R * P);
      gemm(View::plain(dcols, k * P, 1), View::plain(w, 1, R), View::batched(dy + i0 * cout * P, P, cout * P), R, k * P, cout, false);
      for (int64_t s = 0; s < k; s++) col2imAddScratch(dx + (i0 + s) * inSize, dcols + s * P, g, k * P);
    }
  });
}

}  // namespace syncbn
