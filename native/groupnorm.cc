// GroupNorm's passes on caller memory, worker/nn/groupnorm.ts's loops operation
// for operation (float64 statistics per (sample, group) of m = (C/G)·S contiguous
// values, each value rounded to float32 once), so its bits and the WebAssembly
// path's. One thread; the rows are short, so no vector tricks beyond the compiler's.
#pragma GCC optimize("fp-contract=off")

#include <cmath>

#include "norm.h"

#include "clones.h"

namespace syncbn {

SYNCBN_CLONES void gnForward(float* y, float* xhat, double* groupInvStd, const float* x, const float* gamma, const float* beta, double eps,
                             int64_t n, int64_t c, int64_t s, int64_t groups) {
  const int64_t cg = c / groups, m = cg * s;
  for (int64_t i = 0; i < n; i++) {
    for (int64_t g = 0; g < groups; g++) {
      const int64_t base = (i * c + g * cg) * s;
      double sum = 0;
      for (int64_t k = 0; k < m; k++) sum += double(x[base + k]);
      const double mean = sum / double(m);
      double m2 = 0;
      for (int64_t k = 0; k < m; k++) {
        const double d = double(x[base + k]) - mean;
        m2 += d * d;
      }
      const double invStd = 1 / std::sqrt(m2 / double(m) + eps);
      groupInvStd[i * groups + g] = invStd;
      for (int64_t ch = 0; ch < cg; ch++) {
        const double ga = gamma[g * cg + ch], be = beta[g * cg + ch];
        const int64_t off = base + ch * s;
        for (int64_t j = 0; j < s; j++) {
          const double h = (double(x[off + j]) - mean) * invStd;
          xhat[off + j] = float(h);
          y[off + j] = float(ga * h + be);
        }
      }
    }
  }
}

SYNCBN_CLONES void gnBackward(float* dx, double* gradGamma, double* gradBeta, const float* dy, const float* xhat, const double* groupInvStd,
                              const float* gamma, int64_t first, int64_t count, int64_t c, int64_t s, int64_t groups) {
  const int64_t cg = c / groups, m = cg * s;
  for (int64_t i = first; i < first + count; i++) {
    for (int64_t g = 0; g < groups; g++) {
      const int64_t base = (i * c + g * cg) * s;
      double sumG = 0, sumGXhat = 0;
      for (int64_t ch = 0; ch < cg; ch++) {
        const int64_t cAbs = g * cg + ch, off = base + ch * s;
        const double ga = gamma[cAbs];
        double sDy = 0, sDyXhat = 0;
        for (int64_t j = 0; j < s; j++) {
          const double d = dy[off + j];
          sDy += d;
          sDyXhat += d * double(xhat[off + j]);
        }
        gradBeta[cAbs] += sDy;
        gradGamma[cAbs] += sDyXhat;
        sumG += ga * sDy;
        sumGXhat += ga * sDyXhat;
      }
      const double meanG = sumG / double(m), meanGXhat = sumGXhat / double(m), invStd = groupInvStd[i * groups + g];
      for (int64_t ch = 0; ch < cg; ch++) {
        const double ga = gamma[g * cg + ch];
        const int64_t off = base + ch * s;
        for (int64_t j = 0; j < s; j++) dx[off + j] = float(invStd * ((ga * double(dy[off + j]) - meanG) - double(xhat[off + j]) * meanGXhat));
      }
    }
  }
}

}  // namespace syncbn
