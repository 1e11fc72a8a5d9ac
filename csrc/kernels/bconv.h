// Binary convolution kernels: one output row of XOR-popcount sums. One implementation per ISA,
// identical signatures; runtime/dispatch.cpp picks one. Knows nothing of Python.
//
// Layouts (N, H, W, C as everywhere; P = 64-bit words per pixel = ceil(C_in / 64)):
//   act  padded input image, [Hp][Wp][P]: bit j of word p is channel 64p+j, 1 = (+1), 0 = (-1);
//        border pixels and bits past C_in are 0
//   w    kernel-ready weights, [cout/8][k*k][P][8]: 8 output channels interleaved per word, so a
//        vector lane accumulates one output channel and no horizontal reduction is needed
//   pop  [out_w][cout_pad] int32: sum over taps and words of popcount(act ^ w)
#pragma once
#include <cstdint>

namespace xnornet {

constexpr int kLanes = 8;  // output channels per interleaved weight block

struct BConvRow {
    const uint64_t* act;  // top-left of the padded input image
    int wp;               // padded input width
    int words;            // P
    int k, stride;
    int oy, out_w;
    const uint64_t* w;
    int cout_blocks;      // cout_pad / kLanes
    int32_t* pop;         // out_w * cout_blocks * kLanes
};

using BConvRowFn = void (*)(const BConvRow&);

void bconv_row_generic(const BConvRow& a);
void bconv_row_avx2(const BConvRow& a);
void bconv_row_avx512(const BConvRow& a);

// The scalar body all kernels fall back to for leftover tiles.
inline void bconv_tile_scalar(const BConvRow& a, int ox, int ob) {
    const int kk = a.k * a.k, P = a.words;
    int32_t acc[kLanes] = {0};
    for (int ky = 0; ky < a.k; ++ky)
        for (int kx = 0; kx < a.k; ++kx) {
            const uint64_t* x = a.act + ((a.oy * a.stride + ky) * a.wp + ox * a.stride + kx) * P;
            const uint64_t* w = a.w + ((ob * kk + ky * a.k + kx) * P) * kLanes;
            for (int p = 0; p < P; ++p)
                for (int l = 0; l < kLanes; ++l)
                    acc[l] += __builtin_popcountll(x[p] ^ w[p * kLanes + l]);
        }
    int32_t* out = a.pop + (ox * a.cout_blocks + ob) * kLanes;
    for (int l = 0; l < kLanes; ++l) out[l] = acc[l];
}

}  // namespace xnornet
