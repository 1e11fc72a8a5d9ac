// AMX-INT8 kernel (Intel Sapphire Rapids and later). Only this file is compiled with
// -mamx-tile -mamx-int8 (plus AVX-512F/BW for the bit expansion and the shared row code).
//
// Why: one TDPBSSD multiplies a 16 x 64 int8 tile by a 64 x 16 one (16,384 MACs) every 16 cycles,
// ~1,000 MACs per cycle, about three times what XOR + VPOPCNTQ + ADD reaches on 512-bit vectors.
// A binary dot product is an int8 one on +-1 values, so the matrix unit computes it exactly.
//
// Activations stay bit-packed between layers, as for the other kernels. Per output row, the k
// input rows it reads are expanded to int8 (+1 / -1, one vpblendmb per 64 channels) in
// thread-local scratch; an A tile is then 16 consecutive output pixels of one tap and 64 input
// channels (a strided load: no im2col). Weights are int8 +-1 in the VNNI layout TDPBSSD wants,
// with 0 for channels past cin, so those bits add nothing. The result D (the +-1 dot product over
// all taps, border taps included as -1 inputs, exactly as the XOR kernels see them) converts to
// the popcount the shared epilogue expects: D = k*k*cin - 2*popcount.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/bconv.h"

namespace xnornet {
namespace amx {

struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

// tmm0, tmm1: A (m pixels x 64 int8 channels); tmm2, tmm3: B (64 channels x 16 outputs, VNNI);
// tmm4..tmm7: C (m pixels x 16 int32 outputs) for (A0,B0), (A0,B1), (A1,B0), (A1,B1).
static void configure(int m) {
    TileConfig c;
    for (int t = 0; t < 8; ++t) {
        c.rows[t] = static_cast<uint8_t>(t == 2 || t == 3 ? 16 : m);
        c.colsb[t] = 64;
    }
    _tile_loadconfig(&c);
}

// A stored C tile -> popcounts for pixels x0.. (m of them) and output channels 16*ob..:
// pop = (full - D) / 2. (The tile number of _tile_stored must be a literal, hence the caller.)
static void to_pop(const BConvRow& a, const int32_t* __restrict c, int x0, int m, int ob,
                   int32_t full) {
    const int cpad = a.cout_blocks * kLanes, o0 = ob * 16, n = std::min(16, cpad - o0);
    for (int r = 0; r < m; ++r) {
        int32_t* __restrict dst = a.pop + size_t(x0 + r) * cpad + o0;
        for (int j = 0; j < n; ++j) dst[j] = (full - c[r * 16 + j]) / 2;
    }
}

static void bconv_row(const BConvRow& a) {
    const int P = a.words, k = a.k, kk = k * k, s = a.stride, W = a.out_w;
    const int blocks16 = (a.cout_blocks * kLanes + 15) / 16;
    const int m = std::min(16, W);
    const size_t pixel_bytes = size_t(64) * P, row_bytes = size_t(a.wp) * pixel_bytes;
    thread_local std::vector<int8_t> rows;
    rows.resize(size_t(k) * row_bytes);
    const __m512i plus = _mm512_set1_epi8(1), minus = _mm512_set1_epi8(-1);
    for (int ky = 0; ky < k; ++ky) {
        const uint64_t* src = a.act + size_t(a.oy * s + ky) * a.wp * P;
        int8_t* dst = rows.data() + size_t(ky) * row_bytes;
        for (int i = 0; i < a.wp * P; ++i)
            _mm512_storeu_si512(dst + size_t(64) * i, _mm512_mask_blend_epi8(src[i], minus, plus));
    }
    const int32_t full = kk * a.cin;
    const size_t a_stride = size_t(s) * pixel_bytes, b_block = size_t(kk) * P * 1024;
    configure(m);
    for (int ob = 0; ob < blocks16; ob += 2) {
        const bool two_b = ob + 1 < blocks16;
        for (int ox = 0; ox < W; ox += 2 * m) {
            // The last tiles start at W - m, recomputing a few pixels rather than using a
            // narrower tile shape (which would need another tile configuration).
            const int x0 = std::min(ox, W - m), x1 = std::min(ox + m, W - m);
            const bool two_a = ox + m < W;
            _tile_zero(4);
            _tile_zero(5);
            _tile_zero(6);
            _tile_zero(7);
            for (int ky = 0; ky < k; ++ky)
                for (int kx = 0; kx < k; ++kx)
                    for (int p = 0; p < P; ++p) {
                        const int8_t* tap = rows.data() + size_t(ky) * row_bytes + kx * pixel_bytes + 64 * p;
                        const int8_t* w = a.w8 + ((size_t(ob) * kk + ky * k + kx) * P + p) * 1024;
                        _tile_loadd(0, tap + x0 * a_stride, static_cast<long>(a_stride));
                        _tile_loadd(2, w, 64);
                        _tile_dpbssd(4, 0, 2);
                        if (two_b) {
                            _tile_loadd(3, w + b_block, 64);
                            _tile_dpbssd(5, 0, 3);
                        }
                        if (two_a) {
                            _tile_loadd(1, tap + x1 * a_stride, static_cast<long>(a_stride));
                            _tile_dpbssd(6, 1, 2);
                            if (two_b) _tile_dpbssd(7, 1, 3);
                        }
                    }
            alignas(64) int32_t c[16 * 16];
            _tile_stored(4, c, 64);
            to_pop(a, c, x0, m, ob, full);
            if (two_b) {
                _tile_stored(5, c, 64);
                to_pop(a, c, x0, m, ob + 1, full);
            }
            if (two_a) {
                _tile_stored(6, c, 64);
                to_pop(a, c, x1, m, ob, full);
                if (two_b) {
                    _tile_stored(7, c, 64);
                    to_pop(a, c, x1, m, ob + 1, full);
                }
            }
        }
    }
    _tile_release();  // lets the core drop the tile state (cheaper context switches, C-states)
}

// Four independent TDPBSSD chains on zero tiles: the matrix unit's int8 rate.
static uint64_t peak_loop(uint64_t iters) {
    configure(16);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_zero(4);
    _tile_zero(5);
    _tile_zero(6);
    _tile_zero(7);
    for (uint64_t it = 0; it < iters; ++it) {
        _tile_dpbssd(4, 0, 2);
        _tile_dpbssd(5, 0, 3);
        _tile_dpbssd(6, 1, 2);
        _tile_dpbssd(7, 1, 3);
    }
    alignas(64) int32_t c[16 * 16];
    _tile_stored(4, c, 64);
    _tile_release();
    return static_cast<uint64_t>(c[0]) + iters;
}

#include "kernels/layer_rows.inc"

}  // namespace amx

const Kernels kernels_amx = {amx::bconv_row, amx::layer_row, amx::pack_row, amx::peak_loop,
                             4 * 16 * 16 * 64, true};

}  // namespace xnornet
