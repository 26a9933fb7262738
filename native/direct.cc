// The direct convolution (conv.h): stride-1 convs without im2col. Each sample's
// input is copied once into planes with `padding` zeros around (the zeros between
// two rows serving as the right border of one and the left of the next); the columns
// im2col would make are then that buffer read at a shift (kh·wp + kw), so the
// forward's GEMM reads B in place (gemmOffsetB) and dW's reads A in place
// (gemmGridA), with the same terms in the same order as on im2col's columns: the
// same bits. The output is computed on the padded width (wp columns per output
// row, wp = w + padding, the last wp − outW of each thrown away), into a per-thread
// grid copied out; the GEMM's last column strip is only as wide as the grid needs.
// dx is the forward of dy's padded planes with the kernel flipped and transposed:
// one FMA chain per element over (co, kh, kw), where im2col's path sums k² chains
// in col2im, so its bits differ from that path's (both are the twins' within
// float32 rounding); which path a layer takes depends on its geometry alone.
#include <algorithm>
#include <cstring>
#include <vector>

#include "conv.h"
#include "gemm.h"

namespace syncbn {

namespace {

bool directOn = true;

constexpr int64_t GRID_COLUMNS = 384;  // samples stacked per GEMM until the grid has about this many columns

// s samples of c planes (h, w), stacked per channel with `pad` zero rows above, between and below
// them and `pad` zero columns before each row (rows of wp = w + pad): sample j's padded plane starts
// at row j·(h + pad), so neighbours share their zero rows, and a row's zeros on the right are the
// next row's on the left (a read past column w − 1 lands in them, as one before column 0 does in
// the row's own), so fewer grid columns are computed and thrown away. Read on a grid of wp columns per row,
// output row oh of sample j at grid row j·(h + pad) + oh (the rows and columns in between thrown
// away); gridN columns, rounded up to the tile's. Holds the offsets of every (c, kh, kw) and the
// buffer's floats, the zeros past the last plane covering the rounded grid's reads.
struct Padded {
  int64_t c, h, w, pad, s, wp, plane, gridN, gridCols, size;
  std::vector<int64_t> off;  // (c, kh, kw) → c·plane + kh·wp + kw
  Padded(int64_t c_, int64_t h_, int64_t w_, int64_t pad_, int64_t k, int64_t outH, int64_t s_) : c(c_), h(h_), w(w_), pad(pad_), s(s_) {
    wp = w + pad, plane = (pad + s * (h + pad)) * wp;
    gridN = ((s - 1) * (h + pad) + outH) * wp, gridCols = roundUp(gridN, gemmTileCols());
    size = c * plane + (gridCols - gridN) + k;
    off.resize(c * k * k);
    for (int64_t ci = 0; ci < c; ci++)
      for (int64_t kh = 0; kh < k; kh++)
        for (int64_t kw = 0; kw < k; kw++) off[(ci * k + kh) * k + kw] = ci * plane + kh * wp + kw;
  }
  // dst ← the s samples of src (s, c, h, w), zeros around and after.
  void fill(float* dst, const float* src) const {
    std::memset(dst, 0, sizeof(float) * size);
    for (int64_t j = 0; j < s; j++)
      for (int64_t ci = 0; ci < c; ci++)
        for (int64_t r = 0; r < h; r++)
          std::memcpy(dst + ci * plane + (pad + j * (h + pad) + r) * wp + pad, src + ((j * c + ci) * h + r) * w, sizeof(float) * w);
  }
  // out (s, m, outH, outW) ← the grid's (m, gridCols) valid columns.
  void unfill(float* out, const float* grid, int64_t m, int64_t outH, int64_t outW) const {
    for (int64_t j = 0; j < s; j++)
      for (int64_t r = 0; r < m; r++)
        for (int64_t oh = 0; oh < outH; oh++)
          std::memcpy(out + ((j * m + r) * outH + oh) * outW, grid + r * gridCols + (j * (h + pad) + oh) * wp, sizeof(float) * outW);
  }
};

// Samples stacked per GEMM for planes (h, w) padded by pad: about GRID_COLUMNS grid columns.
int64_t stackOf(int64_t h, int64_t w, int64_t pad) { return std::max<int64_t>(1, GRID_COLUMNS / ((h + pad) * (w + pad))); }

// Forward (or dx, as a forward of dy) of s samples in (s, c, h, w): out (s, m, outH, outW) = init + A·columns,
// A packed by packRows; init the bias (m) when not null, else +0.
void directGroup(float* out, const float* in, int64_t s, const float* ap, const float* bias, int64_t c, int64_t h, int64_t w, int64_t pad, int64_t k,
                 int64_t m, int64_t outH, int64_t outW) {
  thread_local std::vector<float> padBuf, gridBuf;
  const Padded p(c, h, w, pad, k, outH, s);
  float* padded = grown(padBuf, p.size);
  const int64_t mRound = roundUp(m, gemmTileRows());
  float* grid = grown(gridBuf, mRound * p.gridCols);
  p.fill(padded, in);
  if (bias)
    for (int64_t r = 0; r < mRound; r++) std::fill_n(grid + r * p.gridCols, p.gridCols, r < m ? bias[r] : 0.0f);
  gemmOffsetB(grid, p.gridCols, ap, padded, p.off.data(), m, p.gridN, c * k * k, bias != nullptr);
  p.unfill(out, grid, m, outH, outW);
}

// dx's padding (k − 1 − padding on dy).
int64_t dxPadding(const Geometry& g) { return g.kernel - 1 - g.padding; }

}  // namespace

void useDirectConv(bool on) { directOn = on; }

bool directConv(const Geometry& g) {
  if (!directOn || g.stride != 1 || g.padding > g.kernel - 1 || g.inH < 1 || g.inW < 1 || g.outH < 1 || g.outW < 1) return false;
  // At least 3/5 of each grid position kept (measured: 64→64 at 7×7, 49 of 72, gains over im2col), in the
  // forward over x's padded planes and in dx over dy's. Counted on planes with zeros on both sides (w + 2·pad
  // columns), as when the rule was measured: sharing a row's right zeros with the next row's left ones
  // (Padded) made the path cheaper without changing which geometries take it, nor any bits.
  const int64_t pd = dxPadding(g);
  const int64_t forwardGrid = int64_t(g.inH + g.padding) * (g.inW + 2 * g.padding), dxGrid = int64_t(g.outH + pd) * (g.outW + 2 * pd);
  return 5 * int64_t(g.outH) * g.outW >= 3 * forwardGrid && 5 * int64_t(g.inH) * g.inW >= 3 * dxGrid;
}

void directForward(Pool& pool, float* y, const float* x, float* xSaved, const float* w, const float* bias, const Geometry& g, int cout, int n, int threads) {
  const int64_t R = int64_t(g.cin) * g.kernel * g.kernel, P = int64_t(g.outH) * g.outW, inSize = int64_t(g.cin) * g.inH * g.inW;
  const int64_t group = stackOf(g.inH, g.inW, g.padding);
  thread_local std::vector<float> apBuf;  // the caller's: the pool's threads read it while run() waits
  float* ap = grown(apBuf, packedRowsSize(cout, R));
  packRows(ap, w, R, cout, R);
  pool.run(threads, (n + group - 1) / group, [&](int64_t chunk) {
    const int64_t i0 = chunk * group, s = std::min<int64_t>(group, n - i0);
    directGroup(y + i0 * cout * P, x + i0 * inSize, s, ap, bias, g.cin, g.inH, g.inW, g.padding, g.kernel, cout, g.outH, g.outW);
    if (xSaved) std::copy(x + i0 * inSize, x + (i0 + s) * inSize, xSaved + i0 * inSize);
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

int64_t directDxGroup(const Geometry& g) { return stackOf(g.outH, g.outW, dxPadding(g)); }

void directDx(float* dx, const float* dy, int64_t count, const float* wPacked, const Geometry& g, int cout) {
  directGroup(dx, dy, count, wPacked, nullptr, cout, g.outH, g.outW, dxPadding(g), g.kernel, g.cin, g.inH, g.inW);
}

void directDwProduct(float* dw32, const float* x, const float* dy, const Geometry& g, int cout, int64_t j0, int64_t j1) {
  const Padded p(g.cin, g.inH, g.inW, g.padding, g.kernel, g.outH, 1);
  thread_local std::vector<float> padBuf;
  thread_local std::vector<const float*> rows;
  float* padded = grown(padBuf, p.size);
  p.fill(padded, x);
  rows.resize(j1 - j0);
  for (int64_t j = j0; j < j1; j++) rows[j - j0] = padded + p.off[j];
  const int64_t P = int64_t(g.outH) * g.outW;
  // dw32 (j1 − j0, cout) = columns rows j0..j1−1 (over the valid positions) · dyᵀ.
  gemmGridA(dw32, cout, rows.data(), g.outH, g.outW, p.wp, View::plain(dy, 1, P), j1 - j0, cout);
}

}  // namespace syncbn
