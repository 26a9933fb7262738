// Registers the step kernels (step-api.cc: norm passes, ReLU, add, SGD) and the coordinator's
// reduction loops (reduce.cc) on the addon's exports.
#pragma once

#include <node_api.h>

#include "pool.h"

namespace syncbn {
void registerStepKernels(napi_env env, napi_value exports);
void registerReduceKernels(napi_env env, napi_value exports);
/** This environment's compute threads (addon.cc). */
Pool& poolOf(napi_env env);
}
