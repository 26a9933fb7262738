// The convolution products of one sample, on caller memory (no copies), and the
// batch passes of passes.cc that split them over threads. Shapes are row-major;
// every kernel is single-threaded and deterministic. No FMA
// (binding.gyp: -ffp-contract=off) and a fixed order of every sum, so each
// vector clone gives the same bits as the others by construction (each checked
// alone against wasm's bits, see docs/native-kernels.md). Why no FMA: with it the
// whole resnet:2 run ended 1.3e-2 from PyTorch float64 instead of 8e-7 (a
// product that rounds to cancel exactly in float32, as in the wasm kernels,
// leaves an FMA residue that flips a ReLU at 0 on the blocky images: the likely
// cause, not traced to the element).
#pragma once
#include <cstdint>

namespace syncbn {

struct Geometry {
  int cin, inH, inW, kernel, stride, padding, outH, outW;
};

// cols (cin·k·k, outH·outW) ← x (cin, inH, inW), zero outside the image.
void im2col(float* cols, const float* x, const Geometry& g);
// dx (cin, inH, inW) += the adjoint of im2col applied to dcols.
void col2imAdd(float* dx, const float* dcols, const Geometry& g);
// C (m, p) (+)= A·B, A[i, t] = a[i·aRow + t·aCol], B (kk, p). 2·m·kk·p flops.
void gemmAcc(float* c, const float* a, int64_t aRow, int64_t aCol, const float* b, int m, int kk, int p, bool accumulate);
// c32 (m, kk) = A (m, p)·B (kk, p)ᵀ in float32; c64 (+)= f64(c32). 2·m·kk·p flops.
void gemmNtWiden(double* c64, float* c32, const float* a, const float* b, int m, int kk, int p, bool accumulate);

// passes.cc: a batch's passes over `threads` threads, the same bits for any number.
// y (n, cout, P) += W·im2col(x_i) per sample (y holds the bias); training keeps
// every sample's columns in cols (n, R, P).
void convForward(float* y, const float* x, float* cols, const float* w, const Geometry& g, int cout, int n, bool train, int threads);
// Samples first..first+count−1: dw64 (cout, R) = Σ f64(dy_i·cols_iᵀ) in sample
// order, dx_i (zeroed by the caller) += col2im(Wᵀ·dy_i).
void convBackward(float* dx, const float* dy, const float* cols, const float* w, double* dw64, const Geometry& g, int cout, int first, int count,
                  int threads);

// The bench's ceiling (peak.cc): GFLOP/s of one core's widest vector FMA, measured for `seconds`; isa names it ("none": 0).
double fmaPeakGflops(double seconds, const char** isa);

}  // namespace syncbn
