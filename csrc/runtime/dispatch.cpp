#include "runtime/dispatch.h"

#include <cstdlib>
#include <stdexcept>

#include "runtime/cpu.h"

namespace xnornet {

const std::vector<Implementation>& implementations() {
    static const std::vector<Implementation> table = [] {
        const CpuFeatures& f = cpu_features();
        std::vector<Implementation> t;
#ifdef XNORNET_X86_KERNELS
        // amx+avx512 first: 16-27% faster than avx512 at every batch size and thread count measured
        // (docs/engine.md, Dispatch). amx alone is opt-in: on single images its 256-channel layers
        // are slower than avx512's.
        const bool avx512 = f.avx512f && f.avx512_vpopcntdq, amx = f.amx_int8 && f.avx512bw;
        t.push_back({"amx+avx512", "AMX-INT8 tile products where they pay (every binary conv of "
                     "an image group; on single images those with <= 128 input channels), avx512 "
                     "elsewhere", &kernels_amx_mixed, amx && avx512});
        t.push_back({"avx512", "AVX-512F + VPOPCNTDQ: 8 output channels per zmm, 4x4 register tile",
                     &kernels_avx512, avx512});
        t.push_back({"amx", "AMX-INT8 for every binary conv: bits expanded to int8 0/1 per feature "
                     "map, 16x64 by 64x16 tile products (TDPBSSD), 2 pixel tiles x 2 weight "
                     "tiles per step; opt-in", &kernels_amx, amx, /*automatic=*/false});
        t.push_back({"avx2", "AVX2: nibble-LUT popcount (vpshufb + vpsadbw), 4-pixel tile",
                     &kernels_avx2, f.avx2});
#else
        (void)f;
#endif
        t.push_back({"generic", "portable C++ (any 64-bit CPU)", &kernels_generic, true});
        return t;
    }();
    return table;
}

const Implementation& select_implementation(const std::string& requested) {
    std::string name = requested, source = "requested";
    if (name.empty() || name == "auto") {
        const char* env = std::getenv("XNORNET_ISA");
        name = (env && *env) ? env : "auto";
        if (env && *env) source = "from $XNORNET_ISA";
    }
    std::string known;
    for (const auto& impl : implementations()) {
        if (name == "auto" && impl.supported && impl.automatic) return impl;
        if (impl.name == name) {
            if (!impl.supported)
                throw std::invalid_argument("ISA '" + name + "' is not supported on this CPU");
            return impl;
        }
        known += (known.empty() ? "" : ", ") + impl.name;
    }
    throw std::invalid_argument("unknown ISA '" + name + "' (" + source + "); this build has: " + known);
}

}  // namespace xnornet
