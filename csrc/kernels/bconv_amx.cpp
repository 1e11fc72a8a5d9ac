// AMX-INT8 kernel (Intel Sapphire Rapids and later). Only this file is compiled with
// -mamx-tile -mamx-int8 (plus AVX-512F/BW for the bit expansion and the shared row code).
//
// Why: one TDPBSSD multiplies a 16 x 64 int8 tile by a 64 x 16 one (16,384 MACs) every 16 cycles,
// ~1,000 MACs per cycle, 2.3-2.5x what XOR + VPOPCNTQ + ADD reaches on 512-bit vectors here.
// A binary dot product is an int8 one on +-1 values, so the matrix unit computes it exactly.
//
// Activations stay bit-packed between layers, as for the other kernels. The executor hands this
// kernel whole feature maps (Kernels::whole_maps), at batch sizes of a few images per thread
// several images' maps per call (Kernels::layer_images), so a weight tile, once loaded, serves a
// group of up to 32 pixel tiles of 16 output pixels, which may span rows and images. The group's
// input pixels are expanded to int8 (one masked move per 64 channels) into stride x stride phase
// images, phase (py, px) holding padded pixels (stride*i + py, stride*j + px). Numbered
// q = row * Wq + column over a phase image's width Wq, the output pixels of a tap then sit at
// evenly spaced addresses: an A tile is 16 consecutive q and 64 input channels, one strided load,
// no im2col. Tiles start at the start of each output row where that takes fewer tiles, else every
// 16 q, wrapping across rows (Layout); either way columns past the map's edge that a tile spans
// are computed and dropped. With stride 1 the right padding is left out of a phase row
// (phase_width: a tap past the row's end reads the next row's left padding), and where it fills
// pixel tiles better two images share each phase row, interleaved (Source::lanes). An activation
// a = +-1 goes in as b = (a + 1) / 2, a byte 1 or 0 (border taps 0): the matrix unit's speed
// depends on the data, and with 0 for -1 instead of 0xFF every layer ran 7-13% faster
// (docs/engine.md). A weight w = +-1 goes in as 2w, a byte +-2, in the VNNI layout TDPBSSD
// wants, with 0 for channels past cin, so those bits add nothing. The tiles' sum
// D' = sum(b * 2w) = sum((a + 1) * w) then gives the +-1 dot product over all taps, border taps
// included as -1 inputs (exactly as the XOR kernels see them), as D = D' - sum(w) (tile_dot,
// with Prepared::amx_wsum; +-2 saves the epilogue a shift per 16 outputs): the same integer as
// the XOR kernels' popcount formula, D = k*k*cin - 2*popcount. It goes straight into the
// epilogue: identity and downsampling layers store y and pack the next layer's bits in one
// register pass (dot_add_pack, dot_pool_pack), a row's interior pixels in one run
// (interior_run), others through dot_pixel and the shared row code.
// Measurements and what is left: docs/engine.md.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/bconv.h"

#ifdef XNORNET_CYCLES
#include <x86intrin.h>

#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#endif

