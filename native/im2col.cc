// im2col and its adjoint (conv.h): copies and adds only, no arithmetic order to
// speak of but col2im's, which adds in (ci, kh, kw, oh, ow) order for each pass.
// Stride 1 with outW = inW (a "same" conv, resnet's 3×3 pad 1) has a fast path:
// each (ci, kh, kw) row of the columns is the image plane shifted by a constant,
// so one contiguous copy (im2col) or add (col2im) covers all its output rows, the
// columns that fall outside the image fixed afterwards (im2col: zeroed) or
// beforehand (col2im: zeroed in the scratch dcols, so they add +0).
#include "conv.h"

#include <algorithm>
#include <cstring>

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

// Stride 1 and outW = inW: a row's valid output rows oh0..oh1−1 and columns lo..hi−1, and the shift
// from a column index p = oh·outW + ow to its image index p + shift.
struct SameRow {
  int oh0, oh1, lo, hi;
  int64_t shift;
};
bool sameShape(const Geometry& g) { return g.stride == 1 && g.outW == g.inW; }
SameRow sameRow(const Geometry& g, int kh, int kw) {
  SameRow r;
  r.oh0 = std::min(g.outH, std::max(0, g.padding - kh));
  r.oh1 = std::max(r.oh0, std::min(g.outH, g.inH + g.padding - kh));
  r.lo = firstValid(kw, 1, g.padding);
  r.hi = endValid(kw, 1, g.padding, g.inW, g.outW, r.lo);
  r.shift = int64_t(kh - g.padding) * g.inW + (kw - g.padding);
  return r;
}

// One row r = (ci, kh, kw) of the columns: row (outH·outW) ← x's plane ci shifted by (kh, kw), zero outside the image.
static void im2colRow(float* row, const float* x, const Geometry& g, int64_t r) {
  const int k = g.kernel, outW = g.outW;
  const int ci = int(r / (k * k)), kh = int(r / k % k), kw = int(r % k);
  const int64_t plane = int64_t(g.outH) * outW;
  if (sameShape(g)) {
    const float* src = x + int64_t(ci) * g.inH * g.inW;
    const SameRow sr = sameRow(g, kh, kw);
    if (sr.oh0 >= sr.oh1 || sr.lo >= sr.hi) {
      std::fill_n(row, plane, 0.0f);
      return;
    }
    const int64_t a = int64_t(sr.oh0) * outW + sr.lo, b = int64_t(sr.oh1 - 1) * outW + sr.hi;
    std::fill_n(row, a, 0.0f);
    std::copy(src + a + sr.shift, src + b + sr.shift, row + a);  // every index in a..b−1 is inside the plane
    std::fill_n(row + b, plane - b, 0.0f);
    for (int oh = sr.oh0; oh < sr.oh1; oh++) {  // the columns outside the image, wrapped in from the next/previous row
      float* d = row + int64_t(oh) * outW;
      if (oh > sr.oh0) std::fill(d, d + sr.lo, 0.0f);
      if (oh + 1 < sr.oh1) std::fill(d + sr.hi, d + outW, 0.0f);
    }
    return;
  }
  const int s = g.stride, pad = g.padding;
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

void im2colRows(float* cols, const float* x, const Geometry& g, int64_t r0, int64_t r1) {
  const int64_t plane = int64_t(g.outH) * g.outW;
  for (int64_t r = r0; r < r1; r++) im2colRow(cols + (r - r0) * plane, x, g, r);
}

void im2col(float* cols, const float* x, const Geometry& g) { im2colRows(cols, x, g, 0, int64_t(g.cin) * g.kernel * g.kernel); }

void col2imAdd(float* dx, const float* dcols, const Geometry& g, int64_t rowStride) {
  const int k = g.kernel, s = g.stride, pad = g.padding, outW = g.outW;
  const int64_t plane = rowStride > 0 ? rowStride : int64_t(g.outH) * outW;
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
          if (s == 1) for (int ow = lo; ow < hi; ow++) dst[ow] += src[ow];  // vectorized
          else for (int ow = lo; ow < hi; ow++) dst[int64_t(ow) * s] += src[ow];
        }
      }
}

void col2imAddScratch(float* dx, float* dcols, const Geometry& g, int64_t rowStride) {
  if (!sameShape(g)) return col2imAdd(dx, dcols, g, rowStride);
  const int k = g.kernel, outW = g.outW;
  const int64_t plane = rowStride > 0 ? rowStride : int64_t(g.outH) * outW;
  for (int ci = 0; ci < g.cin; ci++)
    for (int kh = 0; kh < k; kh++)
      for (int kw = 0; kw < k; kw++) {
        float* row = dcols + (int64_t(ci * k + kh) * k + kw) * plane;
        const SameRow r = sameRow(g, kh, kw);
        if (r.oh0 >= r.oh1 || r.lo >= r.hi) continue;
        for (int oh = r.oh0; oh < r.oh1; oh++) {  // the wrapped columns add +0 (dx is never −0: it starts at +0)
          float* d = row + int64_t(oh) * outW;
          if (oh > r.oh0) std::fill(d, d + r.lo, 0.0f);
          if (oh + 1 < r.oh1) std::fill(d + r.hi, d + outW, 0.0f);
        }
        const int64_t a = int64_t(r.oh0) * outW + r.lo, b = int64_t(r.oh1 - 1) * outW + r.hi;
        float* dst = dx + int64_t(ci) * g.inH * g.inW + r.shift;
        for (int64_t p = a; p < b; p++) dst[p] += row[p];  // vectorized
      }
}

}  // namespace syncbn
