// N-API surface of norm.h and linear.h: the BN and GroupNorm passes, max pooling, ReLU, the residual add,
// gradient accumulation, SGD and Linear's GEMMs on the JS typed arrays' own memory (each array
// argument is a whole view: a subarray passes its window). Every call checks the
// arrays' types and that what it touches lies inside them, and throws a
// RangeError naming the argument otherwise. Registered by addon.cc's Init.
#include <node_api.h>

#include <cstdint>
#include <string>

#include "linear.h"
#include "norm.h"
#include "step-api.h"

namespace {

struct Args {
  napi_env env;
  napi_value v[16];
  bool ok = true;

  size_t argc = 16;

  // want arguments; with `threads`, an optional last one more: the threads the pass may split over.
  Args(napi_env e, napi_callback_info info, size_t want, bool threads = false) : env(e) {
    napi_get_cb_info(env, info, &argc, v, nullptr, nullptr);
    if (argc != want && !(threads && argc == want + 1))
      fail("expected " + std::to_string(want) + (threads ? " or " + std::to_string(want + 1) : "") + " arguments");
  }
  // Argument i, when given: 1..256 threads of this environment's pool (else the calling thread alone).
  syncbn::Threads threads(size_t i) {
    syncbn::Threads t;
    if (!ok || argc <= i) return t;
    const int64_t n = count(int(i), "threads");
    if (ok && (n < 1 || n > 256)) fail("threads must be in 1..256");
    if (ok) t = {&syncbn::poolOf(env), int(n)};
    return t;
  }
  void fail(const std::string& msg) {
    if (ok) napi_throw_range_error(env, nullptr, msg.c_str());
    ok = false;
  }
  // Argument i: a typed array of `type` with at least `need` elements.
  void* array(int i, napi_typedarray_type type, int64_t need, const char* name) {
    if (!ok) return nullptr;
    bool isTa = false;
    napi_typedarray_type t;
    size_t len = 0;
    void* data = nullptr;
    napi_is_typedarray(env, v[i], &isTa);
    if (!isTa || napi_get_typedarray_info(env, v[i], &t, &len, &data, nullptr, nullptr) != napi_ok || t != type) {
      const char* want = type == napi_float32_array ? "a Float32Array" : type == napi_float64_array ? "a Float64Array" : "an Int32Array";
      fail(std::string(name) + ": expected " + want);
      return nullptr;
    }
    if (need < 0 || int64_t(len) < need) {
      fail(std::string(name) + ": " + std::to_string(len) + " elements, needs " + std::to_string(need));
      return nullptr;
    }
    return data;
  }
  int32_t* i32(int i, int64_t need, const char* name) { return static_cast<int32_t*>(array(i, napi_int32_array, need, name)); }
  float* f32(int i, int64_t need, const char* name) { return static_cast<float*>(array(i, napi_float32_array, need, name)); }
  double* f64(int i, int64_t need, const char* name) { return static_cast<double*>(array(i, napi_float64_array, need, name)); }
  int64_t count(int i, const char* name) {
    int64_t x = -1;
    if (ok && (napi_get_value_int64(env, v[i], &x) != napi_ok || x < 0 || x > (int64_t(1) << 40))) fail(std::string(name) + ": expected a count ≥ 0");
    return x;
  }
  double number(int i, const char* name) {
    double x = 0;
    if (ok && napi_get_value_double(env, v[i], &x) != napi_ok) fail(std::string(name) + ": expected a number");
    return x;
  }
};

// x·y·z, or a failure when it overflows or passes 2⁴⁰ (so no check below can wrap).
int64_t product(Args& a, int64_t x, int64_t y, int64_t z) {
  int64_t xy = 0, xyz = 0;
  if (!a.ok) return 0;
  if (__builtin_mul_overflow(x, y, &xy) || __builtin_mul_overflow(xy, z, &xyz) || xyz > (int64_t(1) << 40)) {
    a.fail("sizes out of range");
    return 0;
  }
  return xyz;
}

// Shape arguments n, c, s at i, i+1, i+2; len = n·c·s.
struct Shape {
  int64_t n, c, s, len;
  Shape(Args& a, int i) : n(a.count(i, "n")), c(a.count(i + 1, "c")), s(a.count(i + 2, "s")), len(product(a, n, c, s)) {}
};

// bnMoments(mean, m2, x, n, c, s[, threads]); every BN pass, relu, reluBackward, add and addInto take an optional last
// threads (1..256): the pass splits over that many of the pool's threads (the same bits; norm.h)
napi_value BnMoments(napi_env env, napi_callback_info info) {
  Args a(env, info, 6, true);
  Shape d(a, 3);
  double *mean = a.f64(0, d.c, "mean"), *m2 = a.f64(1, d.c, "m2");
  float* x = a.f32(2, d.len, "x");
  const syncbn::Threads t = a.threads(6);
  if (a.ok) syncbn::bnMoments(mean, m2, x, d.n, d.c, d.s, t);
  return nullptr;
}

// bnNormalize(y, xhat, x, mean, invStd, gamma, beta, n, c, s)
napi_value BnNormalize(napi_env env, napi_callback_info info) {
  Args a(env, info, 10, true);
  Shape d(a, 7);
  float *y = a.f32(0, d.len, "y"), *xhat = a.f32(1, d.len, "xhat"), *x = a.f32(2, d.len, "x");
  double *mean = a.f64(3, d.c, "mean"), *invStd = a.f64(4, d.c, "invStd");
  float *gamma = a.f32(5, d.c, "gamma"), *beta = a.f32(6, d.c, "beta");
  const syncbn::Threads t = a.threads(10);
  if (a.ok) syncbn::bnNormalize(y, xhat, x, mean, invStd, gamma, beta, d.n, d.c, d.s, t);
  return nullptr;
}

// bnGradSums(out, dy, xhat, n, c, s)
napi_value BnGradSums(napi_env env, napi_callback_info info) {
  Args a(env, info, 6, true);
  Shape d(a, 3);
  double* out = a.f64(0, 2 * d.c, "out");
  float *dy = a.f32(1, d.len, "dy"), *xhat = a.f32(2, d.len, "xhat");
  const syncbn::Threads t = a.threads(6);
  if (a.ok) syncbn::bnGradSums(out, dy, xhat, d.n, d.c, d.s, t);
  return nullptr;
}

// bnDx(dx, dy, xhat, sums, count, invStd, gamma, n, c, s)
napi_value BnDx(napi_env env, napi_callback_info info) {
  Args a(env, info, 10, true);
  Shape d(a, 7);
  float *dx = a.f32(0, d.len, "dx"), *dy = a.f32(1, d.len, "dy"), *xhat = a.f32(2, d.len, "xhat");
  double* sums = a.f64(3, 2 * d.c, "sums");
  const double count = a.number(4, "count");
  double* invStd = a.f64(5, d.c, "invStd");
  float* gamma = a.f32(6, d.c, "gamma");
  const syncbn::Threads t = a.threads(10);
  if (a.ok) syncbn::bnDx(dx, dy, xhat, sums, count, invStd, gamma, d.n, d.c, d.s, t);
  return nullptr;
}

// bnEval(y, x, mean, var, gamma, beta, eps, n, c, s)
napi_value BnEval(napi_env env, napi_callback_info info) {
  Args a(env, info, 10, true);
  Shape d(a, 7);
  float *y = a.f32(0, d.len, "y"), *x = a.f32(1, d.len, "x");
  double *mean = a.f64(2, d.c, "runningMean"), *var = a.f64(3, d.c, "runningVar");
  float *gamma = a.f32(4, d.c, "gamma"), *beta = a.f32(5, d.c, "beta");
  const double eps = a.number(6, "eps");
  const syncbn::Threads t = a.threads(10);
  if (a.ok) syncbn::bnEval(y, x, mean, var, gamma, beta, eps, d.n, d.c, d.s, t);
  return nullptr;
}

// gnForward(y, xhat, groupInvStd, x, gamma, beta, eps, n, c, s, groups)
napi_value GnForward(napi_env env, napi_callback_info info) {
  Args a(env, info, 11);
  Shape d(a, 7);
  const int64_t groups = a.count(10, "groups");
  if (a.ok && (groups < 1 || d.c % groups != 0)) a.fail("groups must divide c");
  float *y = a.f32(0, d.len, "y"), *xhat = a.f32(1, d.len, "xhat");
  double* inv = a.f64(2, product(a, d.n, groups, 1), "groupInvStd");
  float *x = a.f32(3, d.len, "x"), *gamma = a.f32(4, d.c, "gamma"), *beta = a.f32(5, d.c, "beta");
  const double eps = a.number(6, "eps");
  if (a.ok) syncbn::gnForward(y, xhat, inv, x, gamma, beta, eps, d.n, d.c, d.s, groups);
  return nullptr;
}

// gnBackward(dx, gradGamma, gradBeta, dy, xhat, groupInvStd, gamma, first, count, c, s, groups): samples first..first+count−1
napi_value GnBackward(napi_env env, napi_callback_info info) {
  Args a(env, info, 12);
  const int64_t first = a.count(7, "first");
  Shape d(a, 8);  // n = count
  const int64_t groups = a.count(11, "groups");
  if (a.ok && (groups < 1 || d.c % groups != 0)) a.fail("groups must divide c");
  const int64_t end = product(a, first + d.n, d.c, d.s);
  float* dx = a.f32(0, end, "dx");
  double *gg = a.f64(1, d.c, "gradGamma"), *gb = a.f64(2, d.c, "gradBeta");
  float *dy = a.f32(3, end, "dy"), *xhat = a.f32(4, end, "xhat");
  double* inv = a.f64(5, product(a, first + d.n, groups, 1), "groupInvStd");
  float* gamma = a.f32(6, d.c, "gamma");
  if (a.ok) syncbn::gnBackward(dx, gg, gb, dy, xhat, inv, gamma, first, d.n, d.c, d.s, groups);
  return nullptr;
}

// maxpoolForward(y, argmax, x, planes, inH, inW, kernel, stride, outH, outW)
napi_value MaxpoolForward(napi_env env, napi_callback_info info) {
  Args a(env, info, 10);
  int64_t d[7];
  const char* names[7] = {"planes", "inH", "inW", "kernel", "stride", "outH", "outW"};
  for (int k = 0; k < 7; k++) {
    d[k] = a.count(3 + k, names[k]);
    if (a.ok && d[k] > INT32_MAX) a.fail(std::string(names[k]) + ": out of range");
  }
  if (a.ok && (d[3] < 1 || d[4] < 1 || d[5] < 1 || d[6] < 1 || (d[5] - 1) * d[4] + d[3] > d[1] || (d[6] - 1) * d[4] + d[3] > d[2]))
    a.fail("maxpoolForward: the windows do not fit the input");
  const int64_t inLen = product(a, d[0], d[1], d[2]), outLen = product(a, d[0], d[5], d[6]);
  if (a.ok && inLen > INT32_MAX) a.fail("maxpoolForward: more than 2³¹ inputs");
  float* y = a.f32(0, outLen, "y");
  int32_t* am = a.i32(1, outLen, "argmax");
  float* x = a.f32(2, inLen, "x");
  if (a.ok) syncbn::maxpoolForward(y, am, x, d[0], d[1], d[2], d[3], d[4], d[5], d[6]);
  return nullptr;
}

// maxpoolBackward(dx, dy, argmax, outLen, inLen)
napi_value MaxpoolBackward(napi_env env, napi_callback_info info) {
  Args a(env, info, 5);
  const int64_t outLen = a.count(3, "outLen"), inLen = a.count(4, "inLen");
  float *dx = a.f32(0, inLen, "dx"), *dy = a.f32(1, outLen, "dy");
  int32_t* am = a.i32(2, outLen, "argmax");
  if (a.ok && !syncbn::maxpoolBackward(dx, dy, am, outLen, inLen)) a.fail("maxpoolBackward: an argmax lies outside dx");
  return nullptr;
}

// relu(y, x, len) / reluBackward(dx, dy, y, len) / add(y, a, b, len) / addInto(acc, g, len)
napi_value Relu(napi_env env, napi_callback_info info) {
  Args a(env, info, 3, true);
  const int64_t len = a.count(2, "len");
  float *y = a.f32(0, len, "y"), *x = a.f32(1, len, "x");
  const syncbn::Threads t = a.threads(3);
  if (a.ok) syncbn::relu(y, x, len, t);
  return nullptr;
}
napi_value ReluBackward(napi_env env, napi_callback_info info) {
  Args a(env, info, 4, true);
  const int64_t len = a.count(3, "len");
  float *dx = a.f32(0, len, "dx"), *dy = a.f32(1, len, "dy"), *y = a.f32(2, len, "y");
  const syncbn::Threads t = a.threads(4);
  if (a.ok) syncbn::reluBackward(dx, dy, y, len, t);
  return nullptr;
}
napi_value Add(napi_env env, napi_callback_info info) {
  Args a(env, info, 4, true);
  const int64_t len = a.count(3, "len");
  float *y = a.f32(0, len, "y"), *x1 = a.f32(1, len, "a"), *x2 = a.f32(2, len, "b");
  const syncbn::Threads t = a.threads(4);
  if (a.ok) syncbn::add(y, x1, x2, len, t);
  return nullptr;
}
napi_value AddInto(napi_env env, napi_callback_info info) {
  Args a(env, info, 3, true);
  const int64_t len = a.count(2, "len");
  float *acc = a.f32(0, len, "acc"), *g = a.f32(1, len, "g");
  const syncbn::Threads t = a.threads(3);
  if (a.ok) syncbn::addInto(acc, g, len, t);
  return nullptr;
}

// sgdStep(p, grad, buf, lr, mu, wd, mode): over p.length elements; mode 0 plain, 1 momentum, 2 Nesterov.
napi_value SgdStep(napi_env env, napi_callback_info info) {
  Args a(env, info, 7);
  float* p = a.f32(0, 0, "p");
  size_t len = 0;
  if (a.ok) napi_get_typedarray_info(env, a.v[0], nullptr, &len, nullptr, nullptr, nullptr);
  float *grad = a.f32(1, int64_t(len), "grad"), *buf = a.f32(2, 0, "buf");
  const double lr = a.number(3, "lr"), mu = a.number(4, "momentum"), wd = a.number(5, "weightDecay");
  const int64_t mode = a.count(6, "mode");
  if (a.ok && mode > 2) a.fail("mode: expected 0, 1 or 2");
  if (a.ok && mode != 0) buf = a.f32(2, int64_t(len), "buf");
  if (a.ok) syncbn::sgdStep(p, grad, buf, int64_t(len), lr, mu, wd, int(mode));
  return nullptr;
}

// linearForward(y, x, w, b, n, in, out[, threads]): y (n, out) = b + x·Wᵀ (linear.h).
napi_value LinearForward(napi_env env, napi_callback_info info) {
  Args a(env, info, 7, true);
  const int64_t n = a.count(4, "n"), in = a.count(5, "in"), out = a.count(6, "out");
  float *y = a.f32(0, product(a, n, out, 1), "y"), *x = a.f32(1, product(a, n, in, 1), "x");
  float *w = a.f32(2, product(a, out, in, 1), "w"), *b = a.f32(3, out, "b");
  const syncbn::Threads t = a.threads(7);
  if (a.ok) syncbn::linearForward(y, x, w, b, n, in, out, t);
  return nullptr;
}

// linearBackward(dx, dw, db, dy, x, w, first, count, in, out[, threads]): samples first..first+count−1; dx, dw and db
// may each be empty (not made), so dx and the param grads can be two calls (linear.h).
napi_value LinearBackward(napi_env env, napi_callback_info info) {
  Args a(env, info, 10, true);
  const int64_t first = a.count(6, "first"), count = a.count(7, "count"), in = a.count(8, "in"), out = a.count(9, "out");
  const int64_t end = first + count;
  const auto given = [&](int i) {
    size_t len = 0;
    if (a.ok) napi_get_typedarray_info(env, a.v[i], nullptr, &len, nullptr, nullptr, nullptr);
    return len > 0;
  };
  float* dx = a.f32(0, 0, "dx");
  if (a.ok && given(0)) dx = a.f32(0, product(a, end, in, 1), "dx");
  else dx = nullptr;
  float* dw = a.f32(1, 0, "dw");
  if (a.ok && given(1)) dw = a.f32(1, product(a, out, in, 1), "dw");
  else dw = nullptr;
  float* db = a.f32(2, 0, "db");
  if (a.ok && given(2)) db = a.f32(2, out, "db");
  else db = nullptr;
  float *dy = a.f32(3, product(a, end, out, 1), "dy"), *x = a.f32(4, product(a, end, in, 1), "x"), *w = a.f32(5, product(a, out, in, 1), "w");
  const syncbn::Threads t = a.threads(10);
  if (a.ok) syncbn::linearBackward(dx, dw, db, dy, x, w, first, count, in, out, t);
  return nullptr;
}

// linearSegmentGrads(dw64, db64, dw, db, dy, x, n, segments, in, out[, threads]): a rank block's dW and db per segment,
// summed in float64 (linear.h).
napi_value LinearSegmentGrads(napi_env env, napi_callback_info info) {
  Args a(env, info, 10, true);
  const int64_t n = a.count(6, "n"), segments = a.count(7, "segments"), in = a.count(8, "in"), out = a.count(9, "out");
  if (a.ok && (segments < 1 || n % segments != 0)) a.fail("segments: expected a divisor of n, at least 1");
  double *dw64 = a.f64(0, product(a, out, in, 1), "dw64"), *db64 = a.f64(1, out, "db64");
  float *dw = a.f32(2, product(a, out, in, 1), "dw"), *db = a.f32(3, out, "db");
  float *dy = a.f32(4, product(a, n, out, 1), "dy"), *x = a.f32(5, product(a, n, in, 1), "x");
  const syncbn::Threads t = a.threads(10);
  if (a.ok) syncbn::linearSegmentGrads(dw64, db64, dw, db, dy, x, n, segments, in, out, t);
  return nullptr;
}

}  // namespace

namespace syncbn {

void registerStepKernels(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"bnMoments", nullptr, BnMoments, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"bnNormalize", nullptr, BnNormalize, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"bnGradSums", nullptr, BnGradSums, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"bnDx", nullptr, BnDx, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"bnEval", nullptr, BnEval, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"gnForward", nullptr, GnForward, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"gnBackward", nullptr, GnBackward, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"maxpoolForward", nullptr, MaxpoolForward, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"maxpoolBackward", nullptr, MaxpoolBackward, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"relu", nullptr, Relu, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"reluBackward", nullptr, ReluBackward, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"add", nullptr, Add, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"addInto", nullptr, AddInto, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"sgdStep", nullptr, SgdStep, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"linearForward", nullptr, LinearForward, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"linearBackward", nullptr, LinearBackward, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"linearSegmentGrads", nullptr, LinearSegmentGrads, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
}

}  // namespace syncbn