namespace xnornet {
namespace amx {

#ifdef XNORNET_CYCLES
// The diagnostic build's counters (cmake -DXNORNET_CYCLES=ON, docs/engine.md): TSC cycles per
// output pixel in each part of bconv_images (expansion, tile products, epilogue), per layer,
// summed over every call and printed to stderr at exit. rdtsc between lfences serializes, so the
// parts of a group are timed, not single pixels.
namespace cycles {
struct Parts {
    double expand = 0, tiles = 0, epilogue = 0, pixels = 0;
};
struct Table {
    std::mutex mutex;
    std::map<std::string, Parts> layers;  // by shape, in order of the label
    ~Table() {
        for (const auto& [label, p] : layers)
            std::fprintf(stderr, "%s: expansion %.1f, tiles %.1f, epilogue %.1f TSC cycles per output pixel\n",
                         label.c_str(), p.expand / p.pixels, p.tiles / p.pixels, p.epilogue / p.pixels);
    }
};
static Table table;
static inline uint64_t now() {
    _mm_lfence();
    const uint64_t t = __rdtsc();
    _mm_lfence();
    return t;
}
struct Clock {
    std::string label;
    Parts parts;
    uint64_t last = now();
    void lap(double Parts::*part) {
        const uint64_t t = now();
        parts.*part += double(t - last);
        last = t;
    }
    ~Clock() {
        std::lock_guard<std::mutex> lock(table.mutex);
        Parts& p = table.layers[label];
        p.expand += parts.expand, p.tiles += parts.tiles, p.epilogue += parts.epilogue, p.pixels += parts.pixels;
    }
};
}  // namespace cycles
#define XN_CYCLES_START(L, px)                                                                           \
    cycles::Clock cycle_clock;                                                                            \
    cycle_clock.label = std::to_string(L.in_h) + "x" + std::to_string(L.in_w) + "x" +                    \
                        std::to_string(L.op->cin) + " -> " + std::to_string(L.op->cout) + " stride " + \
                        std::to_string(L.op->stride);                                                      \
    cycle_clock.parts.pixels = double(px)
#define XN_CYCLES_LAP(part) cycle_clock.lap(&cycles::Parts::part)
#else
#define XN_CYCLES_START(L, px) ((void)0)
#define XN_CYCLES_LAP(part) ((void)0)
#endif

struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

// A group is `span` pixel tiles (group_span, below: up to 128 KB of D), possibly from several
// images, whose epilogue runs right after their products. Within it, per step (one tap, one
// word of 64 channels) two pixel tiles (tmm0-1) meet two weight tiles (tmm6-7, 2 x 16 outputs,
// VNNI) in four products into C tiles tmm2-5: one tile load per
// product (block<2, 2>). Tile loads, not products, bound this loop: group<T> (one weight tile
// against up to four pixel tiles, 5 loads per 4 products) is 5-9% slower on the whole network
// and now only runs an odd last block of 16 outputs, alternating its weight tile between tmm6
// and tmm7 so the next load overlaps this step's products (tiles are not renamed), on up to
// kGroup pixel tiles at a time.
constexpr int kGroup = 4;

// Pixel tiles per group for `outputs` (16 x blocks) output channels and `total` tiles in the
// call: as many as keep the group's D within kGroupD bytes (an even number, at least kGroup),
// so each weight tile, once in cache, serves many pixel tiles. 128 KB (32 tiles of 64 outputs,
// 8 of 256) against kGroup tiles: the whole network 5% faster; 64 and 256 KB within noise of it
// (docs/engine.md).
constexpr int kGroupD = 128 * 1024;
static int group_span(int outputs, int total) {
    const int fit = std::max(kGroup, kGroupD / (16 * 4 * outputs) / 2 * 2);
    return std::min(fit, total);
}

// GCC 12's tile loads and stores are asm statements that declare no memory access, so to the
// compiler the expansion's stores need not come before the tile loads, nor the tile stores before
// the epilogue's loads of D. A compiler barrier between the parts orders them (no instruction).
static inline void memory_barrier() { __asm__ volatile("" ::: "memory"); }

static void configure() {
    TileConfig c;
    for (int t = 0; t < 8; ++t) c.rows[t] = 16, c.colsb[t] = 64;
    // GCC 12's _tile_loadconfig tells the compiler it reads 8 bytes (an "m" operand of a
    // pointer's size), not 64: inlined into bconv_images, the stores of the rows were dropped as
    // dead and ldtilecfg faulted on the invalid configuration (rows 0). The barrier makes every
    // byte of c written first.
    __asm__ volatile("" : : "r"(&c) : "memory");
    _tile_loadconfig(&c);
}

// The int8 phase pixels of one group of pixel tiles (see the top of the file and bconv_images):
// per phase, `pixels` pixels: for each strip (of `lanes` images interleaved, Source) the group
// touches, its tiles' pixels and the rows below them that their taps reach, [phase][pixels][64 * P].
struct Phases {
    const int8_t* data;
    int wq;               // positions in a phase row: lanes x the phase width of one image
    int lanes;            // images interleaved in a phase row (Source)
    size_t pixels;        // pixels per phase
    size_t pixel_bytes;   // 64 * P
    // Where the A tile of tap (ky, kx), word p, starts for the group's first pixel.
    const int8_t* tap(int ky, int kx, int p, int s) const {
        const size_t phase = size_t(ky % s) * s + kx % s;
        return data + (phase * pixels + size_t(ky / s) * wq + size_t(kx / s) * lanes) * pixel_bytes + 64 * p;
    }
};

// The packed input of one call: padded images, their geometry, the first output row, the width
// of one image's phase rows (phase_width) and how many images share a phase row (lanes),
// interleaved pixel by pixel: position j * lanes + g of a strip's phase row holds image g's
// column j, so a tap's offset is the same for every lane, and a pixel tile of 16 positions holds
// 16 / lanes columns of each image. Two 8-wide output maps (9 phase columns each) thus fill one
// tile a row (Layout), where one image alone would leave half of every tile unused.
struct Source {
    const uint64_t* act;  // top-left of the first padded input image, [images][hp][wp][words]
    size_t image_words;   // from one image's padded map to the next's (Layer::bits_image)
    int hp, wp, words, k, stride, oy, images, wq, lanes;
};

// The first column of image `lane` at or after position pos of a strip's phase row (Source:
// position j * lanes + lane holds column j): columns [lane_column(a), lane_column(b)) of it lie at
// positions [a, b).
// (Called per row piece by the expansion and the epilogue: the one and two lane cases, the only
// ones Layout makes, without a division.)
static inline int lane_column(int pos, int lane, int lanes) {
    if (lanes == 1) return pos;
    if (lanes == 2) return (pos - lane + 1) >> 1;  // pos >= 0, lane < lanes: a non-negative numerator
    return (pos - lane + lanes - 1) / lanes;
}

// Columns per row of a phase image. Stride 1 with the same padding on both sides leaves the
// right padding out: a tap past a row's last pixel then reads the next row's left padding, the
// same -1 input, so each output row computes pad fewer columns that are dropped (32x32 maps: 33
// instead of 34, 16x16: 17 instead of 18). Else every padded column, split over the phases.
static int phase_width(int in_w, int pad, int k, int stride) {
    const int wp = in_w + 2 * pad, out_w = (wp - k) / stride + 1;
    if (stride == 1 && pad > 0 && in_w + pad >= out_w) return in_w + pad;
    return (wp + stride - 1) / stride;
}

// n pixels' packed words (P each, `step` words apart) as 0/1 bytes at out, out_step bytes apart,
// in each of `rows` rows (src_row words and out_row bytes apart): the expansion's inner loop, in
// a function of its own so that it keeps its few pointers in registers (inlined into
// bconv_images it reloaded them from the stack for every pixel).
template <int P>
__attribute__((noinline)) static void expand_pixels(const uint64_t* src, size_t step, int n, int words,
                                                    int8_t* out, size_t out_step, int rows, size_t src_row,
                                                    size_t out_row) {
    const __m512i one = _mm512_set1_epi8(1);
    const int w = P ? P : words;
    for (int r = 0; r < rows; ++r, src += src_row, out += out_row) {
        const uint64_t* in = src;
        int8_t* o = out;
        for (int i = 0; i < n; ++i, in += step, o += out_step)
            for (int p = 0; p < w; ++p) _mm512_storeu_si512(o + 64 * p, _mm512_maskz_mov_epi8(in[p], one));
    }
}
// expand_pixels for `words` words a pixel, compiled with the count constant for 1, 2 and 4.
static void expand_rows(const uint64_t* src, size_t step, int n, int words, int8_t* out, size_t out_step,
                        int rows = 1, size_t src_row = 0, size_t out_row = 0) {
    switch (words) {
        case 1: return expand_pixels<1>(src, step, n, words, out, out_step, rows, src_row, out_row);
        case 2: return expand_pixels<2>(src, step, n, words, out, out_step, rows, src_row, out_row);
        case 4: return expand_pixels<4>(src, step, n, words, out, out_step, rows, src_row, out_row);
        default: return expand_pixels<0>(src, step, n, words, out, out_step, rows, src_row, out_row);
    }
}

// Expand pixels [q0, q0 + n) of every phase of strip st (q numbered over the strip's phase rows
// from output row a.oy, rows wq = a.wq * a.lanes positions wide, the lanes interleaved: Source)
// into int8 b = (a + 1) / 2 at dst, phase f's at dst + f * phase_bytes: 1 for a set bit, 0 for a
// clear one and for the padding. Pixels past the padded image (the slack that the last tiles'
// dropped rows read) are 0 too. With k < stride the phases (py, px) with py or px >= k are never
// read and stay unfilled.
static void expand_range(const Source& a, int st, size_t q0, size_t n, int8_t* dst, size_t phase_bytes) {
    const int s = a.stride, P = a.words, lanes = a.lanes, wq = a.wq * lanes;
    const size_t pb = size_t(64) * P, out_step = size_t(lanes) * pb;
    const int used = std::min(s, a.k);
    auto zero = [&](int8_t* out, int count) {  // count pixels from out, out_step bytes apart
        if (count <= 0) return;
        if (lanes == 1) return void(std::memset(out, 0, size_t(count) * pb));
        for (int i = 0; i < count; ++i, out += out_step) std::memset(out, 0, pb);
    };
    for (int py = 0; py < used; ++py)
        for (int px = 0; px < used; ++px) {
            int8_t* phase = dst + (size_t(py) * s + px) * phase_bytes;
            // columns j < in_cols read padded columns s * j + px < wp; past them, 0
            const int in_cols = (a.wp - px + s - 1) / s;
            // image g's packed word of column j of padded row r
            auto source = [&](int g, int r, int j) {
                return a.act + g * a.image_words + (size_t(r) * a.wp + px + size_t(s) * j) * P;
            };
            // positions [jb, je) of phase row rr: padded row s * (a.oy + rr) + py (rr and jb
            // divided out once per phase, not per row: op 5's rows have only 17 pixels)
            int rr = int(q0 / wq), jb = int(q0 - size_t(rr) * wq);
            for (size_t q = q0; q < q0 + n; ++rr, jb = 0) {
                // Whole rows of one image inside the padded map, every column from the input:
                // as many as follow in one call (op 5: 17 rows of 17 pixels per phase).
                if (lanes == 1 && jb == 0 && in_cols >= wq && st < a.images) {
                    int rows = 0;
                    while (q + size_t(rows + 1) * wq <= q0 + n && s * (a.oy + rr + rows) + py < a.hp) ++rows;
                    if (rows > 0) {
                        const int r = s * (a.oy + rr) + py;
                        expand_rows(source(st, r, 0), size_t(s) * P, wq, P, phase + (q - q0) * pb, pb, rows,
                                    size_t(s) * a.wp * P, size_t(wq) * pb);
                        q += size_t(rows) * wq;
                        rr += rows - 1;  // and the loop's ++rr
                        continue;
                    }
                }
                const int je = int(std::min<size_t>(wq, jb + (q0 + n - q)));
                const int r = s * (a.oy + rr) + py;
                int8_t* row_out = phase + (q - q0) * pb;  // position jb
                for (int lane = 0; lane < lanes; ++lane) {  // columns [lo, hi) of image g: positions j * lanes + lane
                    const int g = st * lanes + lane, lo = lane_column(jb, lane, lanes),
                              hi = lane_column(je, lane, lanes);
                    if (lo >= hi) continue;
                    int8_t* out = row_out + (size_t(lo) * lanes + lane - jb) * pb;
                    if (r >= a.hp || g >= a.images) {  // slack, or no image in this lane
                        zero(out, hi - lo);
                        continue;
                    }
                    const int in_row = std::max(lo, std::min(hi, in_cols));
                    if (in_row > lo) {  // (the source formed only then: it may lie past the map otherwise)
                        expand_rows(source(g, r, lo), size_t(s) * P, in_row - lo, P, out, out_step);
                    }
                    zero(out + size_t(in_row - lo) * out_step, hi - in_row);
                }
                q += je - jb;
            }
        }
}

// What one call's tile loops share.
struct Plan {
    Phases ph;
    // Per step t (tap t / P, word t % P): where its A tile starts for q = 0. Computed once per
    // call: the divisions it takes would cost more than a step's four tile products.
    std::vector<const int8_t*> step_a;
    const int8_t* w8;    // the layer's int8 weights
    long a_stride;       // bytes between the pixels of an A tile
    size_t b_block;      // bytes between the weights of consecutive 16-output blocks
    int32_t* d;          // the group's dot products D, [span * 16 pixels][d_stride] int32
    int d_stride;        // 16 * number of 16-output blocks
};

// One step: weight tile B (tmm6 or tmm7) times T pixel tiles into C tiles tmm2.. .
#define XN_AMX_STEP(B, t_, w)                                   \
    do {                                                         \
        _tile_loadd(B, w, 64);                                   \
        _tile_loadd(0, tap(t_, 0), pl.a_stride);                 \
        _tile_dpbssd(2, 0, B);                                   \
        if (T > 1) {                                             \
            _tile_loadd(1, tap(t_, 1), pl.a_stride);             \
            _tile_dpbssd(3, 1, B);                               \
        }                                                        \
        if (T > 2) {                                             \
            _tile_loadd(0, tap(t_, 2), pl.a_stride);             \
            _tile_dpbssd(4, 0, B);                               \
        }                                                        \
        if (T > 3) {                                             \
            _tile_loadd(1, tap(t_, 3), pl.a_stride);             \
            _tile_dpbssd(5, 1, B);                               \
        }                                                        \
    } while (0)

// D for the T pixel tiles at byte offsets at[0..T) (from Phases::data) and output block ob (all taps
// and words) into pl.d, group slots slot..slot+T.
template <int T>
static void group(const Plan& pl, const size_t* at, int slot, int ob) {
    const int steps = static_cast<int>(pl.step_a.size());
    const int8_t* w = pl.w8 + size_t(ob) * pl.b_block;  // step t's weights: w + 1024 t
    auto tap = [&](int t, int i) { return pl.step_a[t] + at[i]; };
    _tile_zero(2);
    if (T > 1) _tile_zero(3);
    if (T > 2) _tile_zero(4);
    if (T > 3) _tile_zero(5);
    int t = 0;
    for (; t + 1 < steps; t += 2) {
        XN_AMX_STEP(6, t, w + size_t(t) * 1024);
        XN_AMX_STEP(7, t + 1, w + size_t(t + 1) * 1024);
    }
    if (t < steps) XN_AMX_STEP(6, t, w + size_t(t) * 1024);
    const long stride = 4l * pl.d_stride, tile = 16l * pl.d_stride;
    int32_t* d = pl.d + 16 * ob + slot * tile;
    _tile_stored(2, d, stride);
    if (T > 1) _tile_stored(3, d + tile, stride);
    if (T > 2) _tile_stored(4, d + 2 * tile, stride);
    if (T > 3) _tile_stored(5, d + 3 * tile, stride);
}
#undef XN_AMX_STEP

// D for TP pixel tiles (at byte offsets a0, a1; group slots slot..) x OB output blocks (from
// ob), TP, OB <= 2, over steps [t0, t1): per step TP + OB tile loads for TP * OB products (2x2:
// one load per product, against 5 per 4 for group<4>; the tile loads, not the products, bound
// the loop). With `resume` the C tiles start from the D that the pass over the steps before t0
// stored (see step_passes), else from zero.
template <int TP, int OB>
static void block(const Plan& pl, size_t a0, size_t a1, int slot, int ob, int t0, int t1, bool resume) {
    const int8_t* w = pl.w8 + size_t(ob) * pl.b_block;
    const long stride = 4l * pl.d_stride, tile = 16l * pl.d_stride;
    int32_t* d = pl.d + 16 * ob + slot * tile;
    if (resume) {
        _tile_loadd(2, d, stride);
        if (TP > 1) _tile_loadd(3, d + tile, stride);
        if (OB > 1) _tile_loadd(4, d + 16, stride);
        if (TP > 1 && OB > 1) _tile_loadd(5, d + tile + 16, stride);
    } else {
        _tile_zero(2);
        if (TP > 1) _tile_zero(3);
        if (OB > 1) _tile_zero(4);
        if (TP > 1 && OB > 1) _tile_zero(5);
    }
    if (TP > 1 && OB > 1) {
        // Tile registers are not renamed: a load into a tile waits for the products that read
        // it. So each operand of the next step is loaded right after its last product of this
        // step, and the products after it hide the load's latency (ops 5-10 2-7% faster than
        // four loads, then four products; docs/engine.md).
        _tile_loadd(0, pl.step_a[t0] + a0, pl.a_stride);
        _tile_loadd(6, w + size_t(t0) * 1024, 64);
        _tile_loadd(1, pl.step_a[t0] + a1, pl.a_stride);
        _tile_loadd(7, w + size_t(t0) * 1024 + pl.b_block, 64);
        for (int t = t0; t < t1; ++t) {
            const bool more = t + 1 < t1;
            const int8_t* b = more ? w + size_t(t + 1) * 1024 : w;
            _tile_dpbssd(2, 0, 6);
            _tile_dpbssd(3, 1, 6);
            if (more) _tile_loadd(6, b, 64);
            _tile_dpbssd(4, 0, 7);
            if (more) _tile_loadd(0, pl.step_a[t + 1] + a0, pl.a_stride);
            _tile_dpbssd(5, 1, 7);
            if (more) {
                _tile_loadd(1, pl.step_a[t + 1] + a1, pl.a_stride);
                _tile_loadd(7, b + pl.b_block, 64);
            }
        }
    } else {
        for (int t = t0; t < t1; ++t) {
            const int8_t* b = w + size_t(t) * 1024;
            _tile_loadd(0, pl.step_a[t] + a0, pl.a_stride);
            if (TP > 1) _tile_loadd(1, pl.step_a[t] + a1, pl.a_stride);
            _tile_loadd(6, b, 64);
            if (OB > 1) _tile_loadd(7, b + pl.b_block, 64);
            _tile_dpbssd(2, 0, 6);
            if (TP > 1) _tile_dpbssd(3, 1, 6);
            if (OB > 1) _tile_dpbssd(4, 0, 7);
            if (TP > 1 && OB > 1) _tile_dpbssd(5, 1, 7);
        }
    }
    _tile_stored(2, d, stride);
    if (TP > 1) _tile_stored(3, d + tile, stride);
    if (OB > 1) _tile_stored(4, d + 16, stride);
    if (TP > 1 && OB > 1) _tile_stored(5, d + tile + 16, stride);
}

// Passes over a layer's steps for block<>: as few as keep a pass's weights for one output-block
// pair (2 KB a step) within kPassWeights, so that they stay in L1 while the group's pixel tiles
// go by two by two; each pass after the first resumes from the D the one before stored. Ops 9-10
// (36 steps, 72 KB a pair) 5-7% faster in two passes; ops 6-8 (18 steps) 9-14% slower split in
// two, and three passes on ops 9-10 no faster than one (docs/engine.md, Session 16).
constexpr int kPassWeights = 36 * 1024;
static_assert(kPassWeights >= 2048, "a pass holds at least one step");
static int step_passes(int steps) {
    const int per_pass = kPassWeights / 2048;
    return (steps + per_pass - 1) / per_pass;
}

// Four independent TDPBSSD chains on zero tiles: the matrix unit's int8 rate (the same, within
// noise, on random 0/1 x +-1 operands: measured, docs/engine.md).
static uint64_t peak_loop(uint64_t iters) {
    configure();
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

#define XNORNET_BCONV_BLOCK  // binary conv layers run in bconv_block, below
#include "kernels/layer_rows.inc"
#undef XNORNET_BCONV_BLOCK

// What the epilogues read of a layer, loaded once per call: through `const Layer&` the
// compiler must reload every pointer after each pixel's stores (they might alias).
struct Epilogue {
    const float *scale, *bias;  // the layer's y = dot * scale + bias
    const float *s2, *b2;       // the next binary conv's sign thresholds: y * s2 + b2 >= 0
    const float* t2;            // the same as y >= t2 (Prepared::sign_from), or null
    const int32_t* inv;         // border correction per class, [class][cout]
    const int* valid_taps;      // per border class
    const int32_t* wsum;        // sum of each output's int8 weights (tile_dot)
    int cout, cin, taps;        // taps = k * k
    int stride;
    size_t in_row;              // floats from one input row to the next (Layer::in_pitch)
    float per_tap;              // a pooled window's weight, 1 / stride^2
    explicit Epilogue(const Layer& L)
        : scale(L.op->tensors[3].f32()), bias(L.op->tensors[4].f32()),
          s2(L.next_bconv ? L.next_bconv->tensors[0].f32() : nullptr),
          b2(L.next_bconv ? L.next_bconv->tensors[1].f32() : nullptr),
          t2(L.next_prep && !L.next_prep->sign_from.empty() ? L.next_prep->sign_from.data() : nullptr),
          inv(L.invalid_popcount.data()),
          valid_taps(L.valid_taps.data()), wsum(L.prep->amx_wsum.data()), cout(L.op->cout), cin(L.op->cin),
          taps(L.op->k * L.op->k), stride(L.op->stride), in_row(L.in_pitch),
          per_tap(1.f / float(stride * stride)) {}
};

// The +-1 dot product over all taps (border taps as -1 inputs) of an output from the tiles' sum
// of 0/1 activations times +-2 weights (see the top of the file): D = D' - sum(w).
static inline int32_t tile_dot(int32_t d, int32_t wsum) { return d - wsum; }
static inline __m512i tile_dot(__m512i d, __m512i wsum) {
    return _mm512_sub_epi32(d, wsum);
}

// Binary conv epilogue of one pixel from the tiles' sums d (D = tile_dot(d), the +-1 dot product
// over all taps, border taps counted as -1 inputs): the dot product over valid taps is
// D - (full - base) + 2*inv (inv: the weights' popcount on the border taps), then
// y = dot * scale + bias; the same integers, hence
// the same floats, as the XOR kernels' popcount epilogue (cls: the pixel's border class). With
// `add_x` y holds the identity shortcut on entry and gets (dot * scale + bias) + shortcut.
static inline void dot_pixel(const Epilogue& E, const int32_t* __restrict d, size_t cls,
                             float* __restrict y, bool add_x) {
    const int32_t* __restrict inv = E.inv + cls * E.cout;
    const int32_t off = (E.valid_taps[cls] - E.taps) * E.cin;
    const float* __restrict scale = E.scale;
    const float* __restrict bias = E.bias;
    const int32_t* __restrict wsum = E.wsum;
    if (E.valid_taps[cls] == E.taps) {  // interior pixel: no border correction (inv = off = 0)
        if (add_x) {
#pragma omp simd
            for (int o = 0; o < E.cout; ++o)
                y[o] = (float(tile_dot(d[o], wsum[o])) * scale[o] + bias[o]) + y[o];
        } else {
#pragma omp simd
            for (int o = 0; o < E.cout; ++o) y[o] = float(tile_dot(d[o], wsum[o])) * scale[o] + bias[o];
        }
        return;
    }
    if (add_x) {
#pragma omp simd
        for (int o = 0; o < E.cout; ++o)
            y[o] = (float(tile_dot(d[o], wsum[o]) + 2 * inv[o] + off) * scale[o] + bias[o]) + y[o];
    } else {
#pragma omp simd
        for (int o = 0; o < E.cout; ++o)
            y[o] = float(tile_dot(d[o], wsum[o]) + 2 * inv[o] + off) * scale[o] + bias[o];
    }
}

// The fused epilogues' common pass over one pixel's channels (cout % 64 == 0): y[c] =
// (dot * scale + bias) + shortcut(c, y) for 16 channels at a time, stored, and the next binary
// conv's sign bits packed from the same registers, each 64-bit word whole in a register. dot is
// D (tile_dot of the tiles' sums d), plus the border correction 2*inv + off for a border pixel
// (kBorder), in dot_pixel's order. With kThr the sign is y >= t2, one comparison for the
// multiply, add and comparison of y * s2 + b2 >= 0, the same bits (Prepared::sign_from).
// Q: words per pixel (cout / 64) when known at compile time (0: E.cout / 64).
template <bool kBorder, bool kThr, int Q = 0, class Shortcut>
static inline void store_pack(const Epilogue& E, size_t cls, const int32_t* __restrict d,
                              float* __restrict y, uint64_t* __restrict packed, Shortcut shortcut) {
    const int32_t* __restrict inv = E.inv + cls * E.cout;
    const __m512i off = _mm512_set1_epi32((E.valid_taps[cls] - E.taps) * E.cin);
#pragma GCC unroll 8
    for (int q = 0; q < (Q ? Q : E.cout / 64); ++q) {
        uint64_t word = 0;
        for (int j = 0; j < 64; j += 16) {
            const int c = 64 * q + j;
            __m512i di = tile_dot(_mm512_loadu_si512(d + c), _mm512_loadu_si512(E.wsum + c));
            if (kBorder)
                di = _mm512_add_epi32(_mm512_add_epi32(di, _mm512_slli_epi32(_mm512_loadu_si512(inv + c), 1)), off);
            const __m512 v = _mm512_add_ps(
                _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(di), _mm512_loadu_ps(E.scale + c)),
                              _mm512_loadu_ps(E.bias + c)),
                shortcut(c, y));  // given y: the in-place shortcut reads it before the store
            _mm512_storeu_ps(y + c, v);
            if (kThr)
                word |= uint64_t(_mm512_cmp_ps_mask(v, _mm512_loadu_ps(E.t2 + c), _CMP_GE_OQ)) << j;
            else
                word |= sign_bits16(v, E.s2 + c, E.b2 + c) << j;
        }
        packed[q] = word;
    }
}

constexpr int kMaxPoolChannels = 512;  // dot_pool_pack's pooled windows, in registers or on the stack

// A pixel of a downsampling layer (pool_fused, a next binary conv): y = (dot * scale + bias) +
// window_sum * (1/s^2), stored and packed in one pass; the same integers and float operations,
// in the same order, as dot_pixel + add_shortcut + pack_pixel (window summed in (dy, dx) order
// from 0). Border pixels add the border correction to D (dot = D + 2*inv + off, as dot_pixel);
// interior ones need none. Every input of the window is read before y is stored, so y may lie
// over the window (pool_over_input): x0 and y are not restrict. NV (cin / 16), S (stride) and Q
// (cout / 64), when known at compile time (with_pool_shape; 0: from E), keep the pooled windows in
// registers and every channel index a constant (with them from E, a division per 16 outputs).
template <bool kBorder, bool kThr, int NV = 0, int S = 0, int Q = 0>
static inline void dot_pool_pack(const Epilogue& E, size_t cls, const float* x0,
                                 const int32_t* __restrict d, float* y, uint64_t* __restrict packed) {
    const int nv = NV ? NV : E.cin / 16, s = S ? S : E.stride, ci = 16 * nv;
    const __m512 per_tap = _mm512_set1_ps(E.per_tap);
    // The pooled window of every input channel first (kMaxPoolChannels), then each packed word
    // whole in a register: no read-modify-write of the words per 16 channels.
    __m512 pooled[NV ? NV : kMaxPoolChannels / 16];
#pragma GCC unroll 16
    for (int v = 0; v < nv; ++v) {
        __m512 sum = _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int dy = 0; dy < s; ++dy)
#pragma GCC unroll 4
            for (int dx = 0; dx < s; ++dx)
                sum = _mm512_add_ps(sum, _mm512_loadu_ps(x0 + size_t(dy) * E.in_row + dx * ci + 16 * v));
        pooled[v] = _mm512_mul_ps(sum, per_tap);
    }
    // channels repeated: output c takes input c % ci
    store_pack<kBorder, kThr, Q>(E, cls, d, y, packed,
                           [&](int c, const float*) { return pooled[NV ? (c / 16) % NV : (c % ci) / 16]; });
}

