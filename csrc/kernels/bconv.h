// Per-ISA kernels. One translation unit per ISA (generic, avx2, avx512) with identical
// signatures; only that unit gets the ISA's compiler flags; runtime/dispatch.cpp picks one.
// Knows nothing of Python.
//
// Layouts (N, H, W, C as everywhere; P = 64-bit words per pixel = ceil(C_in / 64)):
//   act  padded input image, [Hp][Wp][P]: bit j of word p is channel 64p+j, 1 = (+1), 0 = (-1);
//        border pixels and bits past C_in are 0
//   w    kernel-ready weights, [cout/8][k*k][P][8]: 8 output channels interleaved per word, so a
//        vector lane accumulates one output channel and no horizontal reduction is needed
//   pop  [rows][out_w][cout_pad] int32: sum over taps and words of popcount(act ^ w), for the
//        output rows [oy, oy_end)
#pragma once
#include <cstdint>

#include "runtime/layer.h"

namespace xnornet {

struct BConvRows {
    const uint64_t* act;  // top-left of the padded input image
    int hp, wp;           // padded input height and width
    int words;            // P
    int k, stride;
    int oy, oy_end, out_w;  // output rows [oy, oy_end)
    const uint64_t* w;
    int cout_blocks;      // cout_pad / kLanes
    int32_t* pop;         // (oy_end - oy) * out_w * cout_blocks * kLanes
    const int8_t* w8;     // AMX only: int8 +-1 weights, [cout/16][k*k][P][16][64] (VNNI)
    int cin;
};

struct Kernels {
    // Output rows [oy, oy_end) of image img of a layer: conv (binary or float), epilogue (scale,
    // bias, shortcut, ReLU), float output and packing for the next binary conv.
    void (*layer_rows)(const Layer&, const LayerIO&, int img, int oy, int oy_end, Scratch&);
    // Pack rows of a float NHWC tensor for the binary conv `next` (when the graph starts with one).
    void (*pack_row)(const float* y, int C, int H, int W, const Op& next, uint64_t* bits_out,
                     int img, int oy);
    // The peak: a register-only XOR-popcount-accumulate loop, 8 independent accumulators.
    // Runs `iters` iterations of peak_macs_per_iter binary MACs; returns a checksum.
    uint64_t (*peak_loop)(uint64_t iters);
    int peak_macs_per_iter;
    bool int8_weights = false;  // needs Prepared::amx_weight
    // bconv_rows gains from many rows per call (weights reused across rows): the executor hands
    // it whole feature maps (or the largest blocks that keep every thread busy), not single rows.
    bool row_blocks = false;
};

extern const Kernels kernels_generic;
extern const Kernels kernels_avx2;
extern const Kernels kernels_avx512;
extern const Kernels kernels_amx;

}  // namespace xnornet
