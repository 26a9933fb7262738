// Linear's passes (linear.cc) on caller memory, W (out, in) row-major as PyTorch's
// nn.Linear: the FMA GEMMs of gemm.h, split over the pool's threads by output
// columns, so every element is one FMA chain in a fixed order and the bits do not
// depend on the number of threads (not the twins' bits: an FMA rounds once).
#pragma once

#include <cstdint>

#include "pool.h"

namespace syncbn {

/** y (n, out) = b + x (n, in)·Wᵀ: y[i][o] one FMA chain from b[o] over k = 0..in−1. */
void linearForward(float* y, const float* x, const float* w, const float* b, int64_t n, int64_t in, int64_t out, const Threads& t);

/**
 * Samples first..first+count−1 of x (·, in) and dy (·, out); each output skipped when null:
 * dx (those rows) = dy·W, each element one FMA chain over o from +0;
 * dw (out, in) = dyᵀ·x, each element one FMA chain over the samples in order from +0 (zero when count = 0);
 * db (out) = float32(Σ_i f64(dy[i][o])), summed in sample order.
 */
void linearBackward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int64_t first, int64_t count,
                    int64_t in, int64_t out, const Threads& t);

/**
 * A rank block's param grads (--rank-grads exact): n samples in `segments` equal segments, each
 * segment's dW and db exactly as linearBackward makes them for its samples alone, added in float64 in
 * segment order into dw64 (out, in) and db64 (out), zeroed first; then dw, db = float32 of those sums.
 * The bits of linearBackward per segment followed by layer.ts's addSegment and endSegments, in one pass.
 */
void linearSegmentGrads(double* dw64, double* db64, float* dw, float* db, const float* dy, const float* x, int64_t n, int64_t segments,
                        int64_t in, int64_t out, const Threads& t);

}  // namespace syncbn