// The downsampling shapes of the default trunk, compiled for (dot_pool_pack): cin -> 2 cin,
// stride 2, cin 64, 128 or 256. f(NV, S, Q) gets them as constants, other shapes as 0.
template <int V>
using Const = std::integral_constant<int, V>;
template <class F>
static inline void with_pool_shape(const Epilogue& E, F f) {
    if (E.stride == 2 && E.cout == 2 * E.cin) switch (E.cin) {
            case 64: return f(Const<4>{}, Const<2>{}, Const<2>{});
            case 128: return f(Const<8>{}, Const<2>{}, Const<4>{});
            case 256: return f(Const<16>{}, Const<2>{}, Const<8>{});
        }
    f(Const<0>{}, Const<0>{}, Const<0>{});
}

// f(kThr) with kThr a compile-time bool: whether the next layer's sign has thresholds (store_pack).
template <class F>
static inline void with_thresholds(const Epilogue& E, F f) {
    if (E.t2) return f(std::true_type{});
    f(std::false_type{});
}

// A pixel of an in-place identity layer (y holds the shortcut), no ReLU, a next binary conv:
// y = (dot * scale + bias) + y, stored and packed from the registers in one pass; the same
// integers and float operations, in the same order, as dot_pixel + pack_pixel.
template <bool kBorder, bool kThr>
static inline void dot_add_pack(const Epilogue& E, size_t cls, const int32_t* __restrict d,
                                float* __restrict y, uint64_t* __restrict packed) {
    store_pack<kBorder, kThr>(E, cls, d, y, packed, [](int c, const float* yc) { return _mm512_loadu_ps(yc + c); });
}

