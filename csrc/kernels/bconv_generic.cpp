// Portable kernels: build and run on any 64-bit CPU, and serve as the oracle the SIMD kernels
// are tested against (besides the numpy reference in tests/).
#include <algorithm>
#include <cstring>

#include "kernels/bconv.h"

namespace xnornet {
namespace generic {

static void bconv_row(const BConvRow& a) {
    const int kk = a.k * a.k, P = a.words;
    for (int ox = 0; ox < a.out_w; ++ox)
        for (int ob = 0; ob < a.cout_blocks; ++ob) {
            int32_t acc[kLanes] = {0};
            for (int ky = 0; ky < a.k; ++ky)
                for (int kx = 0; kx < a.k; ++kx) {
                    const uint64_t* x = a.act + (size_t(a.oy * a.stride + ky) * a.wp + ox * a.stride + kx) * P;
                    const uint64_t* w = a.w + (size_t(ob * kk + ky * a.k + kx) * P) * kLanes;
                    for (int p = 0; p < P; ++p)
                        for (int l = 0; l < kLanes; ++l)
                            acc[l] += __builtin_popcountll(x[p] ^ w[p * kLanes + l]);
                }
            std::memcpy(a.pop + (size_t(ox) * a.cout_blocks + ob) * kLanes, acc, sizeof(acc));
        }
}

// Eight named accumulators (not an array, which GCC keeps in memory around the asm barriers).
static uint64_t peak_loop(uint64_t iters) {
    const uint64_t w = 0x5555555555555555ull;
#define XN_INIT(i) uint64_t a##i = 0x9E3779B97F4A7C15ull * (i + 1), c##i = 0;
#define XN_STEP(i)                                   \
    __asm__ volatile("" : "+r"(a##i)); /* opaque */ \
    c##i += __builtin_popcountll(a##i ^ w);
    XN_INIT(0) XN_INIT(1) XN_INIT(2) XN_INIT(3) XN_INIT(4) XN_INIT(5) XN_INIT(6) XN_INIT(7)
    for (uint64_t it = 0; it < iters; ++it) {
        XN_STEP(0) XN_STEP(1) XN_STEP(2) XN_STEP(3) XN_STEP(4) XN_STEP(5) XN_STEP(6) XN_STEP(7)
    }
#undef XN_INIT
#undef XN_STEP
    return c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7;
}

#include "kernels/layer_rows.inc"

}  // namespace generic

const Kernels kernels_generic = {generic::layer_rows, generic::pack_row,
                                 generic::peak_loop, 8 * 64};

}  // namespace xnornet
