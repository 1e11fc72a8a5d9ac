#include "runtime/cpu.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif
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

bool request_amx_permission() {
#ifdef __linux__
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
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
    // AMX: CPUID.7.0:EDX bits 24 (tile) and 25 (int8); XCR0 bits 17-18 (tile config and data).
    // Linux also wants each process to ask for the 8 KB tile state before touching it.
    const bool tiles_ok = (xcr0 & (3ull << 17)) == (3ull << 17);
    f.amx_int8 = tiles_ok && (d & (1u << 24)) && (d & (1u << 25)) && request_amx_permission();
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