// Pixels [0, n) of a run of interior pixels (every tap inside the input: no border class to
// look up, no correction) of one output row, from D d (then every d_stride), output y, packed
// bits and, for kPool, the pooled window's top-left x0; in a function of its own so that its loop
// keeps its pointers in registers (in bconv_images they lived on the stack).
template <bool kPool, bool kThr, int NV = 0, int S = 0, int Q = 0>
__attribute__((noinline)) static void interior_run(const Epilogue& E, int n, const int32_t* d, int d_stride,
                                                   float* y, uint64_t* bits, const float* x0) {
    const int C = E.cout, PO = C / 64;
    for (int i = 0; i < n; ++i, d += d_stride, y += C, bits += PO) {
        if constexpr (kPool) {
            dot_pool_pack<false, kThr, NV, S, Q>(E, 0, x0, d, y, bits);
            x0 += size_t(E.stride) * E.cin;
        } else {
            dot_add_pack<false, kThr>(E, 0, d, y, bits);
        }
    }
}

// A downsampling layer (average-pooled shortcut, channels repeated) whose pixels dot_pool_pack
// can take whole: no ReLU, cin % 16 == 0 and <= kMaxPoolChannels, cout % 64 == 0.
static bool pool_fused(const Op& op) {
    return op.kind == OpKind::BConv && op.residual == Residual::Downsample && !op.relu && op.cin % 16 == 0 &&
           op.cin <= kMaxPoolChannels && op.cout % 64 == 0;
}

