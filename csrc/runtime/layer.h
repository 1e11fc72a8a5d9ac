// What the executor hands to the per-ISA row kernels: a layer planned for one input shape, its
// prepared weights, and where its output row goes. Shared by runtime/ and kernels/.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/aligned.h"
#include "core/model_file.h"

namespace xnornet {


constexpr int kLanes = 8;        // output channels per interleaved binary weight block
constexpr int kPatchPixels = 4;  // output pixels per float conv register tile

// Per-op weights in kernel layout.
struct Prepared {
    // ConvFP: weights as [k*k*cin][cout] (patch-major) so the inner loop runs over outputs.
    aligned_vector<float> fp_weight;
    // BConv: [cout/8][k*k][P][8] (see kernels/bconv.h) and, per output channel and tap, the
    // popcount of that tap's weight words: what a zero (border) input word adds to the sum.
    aligned_vector<uint64_t> bin_weight;
    aligned_vector<int32_t> tap_popcount;  // [cout][k*k]
    // AMX kernels only: the same weights as int8 +-2 (0 past cin) in TDPBSSD's VNNI layout,
    // [cout/16][k*k][P][16 rows = 4-channel groups][16 outputs x 4 channels].
    aligned_vector<int8_t> amx_weight;
    aligned_vector<int32_t> amx_wsum;  // per output (16 per block, 0 past cout): the sum of its int8 weights
    // BConv, AMX kernels only: per input channel, where the sign of its input y * s + b (tensors 0 and 1) turns
    // +: y >= sign_from[c] exactly when y * s + b >= 0 (engine.cpp, sign_thresholds), one
    // comparison instead of three for the epilogue that packs this layer's input (the tile
    // kernels' fused ones); empty where that is not certain (some s or |b| outside
    // [2^-20, 2^20]: a negative s among them, and 0).
    aligned_vector<float> sign_from;
    int words = 0, cout_blocks = 0;
};

struct Layer {
    const Op* op;
    const Prepared* prep;
    int in_h, in_w, out_h, out_w;
    bool float_out;        // the next op (or the caller) needs this op's float output
    const Op* next_bconv;  // pack the output for this binary conv (null: don't)
    const Prepared* next_prep = nullptr;  // next_bconv's
    // BConv only: border classes of output rows/columns and, per (row class, column class), the
    // number of valid taps and per output channel the weight popcount on invalid taps.
    std::vector<int> row_class, col_class;
    int col_classes = 0;
    std::vector<int> valid_taps;
    aligned_vector<int32_t> invalid_popcount;  // [class][cout]
    // Output pixels with every tap inside the input: rows where row_interior[oy], columns
    // [interior_x0, interior_x1) (contiguous; empty when there are none).
    std::vector<uint8_t> row_interior;
    int interior_x0 = 0, interior_x1 = 0;
    // Image i's float maps start at i * act_image floats into every float buffer, its packed maps
    // at i * bits_image words into every bits buffer: each image has a slot of its own, the size
    // of the largest map, so no layer writes into another image's data (a layer may then write
    // over its input, and groups of images may run part of the graph one after another).
    size_t act_image = 0, bits_image = 0;
    // Floats from one row of the input (output) float map to the next within an image's slot:
    // in_w * cin (out_w * cout) for a dense map. A downsampling layer that writes over its input
    // puts each output pixel over the first row of its own pooled window, which it has just read
    // (so the stores find their lines in L1): its output row m lies over input row stride * m,
    // and the layers after it keep that pitch (Engine::acquire).
    size_t in_pitch = 0, out_pitch = 0;
    bool in_place = false;  // the output is written over the input (Engine::writes_over_input)
    // Where pixel (row, col) of image img starts in the input (output) float map at base.
    const float* in_at(const float* base, int img, int row, int col) const {
        return base + img * act_image + size_t(row) * in_pitch + size_t(col) * op->cin;
    }
    template <class T>  // float or const float
    T* out_at(T* base, int img, int row, int col) const {
        return base + img * act_image + size_t(row) * out_pitch + size_t(col) * op->cout;
    }
    // The border class of output pixel (oy, ox): the index into valid_taps and invalid_popcount.
    size_t border_class(int oy, int ox) const { return size_t(row_class[oy]) * col_classes + col_class[ox]; }
};

// Inputs and outputs of one layer for one batch, and per-thread scratch.
struct LayerIO {
    const float* act_in;      // NHWC float input (rows Layer::in_pitch floats apart)
    const uint64_t* bits_in;  // packed, zero-bordered input (BConv)
    float* act_out;           // NHWC float output (rows out_pitch apart), or null when no one needs it
    uint64_t* bits_out;       // packed output for L.next_bconv, or null
    // act_out == act_in, for a binary conv with an identity shortcut: y is written over x, and the
    // epilogue adds x where it stores y instead of adding the shortcut afterwards.
    // (A downsampling layer's act_out may be act_in too, where its kernel says it can:
    // Kernels::pool_over_input, Layer::in_place.)
    bool over_input = false;
};

struct Scratch {
    int32_t* pop;  // out_w * cout_pad
    float* row;    // out_w * cout (the row, unless written in place) + kPatchPixels * k*k*cin
                   // + k * (in_w + 2*pad) * cin (a float conv's padded input rows)
};

}  // namespace xnornet
