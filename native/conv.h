// The convolution passes of a batch (passes.cc) on caller memory (no copies),
// built from im2col/col2im (im2col.cc) and one FMA GEMM (gemm.h), split over a
// persistent thread pool (pool.h). Shapes are row-major. Numerics: every output
// element is one FMA chain in a fixed order (gemm.h), so the bits are the same
// run to run and for any number of threads, and differ from the WebAssembly and
// TypeScript twins (no FMA) by float32 rounding only (docs/native-kernels.md).
#pragma once
#include <cstdint>
#include <vector>

#include "pool.h"

namespace syncbn {

// A per-thread scratch of at least `floats` floats: grown, never shrunk (the passes' thread_local buffers).
inline float* grown(std::vector<float>& v, int64_t floats) {
  if (int64_t(v.size()) < floats) v.resize(floats);
  return v.data();
}

struct Geometry {
  int cin, inH, inW, kernel, stride, padding, outH, outW;
};

// cols (cin·k·k, outH·outW) ← x (cin, inH, inW), zero outside the image.
void im2col(float* cols, const float* x, const Geometry& g);
// Rows r0..r1−1 of those columns only, into cols (r1 − r0, outH·outW): the same values (copies).
void im2colRows(float* cols, const float* x, const Geometry& g, int64_t r0, int64_t r1);
// dx (cin, inH, inW) += the adjoint of im2col applied to dcols (cin·k·k rows of outH·outW,
// rowStride apart; 0: back to back).
void col2imAdd(float* dx, const float* dcols, const Geometry& g, int64_t rowStride = 0);
// The same adds, the same bits (given dx is never −0, as when it starts at +0), faster when stride
// is 1 and outW = inW; dcols is scratch: its elements at columns outside the image may be zeroed.
void col2imAddScratch(float* dx, float* dcols, const Geometry& g, int64_t rowStride = 0);

// passes.cc: a batch's passes over `threads` parts of the pool, the same bits for any number.
// y (n, cout, P) = bias + W·im2col(x_i) per sample (the bias (cout) filled in, then
// the GEMM adds). The columns go to cols (n, R, P) when it is not null (training, kept
// for backward), else to a per-thread scratch and are dropped; when xSaved is not null
// (training without kept columns) each x_i is copied into it (n, cin, inH, inW) for
// backward, which makes the columns again. Several samples per GEMM when P is small.
void convForward(Pool& pool, float* y, const float* x, float* xSaved, float* cols, const float* w, const float* bias, const Geometry& g, int cout, int n,
                 int threads);
// Samples first..first+count−1, cols_i = keptCols' sample i when it is not null, else
// im2col(x_i) of the saved inputs x, made again per sample and per part's rows in a
// per-thread scratch (the same values, so the same bits): dw64 (cout, R) = Σ f64(dy_i·cols_iᵀ) in sample
// order (each sample's product in float32), dx_i = col2im(Wᵀ·dy_i) (zeroed here
// first). When not null: dw (cout, R) = float32(dw64) (zero when count = 0), and
// db (cout) = float32(Σ_i f64(rowSum(dy_i row co))), rowSum the twins' float32
// 4-lane order, summed in sample order (ConvWasm's db bits); colSums (R) =
// Σ_i f64(rowSum(cols_i row r)) (CBN's sums, the same order). dx null: no dx; dw64 null:
// no dW (dw, colSums null too), so dx and dW can be two passes with the bits of one.
void convBackward(Pool& pool, float* dx, const float* dy, const float* x, const float* keptCols, const float* w, double* dw64, float* dw, float* db, double* colSums,
                  const Geometry& g, int cout, int first, int count, int threads);

// direct.cc: stride-1 convs without im2col (the same bits for y and dW; dx its own, fixed by the geometry).
// Whether g takes that path (stride 1, padding < kernel, at least 3/5 of the padded grid kept in the forward
// and in dx); useDirectConv(false) turns it off process-wide (tests compare the two paths).
bool directConv(const Geometry& g);
void useDirectConv(bool on);
// y (n, cout, P) = bias + W·columns(x_i), samples split over the pool; x copied into xSaved when not null.
void directForward(Pool& pool, float* y, const float* x, float* xSaved, const float* w, const float* bias, const Geometry& g, int cout, int n, int threads);
// dx's weights, flipped and transposed, packed: in a buffer of the calling thread, read by directDx until its next call.
const float* directDxWeights(const float* w, const Geometry& g, int cout);
// dx of `count` samples (count, cin, inH, inW) = the flipped kernel's forward over their dy (count, cout, outH, outW), from +0;
// directDxGroup(g) samples at a time make one GEMM of about 384 columns (any count gives the same bits).
int64_t directDxGroup(const Geometry& g);
void directDx(float* dx, const float* dy, int64_t count, const float* wPacked, const Geometry& g, int cout);
// dw32 (j1 − j0, cout) = rows j0..j1−1 of x's columns · dyᵀ, one sample (gemmInPlaceA's bits on im2col's rows).
void directDwProduct(float* dw32, const float* x, const float* dy, const Geometry& g, int cout, int64_t j0, int64_t j1);

// The bench's ceiling (peak.cc): GFLOP/s of one core's widest vector FMA, measured for `seconds`; isa names it ("none": 0).
double fmaPeakGflops(double seconds, const char** isa);

}  // namespace syncbn