// Where a call's pixel tiles start among a strip's phase positions (q = row * strip_w + position,
// Source). Packed: tile mt at q = 16 mt, each tile taking along whatever columns past the output
// map (dropped) it spans, possibly across two rows. Row-aligned: per_row tiles from the start of
// each row, so only a row's last tile runs past its output columns: 32-wide maps (33 phase
// columns) take 2 tiles a row instead of 2 1/16, 16-wide (17) 1 instead of 1 1/16, two 8-wide
// maps interleaved (18) 1 instead of 1 1/8: that many fewer tile products. (Row-aligned tiles never
// run into the next row: fewer tiles than packed means 16 per_row < strip_w.)
struct Layout {
    int lanes, strip_w, per_row, mtiles;  // per_row 0: packed; mtiles: tiles per strip
    size_t start(int mt) const {
        return per_row ? size_t(mt / per_row) * strip_w + size_t(mt % per_row) * 16 : size_t(16) * mt;
    }
};

// The layout with fewer tiles for `rows` output rows of layer L, `lanes` images a strip.
static Layout layout(const Layer& L, int lanes, int rows) {
    const int strip_w = lanes * phase_width(L.in_w, L.op->pad, L.op->k, L.op->stride);
    const int packed = (rows * strip_w + 15) / 16, per_row = (lanes * L.out_w + 15) / 16;
    if (rows * per_row < packed) return {lanes, strip_w, per_row, rows * per_row};
    return {lanes, strip_w, 0, packed};
}

