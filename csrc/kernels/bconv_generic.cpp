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
                    const uint64_t* x = a.act + ((a.oy * a.stride + ky) * a.wp + ox * a.stride + kx) * P;
                    const uint64_t* w = a.w + ((ob * kk + ky * a.k + kx) * P) * kLanes;
                    for (int p = 0; p < P; ++p)
                        for (int l = 0; l < kLanes; ++l)
                            acc[l] += __builtin_popcountll(x[p] ^ w[p * kLanes + l]);
                }
            std::memcpy(a.pop + (ox * a.cout_blocks + ob) * kLanes, acc, sizeof(acc));
        }
}

#include "kernels/layer_rows.inc"

}  // namespace generic

const Kernels kernels_generic = {generic::bconv_row, generic::layer_row, generic::pack_row};

}  // namespace xnornet
