// N-API surface of conv.h: every array argument is a JS typed array plus an
// element offset; the kernels run on the arrays' own memory (no copies). Each
// call checks that what it touches lies inside the arrays and throws a
// RangeError otherwise, so a wrong offset from JS cannot write outside them.
#include <node_api.h>

#include <cstdint>
#include <string>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "conv.h"
#include "gemm.h"
#include "step-api.h"

namespace {

struct Span {
  void* data = nullptr;
  int64_t length = 0;  // elements after the offset
};

bool fail(napi_env env, const std::string& msg) {
  napi_throw_range_error(env, nullptr, msg.c_str());
  return false;
}

// args[i] a typed array of `type`, args[i+1] an offset; `need` elements from the offset must exist.
bool span(napi_env env, napi_value* args, int i, napi_typedarray_type type, int64_t need, Span* out, const char* name) {
  napi_typedarray_type t;
  size_t len;
  void* data;
  napi_value buf;
  size_t byteOffset;
  bool isTa = false;
  napi_is_typedarray(env, args[i], &isTa);
  if (!isTa || napi_get_typedarray_info(env, args[i], &t, &len, &data, &buf, &byteOffset) != napi_ok || t != type)
    return fail(env, std::string(name) + ": expected a " + (type == napi_float32_array ? "Float32Array" : "Float64Array"));
  int64_t off;
  if (napi_get_value_int64(env, args[i + 1], &off) != napi_ok || off < 0) return fail(env, std::string(name) + ": bad offset");
  if (need < 0 || off + need > int64_t(len)) return fail(env, std::string(name) + ": out of range");
  out->data = static_cast<char*>(data) + off * (type == napi_float32_array ? 4 : 8);
  out->length = int64_t(len) - off;
  return true;
}

bool ints(napi_env env, napi_value* args, int from, int count, int64_t* out) {
  for (int k = 0; k < count; k++) {
    if (napi_get_value_int64(env, args[from + k], &out[k]) != napi_ok || out[k] < 0 || out[k] > INT32_MAX)
      return fail(env, "expected a non-negative int32 argument");
  }
  return true;
}

bool argsOf(napi_env env, napi_callback_info info, size_t want, napi_value* args) {
  size_t argc = want;
  napi_get_cb_info(env, info, &argc, args, nullptr, nullptr);
  if (argc != want) return fail(env, "expected " + std::to_string(want) + " arguments");
  return true;
}

bool geometry(napi_env env, napi_value* args, int from, syncbn::Geometry* g) {
  int64_t v[8];
  if (!ints(env, args, from, 8, v)) return false;
  *g = {int(v[0]), int(v[1]), int(v[2]), int(v[3]), int(v[4]), int(v[5]), int(v[6]), int(v[7])};
  if (g->kernel < 1 || g->stride < 1) return fail(env, "kernel and stride must be ≥ 1");
  return true;
}

// im2col(cols, colsOff, x, xOff, cin, inH, inW, kernel, stride, padding, outH, outW)
napi_value Im2col(napi_env env, napi_callback_info info) {
  napi_value a[12];
  syncbn::Geometry g;
  Span cols, x;
  if (!argsOf(env, info, 12, a) || !geometry(env, a, 4, &g)) return nullptr;
  const int64_t rows = int64_t(g.cin) * g.kernel * g.kernel, plane = int64_t(g.outH) * g.outW;
  if (!span(env, a, 0, napi_float32_array, rows * plane, &cols, "cols") ||
      !span(env, a, 2, napi_float32_array, int64_t(g.cin) * g.inH * g.inW, &x, "x"))
    return nullptr;
  syncbn::im2col(static_cast<float*>(cols.data), static_cast<const float*>(x.data), g);
  return nullptr;
}

// col2imAdd(dx, dxOff, dcols, dcolsOff, cin, inH, inW, kernel, stride, padding, outH, outW)
napi_value Col2imAdd(napi_env env, napi_callback_info info) {
  napi_value a[12];
  syncbn::Geometry g;
  Span dx, dcols;
  if (!argsOf(env, info, 12, a) || !geometry(env, a, 4, &g)) return nullptr;
  const int64_t rows = int64_t(g.cin) * g.kernel * g.kernel, plane = int64_t(g.outH) * g.outW;
  if (!span(env, a, 0, napi_float32_array, int64_t(g.cin) * g.inH * g.inW, &dx, "dx") ||
      !span(env, a, 2, napi_float32_array, rows * plane, &dcols, "dcols"))
    return nullptr;
  // The passes' col2im (col2imAddScratch, which zeroes dcols' columns outside the image) on a copy, so tests can hold its bits.
  const float* d = static_cast<const float*>(dcols.data);
  std::vector<float> scratch(d, d + rows * plane);
  syncbn::col2imAddScratch(static_cast<float*>(dx.data), scratch.data(), g);
  return nullptr;
}

// args[i]: a typed array of `type` with at least `need` elements (offset 0).
bool whole(napi_env env, napi_value* args, int i, napi_typedarray_type type, int64_t need, void** out, const char* name) {
  napi_value zero[2] = {args[i], nullptr};
  napi_create_int32(env, 0, &zero[1]);
  Span s;
  if (!span(env, zero, 0, type, need, &s, name)) return false;
  *out = s.data;
  return true;
}

// An optional output: args[i] a typed array of `type` of length 0 (→ null) or of at least `need` elements.
template <class T>
bool optional(napi_env env, napi_value* args, int i, napi_typedarray_type type, int64_t need, T** out, const char* name) {
  void* data = nullptr;
  if (!whole(env, args, i, type, 0, &data, name)) return false;
  size_t len = 0;
  napi_get_typedarray_info(env, args[i], nullptr, &len, nullptr, nullptr, nullptr);
  if (len == 0) {
    *out = nullptr;
    return true;
  }
  if (!whole(env, args, i, type, need, &data, name)) return false;
  *out = static_cast<T*>(data);
  return true;
}

// convForward(y, x, xSaved, cols, w, bias, cin, inH, inW, kernel, stride, padding, outH, outW, cout, n, threads): a training
// forward copies x into xSaved or keeps the columns in cols (each empty when not wanted; conv.h).
napi_value ConvForward(napi_env env, napi_callback_info info) {
  napi_value a[17];
  syncbn::Geometry g;
  int64_t d[3];
  void *y, *x, *w, *bias;
  float *xSaved, *cols;
  if (!argsOf(env, info, 17, a) || !geometry(env, a, 6, &g) || !ints(env, a, 14, 3, d)) return nullptr;
  const int64_t cout = d[0], n = d[1], R = int64_t(g.cin) * g.kernel * g.kernel, P = int64_t(g.outH) * g.outW, inSize = int64_t(g.cin) * g.inH * g.inW;
  if (d[2] < 1 || d[2] > 256) return fail(env, "threads must be in 1..256"), nullptr;
  const auto f32 = napi_float32_array;
  if (!whole(env, a, 0, f32, n * cout * P, &y, "y") || !whole(env, a, 1, f32, n * inSize, &x, "x") || !optional(env, a, 2, f32, n * inSize, &xSaved, "xSaved") ||
      !optional(env, a, 3, f32, n * R * P, &cols, "cols") || !whole(env, a, 4, f32, cout * R, &w, "w") || !whole(env, a, 5, f32, cout, &bias, "bias"))
    return nullptr;
  syncbn::convForward(syncbn::poolOf(env), static_cast<float*>(y), static_cast<const float*>(x), xSaved, cols, static_cast<const float*>(w),
                      static_cast<const float*>(bias), g, int(cout), int(n), int(d[2]));
  return nullptr;
}

// convBackward(dx, dy, x, cols, w, dw64, dw, db, colSums, cin, inH, inW, kernel, stride, padding, outH, outW, cout, first, count, threads):
// the columns read from cols when it is not empty, else made again from x (the saved inputs); dx, dw64, dw, db and colSums may be empty
// (not made; an empty dw64 skips dW, so dw and colSums need it: the dx-only pass of a deferred backward, conv-native.ts).
napi_value ConvBackward(napi_env env, napi_callback_info info) {
  napi_value a[21];
  syncbn::Geometry g;
  int64_t d[4];
  void *dy, *w;
  float *dx, *x, *cols, *dw, *db;
  double *dw64, *colSums;
  if (!argsOf(env, info, 21, a) || !geometry(env, a, 9, &g) || !ints(env, a, 17, 4, d)) return nullptr;
  const int64_t cout = d[0], end = d[1] + d[2], R = int64_t(g.cin) * g.kernel * g.kernel, P = int64_t(g.outH) * g.outW, inSize = int64_t(g.cin) * g.inH * g.inW;
  if (d[3] < 1 || d[3] > 256) return fail(env, "threads must be in 1..256"), nullptr;
  const auto f32 = napi_float32_array;
  if (!optional(env, a, 0, f32, end * inSize, &dx, "dx") || !whole(env, a, 1, f32, end * cout * P, &dy, "dy") ||
      !optional(env, a, 2, f32, end * inSize, &x, "x") || !optional(env, a, 3, f32, end * R * P, &cols, "cols") || !whole(env, a, 4, f32, cout * R, &w, "w") ||
      !optional(env, a, 5, napi_float64_array, cout * R, &dw64, "dw64") || !optional(env, a, 6, f32, cout * R, &dw, "dw") ||
      !optional(env, a, 7, f32, cout, &db, "db") || !optional(env, a, 8, napi_float64_array, R, &colSums, "colSums"))
    return nullptr;
  if (!cols && !x && end > 0) return fail(env, "convBackward needs x or cols: pass the saved input or the kept columns"), nullptr;
  if (!dw64 && (dw || colSums)) return fail(env, "convBackward: dw and colSums are made from dw64: pass dw64 too"), nullptr;
  syncbn::convBackward(syncbn::poolOf(env), dx, static_cast<const float*>(dy), x, cols, static_cast<const float*>(w), dw64, dw, db, colSums,
                       g, int(cout), int(d[1]), int(d[2]), int(d[3]));
  return nullptr;
}

// isa() → the GEMM micro-kernel this process runs (gemm.h); isa(name) switches to it first (tests run each the CPU has) or throws.
napi_value Isa(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg;
  napi_get_cb_info(env, info, &argc, &arg, nullptr, nullptr);
  if (argc >= 1) {
    char name[32];
    size_t len = 0;
    if (napi_get_value_string_utf8(env, arg, name, sizeof name, &len) != napi_ok || !syncbn::useGemmIsa(name))
      return fail(env, "isa(name): name must be avx512f, avx2 or baseline, and the CPU must have it"), nullptr;
  }
  napi_value s;
  napi_create_string_utf8(env, syncbn::gemmIsa(), NAPI_AUTO_LENGTH, &s);
  return s;
}

// convDirect(cin, inH, inW, kernel, stride, padding, outH, outW) → whether this geometry takes the direct
// path (direct.cc: no im2col; a training forward then keeps x, not the columns); convDirect(false | true)
// first turns that path off or on process-wide (tests compare the two).
napi_value ConvDirect(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value a[8];
  napi_get_cb_info(env, info, &argc, a, nullptr, nullptr);
  napi_valuetype type = napi_undefined;
  if (argc >= 1) napi_typeof(env, a[0], &type);
  bool result = false;
  if (type == napi_boolean) {
    napi_get_value_bool(env, a[0], &result);
    syncbn::useDirectConv(result);
  } else {
    syncbn::Geometry g;
    if (argc < 8) return fail(env, "convDirect(cin, inH, inW, kernel, stride, padding, outH, outW) or convDirect(on)"), nullptr;
    if (!geometry(env, a, 0, &g)) return nullptr;
    result = syncbn::directConv(g);
  }
  napi_value out;
  napi_get_boolean(env, result, &out);
  return out;
}

// fmaPeak(seconds) → [GFLOP/s, isa]: the bench's ceiling (peak.cc).
napi_value FmaPeak(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg;
  double seconds = 0;
  if (napi_get_cb_info(env, info, &argc, &arg, nullptr, nullptr) != napi_ok || argc < 1 || napi_get_value_double(env, arg, &seconds) != napi_ok ||
      !(seconds > 0 && seconds <= 60))
    return fail(env, "fmaPeak(seconds): seconds must be in (0, 60]"), nullptr;
  const char* isa = "none";
  const double gflops = syncbn::fmaPeakGflops(seconds, &isa);
  napi_value out, g, s;
  napi_create_array_with_length(env, 2, &out);
  napi_create_double(env, gflops, &g);
  napi_create_string_utf8(env, isa, NAPI_AUTO_LENGTH, &s);
  napi_set_element(env, out, 0, g);
  napi_set_element(env, out, 1, s);
  return out;
}

// Keeps freed memory in the heap for reuse instead of returning it to the kernel
// (glibc): a gradient round's megabyte message is a fresh malloc on every receive,
// and with glibc's defaults the heap was grown and trimmed back again and again,
// its pages faulting in anew each time (docs/performance.md). Blocks up to 8 MiB
// come from the heap, and its top is trimmed only past 32 MiB free (16 MiB was
// not enough to stop the churn in the coordinator's process).
// Returns whether both settings took (false off glibc, where it does nothing).
napi_value TuneAllocator(napi_env env, napi_callback_info) {
  bool ok = false;
#if defined(__GLIBC__)
  ok = mallopt(M_MMAP_THRESHOLD, 8 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 32 << 20) == 1;
#endif
  napi_value result;
  napi_get_boolean(env, ok, &result);
  return result;
}

napi_value Init(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"im2col", nullptr, Im2col, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"col2imAdd", nullptr, Col2imAdd, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"convForward", nullptr, ConvForward, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"convBackward", nullptr, ConvBackward, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"convDirect", nullptr, ConvDirect, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"isa", nullptr, Isa, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"fmaPeak", nullptr, FmaPeak, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"tuneAllocator", nullptr, TuneAllocator, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  napi_set_instance_data(env, new syncbn::Pool(), [](napi_env, void* pool, void*) { delete static_cast<syncbn::Pool*>(pool); }, nullptr);
  syncbn::registerStepKernels(env, exports);
  syncbn::registerReduceKernels(env, exports);
  return exports;
}

}  // namespace

// This environment's compute threads (pool.h): made with the addon's exports, joined when the environment ends.
syncbn::Pool& syncbn::poolOf(napi_env env) {
  void* data = nullptr;
  napi_get_instance_data(env, &data);
  return *static_cast<syncbn::Pool*>(data);
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
