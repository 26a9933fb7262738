// Registers the step kernels (step-api.cc: norm passes, ReLU, add, SGD) on the addon's exports.
#pragma once

#include <node_api.h>

namespace syncbn {
void registerStepKernels(napi_env env, napi_value exports);
}
