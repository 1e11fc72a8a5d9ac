// AVX2 kernel. Only this file is compiled with -mavx2. AVX2 has no vector popcount, so bytes are
// counted with a 4-bit lookup table (vpshufb) and summed into 64-bit lanes with vpsadbw.
// Blocking: R pixels x one block of 8 output channels (two ymm of 4 lanes each).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/bconv.h"

namespace xnornet {
namespace avx2 {

static inline __m256i popcnt64(__m256i v) {  // per 64-bit lane
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low));
    const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    return _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256());
}

// Loops over R are fully unrolled so the accumulators stay in registers; P is a template
// parameter when small, so the word loop unrolls away.
template <int R, int PW>
static void tile(const BConvRow& a, int ox0, int ob) {
    const int kk = a.k * a.k, P = PW > 0 ? PW : a.words, step = a.stride * P;
    __m256i acc[R][2];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int ky = 0; ky < a.k; ++ky) {
        const uint64_t* row = a.act + (size_t(a.oy * a.stride + ky) * a.wp + ox0 * a.stride) * P;
        for (int kx = 0; kx < a.k; ++kx) {
            const uint64_t* x = row + kx * P;
            const uint64_t* wp = a.w + (size_t(ob * kk + ky * a.k + kx) * P) * kLanes;
#pragma GCC unroll 4
            for (int p = 0; p < P; ++p) {
                const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + p * kLanes));
                const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + p * kLanes + 4));
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r) {
                    const __m256i xv = _mm256_set1_epi64x(static_cast<long long>(x[r * step + p]));
                    acc[r][0] = _mm256_add_epi64(acc[r][0], popcnt64(_mm256_xor_si256(xv, w0)));
                    acc[r][1] = _mm256_add_epi64(acc[r][1], popcnt64(_mm256_xor_si256(xv, w1)));
                }
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
        int32_t* out = a.pop + (size_t(ox0 + r) * a.cout_blocks + ob) * kLanes;
        // 64-bit lane sums fit in 32 bits: pick the low halves of both vectors.
        const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        const __m128i lo = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(acc[r][0], idx));
        const __m128i hi = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(acc[r][1], idx));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out), lo);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 4), hi);
    }
}

template <int PW>
static void bconv_row_p(const BConvRow& a) {
    constexpr int R = 4;
    for (int ob = 0; ob < a.cout_blocks; ++ob) {
        int ox = 0;
        for (; ox + R <= a.out_w; ox += R) tile<R, PW>(a, ox, ob);
        for (; ox < a.out_w; ++ox) tile<1, PW>(a, ox, ob);
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
    const __m256i w = _mm256_set1_epi64x(0x5555555555555555ll);
#define XN_INIT(i)                                                                                 \
    __m256i a##i = _mm256_set1_epi64x(static_cast<long long>(0x9E3779B97F4A7C15ull * (i + 1)));   \
    __m256i c##i = _mm256_setzero_si256();
#define XN_STEP(i)                                   \
    __asm__ volatile("" : "+x"(a##i)); /* opaque */ \
    c##i = _mm256_add_epi64(c##i, popcnt64(_mm256_xor_si256(a##i, w)));
    XN_INIT(0) XN_INIT(1) XN_INIT(2) XN_INIT(3) XN_INIT(4) XN_INIT(5) XN_INIT(6) XN_INIT(7)
    for (uint64_t it = 0; it < iters; ++it) {
        XN_STEP(0) XN_STEP(1) XN_STEP(2) XN_STEP(3) XN_STEP(4) XN_STEP(5) XN_STEP(6) XN_STEP(7)
    }
#undef XN_INIT
#undef XN_STEP
    const __m256i sum = _mm256_add_epi64(_mm256_add_epi64(_mm256_add_epi64(c0, c1), _mm256_add_epi64(c2, c3)),
                                         _mm256_add_epi64(_mm256_add_epi64(c4, c5), _mm256_add_epi64(c6, c7)));
    alignas(32) uint64_t lanes[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sum);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

#include "kernels/layer_rows.inc"

}  // namespace avx2

const Kernels kernels_avx2 = {avx2::layer_rows, avx2::pack_row, avx2::peak_loop,
                              8 * 256};

}  // namespace xnornet
