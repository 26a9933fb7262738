// Whole conv passes over a batch, split over compute threads (--threads) the way
// the WebAssembly path splits them (worker/nn/kernels/conv-parts.ts): forward and
// dx by samples, dW by rows of the output channels. Every output element is
// computed by the same kernel calls in the same order whatever the number of
// threads (dW: each sample's float32 product added into the float64 sum in sample
// order), so the bits do not depend on it. Part 0 runs on the calling thread;
// the others are std::threads started per pass and joined before it returns.
#include <algorithm>
#include <thread>
#include <vector>

#include "conv.h"

namespace syncbn {

namespace {
void partRange(int64_t count, int p, int of, int64_t* lo, int64_t* hi) {
  *lo = count * p / of;
  *hi = count * (p + 1) / of;
}

template <class F>
void runParts(int parts, const F& part) {
  std::vector<std::thread> helpers;
  helpers.reserve(parts - 1);
  for (int p = 1; p < parts; p++) helpers.emplace_back(part, p);
  part(0);
  for (auto& t : helpers) t.join();
}
}  // namespace

void convForward(float* y, const float* x, float* cols, const float* w, const Geometry& g, int cout, int n, bool train, int threads) {
  const int64_t R = int64_t(g.cin) * g.kernel * g.kernel, P = int64_t(g.outH) * g.outW, inSize = int64_t(g.cin) * g.inH * g.inW;
  const int parts = std::max(1, std::min(threads, n));
  runParts(parts, [&](int p) {
    int64_t lo, hi;
    partRange(n, p, parts, &lo, &hi);
    std::vector<float> scratch(train ? 0 : R * P);
    for (int64_t i = lo; i < hi; i++) {
      float* c = train ? cols + i * R * P : scratch.data();
      im2col(c, x + i * inSize, g);
      gemmAcc(y + i * cout * P, w, R, 1, c, cout, int(R), int(P), true);
    }
  });
}

void convBackward(float* dx, const float* dy, const float* cols, const float* w, double* dw64, const Geometry& g, int cout, int first, int count,
                  int threads) {
  const int64_t R = int64_t(g.cin) * g.kernel * g.kernel, P = int64_t(g.outH) * g.outW, inSize = int64_t(g.cin) * g.inH * g.inW;
  const int parts = std::max(1, threads);
  runParts(parts, [&](int p) {
    // dW rows r0..r1−1 (whole 16-row blocks) over every sample; dx for this part's samples.
    int64_t r0, r1, lo, hi;
    partRange((cout + 15) / 16, p, parts, &r0, &r1);
    r0 = std::min<int64_t>(cout, r0 * 16);
    r1 = std::min<int64_t>(cout, r1 * 16);
    partRange(count, p, parts, &lo, &hi);
    std::vector<float> dw32((r1 - r0) * R), dcols(hi > lo ? R * P : 0);
    for (int64_t s = 0; s < count; s++) {
      const int64_t i = first + s;
      const float* dyi = dy + i * cout * P;
      if (r1 > r0) gemmNtWiden(dw64 + r0 * R, dw32.data(), dyi + r0 * P, cols + i * R * P, int(r1 - r0), int(R), int(P), s > 0);
      if (s >= lo && s < hi) {
        gemmAcc(dcols.data(), w, 1, R, dyi, int(R), cout, int(P), false);
        col2imAdd(dx + i * inSize, dcols.data(), g);
      }
    }
  });
}

}  // namespace syncbn
