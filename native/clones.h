// Function clones for the CPU the addon runs on (GCC target_clones, chosen once at load): AVX-512, AVX2
// and the baseline. The loops so cloned keep their order of operations (and fp-contract off), so every
// clone gives the same bits. x86-64 only; elsewhere (arm64) one plain build.
#pragma once

#if defined(__x86_64__)
#define SYNCBN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SYNCBN_CLONES
#endif
