// Portable kernel: builds and runs on any 64-bit CPU. Also the oracle the SIMD kernels are
// tested against (besides the numpy reference in tests/).
#include "kernels/bconv.h"

namespace xnornet {

void bconv_row_generic(const BConvRow& a) {
    for (int ox = 0; ox < a.out_w; ++ox)
        for (int ob = 0; ob < a.cout_blocks; ++ob) bconv_tile_scalar(a, ox, ob);
}

}  // namespace xnornet
