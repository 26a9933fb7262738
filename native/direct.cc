// The direct convolution (conv.h): stride-1 convs without im2col. Each sample's
// input is copied once into planes with a ring of `padding` zeros; the columns
// im2col would make are then that buffer read at a shift (kh·wp + kw), so the
// forward's GEMM reads B in place (gemmOffsetB) and dW's reads A in place
// (gemmGridA), with the same terms in the same order as on im2col's columns: the
// same bits. The output is computed on the padded width (wp columns per output
// row, the last wp − outW of each thrown away), into a per-thread grid copied out.
// dx is the forward of dy's padded planes with the kernel flipped and transposed:
// one FMA chain per element over (co, kh, kw), where im2col's path sums k² chains
// in col2im, so its bits differ from that path's (both are the twins' within
// float32 rounding); which path a layer takes depends on its geometry alone.
#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "conv.h"
#include "gemm.h"

namespace syncbn {

namespace {

bool directOn = true;

int64_t roundUp(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

float* grown(std::vector<float>& v, int64_t floats) {
  if (int64_t(v.size()) < floats) v.resize(floats);
  return v.data();
}

// c planes (h, w) padded by pad on every side, read on a grid of outH rows of wp columns
// (gridN = outH·wp, rounded up to the tile's columns): the offsets of every (c, kh, kw) and the
// buffer's floats, the zeros past the last plane covering the rounded grid's reads.
struct Padded {
  int64_t hp, wp, plane, gridN, gridCols, size;
  std::vector<int32_t> off;  // (c, kh, kw) → c·plane + kh·wp + kw
  Padded(int64_t c, int64_t h, int64_t w, int64_t pad, int64_t k, int64_t outH) {
    hp = h + 2 * pad, wp = w + 2 * pad, plane = hp * wp;
    gridN = outH * wp, gridCols = roundUp(gridN, gemmTileCols());
    size = c * plane + (gridCols - gridN) + k;
    off.resize(c * k * k);
    for (int64_t ci = 0; ci < c; ci++)
      for (int64_t kh = 0; kh < k; kh++)
        for (int64_t kw = 0; kw < k; kw++) off[(ci * k + kh) * k + kw] = int32_t(ci * plane + kh * wp + kw);
  }
};

// The last Padded one thread made for one use (dx or dW), made again when the geometry changes.
struct PaddedCache {
  int64_t key[6] = {-1, -1, -1, -1, -1, -1};
  std::unique_ptr<Padded> padded;
  const Padded& get(int64_t c, int64_t h, int64_t w, int64_t pad, int64_t k, int64_t outH) {
    const int64_t now[6] = {c, h, w, pad, k, outH};
    if (!padded || !std::equal(now, now + 6, key)) {
      padded = std::make_unique<Padded>(c, h, w, pad, k, outH);
      std::copy(now, now + 6, key);
    }
    return *padded;
  }
};

// dst (Padded's layout) ← src (c, h, w) inside a ring of pad zeros, zeros after.
void pad(float* dst, const float* src, const Padded& p, int64_t c, int64_t h, int64_t w, int64_t padding) {
  std::memset(dst, 0, sizeof(float) * p.size);
  for (int64_t ci = 0; ci < c; ci++)
    for (int64_t r = 0; r < h; r++) std::memcpy(dst + ci * p.plane + (r + padding) * p.wp + padding, src + (ci * h + r) * w, sizeof(float) * w);
}

// out (m, outH, outW) ← the grid's (m, gridCols) valid columns.
void unpad(float* out, const float* grid, int64_t m, int64_t outH, int64_t outW, int64_t wp, int64_t gridCols) {
  for (int64_t r = 0; r < m; r++)
    for (int64_t oh = 0; oh < outH; oh++) std::memcpy(out + (r * outH + oh) * outW, grid + r * gridCols + oh * wp, sizeof(float) * outW);
}

// Forward (or dx, as a forward of dy) of one sample: out (m, outH, outW) = init + A·columns(in), A packed by packRows;
// init the bias (m) when not null, else +0.
void directSample(float* out, const float* in, const float* ap, const float* bias, const Padded& p, int64_t c, int64_t h, int64_t w, int64_t padding,
                  int64_t k, int64_t m, int64_t outH, int64_t outW) {
  thread_local std::vector<float> padBuf, gridBuf;
  float* padded = grown(padBuf, p.size);
  const int64_t mRound = roundUp(m, gemmTileRows());
  float* grid = grown(gridBuf, mRound * p.gridCols);
  pad(padded, in, p, c, h, w, padding);
  if (bias)
    for (int64_t r = 0; r < mRound; r++) std::fill_n(grid + r * p.gridCols, p.gridCols, r < m ? bias[r] : 0.0f);
  gemmOffsetB(grid, p.gridCols, ap, padded, p.off.data(), m, p.gridN, c * k * k, bias != nullptr);
  unpad(out, grid, m, outH, outW, p.wp, p.gridCols);
}

// dx's padding (k − 1 − padding on dy) and dx's padded width.
int64_t dxPadding(const Geometry& g) { return g.kernel - 1 - g.padding; }

}  // namespace

void useDirectConv(bool on) { directOn = on; }

bool directConv(const Geometry& g) {
  if (!directOn || g.stride != 1 || g.padding > g.kernel - 1 || int64_t(g.outH) * g.outW < 144) return false;
  // At most a fifth of the grid's columns thrown away, in the forward (x's width padded) and in dx (dy's).
  const int64_t wpX = g.inW + 2 * g.padding, wpDy = g.outW + 2 * dxPadding(g);
  return 5 * int64_t(g.outW) >= 4 * wpX && 5 * int64_t(g.inW) >= 4 * wpDy;
}

void directForward(Pool& pool, float* y, const float* x, float* xSaved, const float* w, const float* bias, const Geometry& g, int cout, int n, int threads) {
  const int64_t R = int64_t(g.cin) * g.kernel * g.kernel, P = int64_t(g.outH) * g.outW, inSize = int64_t(g.cin) * g.inH * g.inW;
  const Padded p(g.cin, g.inH, g.inW, g.padding, g.kernel, g.outH);
  thread_local std::vector<float> apBuf;  // the caller's: the pool's threads read it while run() waits
  float* ap = grown(apBuf, packedRowsSize(cout, R));
  packRows(ap, w, R, cout, R);
  pool.run(threads, n, [&](int64_t i) {
    directSample(y + i * cout * P, x + i * inSize, ap, bias, p, g.cin, g.inH, g.inW, g.padding, g.kernel, cout, g.outH, g.outW);
    if (xSaved) std::copy(x + i * inSize, x + (i + 1) * inSize, xSaved + i * inSize);
  });
}

const float* directDxWeights(const float* w, const Geometry& g, int cout) {
  // wT (cin, cout·k·k): wT[ci, (co, a, b)] = w[co, ci, k − 1 − a, k − 1 − b], packed.
  const int64_t k = g.kernel, k2 = k * k, R = g.cin * k2, Rt = cout * k2;
  thread_local std::vector<float> wtBuf, apBuf;
  float* wt = grown(wtBuf, g.cin * Rt);
  for (int64_t ci = 0; ci < g.cin; ci++)
    for (int64_t co = 0; co < cout; co++)
      for (int64_t a = 0; a < k; a++)
        for (int64_t b = 0; b < k; b++) wt[ci * Rt + co * k2 + a * k + b] = w[co * R + ci * k2 + (k - 1 - a) * k + (k - 1 - b)];
  float* ap = grown(apBuf, packedRowsSize(g.cin, Rt));
  packRows(ap, wt, Rt, g.cin, Rt);
  return ap;
}

void directDxSample(float* dx, const float* dy, const float* wPacked, const Geometry& g, int cout) {
  thread_local PaddedCache cache;
  const int64_t pd = dxPadding(g);
  directSample(dx, dy, wPacked, nullptr, cache.get(cout, g.outH, g.outW, pd, g.kernel, g.inH), cout, g.outH, g.outW, pd, g.kernel, g.cin, g.inH,
               g.inW);
}

void directDwProduct(float* dw32, const float* x, const float* dy, const Geometry& g, int cout, int64_t j0, int64_t j1) {
  thread_local PaddedCache cache;
  const Padded& p = cache.get(g.cin, g.inH, g.inW, g.padding, g.kernel, g.outH);
  thread_local std::vector<float> padBuf;
  thread_local std::vector<const float*> rows;
  float* padded = grown(padBuf, p.size);
  pad(padded, x, p, g.cin, g.inH, g.inW, g.padding);
  rows.resize(j1 - j0);
  for (int64_t j = j0; j < j1; j++) rows[j - j0] = padded + p.off[j];
  const int64_t P = int64_t(g.outH) * g.outW;
  // dw32 (j1 − j0, cout) = columns rows j0..j1−1 (over the valid positions) · dyᵀ.
  gemmGridA(dw32, cout, rows.data(), g.outH, g.outW, p.wp, View::plain(dy, 1, P), j1 - j0, cout);
}

}  // namespace syncbn
