// gemm.h's kernel, BLIS style: for each block of NC columns and KC of the inner
// dimension, B is packed once (strips of NR columns, zero-padded) and reused over
// all of M; A is packed per MC rows (strips of MR, zero-padded); an MR×NR tile of C
// stays in registers over one K block (load, kc FMAs per element, store). Tiles at
// the edges run the same micro-kernel on a copy of the tile, and a C whose columns
// span samples is computed on a plain copy, so every element sees the same FMA
// chain. Whole strips of B inside one sample are read in place. Three micro-kernels
// (micro-tile.inc): AVX-512 (8 rows × 3 zmm: 24 accumulators), AVX2+FMA (6 × 2
// ymm: 12) and vectors of 4 (NEON's FMA on arm64, fmaf per lane elsewhere), chosen
// at load with __builtin_cpu_supports. All three round once per term in the same
// order, so they give the same bits (test/native-kernels.test.ts runs each).
// Beside them, per instruction set, the tiles of the direct convolution (direct.cc):
// B read at a per-row offset (gemmOffsetB), and A read through row pointers
// (gemmGridA, which gemmInPlaceA's A rows in place also use).
#include "gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace syncbn {

namespace {

constexpr int64_t KC = 256;  // inner-dimension block: B strip KC × 48 floats = 48 KB (L1/L2), A strip 8 KB
constexpr int64_t MC = 144;  // rows of A per packed block (a multiple of every MR): 144 KB at KC (L2)
constexpr int64_t NC = 384;  // columns of B per packed block (a multiple of every NR): 384 KB at KC (L2)

typedef void (*MicroFn)(int64_t kc, const float* ap, const float* bp, int64_t ldb, float* c, int64_t ldc, bool load);
// The direct convolution's tiles (gemm.h gemmOffsetB, gemmGridA).
typedef void (*OffsetFn)(int64_t kc, const float* ap, const float* base, const int64_t* off, float* c, int64_t ldc, bool load);
typedef void (*GridFn)(const float* const* rows, int64_t h, int64_t w, int64_t wp, const float* bp, float* c, int64_t ldc);

}  // namespace

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
namespace avx512 {
typedef __m512 V;
constexpr int L = 16;
inline V fmadd(float a, V b, V c) { return _mm512_fmadd_ps(_mm512_set1_ps(a), b, c); }
#include "micro-tile.inc"
void micro(int64_t kc, const float* ap, const float* bp, int64_t ldb, float* c, int64_t ldc, bool load) {
  microTile<8, 3>(kc, ap, bp, ldb, c, ldc, load);
}
template <int NV>
void offset(int64_t kc, const float* ap, const float* base, const int64_t* off, float* c, int64_t ldc, bool load) { offsetTile<8, NV>(kc, ap, base, off, c, ldc, load); }
template <int NV>
void grid(const float* const* rows, int64_t h, int64_t w, int64_t wp, const float* bp, float* c, int64_t ldc) { gridTile<8, NV>(rows, h, w, wp, bp, c, ldc); }
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
typedef __m256 V;
constexpr int L = 8;
inline V fmadd(float a, V b, V c) { return _mm256_fmadd_ps(_mm256_set1_ps(a), b, c); }
#include "micro-tile.inc"
void micro(int64_t kc, const float* ap, const float* bp, int64_t ldb, float* c, int64_t ldc, bool load) {
  microTile<6, 2>(kc, ap, bp, ldb, c, ldc, load);
}
template <int NV>
void offset(int64_t kc, const float* ap, const float* base, const int64_t* off, float* c, int64_t ldc, bool load) { offsetTile<6, NV>(kc, ap, base, off, c, ldc, load); }
template <int NV>
void grid(const float* const* rows, int64_t h, int64_t w, int64_t wp, const float* bp, float* c, int64_t ldc) { gridTile<6, NV>(rows, h, w, wp, bp, c, ldc); }
}  // namespace avx2
#pragma GCC pop_options
#endif