// Two images a strip where the call then takes fewer tiles (a call of several images).
static Layout layout_for(const Layer& L, int images, int rows) {
    const Layout one = layout(L, 1, rows);
    if (images > 1) {
        const Layout two = layout(L, 2, rows);
        if (size_t(images + 1) / 2 * two.mtiles < size_t(images) * one.mtiles) return two;
    }
    return one;
}

// Kernels::pool_over_input: whether bconv_images may write a downsampling layer's y over its
// input x. The executor then gives the output map stride times the input's row pitch
// (Layer::out_pitch), so that with cout = s * cin (and the input s times the output on each
// side, which the executor checks) output pixel (m, ox) lies exactly over the first row of its
// own pooled window, input pixels (s * m, s * ox .. s * ox + s - 1). dot_pool_pack reads the whole
// window before it stores the pixel, and the windows do not overlap, so nothing still to be read
// is overwritten, in whatever order the pixels go; and the stores find the lines just read in L1
// (op 5 ~3% faster than with the output rows dense over the first rows of the map).
static bool pool_over_input(const Layer& L, int) {
    const Op& op = *L.op;
    return pool_fused(op) && L.next_bconv && op.stride >= 2 && op.cout == op.stride * op.cin;
}

// Output rows [oy0, oy_end) of `images` consecutive images from img0 of a binary conv layer
// (several images only for whole maps). The call's pixel tiles (per strip, 16 positions from
// Layout::start) go in groups of up to `span` tiles: the group's phase pixels expanded (into a
// buffer that stays in cache; expanding the whole call's, ~300 KB, at once made op 2 7% and op 5
// 4% slower), then per pair of 16-output blocks the group's tiles two by two (the weights, once
// in cache, serve every tile of the group), then each pixel's whole epilogue while its D is in
// cache.
static void bconv_images(const Layer& L, const LayerIO& io, int img0, int images, int oy0, int oy_end,
                         Scratch& sc) {
    const Op& op = *L.op;
    const Prepared& pr = *L.prep;
    const int P = pr.words, s = op.stride, Wp = L.in_w + 2 * op.pad, Hp = L.in_h + 2 * op.pad;
    const int rows = oy_end - oy0;
    const Layout lay = layout_for(L, images, rows);
    const int lanes = lay.lanes, strip_w = lay.strip_w, mtiles = lay.mtiles, strips = (images + lanes - 1) / lanes;
    const int wq = strip_w / lanes;  // one image's phase_width
    const Source a{io.bits_in + img0 * L.bits_image, L.bits_image, Hp, Wp, P, op.k, s, oy0, images, wq, lanes};
    const int blocks16 = (pr.cout_blocks * kLanes + 15) / 16;
    const int total = strips * mtiles, span = group_span(16 * blocks16, total);
    thread_local aligned_vector<int32_t> dbuf;
    dbuf.resize(size_t(span) * 16 * blocks16 * 16);
    // halo: the positions past a tile's last that its taps reach (Phases::tap)
    const size_t pb = size_t(64) * P, halo = size_t((op.k - 1) / s) * (strip_w + lanes);
    const int steps = op.k * op.k * P, passes = step_passes(steps);  // (tap, word) pairs
    Plan pl{Phases{}, std::vector<const int8_t*>(steps), pr.amx_weight.data(), static_cast<long>(pb),
            size_t(steps) * 1024, dbuf.data(), 16 * blocks16};
    thread_local aligned_vector<int8_t> phase_buf;  // the group's Phases
    // The group's part of strip st: its tiles [m0, m1), their `len` pixels (from the first tile's
    // first, the rows their taps reach below included) from `base` in each phase.
    struct Segment {
        int st, m0, m1;
        size_t base, len;
    };
    std::vector<Segment> segs;
    const int C = op.cout, PO = (C + 63) / 64;
    std::vector<uint64_t*> packed(size_t(images) * rows, nullptr);  // each output row's packed pixels
    if (L.next_bconv)
        for (int g = 0; g < images; ++g)
            for (int y = 0; y < rows; ++y)
                packed[size_t(g) * rows + y] =
                    packed_row(C, L.out_h, L.out_w, *L.next_bconv, io.bits_out + (img0 + g) * L.bits_image,
                               oy0 + y);
    const bool pool_fuse = !io.over_input && pool_fused(op);  // see dot_pool_pack
    // In-place identity layers (the shortcut already in y), no ReLU: see dot_add_pack.
    const bool add_fuse = io.over_input && !op.relu && C % 64 == 0;
    const Epilogue E(L);
    const int* __restrict row_class = L.row_class.data();
    const int* __restrict col_class = L.col_class.data();
    const int col_classes = L.col_classes;
    // The epilogue of output row y of image g (of the call), columns [x, x_end), D of column x at
    // d0, then every dstep ints.
    auto row_epilogue = [&](int g, int y, int x, int x_end, const int32_t* d0, size_t dstep)
                            __attribute__((always_inline)) {
        const int img = img0 + g, oy = oy0 + y;
        const size_t row_cls = size_t(row_class[oy]) * col_classes;
        // the pooled shortcut's window of (oy, 0) (downsampling layers)
        const float* x_row = pool_fuse ? L.in_at(io.act_in, img, oy * s, 0) : nullptr;
        uint64_t* row = packed[size_t(g) * rows + y];
        float* out = io.act_out ? L.out_at(io.act_out, img, oy, 0) : nullptr;
        // The row's interior pixels in one run (fused epilogues only), the rest below.
        int run0 = x_end, run1 = x_end;
        if ((pool_fuse || add_fuse) && row && out && L.row_interior[oy]) {
            run0 = std::min(std::max(x, L.interior_x0), x_end);
            run1 = std::max(std::min(x_end, L.interior_x1), run0);
            const int32_t* d = d0 + size_t(run0 - x) * dstep;
            float* yp = out + size_t(run0) * C;
            with_thresholds(E, [&](auto thr) {
                if (pool_fuse)
                    with_pool_shape(E, [&](auto nv, auto st, auto q) {
                        interior_run<true, thr, nv, st, q>(E, run1 - run0, d, dstep, yp, row + size_t(run0) * PO,
                                                           x_row + size_t(run0) * s * E.cin);
                    });
                else
                    interior_run<false, thr>(E, run1 - run0, d, dstep, yp, row + size_t(run0) * PO, nullptr);
            });
        }
        for (int ox = x; ox < x_end; ++ox) {
            if (ox == run0) ox = run1;  // done above
            if (ox == x_end) break;
            const int32_t* d = d0 + size_t(ox - x) * dstep;
            float* yp = out ? out + size_t(ox) * C : sc.row;
            uint64_t* bits = row ? row + size_t(ox) * PO : nullptr;
            const size_t cls = row_cls + col_class[ox];  // L.border_class(oy, ox)
            const bool interior = E.valid_taps[cls] == E.taps;
            if (pool_fuse && bits) {
                with_thresholds(E, [&](auto thr) {
                    with_pool_shape(E, [&](auto nv, auto st, auto q) {
                        const float* x0 = x_row + size_t(ox) * s * E.cin;
                        if (interior)
                            dot_pool_pack<false, thr, nv, st, q>(E, cls, x0, d, yp, bits);
                        else
                            dot_pool_pack<true, thr, nv, st, q>(E, cls, x0, d, yp, bits);
                    });
                });
            } else if (add_fuse && bits) {
                with_thresholds(E, [&](auto thr) {
                    if (interior)
                        dot_add_pack<false, thr>(E, cls, d, yp, bits);
                    else
                        dot_add_pack<true, thr>(E, cls, d, yp, bits);
                });
            } else {
                dot_pixel(E, d, cls, yp, io.over_input);
                finish_pixel(L, io, img, oy, ox, yp, bits);
            }
        }
    };
    std::vector<size_t> at(span);  // the group's tile offsets from Phases::data
    configure();
    XN_CYCLES_START(L, size_t(images) * rows * L.out_w);
    for (int t0 = 0; t0 < total; t0 += span) {
        XN_CYCLES_LAP(epilogue);  // the previous group's (the first time: the set-up above)
        const int T = std::min(span, total - t0), st0 = t0 / mtiles, st1 = (t0 + T - 1) / mtiles;
        size_t n = 0;  // pixels per phase
        segs.clear();
        for (int st = st0; st <= st1; ++st) {
            const int m0 = st == st0 ? t0 % mtiles : 0, m1 = st == st1 ? (t0 + T - 1) % mtiles + 1 : mtiles;
            segs.push_back({st, m0, m1, n, lay.start(m1 - 1) + 16 - lay.start(m0) + halo});
            n += segs.back().len;
        }
        phase_buf.resize(size_t(s) * s * n * pb);
        for (const Segment& g : segs)
            expand_range(a, g.st, lay.start(g.m0), g.len, phase_buf.data() + g.base * pb, n * pb);
        memory_barrier();  // the expansion's stores, then the tile loads
        XN_CYCLES_LAP(expand);
        pl.ph = Phases{phase_buf.data(), strip_w, lanes, n, pb};
        for (int ky = 0, t = 0; ky < op.k; ++ky)
            for (int kx = 0; kx < op.k; ++kx)
                for (int p = 0; p < P; ++p) pl.step_a[t++] = pl.ph.tap(ky, kx, p, s);
        for (int i = 0; i < T; ++i) {
            const Segment& g = segs[(t0 + i) / mtiles - st0];
            at[i] = (g.base + lay.start((t0 + i) % mtiles) - lay.start(g.m0)) * pb;
        }
        // Pairs of output blocks in 2x2 blocks (measured 5-7% faster on the whole network than
        // group<4> alone, docs/engine.md), in step_passes passes; an odd last block by group<T>.
        int ob = 0;
        for (; ob + 1 < blocks16; ob += 2)
            for (int h = 0; h < passes; ++h) {
                const int s0 = steps * h / passes, s1 = steps * (h + 1) / passes;  // >= 1 step each
                int i = 0;
                for (; i + 1 < T; i += 2) block<2, 2>(pl, at[i], at[i + 1], i, ob, s0, s1, h > 0);
                if (i < T) block<1, 2>(pl, at[i], 0, i, ob, s0, s1, h > 0);
            }
        for (; ob < blocks16; ++ob)
            for (int i = 0; i < T; i += kGroup) switch (std::min(kGroup, T - i)) {
                    case 4: group<4>(pl, &at[i], i, ob); break;
                    case 3: group<3>(pl, &at[i], i, ob); break;
                    case 2: group<2>(pl, &at[i], i, ob); break;
                    default: group<1>(pl, &at[i], i, ob); break;
                }
        memory_barrier();  // the tile stores of D, then the epilogue's loads
        XN_CYCLES_LAP(tiles);
        // The group's pixels by runs of tiles whose positions follow each other in one strip (D
        // is contiguous across tiles), row piece by row piece, so a row's interior pixels go in
        // one run: a few divisions per row instead of two per pixel.
        for (int i = 0; i < T;) {
            const int st = (t0 + i) / mtiles, m = (t0 + i) % mtiles;
            int j = i + 1;
            while (j < T && (t0 + j) / mtiles == st && lay.start(m + j - i) == lay.start(m) + size_t(16) * (j - i)) ++j;
            const size_t q_first = lay.start(m), q_end = q_first + size_t(16) * (j - i);
            for (size_t q = q_first; q < q_end;) {
                const int y = int(q / strip_w), pos = int(q - size_t(y) * strip_w);
                const int n = int(std::min<size_t>(q_end - q, strip_w - pos));  // this row's positions here
                const int32_t* dq = pl.d + (size_t(16) * i + (q - q_first)) * pl.d_stride;  // D of position pos
                q += n;
                if (y >= rows) continue;  // the last tile's slack
                for (int lane = 0; lane < lanes; ++lane) {  // columns [x, x_end) of image g
                    const int g = st * lanes + lane, x = lane_column(pos, lane, lanes);
                    const int x_end = std::min(L.out_w, lane_column(pos + n, lane, lanes));
                    if (g >= images || x >= x_end) continue;  // a lane with no image; dropped columns only
                    row_epilogue(g, y, x, x_end, dq + (size_t(x) * lanes + lane - pos) * pl.d_stride,
                                 size_t(lanes) * pl.d_stride);
                }
            }
            i = j;
        }
    }
    XN_CYCLES_LAP(epilogue);
    _tile_release();  // lets the core drop the tile state (cheaper context switches, C-states)
}

