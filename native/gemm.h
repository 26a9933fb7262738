// One float32 GEMM for the conv passes (gemm.cc): C (m, n) (+)= A (m, k)·B (k, n)
// on strided views of caller memory, packed panels and an FMA register tile per
// instruction set. Single-threaded; passes.cc splits the work over the pool.
// Bits: every C element is one FMA chain over t = 0..k−1 in order, from C's old
// value (accumulate) or +0, whatever the tile, the blocking or the caller's split,
// so they depend on the instruction set only (one per machine: gemmIsa()).
#pragma once
#include <cstdint>

namespace syncbn {

// v rounded up to a multiple of `to`.
inline int64_t roundUp(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

// Element (r, j) of a matrix at base[(j / plane)·sampleStride + r·rowStride + (j % plane)·colStride]:
// samples side by side, as y (n, cout, P) seen as (cout, n·P) with plane P. plain(): one sample.
struct View {
  float* base;
  int64_t rowStride, colStride, plane, sampleStride;
  static View plain(const float* base, int64_t rowStride, int64_t colStride) {
    return {const_cast<float*>(base), rowStride, colStride, INT64_MAX, 0};
  }
  static View batched(const float* base, int64_t plane, int64_t sampleStride) {
    return {const_cast<float*>(base), plane, 1, plane, sampleStride};
  }
  float* at(int64_t r, int64_t j) const { return base + (j / plane) * sampleStride + r * rowStride + (j % plane) * colStride; }
};

// C (m, n) = (accumulate ? C : +0) + A (m, k)·B (k, n). 2·m·n·k flops.
void gemm(const View& c, const View& a, const View& b, int64_t m, int64_t n, int64_t k, bool accumulate);

// c (m, n), row stride ldc, = +0 + A (m, k)·B (k, n) with A read in place (row-major,
// stride lda ≥ k) and B packed whole: dW's form, where A (each sample's columns) is
// large and used once and n (cout) is small. The same bits as gemm() would give.
void gemmInPlaceA(float* c, int64_t ldc, const float* a, int64_t lda, const View& b, int64_t m, int64_t n, int64_t k);

// The rows of gemmInPlaceA's tile on this process's micro-kernel (8 on AVX-512, else 6): callers split m in multiples of it.
int gemmInPlaceRows();

// The direct convolution's products (direct.cc), on this process's micro-kernel tile of
// gemmTileRows() × gemmTileCols(). The same FMA chains, so the same bits, as gemm() and
// gemmInPlaceA() on the columns im2col would have made.
int gemmTileRows();
int gemmTileCols();
// ap ← A (m, k) (row stride lda) packed for gemmOffsetB (K blocks of strips of gemmTileRows(), zero past m): packedRowsSize floats.
int64_t packedRowsSize(int64_t m, int64_t k);
void packRows(float* ap, const float* a, int64_t lda, int64_t m, int64_t k);
// C (+)= A (m, k)·B (k, n) with A packed by packRows and B[t, j] = base[off[t] + j]. C has m and n rounded up
// to the tile (row stride ldc): its m rounded up rows are written for the columns up to n rounded up to a
// vector (the last strip's tile is narrower when that covers n), the rest left as they were; base[off[t] + j]
// must be readable for j < n rounded up to the tile.
void gemmOffsetB(float* c, int64_t ldc, const float* ap, const float* base, const int64_t* off, int64_t m, int64_t n, int64_t k, bool accumulate);
// c (m, n), row stride ldc, = +0 + A (m, k)·B (k, n) as gemmInPlaceA, with k = h·w and A[r, oh·w + ow] = rows[r][oh·wp + ow].
void gemmGridA(float* c, int64_t ldc, const float* const* rows, int64_t h, int64_t w, int64_t wp, const View& b, int64_t m, int64_t n);

// The micro-kernel this process runs: "avx512f" (8×48 tile, FMA), "avx2" (6×16, FMA) or "baseline" (6×8, plain C++).
const char* gemmIsa();
// Runs `name` from now on (tests run every one the CPU has); false if the CPU lacks it or the name is unknown.
bool useGemmIsa(const char* name);

}  // namespace syncbn
