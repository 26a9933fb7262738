// im2col and its adjoint (conv.h): copies and adds only, no arithmetic order to
// speak of but col2im's, which adds in (ci, kh, kw, oh, ow) order for each pass.
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

}  // namespace syncbn
