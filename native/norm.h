// The normalization passes and the elementwise step kernels on caller memory
// (norm.cc, groupnorm.cc, elementwise.cc), bit for bit the TypeScript twins (shared/stats.ts,
// worker/nn/groupnorm.ts, relu.ts, maxpool.ts, graph.ts, sgd.ts) and so the WebAssembly passes: float64
// statistics, each value rounded to float32 once. Compiled without FP
// contraction whatever the other files use (a fused multiply-add rounds once
// where the twins round twice). (N, C, S) arrays are rows (i, ch) of S floats. The BN passes run
// their rows in chunks over the pool's threads (Threads: pool.h); a row's sum is one
// chain whichever thread makes it, and the rows' totals are added in order on
// the calling thread, so the bits do not depend on the number of threads.
#pragma once

#include <cstdint>

#include "pool.h"

namespace syncbn {

/** mean[ch] = Σx / (n·s), then m2[ch] = Σ(x − mean)²: each row summed from 0 in order, rows added in (i, ch) order. */
void bnMoments(double* mean, double* m2, const float* x, int64_t n, int64_t c, int64_t s, const Threads& t = Threads());
/** h = (x − mean)·invStd, xhat = h, y = γ·h + β. */
void bnNormalize(float* y, float* xhat, const float* x, const double* mean, const double* invStd, const float* gamma, const float* beta,
                 int64_t n, int64_t c, int64_t s, const Threads& t = Threads());
/** out[ch] = Σdy, out[c + ch] = Σdy·xhat (float64, the moments' order). */
void bnGradSums(double* out, const float* dy, const float* xhat, int64_t n, int64_t c, int64_t s, const Threads& t = Threads());
/** dx = (γ·invStd)·((dy − S1/count) − xhat·S2/count), sums = [S1 (C), S2 (C)]. dx may be dy. */
void bnDx(float* dx, const float* dy, const float* xhat, const double* sums, double count, const double* invStd, const float* gamma,
          int64_t n, int64_t c, int64_t s, const Threads& t = Threads());
/** Eval: y = (x − mean)·(γ/√(var + eps)) + β. y may be x. */
void bnEval(float* y, const float* x, const double* mean, const double* var, const float* gamma, const float* beta, double eps,
            int64_t n, int64_t c, int64_t s, const Threads& t = Threads());

/** GroupNorm forward (groupnorm.cc): per (sample, group) mean and biased variance, xhat, y = γ·xhat + β; groupInvStd (N, G). */
void gnForward(float* y, float* xhat, double* groupInvStd, const float* x, const float* gamma, const float* beta, double eps,
               int64_t n, int64_t c, int64_t s, int64_t groups);
/** GroupNorm backward of samples first..first+count−1: dx, and Σdy·xhat, Σdy per channel added to gradGamma, gradBeta in sample order. */
void gnBackward(float* dx, double* gradGamma, double* gradBeta, const float* dy, const float* xhat, const double* groupInvStd,
                const float* gamma, int64_t first, int64_t count, int64_t c, int64_t s, int64_t groups);

/** y = x ≤ 0 ? 0 : x (NaN passes). These four run in chunks of 64K elements over t's threads (the same bits). */
void relu(float* y, const float* x, int64_t len, const Threads& t = Threads());
/** dx = y ≤ 0 ? 0 : dy. */
void reluBackward(float* dx, const float* dy, const float* y, int64_t len, const Threads& t = Threads());
/** MaxPool2d (maxpool.ts): y and the flat argmax into x per window, planes = N·C; no padding. */
void maxpoolForward(float* y, int32_t* argmax, const float* x, int64_t planes, int64_t inH, int64_t inW, int64_t k, int64_t stride,
                    int64_t outH, int64_t outW);
/** dx (inLen) = 0, then dx[argmax[o]] += dy[o] in o order; false (dx partly written) if an argmax is outside dx. */
bool maxpoolBackward(float* dx, const float* dy, const int32_t* argmax, int64_t outLen, int64_t inLen);
/** y = a + b. */
void add(float* y, const float* a, const float* b, int64_t len, const Threads& t = Threads());
/** acc += g. */
void addInto(float* acc, const float* g, int64_t len, const Threads& t = Threads());

/** SGD (worker/nn/sgd.ts): 0 plain, 1 momentum, 2 Nesterov; arithmetic in float64, stored to float32. */
void sgdStep(float* p, const float* grad, float* buf, int64_t len, double lr, double mu, double wd, int mode);

}  // namespace syncbn
