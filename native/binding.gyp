{
  "targets": [
    {
      "target_name": "syncbn_native",
      "sources": ["im2col.cc", "gemm.cc", "pool.cc", "passes.cc", "direct.cc", "peak.cc", "addon.cc", "norm.cc", "groupnorm.cc", "elementwise.cc", "step-api.cc", "linear.cc", "reduce.cc"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O3", "-fno-math-errno", "-ffp-contract=off"],
      "cflags": ["-O3"]
    }
  ]
}
