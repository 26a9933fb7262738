// The elementwise kernels of a training step on caller memory (see norm.h): ReLU
// and its backward, max pooling, the residual add, gradient accumulation and the SGD update,
// each the TypeScript twin's arithmetic exactly (a float32 sum of two float32
// values is what JS's float64 sum rounds to; SGD works in float64 as sgd.ts does).
#pragma GCC optimize("fp-contract=off")

#include "norm.h"

#include "clones.h"

namespace syncbn {

namespace {
SYNCBN_CLONES void reluRange(float* y, const float* x, int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; i++) {
    const float v = x[i];
    y[i] = v <= 0.0f ? 0.0f : v;
  }
}

SYNCBN_CLONES void reluBackwardRange(float* dx, const float* dy, const float* y, int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; i++) dx[i] = y[i] <= 0.0f ? 0.0f : dy[i];
}

SYNCBN_CLONES void addRange(float* y, const float* a, const float* b, int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; i++) y[i] = a[i] + b[i];
}

SYNCBN_CLONES void addIntoRange(float* acc, const float* g, int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; i++) acc[i] += g[i];
}

// Chunks of this many elements (a multiple of the cache line's 16 floats).
constexpr int64_t GRAIN = 65536;
}  // namespace

void relu(float* y, const float* x, int64_t len, const Threads& t) {
  splitOver(t, len, GRAIN, [&](int64_t lo, int64_t hi) { reluRange(y, x, lo, hi); });
}

void reluBackward(float* dx, const float* dy, const float* y, int64_t len, const Threads& t) {
  splitOver(t, len, GRAIN, [&](int64_t lo, int64_t hi) { reluBackwardRange(dx, dy, y, lo, hi); });
}

void add(float* y, const float* a, const float* b, int64_t len, const Threads& t) {
  splitOver(t, len, GRAIN, [&](int64_t lo, int64_t hi) { addRange(y, a, b, lo, hi); });
}

void addInto(float* acc, const float* g, int64_t len, const Threads& t) {
  splitOver(t, len, GRAIN, [&](int64_t lo, int64_t hi) { addIntoRange(acc, g, lo, hi); });
}

namespace {
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

// One window's max and its argmax into x, the window's elements in row-major order:
// strict > keeps the first of equal maxima; a NaN wins (the last NaN, as the twin).
inline void windowMax(const float* x, int64_t start, int64_t k, int64_t inW, float* y, int32_t* am) {
  int64_t best = start;
  float bestV = -__builtin_inff();
  for (int64_t kh = 0; kh < k; kh++) {
    for (int64_t kw = 0; kw < k; kw++) {
      const float v = x[start + kh * inW + kw];
      if (v > bestV || v != v) {
        bestV = v;
        best = start + kh * inW + kw;
      }
    }
  }
  *y = bestV;
  *am = int32_t(best);
}
}  // namespace

// Eight windows (consecutive outputs) at a time, one per vector lane, each lane
// taking its window's elements in the twin's order with a select (the compare is
// unpredictable on real data: a branch per element cost ~3.7 ns); the last
// (outputs mod 8) windows one by one.
SYNCBN_CLONES void maxpoolForward(float* y, int32_t* argmax, const float* x, int64_t planes, int64_t inH, int64_t inW, int64_t k,
                                  int64_t stride, int64_t outH, int64_t outW) {
  const int64_t total = planes * outH * outW;
  int64_t plane = 0, oh = 0, ow = 0;  // of output o
  const auto startOf = [&] { return plane * inH * inW + oh * stride * inW + ow * stride; };
  const auto next = [&] {
    if (++ow == outW) {
      ow = 0;
      if (++oh == outH) {
        oh = 0;
        ++plane;
      }
    }
  };
  int64_t o = 0;
  for (; o + 8 <= total; o += 8) {
    v8i start;
    for (int l = 0; l < 8; l++) {
      start[l] = int32_t(startOf());
      next();
    }
    v8f bestV = -__builtin_inff() - v8f{};
    v8i best = start;
    for (int64_t kh = 0; kh < k; kh++) {
      for (int64_t kw = 0; kw < k; kw++) {
        const v8i idx = start + int32_t(kh * inW + kw);
        v8f v;
        for (int l = 0; l < 8; l++) v[l] = x[idx[l]];
        const v8i take = (v > bestV) | (v != v);
        bestV = take ? v : bestV;
        best = take ? idx : best;
      }
    }
    __builtin_memcpy(y + o, &bestV, sizeof bestV);
    __builtin_memcpy(argmax + o, &best, sizeof best);
  }
  for (; o < total; o++, next()) windowMax(x, startOf(), k, inW, y + o, argmax + o);
}

bool maxpoolBackward(float* dx, const float* dy, const int32_t* argmax, int64_t outLen, int64_t inLen) {
  for (int64_t i = 0; i < inLen; i++) dx[i] = 0;
  for (int64_t o = 0; o < outLen; o++) {
    if (argmax[o] < 0 || argmax[o] >= inLen) return false;
    dx[argmax[o]] += dy[o];
  }
  return true;
}

SYNCBN_CLONES void sgdStep(float* p, const float* grad, float* buf, int64_t len, double lr, double mu, double wd, int mode) {
  if (mode == 0) {
    for (int64_t i = 0; i < len; i++) p[i] = float(double(p[i]) - lr * (double(grad[i]) + wd * double(p[i])));
  } else if (mode == 2) {
    for (int64_t i = 0; i < len; i++) {
      const double g = double(grad[i]) + wd * double(p[i]);
      buf[i] = float(mu * double(buf[i]) + g);
      p[i] = float(double(p[i]) - lr * (g + mu * double(buf[i])));
    }
  } else {
    for (int64_t i = 0; i < len; i++) {
      buf[i] = float(mu * double(buf[i]) + (double(grad[i]) + wd * double(p[i])));
      p[i] = float(double(p[i]) - lr * double(buf[i]));
    }
  }
}

}  // namespace syncbn
