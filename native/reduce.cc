// The coordinator's hot loops (coordinator/reduce.ts, finite.ts): the finiteness
// check of every contribution and the float64 sum of a round's parts in member
// order, on the JS typed arrays' own memory. The same bits as the TypeScript
// loops they replace: each element's sum is ((0 + a₀) + a₁) + … in float64, in
// part order, rounded once to the result's type; only the order of the elements
// (not of the parts) changes, in blocks that stay in the L1 cache.
// Registered by addon.cc's Init.
#pragma GCC optimize("fp-contract=off")

#include <node_api.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "step-api.h"

#include "clones.h"

namespace {

// Elements per block of the float64 accumulator (16 KiB: in L1 with a block of each part).
constexpr int64_t BLOCK = 2048;

// No element of u (the bits of n floats) has every exponent bit of `exp` set: no NaN, no ±Inf.
template <class U>
SYNCBN_CLONES bool finiteBits(const U* u, int64_t n, U exp) {
  for (int64_t lo = 0; lo < n; lo += BLOCK) {
    const int64_t hi = lo + BLOCK < n ? lo + BLOCK : n;
    U bad = 0;
    for (int64_t i = lo; i < hi; i++) bad |= (u[i] & exp) == exp;
    if (bad) return false;
  }
  return true;
}

// acc = 0 + a (the first part: −0 becomes +0, as a zeroed accumulator gives).
SYNCBN_CLONES void assign32(double* acc, const float* a, int64_t m) {
  for (int64_t j = 0; j < m; j++) acc[j] = 0.0 + double(a[j]);
}
SYNCBN_CLONES void assign64(double* acc, const double* a, int64_t m) {
  for (int64_t j = 0; j < m; j++) acc[j] = 0.0 + a[j];
}
SYNCBN_CLONES void add32(double* acc, const float* a, int64_t m) {
  for (int64_t j = 0; j < m; j++) acc[j] += double(a[j]);
}
SYNCBN_CLONES void add64(double* acc, const double* a, int64_t m) {
  for (int64_t j = 0; j < m; j++) acc[j] += a[j];
}
SYNCBN_CLONES void store32(float* out, const double* acc, int64_t m) {
  for (int64_t j = 0; j < m; j++) out[j] = float(acc[j]);
}

// A typed array's memory: float32 or float64, and its length.
struct View {
  void* data = nullptr;
  bool f64 = false;
  int64_t length = 0;
};

bool viewOf(napi_env env, napi_value v, View& out) {
  bool isTa = false;
  napi_typedarray_type t;
  size_t len = 0;
  if (napi_is_typedarray(env, v, &isTa) != napi_ok || !isTa) return false;
  if (napi_get_typedarray_info(env, v, &t, &len, &out.data, nullptr, nullptr) != napi_ok) return false;
  if (t != napi_float32_array && t != napi_float64_array) return false;
  out.f64 = t == napi_float64_array;
  out.length = int64_t(len);
  return true;
}

napi_value boolean(napi_env env, bool b) {
  napi_value r;
  napi_get_boolean(env, b, &r);
  return r;
}

// allFinite(a): no NaN or ±Inf in a Float32Array or Float64Array.
napi_value AllFinite(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value v;
  napi_get_cb_info(env, info, &argc, &v, nullptr, nullptr);
  View a;
  if (argc != 1 || !viewOf(env, v, a)) {
    napi_throw_range_error(env, nullptr, "allFinite: expected a Float32Array or Float64Array");
    return nullptr;
  }
  return boolean(env, a.f64 ? finiteBits(static_cast<const uint64_t*>(a.data), a.length, uint64_t(0x7ff0000000000000ull))
                            : finiteBits(static_cast<const uint32_t*>(a.data), a.length, uint32_t(0x7f800000u)));
}

// sumParts(out, parts): out = Σ parts in array order, in float64 from 0, rounded once to out's type;
// every part (Float32Array or Float64Array) at least out's length. out must not overlap a part.
napi_value SumParts(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value v[2];
  napi_get_cb_info(env, info, &argc, v, nullptr, nullptr);
  View out;
  bool isArray = false;
  if (argc != 2 || !viewOf(env, v[0], out) || napi_is_array(env, v[1], &isArray) != napi_ok || !isArray) {
    napi_throw_range_error(env, nullptr, "sumParts: expected (out: Float32Array | Float64Array, parts: typed array[])");
    return nullptr;
  }
  uint32_t k = 0;
  napi_get_array_length(env, v[1], &k);
  if (k == 0) {
    napi_throw_range_error(env, nullptr, "sumParts: expected at least one part");
    return nullptr;
  }
  std::vector<View> parts(k);
  for (uint32_t i = 0; i < k; i++) {
    napi_value e;
    if (napi_get_element(env, v[1], i, &e) != napi_ok || !viewOf(env, e, parts[i])) {
      napi_throw_range_error(env, nullptr, ("sumParts: part " + std::to_string(i) + " is not a Float32Array or Float64Array").c_str());
      return nullptr;
    }
    if (parts[i].length < out.length) {
      napi_throw_range_error(env, nullptr, ("sumParts: part " + std::to_string(i) + " has " + std::to_string(parts[i].length) + " elements, needs " + std::to_string(out.length)).c_str());
      return nullptr;
    }
  }
  alignas(64) double acc[BLOCK];
  for (int64_t lo = 0; lo < out.length; lo += BLOCK) {
    const int64_t m = lo + BLOCK < out.length ? BLOCK : out.length - lo;
    for (uint32_t i = 0; i < k; i++) {
      const View& p = parts[i];
      if (i == 0) {
        if (p.f64) assign64(acc, static_cast<const double*>(p.data) + lo, m);
        else assign32(acc, static_cast<const float*>(p.data) + lo, m);
      } else if (p.f64) {
        add64(acc, static_cast<const double*>(p.data) + lo, m);
      } else {
        add32(acc, static_cast<const float*>(p.data) + lo, m);
      }
    }
    if (out.f64) std::memcpy(static_cast<double*>(out.data) + lo, acc, size_t(m) * sizeof(double));
    else store32(static_cast<float*>(out.data) + lo, acc, m);
  }
  return nullptr;
}

}  // namespace

namespace syncbn {

void registerReduceKernels(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"allFinite", nullptr, AllFinite, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"sumParts", nullptr, SumParts, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
}

}  // namespace syncbn