static void bconv_block(const Layer& L, const LayerIO& io, int img, int oy0, int oy_end, Scratch& sc) {
    bconv_images(L, io, img, 1, oy0, oy_end, sc);
}

// Where tile products beat the AVX-512 XOR-popcount kernel on this project's VM (measured on the
// whole network, docs/engine.md): up to 128 input channels, stride 1 or 2; and every layer when a
// call has several images. On one image the 256-channel layers of the default trunk (8x8 maps)
// have too few output pixels per weight tile for the int8 weights (8x the bits, 590 KB per
// layer) to pay; four images per call share each weight load (ops 9-10 25-35% faster than the
// XOR kernels then).
static bool tiles_pay(const Op& op, int images) {
    return op.kind == OpKind::BConv && (op.cin <= 128 || images > 1);
}
static bool every_bconv(const Op& op) { return op.kind == OpKind::BConv; }

// The "amx+avx512" implementation: tile products where they pay, the avx512 kernels elsewhere.
static void layer_rows_mixed(const Layer& L, const LayerIO& io, int img, int oy0, int oy_end, Scratch& s) {
    if (L.op->kind == OpKind::BConv && !tiles_pay(*L.op, 1))
        return kernels_avx512.layer_rows(L, io, img, oy0, oy_end, s);
    layer_rows(L, io, img, oy0, oy_end, s);
}