namespace baseline {
constexpr int L = 4;
#if defined(__aarch64__)
typedef float32x4_t V;
inline V fmadd(float a, V b, V c) { return vfmaq_n_f32(c, b, a); }
#else
typedef float V __attribute__((vector_size(16)));
// One rounding per lane as on the FMA paths (libm's fmaf where the CPU has no FMA: correct, slow).
inline V fmadd(float a, V b, V c) {
  V r;
  for (int l = 0; l < L; l++) r[l] = __builtin_fmaf(a, b[l], c[l]);
  return r;
}
#endif
#include "micro-tile.inc"
void micro(int64_t kc, const float* ap, const float* bp, int64_t ldb, float* c, int64_t ldc, bool load) {
  microTile<6, 2>(kc, ap, bp, ldb, c, ldc, load);
}
template <int NV>
void offset(int64_t kc, const float* ap, const float* base, const int64_t* off, float* c, int64_t ldc, bool load) { offsetTile<6, NV>(kc, ap, base, off, c, ldc, load); }
template <int NV>
void grid(const float* const* rows, int64_t h, int64_t w, int64_t wp, const float* bp, float* c, int64_t ldc) { gridTile<6, NV>(rows, h, w, wp, bp, c, ldc); }
}  // namespace baseline

namespace {

struct Isa {
  const char* name;
  int mr, nr;
  MicroFn micro;
  bool (*supported)();
  int lanes, inPlaceRows;    // gemmGridA (and gemmInPlaceA): tiles of inPlaceRows × NV·lanes, NV = 1..3 (AVX-512) or 1..2
  OffsetFn offset[3];        // mr × NV·lanes, B at offsets, by NV − 1 (NV·lanes = nr the widest; narrower for the last strip)
  GridFn grid[3];            // by NV − 1; null where the accumulators would not fit
};

const Isa ISAS[] = {
#if defined(__x86_64__)
    {"avx512f", 8, 48, avx512::micro, [] { return __builtin_cpu_init(), __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma"); },
     16, 8, {avx512::offset<1>, avx512::offset<2>, avx512::offset<3>}, {avx512::grid<1>, avx512::grid<2>, avx512::grid<3>}},
    {"avx2", 6, 16, avx2::micro, [] { return __builtin_cpu_init(), __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); },
     8, 6, {avx2::offset<1>, avx2::offset<2>, nullptr}, {avx2::grid<1>, avx2::grid<2>, nullptr}},
#endif
    {"baseline", 6, 8, baseline::micro, [] { return true; }, 4, 6, {baseline::offset<1>, baseline::offset<2>, nullptr}, {baseline::grid<1>, baseline::grid<2>, nullptr}},
};

const Isa* chooseIsa() {
  for (const Isa& isa : ISAS)
    if (isa.supported()) return &isa;
  return &ISAS[sizeof(ISAS) / sizeof(ISAS[0]) - 1];
}

const Isa* current = chooseIsa();

// Grown, never shrunk, one per thread (the pool's threads live as long as the addon), 64-byte aligned.
float* scratch(std::vector<float>& v, int64_t floats) {
  if (int64_t(v.size()) < floats + 16) v.resize(floats + 16);
  const uintptr_t p = reinterpret_cast<uintptr_t>(v.data());
  return reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));
}

// Calls run(j, len, sameSample) for the runs of columns j0..j0+cols−1 that lie within one sample.
template <class F>
void columnRuns(const View& v, int64_t j0, int64_t cols, const F& run) {
  for (int64_t j = j0, end = j0 + cols; j < end;) {
    const int64_t len = std::min(end - j, v.plane - j % v.plane);
    run(j, len);
    j += len;
  }
}

// bp (strips of NR columns, each kc × NR) ← B rows pc..pc+kc−1, columns jc..jc+nc−1, zero past nc.
void packB(float* bp, const View& b, int64_t pc, int64_t kc, int64_t jc, int64_t nc, int nr) {
  for (int64_t jr = 0; jr < nc; jr += nr) {
    float* dst = bp + jr * kc;
    const int64_t w = std::min<int64_t>(nr, nc - jr);
    if (w < nr)
      for (int64_t t = 0; t < kc; t++) std::memset(dst + t * nr + w, 0, sizeof(float) * (nr - w));
    if (b.colStride == 1) {
      columnRuns(b, jc + jr, w, [&](int64_t j, int64_t len) {
        const float* src = b.at(pc, j);
        float* out = dst + (j - jc - jr);
        for (int64_t t = 0; t < kc; t++) std::memcpy(out + t * nr, src + t * b.rowStride, sizeof(float) * len);
      });
    } else {
      for (int64_t q = 0; q < w; q++) {
        const float* src = b.at(pc, jc + jr + q);
        for (int64_t t = 0; t < kc; t++) dst[t * nr + q] = src[t * b.rowStride];
      }
    }
  }
}

