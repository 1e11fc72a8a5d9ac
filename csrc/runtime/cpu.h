// CPU feature detection for run-time kernel dispatch. Knows nothing of Python.
#pragma once
#include <string>

namespace xnornet {

struct CpuFeatures {
    bool popcnt = false;
    bool avx2 = false;             // AVX2 with OS support for YMM state
    bool avx512f = false;          // AVX-512F with OS support for ZMM/opmask state
    bool avx512bw = false;
    bool avx512_vpopcntdq = false; // per-lane 64-bit popcount (vpopcntq)
    bool amx_int8 = false;         // AMX tiles + int8 products, OS state enabled and granted
};

// Reads CPUID and XGETBV once; an ISA counts only if the OS also saves its registers.
const CpuFeatures& cpu_features();

}  // namespace xnornet
