#include "runtime/cpu.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define XNORNET_X86 1
#endif

namespace xnornet {
namespace {

#ifdef XNORNET_X86
unsigned long long xgetbv0() {
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (static_cast<unsigned long long>(edx) << 32) | eax;
}

CpuFeatures detect() {
    CpuFeatures f;
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    f.popcnt = c & (1u << 23);
    const bool osxsave = c & (1u << 27);
    if (!osxsave) return f;
    const unsigned long long xcr0 = xgetbv0();
    const bool ymm_ok = (xcr0 & 0x6) == 0x6;     // SSE and AVX state
    const bool zmm_ok = (xcr0 & 0xe6) == 0xe6;   // plus opmask and both ZMM halves
    if (__get_cpuid_max(0, nullptr) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = ymm_ok && (b & (1u << 5));
    f.avx512f = zmm_ok && (b & (1u << 16));
    f.avx512bw = f.avx512f && (b & (1u << 30));
    f.avx512_vpopcntdq = f.avx512f && (c & (1u << 14));
    return f;
}
#else
CpuFeatures detect() { return CpuFeatures{}; }
#endif

}  // namespace

const CpuFeatures& cpu_features() {
    static const CpuFeatures features = detect();
    return features;
}

}  // namespace xnornet