// ap (strips of MR rows, each kc × MR) ← A rows ic..ic+mc−1, columns pc..pc+kc−1, zero past mc. A is one sample (plain).
void packA(float* ap, const View& a, int64_t ic, int64_t mc, int64_t pc, int64_t kc, int mr) {
  for (int64_t ir = 0; ir < mc; ir += mr) {
    float* dst = ap + ir * kc;
    const int64_t h = std::min<int64_t>(mr, mc - ir);
    if (a.colStride == 1) {
      for (int64_t r = 0; r < h; r++) {
        const float* src = a.base + (ic + ir + r) * a.rowStride + pc;
        for (int64_t t = 0; t < kc; t++) dst[t * mr + r] = src[t];
      }
    } else {
      for (int64_t t = 0; t < kc; t++) {
        const float* src = a.base + (pc + t) * a.colStride + (ic + ir) * a.rowStride;
        for (int64_t r = 0; r < h; r++) dst[t * mr + r] = src[r * a.rowStride];
      }
    }
    for (int64_t t = 0; t < kc; t++)
      for (int64_t r = h; r < mr; r++) dst[t * mr + r] = 0;
  }
}

// Columns j0..j0+cols−1 of v are contiguous in every row (one sample, unit column stride).
bool wholeStrip(const View& v, int64_t j0, int64_t cols) { return v.colStride == 1 && j0 % v.plane + cols <= v.plane; }

// The rows × cols tile of C at (i0, j0), through tmp: at the edges, or across two samples.
void edgeTile(const Isa& isa, const View& c, int64_t i0, int64_t j0, int64_t rows, int64_t cols, int64_t kc, const float* ap, const float* bp,
              int64_t ldb, bool load, float* tmp) {
  const int nr = isa.nr;
  if (load) {
    std::memset(tmp, 0, sizeof(float) * isa.mr * nr);
    for (int64_t r = 0; r < rows; r++)
      columnRuns(c, j0, cols, [&](int64_t j, int64_t len) {
        const float* src = c.at(i0 + r, j);
        float* dst = tmp + r * nr + (j - j0);
        if (c.colStride == 1) std::memcpy(dst, src, sizeof(float) * len);
        else for (int64_t q = 0; q < len; q++) dst[q] = src[q * c.colStride];
      });
  }
  isa.micro(kc, ap, bp, ldb, tmp, nr, load);
  for (int64_t r = 0; r < rows; r++)
    columnRuns(c, j0, cols, [&](int64_t j, int64_t len) {
      float* dst = c.at(i0 + r, j);
      const float* src = tmp + r * nr + (j - j0);
      if (c.colStride == 1) std::memcpy(dst, src, sizeof(float) * len);
      else for (int64_t q = 0; q < len; q++) dst[q * c.colStride] = src[q];
    });
}

}  // namespace

