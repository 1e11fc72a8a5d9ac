// AVX-512 + VPOPCNTDQ kernel. Only this file is compiled with -mavx512f -mavx512vpopcntdq.
// Register blocking: R output pixels x V blocks of 8 output channels = R*V zmm accumulators, each
// lane a 64-bit popcount sum for one (pixel, channel). Each weight vector is loaded once per tap
// and word and reused for R pixels; each activation word is broadcast once and reused V times.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/bconv.h"

namespace xnornet {
namespace avx512 {

// P (words per pixel) is a template parameter when small, so the word loop unrolls away;
// every loop over R and V is fully unrolled so the accumulators live in registers (GCC keeps
// arrays indexed in loops on the stack otherwise).
template <int R, int V, int PW>
static void tile(const BConvRow& a, int ox0, int ob0) {
    const int kk = a.k * a.k, P = PW > 0 ? PW : a.words, step = a.stride * P;
    __m512i acc[R][V];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_si512();
    const uint64_t* wbase = a.w + size_t(ob0) * kk * P * kLanes;
    const size_t wblock = size_t(kk) * P * kLanes;  // distance between output-channel blocks
    for (int ky = 0; ky < a.k; ++ky) {
        const uint64_t* row = a.act + (size_t(a.oy * a.stride + ky) * a.wp + ox0 * a.stride) * P;
        for (int kx = 0; kx < a.k; ++kx) {
            const uint64_t* x = row + kx * P;
            const uint64_t* w = wbase + size_t(ky * a.k + kx) * P * kLanes;
#pragma GCC unroll 4
            for (int p = 0; p < P; ++p) {
                __m512i wv[V];
#pragma GCC unroll 16
                for (int v = 0; v < V; ++v) wv[v] = _mm512_loadu_si512(w + v * wblock + p * kLanes);
#pragma GCC unroll 16
                for (int r = 0; r < R; ++r) {
                    const __m512i xv = _mm512_set1_epi64(static_cast<long long>(x[r * step + p]));
#pragma GCC unroll 16
                    for (int v = 0; v < V; ++v)
                        acc[r][v] = _mm512_add_epi64(acc[r][v], _mm512_popcnt_epi64(_mm512_xor_si512(xv, wv[v])));
                }
            }
        }
    }
    // Locals: a store through a.pop could alias the fields of `a` as far as the compiler knows,
    // which made it reload a.cout_blocks for every one of the R*V stores (measured: ~20% of the
    // tile's time on 64-channel layers).
    int32_t* __restrict pop = a.pop + (size_t(ox0) * a.cout_blocks + ob0) * kLanes;
    const size_t pixel = size_t(a.cout_blocks) * kLanes;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(pop + r * pixel + v * kLanes),
                                _mm512_cvtepi64_epi32(acc[r][v]));
}

template <int PW>
static void bconv_row_p(const BConvRow& a) {
    constexpr int R = 4, V = 4;
    int ob = 0;
    for (; ob + V <= a.cout_blocks; ob += V) {
        int ox = 0;
        for (; ox + R <= a.out_w; ox += R) tile<R, V, PW>(a, ox, ob);
        for (; ox < a.out_w; ++ox) tile<1, V, PW>(a, ox, ob);
    }
    for (; ob < a.cout_blocks; ++ob) {
        int ox = 0;
        for (; ox + R <= a.out_w; ox += R) tile<R, 1, PW>(a, ox, ob);
        for (; ox < a.out_w; ++ox) tile<1, 1, PW>(a, ox, ob);
    }
}

static void bconv_row(const BConvRow& a) {
    switch (a.words) {
        case 1: return bconv_row_p<1>(a);
        case 2: return bconv_row_p<2>(a);
        case 4: return bconv_row_p<4>(a);
        default: return bconv_row_p<0>(a);
    }
}

// Eight named accumulators (not an array, which GCC keeps on the stack around the asm barriers).
static uint64_t peak_loop(uint64_t iters) {
    const __m512i w = _mm512_set1_epi64(0x5555555555555555ll);
#define XN_INIT(i)                                                                              \
    __m512i a##i = _mm512_set1_epi64(static_cast<long long>(0x9E3779B97F4A7C15ull * (i + 1))); \
    __m512i c##i = _mm512_setzero_si512();
#define XN_STEP(i)                                   \
    __asm__ volatile("" : "+v"(a##i)); /* opaque */ \
    c##i = _mm512_add_epi64(c##i, _mm512_popcnt_epi64(_mm512_xor_si512(a##i, w)));
    XN_INIT(0) XN_INIT(1) XN_INIT(2) XN_INIT(3) XN_INIT(4) XN_INIT(5) XN_INIT(6) XN_INIT(7)
    for (uint64_t it = 0; it < iters; ++it) {
        XN_STEP(0) XN_STEP(1) XN_STEP(2) XN_STEP(3) XN_STEP(4) XN_STEP(5) XN_STEP(6) XN_STEP(7)
    }
#undef XN_INIT
#undef XN_STEP
    const __m512i sum = _mm512_add_epi64(_mm512_add_epi64(_mm512_add_epi64(c0, c1), _mm512_add_epi64(c2, c3)),
                                         _mm512_add_epi64(_mm512_add_epi64(c4, c5), _mm512_add_epi64(c6, c7)));
    return static_cast<uint64_t>(_mm512_reduce_add_epi64(sum));
}

#include "kernels/layer_rows.inc"

}  // namespace avx512

const Kernels kernels_avx512 = {avx512::layer_rows, avx512::pack_row,
                                avx512::peak_loop, 8 * 512};

}  // namespace xnornet
