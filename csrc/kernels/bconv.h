// Per-ISA kernels. One translation unit per ISA (generic, avx2, avx512, amx), each filling a
// Kernels table; only that unit gets the ISA's compiler flags; runtime/dispatch.cpp picks one.
// Knows nothing of Python.
//
// Layouts (N, H, W, C as everywhere; P = 64-bit words per pixel = ceil(C_in / 64)):
//   act  padded input image, [Hp][Wp][P]: bit j of word p is channel 64p+j, 1 = (+1), 0 = (-1);
//        border pixels and bits past C_in are 0
//   w    kernel-ready weights, [cout/8][k*k][P][8]: 8 output channels interleaved per word, so a
//        vector lane accumulates one output channel and no horizontal reduction is needed
//   pop  [out_w][cout_pad] int32: sum over taps and words of popcount(act ^ w)
#pragma once
#include <cstdint>

#include "runtime/layer.h"

namespace xnornet {

// One output row of a binary conv, for the XOR-popcount kernels' bconv_row.
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

struct Kernels {
    // Output rows [oy, oy_end) of image img of a layer: conv (binary or float), epilogue (scale,
    // bias, shortcut, ReLU), float output and packing for the next binary conv.
    void (*layer_rows)(const Layer&, const LayerIO&, int img, int oy, int oy_end, Scratch&);
    // Pack row oy of one image's float NHWC map (C x H x W) into that image's packed map (`base`)
    // for the binary conv `next` (when the graph starts with one).
    void (*pack_row)(const float* y, int C, int H, int W, const Op& next, uint64_t* base, int oy);
    // The peak: a register-only XOR-popcount-accumulate loop, 8 independent accumulators.
    // Runs `iters` iterations of peak_macs_per_iter binary MACs; returns a checksum.
    uint64_t (*peak_loop)(uint64_t iters);
    int peak_macs_per_iter;
    // Which binary convs need Prepared::amx_weight, the int8 copy of their weights (null: none):
    // every one the tile kernels may run (the mixed implementation picks per call, tiles_pay).
    bool (*int8_weights)(const Op&) = nullptr;
    // Binary conv layers run in the kernel's own code on whole maps, which reuses each weight
    // load across rows: the executor hands layer_rows whole feature maps (or, with more threads
    // than images, balanced row blocks), not single rows.
    bool whole_maps = false;
    // Whole maps of `count` images from img0 of a layer in one call (null: the executor calls
    // layer_rows per image): a binary conv's weights, once in cache, serve every image's pixels.
    void (*layer_images)(const Layer&, const LayerIO&, int img0, int count, Scratch&) = nullptr;
    // Whether layer_images may write this downsampling layer's float output over its input
    // (LayerIO::act_out == act_in; null: never), for any `count` (the executor decides once per
    // plan, Layer::in_place). The executor then gives the output stride times the input's row
    // pitch (Layer::out_pitch), so each output pixel lies over the first row of its own pooled
    // window, and the kernel must read a pixel's whole window before storing that pixel. The
    // stores then find the lines just read in cache. (layer_rows cannot: bconv_epilogue writes a
    // whole output row before the shortcut reads its windows.)
    bool (*pool_over_input)(const Layer&, int count) = nullptr;
    // How many pixel tiles (16 output pixels each) layer_images computes for this layer on
    // `count` images in one call, dropped columns included (null, or 0: it computes none).
    // Engine::plan reports it, so tests can see which tile layout a layer gets.
    int (*pixel_tiles)(const Layer&, int count) = nullptr;
};

extern const Kernels kernels_generic;
extern const Kernels kernels_avx2;
extern const Kernels kernels_avx512;
extern const Kernels kernels_amx;
extern const Kernels kernels_amx_mixed;  // amx where tiles pay, avx512 elsewhere

}  // namespace xnornet