void gemm(const View& c, const View& a, const View& b, int64_t m, int64_t n, int64_t k, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  if (c.plane < n) {
    // C spans samples (small planes side by side): work on a plain copy, so every tile is a whole one, and copy it back once.
    thread_local std::vector<float> cBuf;
    float* plain = scratch(cBuf, m * n);
    const auto copy = [&](bool toPlain) {
      for (int64_t i = 0; i < m; i++)
        columnRuns(c, 0, n, [&](int64_t j, int64_t len) {
          float* at = c.at(i, j);
          float* p = plain + i * n + j;
          for (int64_t q = 0; q < len; q++) {
            if (toPlain) p[q] = at[q * c.colStride];
            else at[q * c.colStride] = p[q];
          }
        });
    };
    if (accumulate) copy(true);
    gemm(View::plain(plain, n, 1), a, b, m, n, k, accumulate);
    copy(false);
    return;
  }
  const Isa& isa = *current;
  if (k <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; i++)
        columnRuns(c, 0, n, [&](int64_t j, int64_t len) {
          float* dst = c.at(i, j);
          for (int64_t q = 0; q < len; q++) dst[q * c.colStride] = 0;
        });
    return;
  }
  // K in equal blocks of at most KC: the blocking depends on k alone, never on the caller's split.
  const int64_t kBlocks = (k + KC - 1) / KC, kc0 = (k + kBlocks - 1) / kBlocks;
  thread_local std::vector<float> aBuf, bBuf, tBuf;
  float* ap = scratch(aBuf, MC * kc0);
  float* bp = scratch(bBuf, kc0 * NC);
  float* tmp = scratch(tBuf, int64_t(isa.mr) * isa.nr);
  for (int64_t jc = 0; jc < n; jc += NC) {
    const int64_t nc = std::min(NC, n - jc);
    for (int64_t pc = 0; pc < k; pc += kc0) {
      const int64_t kc = std::min(kc0, k - pc);
      // A whole strip of B within one sample is read where it is (rows ldb = rowStride apart); the others are packed.
      const float* strip[NC / 8];
      int64_t ldb[NC / 8];
      for (int64_t jr = 0; jr < nc; jr += isa.nr) {
        const int64_t w = std::min<int64_t>(isa.nr, nc - jr), q = jr / isa.nr;
        if (w == isa.nr && wholeStrip(b, jc + jr, w)) {
          strip[q] = b.at(pc, jc + jr), ldb[q] = b.rowStride;
        } else {
          packB(bp + jr * kc, b, pc, kc, jc + jr, w, isa.nr);
          strip[q] = bp + jr * kc, ldb[q] = isa.nr;
        }
      }
      for (int64_t ic = 0; ic < m; ic += MC) {
        const int64_t mc = std::min(MC, m - ic);
        packA(ap, a, ic, mc, pc, kc, isa.mr);
        for (int64_t jr = 0; jr < nc; jr += isa.nr) {
          // Whole tiles straight into C (its strip's address found once: no division per tile), the rest through tmp.
          const int64_t cols = std::min<int64_t>(isa.nr, nc - jr), q = jr / isa.nr;
          float* cStrip = cols == isa.nr && wholeStrip(c, jc + jr, cols) ? c.at(ic, jc + jr) : nullptr;
          for (int64_t ir = 0; ir < mc; ir += isa.mr) {
            const int64_t rows = std::min<int64_t>(isa.mr, mc - ir);
            if (cStrip && rows == isa.mr) isa.micro(kc, ap + ir * kc, strip[q], ldb[q], cStrip + ir * c.rowStride, c.rowStride, accumulate || pc > 0);
            else edgeTile(isa, c, ic + ir, jc + jr, rows, cols, kc, ap + ir * kc, strip[q], ldb[q], accumulate || pc > 0, tmp);
          }
        }
      }
    }
  }
}

void gemmInPlaceA(float* c, int64_t ldc, const float* a, int64_t lda, const View& b, int64_t m, int64_t n, int64_t k) {
  // gemmGridA's product with one grid row of k columns per A row: the same tiles, the same chains.
  thread_local std::vector<const float*> rows;
  rows.resize(std::max<int64_t>(m, 0));
  for (int64_t r = 0; r < m; r++) rows[r] = a + r * lda;
  gemmGridA(c, ldc, rows.data(), 1, k, k, b, m, n);
}

int gemmTileRows() { return current->mr; }

int gemmTileCols() { return current->nr; }

namespace {
// K in equal blocks of at most KC, as gemm(): the block length for k.
int64_t kBlock(int64_t k) {
  const int64_t blocks = (k + KC - 1) / KC;
  return (k + blocks - 1) / blocks;
}
}  // namespace

int64_t packedRowsSize(int64_t m, int64_t k) { return roundUp(m, current->mr) * std::max<int64_t>(k, 1); }