static void layer_images(const Layer& L, const LayerIO& io, int img0, int count, Scratch& s) {
    if (L.op->kind == OpKind::BConv) return bconv_images(L, io, img0, count, 0, L.out_h, s);
    for (int i = 0; i < count; ++i) layer_rows(L, io, img0 + i, 0, L.out_h, s);
}
static void layer_images_mixed(const Layer& L, const LayerIO& io, int img0, int count, Scratch& s) {
    if (tiles_pay(*L.op, count)) return bconv_images(L, io, img0, count, 0, L.out_h, s);
    for (int i = 0; i < count; ++i) layer_rows_mixed(L, io, img0 + i, 0, L.out_h, s);
}
static int pixel_tiles(const Layer& L, int count) {
    if (L.op->kind != OpKind::BConv) return 0;
    const Layout lay = layout_for(L, count, L.out_h);
    return (count + lay.lanes - 1) / lay.lanes * lay.mtiles;
}
static int pixel_tiles_mixed(const Layer& L, int count) {
    return tiles_pay(*L.op, count) ? pixel_tiles(L, count) : 0;
}
// (whatever the count: the executor needs the same answer for every part of a group)
static bool pool_over_input_mixed(const Layer& L, int count) {
    return tiles_pay(*L.op, 1) && pool_over_input(L, count);
}

}  // namespace amx

const Kernels kernels_amx = {amx::layer_rows, amx::pack_row, amx::peak_loop, 4 * 16 * 16 * 64,
                             /*int8_weights=*/amx::every_bconv, /*whole_maps=*/true,
                             amx::layer_images, amx::pool_over_input, amx::pixel_tiles};

const Kernels kernels_amx_mixed = {amx::layer_rows_mixed, amx::pack_row, amx::peak_loop,
                                   4 * 16 * 16 * 64, /*int8_weights=*/amx::every_bconv,
                                   /*whole_maps=*/true, amx::layer_images_mixed,
                                   amx::pool_over_input_mixed, amx::pixel_tiles_mixed};

}  // namespace xnornet