void packRows(float* ap, const float* a, int64_t lda, int64_t m, int64_t k) {
  const Isa& isa = *current;
  const int64_t mRound = roundUp(m, isa.mr), kc0 = kBlock(k);
  for (int64_t pc = 0; pc < k; pc += kc0) {
    const int64_t kc = std::min(kc0, k - pc);
    packA(ap + pc * mRound, View::plain(a, lda, 1), 0, m, pc, kc, isa.mr);
  }
}

void gemmOffsetB(float* c, int64_t ldc, const float* ap, const float* base, const int64_t* off, int64_t m, int64_t n, int64_t k, bool accumulate) {
  const Isa& isa = *current;
  if (m <= 0 || n <= 0) return;
  const int64_t mRound = roundUp(m, isa.mr), nRound = roundUp(n, isa.nr), kc0 = kBlock(k);
  if (k <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < mRound; i++) std::memset(c + i * ldc, 0, sizeof(float) * nRound);
    return;
  }
  // One column strip at a time: its B rows (k · nr floats, in L1 at kc ≤ 256) serve every row strip. The
  // last strip is as few vectors wide as covers n (its columns up to nRound are left as they were): each
  // element is the same FMA chain whatever the tile's width, so the same bits.
  const int maxNv = isa.nr / isa.lanes;
  for (int64_t jr = 0; jr < nRound; jr += isa.nr) {
    const int nv = int(std::min<int64_t>(maxNv, (n - jr + isa.lanes - 1) / isa.lanes));
    const OffsetFn tile = isa.offset[nv - 1];
    for (int64_t pc = 0; pc < k; pc += kc0) {
      const int64_t kc = std::min(kc0, k - pc);
      for (int64_t ir = 0; ir < mRound; ir += isa.mr)
        tile(kc, ap + pc * mRound + ir * kc, base + jr, off + pc, c + ir * ldc + jr, ldc, accumulate || pc > 0);
    }
  }
}

void gemmGridA(float* c, int64_t ldc, const float* const* rows, int64_t h, int64_t w, int64_t wp, const View& b, int64_t m, int64_t n) {
  if (m <= 0 || n <= 0) return;
  const Isa& isa = *current;
  const int64_t k = h * w;
  if (k <= 0) {
    for (int64_t i = 0; i < m; i++) std::memset(c + i * ldc, 0, sizeof(float) * n);
    return;
  }
  const int mr = isa.inPlaceRows, maxNv = isa.grid[2] ? 3 : 2;
  thread_local std::vector<float> bBuf, tBuf;
  float* bp = scratch(bBuf, k * (n + maxNv * isa.lanes));
  float* tmp = scratch(tBuf, int64_t(mr) * maxNv * isa.lanes);
  for (int64_t jr = 0; jr < n;) {
    const int nv = int(std::min<int64_t>(maxNv, (n - jr + isa.lanes - 1) / isa.lanes)), nr = nv * isa.lanes;
    const int64_t wd = std::min<int64_t>(nr, n - jr);
    packB(bp, b, 0, k, jr, wd, nr);
    for (int64_t ir = 0; ir < m; ir += mr) {
      const int64_t count = std::min<int64_t>(mr, m - ir);
      const float* tile[8];
      for (int r = 0; r < mr; r++) tile[r] = rows[ir + std::min<int64_t>(r, count - 1)];  // past m: row m − 1 again, not stored
      if (count == mr && wd == nr) {
        isa.grid[nv - 1](tile, h, w, wp, bp, c + ir * ldc + jr, ldc);
      } else {
        isa.grid[nv - 1](tile, h, w, wp, bp, tmp, nr);
        for (int64_t r = 0; r < count; r++) std::memcpy(c + (ir + r) * ldc + jr, tmp + r * nr, sizeof(float) * wd);
      }
    }
    jr += wd;
  }
}

const char* gemmIsa() { return current->name; }

int gemmInPlaceRows() { return current->inPlaceRows; }

bool useGemmIsa(const char* name) {
  for (const Isa& isa : ISAS)
    if (std::strcmp(isa.name, name) == 0 && isa.supported()) {
      current = &isa;
      return true;
    }
  return false;
}

}  // namespace syncbn
