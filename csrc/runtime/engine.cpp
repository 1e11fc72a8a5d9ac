#include "runtime/engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <stdexcept>

#include "kernels/bconv.h"

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_thread_num() { return 0; }
inline int omp_get_max_threads() { return 1; }
#endif

namespace xnornet {

namespace {

// GNU OpenMP's thread pool does not survive fork(): in a child whose parent had run a parallel
// region on several threads, the next such region waits forever for threads that are gone. So
// once a run has used several threads, a forked child runs every engine on one thread (PyTorch
// does the same for its own pool); `spawn` children start afresh and keep their threads.
std::atomic<bool> pool_started{false}, forked_serial{false};
#if defined(__unix__) || defined(__APPLE__)
const int fork_hook = pthread_atfork(nullptr, nullptr, [] {
    if (pool_started.load()) forked_serial.store(true);
});
#endif

constexpr int kMaxThreads = 1024;  // beyond this OpenMP runtimes fail; far past any real CPU
// Images per image-major group for kernels with layer_images. 4 against 1 (one image at a time):
// the whole network 10-14% faster with amx+avx512 (docs/engine.md); 2, 3 and 6 no better.
constexpr int kImagesPerCall = 4;
// Groups only for images whose largest map is at most this many floats (1 MB; CIFAR's 32x32x64
// is 256 KB): larger maps already give each weight load many pixels, and a group's buffers grow
// with it.
constexpr size_t kGroupImageFloats = size_t(1) << 18;

// Whether groups of g images (dealt out in turn) give no thread more images than single images
// would.
bool balanced(int n, int g, int threads) {
    const int even = (n + threads - 1) / threads;  // the most images per thread, one at a time
    const int groups = (n + g - 1) / g, ragged = n % g;
    int most = 0;
    for (int t = 0; t < std::min(threads, groups); ++t) {
        int images = ((groups - 1 - t) / threads + 1) * g;
        if (ragged && (groups - 1) % threads == t) images -= g - ragged;
        most = std::max(most, images);
    }
    return most <= even;
}

// Images per group: the largest, up to kImagesPerCall, that is balanced (16 images on 3
// threads: groups of 3, at most 6 images per thread; 5 on 4: groups of 2).
int group_size(int n, int threads) {
    for (int g = std::min(kImagesPerCall, n); g > 1; --g)
        if (balanced(n, g, threads)) return g;
    return 1;
}

// Output size of a conv; 0 when the kernel does not fit the padded input even once.
int out_size(int in, int k, int stride, int pad) {
    return in + 2 * pad < k ? 0 : (in + 2 * pad - k) / stride + 1;
}
bool is_compute(const Op& op) { return op.kind != OpKind::Input; }

// Into how many parts (layer_rows calls) a map of out_h rows goes: one per row, or for kernels
// that run whole maps as few as keep `threads` threads busy on n images.
int row_parts(const Kernels& K, int out_h, int n, int threads) {
    return K.whole_maps ? std::min(out_h, (threads + n - 1) / n) : out_h;
}
// First row of part `part` of `parts`: balanced, part sizes differ by at most one row.
int part_start(int part, int parts, int out_h) { return int(int64_t(part) * out_h / parts); }

// Per channel, the smallest float t with y * s + b >= 0 for every y >= t and for no y < t
// (Prepared::sign_from), so that an epilogue may pack the sign with one comparison; or none
// (empty) unless every s and |b| lies in [2^-20, 2^20]. Why it holds: with s > 0 the product
// y * s, then the sum, each rounded to nearest, never decrease as y grows, so the floats whose
// sign is + form an interval up to +inf, and a binary search over the floats in order finds its
// start. The range keeps it true whatever the denormal flags: a denormal y, or y * s, adds less
// than half an ulp of b (flushed to 0 or not, the sum rounds to b), and t (about -b / s) is
// itself a normal float or 0.
static aligned_vector<float> sign_thresholds(const float* s, const float* b, int n) {
    auto key = [](float f) {  // the floats in order as unsigned integers (-0 just below +0)
        uint32_t u;
        std::memcpy(&u, &f, 4);
        return u & 0x80000000u ? ~u : u | 0x80000000u;
    };
    auto value = [](uint32_t k) {
        const uint32_t u = k & 0x80000000u ? k & 0x7fffffffu : ~k;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    };
    const float small = 0x1p-20f, large = 0x1p20f;
    aligned_vector<float> t(n);
    for (int c = 0; c < n; ++c) {
        const float sc = s[c], bc = b[c];
        if (!(sc >= small && sc <= large && std::fabs(bc) >= small && std::fabs(bc) <= large)) return {};
        // as the kernels compute it: a product, then a sum (no contraction: -ffp-contract=off)
        auto positive = [&](float y) {
            const float p = y * sc;
            return p + bc >= 0.f;
        };
        uint32_t lo = key(-INFINITY), hi = key(INFINITY);  // positive(lo) false, positive(hi) true
        while (hi - lo > 1) {
            const uint32_t mid = lo + (hi - lo) / 2;
            (positive(value(mid)) ? hi : lo) = mid;
        }
        t[c] = value(hi);
    }
    return t;
}

std::unique_ptr<Prepared> prepare(const Op& op, bool int8_weights) {
    auto p = std::make_unique<Prepared>();
    const int kk = op.k * op.k;
    if (op.kind == OpKind::ConvFP) {
        const float* w = op.tensors[0].f32();  // [cout][k][k][cin] -> [k*k*cin][cout]
        const size_t K = size_t(kk) * op.cin;
        p->fp_weight.resize(K * op.cout);
        for (int o = 0; o < op.cout; ++o)
            for (size_t j = 0; j < K; ++j) p->fp_weight[j * op.cout + o] = w[o * K + j];
    } else if (op.kind == OpKind::BConv) {
        const int P = (op.cin + 63) / 64;
        const uint64_t* w = op.tensors[2].u64();  // [cout][k][k][P]
        p->words = P;
        p->cout_blocks = (op.cout + kLanes - 1) / kLanes;
        p->bin_weight.assign(size_t(p->cout_blocks) * kk * P * kLanes, 0);
        p->tap_popcount.assign(size_t(op.cout) * kk, 0);
        for (int o = 0; o < op.cout; ++o)
            for (int t = 0; t < kk; ++t)
                for (int q = 0; q < P; ++q) {
                    const uint64_t word = w[(size_t(o) * kk + t) * P + q];
                    p->bin_weight[((size_t(o / kLanes) * kk + t) * P + q) * kLanes + o % kLanes] = word;
                    p->tap_popcount[size_t(o) * kk + t] += __builtin_popcountll(word);
                }
        if (int8_weights) {
            const int blocks16 = (p->cout_blocks * kLanes + 15) / 16;
            p->amx_weight.assign(size_t(blocks16) * kk * P * 1024, 0);
            for (int o = 0; o < op.cout; ++o)
                for (int t = 0; t < kk; ++t)
                    for (int c = 0; c < op.cin; ++c) {
                        const int q = c / 64, j = c % 64;  // word, bit; VNNI row j/4, byte j%4
                        const bool plus = w[(size_t(o) * kk + t) * P + q] >> j & 1;
                        p->amx_weight[((size_t(o / 16) * kk + t) * P + q) * 1024 + (j / 4) * 64 +
                                      (o % 16) * 4 + j % 4] = plus ? 2 : -2;  // 2w
                    }
            // The tile kernel's activations are 0/1 bytes and its weights +-2 (bconv_amx.cpp): it
            // needs each output's sum of +-1 weights (bits past cin are 0, which the model file
            // check guarantees).
            p->amx_wsum.assign(size_t(blocks16) * 16, 0);
            for (int o = 0; o < op.cout; ++o)
                for (int t = 0; t < kk; ++t)
                    p->amx_wsum[o] += 2 * p->tap_popcount[size_t(o) * kk + t] - op.cin;
            // for the tile kernels' fused epilogues: the layer before packs this one's input
            p->sign_from = sign_thresholds(op.tensors[0].f32(), op.tensors[1].f32(), op.cin);
        }
    }
    return p;
}

// Which taps of a k-wide window fall outside [0, size) for each output position: a bitmask.
std::vector<int> border_masks(int out, int in, int k, int stride, int pad) {
    std::vector<int> m(out, 0);
    for (int o = 0; o < out; ++o)
        for (int t = 0; t < k; ++t) {
            const int i = o * stride - pad + t;
            if (i < 0 || i >= in) m[o] |= 1 << t;
        }
    return m;
}

void build_border_table(Layer& L) {
    const Op& op = *L.op;
    const int kk = op.k * op.k;
    auto rows = border_masks(L.out_h, L.in_h, op.k, op.stride, op.pad);
    auto cols = border_masks(L.out_w, L.in_w, op.k, op.stride, op.pad);
    std::map<int, int> rid, cid;
    for (int m : rows) rid.emplace(m, int(rid.size()));
    for (int m : cols) cid.emplace(m, int(cid.size()));
    for (int m : rows) L.row_class.push_back(rid[m]);
    for (int m : cols) L.col_class.push_back(cid[m]);
    L.col_classes = int(cid.size());
    for (int m : rows) L.row_interior.push_back(m == 0);
    const auto first = std::find(cols.begin(), cols.end(), 0);
    const auto last = std::find_if(first, cols.end(), [](int m) { return m != 0; });
    if (std::all_of(last, cols.end(), [](int m) { return m != 0; }))  // one run of interior columns
        L.interior_x0 = int(first - cols.begin()), L.interior_x1 = int(last - cols.begin());
    const size_t classes = rid.size() * cid.size();
    L.valid_taps.assign(classes, 0);
    L.invalid_popcount.assign(classes * op.cout, 0);
    for (auto [rm, ri] : rid)
        for (auto [cm, ci] : cid) {
            const size_t cls = size_t(ri) * cid.size() + ci;
            for (int t = 0; t < kk; ++t) {
                if (!((rm >> (t / op.k) & 1) || (cm >> (t % op.k) & 1))) {
                    L.valid_taps[cls]++;
                    continue;
                }
                for (int o = 0; o < op.cout; ++o)
                    L.invalid_popcount[cls * op.cout + o] += L.prep->tap_popcount[size_t(o) * kk + t];
            }
        }
}

#if defined(__x86_64__) && defined(__GNUC__)
// Built twice, picked once per process by the CPU: the channel loops in 512-bit vectors where
// there are, SSE2 elsewhere; the same floats either way (each channel and class sums in order,
// and the module does not contract multiply-adds).
__attribute__((target_clones("avx512f", "default")))
#endif
void head(const Layer& L, const float* in, int n, float* out) {
    const Op& op = *L.op;
    const int C = op.cin, K = op.cout, HW = L.in_h * L.in_w;
    const float* s = op.tensors[0].f32();
    const float* b = op.tensors[1].f32();
    const float* fw = op.tensors[2].f32();
    const float* fb = op.tensors[3].f32();
    std::vector<float> z(C, 0.f);
    for (int i = 0; i < HW; ++i) {
        const float* x = L.in_at(in, n, i / L.in_w, i % L.in_w);
        for (int c = 0; c < C; ++c) z[c] += std::max(x[c] * s[c] + b[c], 0.f);
    }
    for (int c = 0; c < C; ++c) z[c] /= float(HW);
    // All K sums advance together, each over c in order: the same floats as one class after
    // another, without waiting on one add chain at a time.
    std::vector<float> acc(K, 0.f);
    for (int c = 0; c < C; ++c)
        for (int k = 0; k < K; ++k) acc[k] += fw[size_t(k) * C + c] * z[c];
    for (int k = 0; k < K; ++k) out[size_t(n) * K + k] = acc[k] + fb[k];
}

}  // namespace

struct Engine::Buffers {
    aligned_vector<float> act[2];      // float activations, per image slot NHWC, rows Layer::in_pitch apart (ping-pong)
    aligned_vector<uint64_t> bits[2];  // packed activations, per image slot [H+2p][W+2p][P] (ping-pong)
};

// Per input shape: the planned layers and every buffer a run needs, allocated once.
// Batches of at least `threads` images run image-major: each thread takes whole images (one, or
// a group of a few for kernels with layer_images) through the whole graph in its own small
// buffers, which stay in its cache. Smaller batches run
// row-major: all threads share each layer's rows, in buffers for the whole batch.
struct Engine::Workspace {
    int n, h, w;
    bool image_major;
    int group = 1;                  // image-major: images per buffer set
    int call = 1;                   // image-major: images per layer call before `split`
    size_t split = 0;               // layers from here take the whole group in one call (none: size)
    std::vector<Layer> layers;
    std::vector<Buffers> buffers;   // one per thread (image-major) or one for the batch
    aligned_vector<int32_t> pop;    // per thread: popcount row
    aligned_vector<float> row;      // per thread: output row + float conv patches
    size_t pop_stride = 0, row_stride = 0;
};

Engine::Engine(Model model, int threads, const std::string& isa)
    : model_(std::move(model)), impl_(&select_implementation(isa)),
      threads_(std::min(threads > 0 ? threads : omp_get_max_threads(), kMaxThreads)) {
    const Kernels& K = *impl_->kernels;
    for (const Op& op : model_.ops) prepared_.push_back(prepare(op, K.int8_weights && K.int8_weights(op)));
}

Engine::~Engine() = default;

int Engine::threads() const { return forked_serial.load() ? 1 : threads_; }

bool forked_serial_engines() { return forked_serial.load(); }

int Engine::input_channels() const {
    for (const Op& op : model_.ops)
        if (is_compute(op)) return op.cin;
    return model_.ops.front().cin;
}

bool Engine::has_input_normalization() const { return model_.ops.front().kind == OpKind::Input; }

namespace {
void check_dims(int n, int h, int w) {
    if (n < 1 || h < 1 || w < 1)
        throw std::invalid_argument("need at least one image of at least 1x1 pixels");
}

// Kernels index one image's maps (and the executor a batch's rows) with int: every such count
// (per image; batch offsets are size_t) must stay far below 2^31, or the index arithmetic would wrap. Checked for every layer here,
// before any buffer is sized, so an absurd input is a clear error and never an overrun.
void check_fits_int(int64_t count, int h, int w) {
    if (count > (int64_t(1) << 30))
        throw std::invalid_argument("input of " + std::to_string(h) + "x" + std::to_string(w) +
                                    " is too large for this model (split the batch or the image)");
}
}  // namespace

std::vector<int64_t> Engine::output_shape(int n, int h, int w) const {
    check_dims(n, h, w);
    const int h0 = h, w0 = w;
    int c = input_channels();
    check_fits_int(int64_t(h) * w * c, h0, w0);
    for (const Op& op : model_.ops) {
        if (op.kind == OpKind::Head) return {n, op.cout};
        if (!is_compute(op)) continue;
        // padded input (bits are 64 channels per word: at most 64x fewer than floats)
        const int64_t wide = std::max({op.cin, op.cout, 64});
        check_fits_int((int64_t(h) + 2 * op.pad) * (int64_t(w) + 2 * op.pad) * wide, h0, w0);
        if (int64_t(n) * (int64_t(h) + 2 * op.pad) > (int64_t(1) << 30))
            throw std::invalid_argument("a batch of " + std::to_string(n) +
                                        " images is too large for one call: split it");
        h = out_size(h, op.k, op.stride, op.pad);
        w = out_size(w, op.k, op.stride, op.pad);
        c = op.cout;
        if (h < 1 || w < 1) throw std::invalid_argument("input is too small for this model");
        check_fits_int(int64_t(h) * w * std::max(c, 64), h0, w0);
    }
    return {n, c, h, w};
}

Engine::Workspace* Engine::acquire(int n, int h, int w) {
    {
        std::lock_guard<std::mutex> lock(pool_mutex_);
        for (auto it = pool_.begin(); it != pool_.end(); ++it)
            if ((*it)->n == n && (*it)->h == h && (*it)->w == w) {
                Workspace* ws = it->release();
                pool_.erase(it);
                return ws;
            }
    }
    auto ws = std::make_unique<Workspace>();
    ws->n = n, ws->h = h, ws->w = w;
    const std::string size = std::to_string(h) + "x" + std::to_string(w);
    size_t max_act = size_t(n) * h * w * input_channels(), max_bits = 0, max_pop = 0, max_row = 0;
    std::vector<size_t> compute;
    for (size_t i = 0; i < model_.ops.size(); ++i)
        if (is_compute(model_.ops[i])) compute.push_back(i);
    int ch = h, cw = w;
    for (size_t j = 0; j < compute.size(); ++j) {
        const Op& op = model_.ops[compute[j]];
        Layer L{&op, prepared_[compute[j]].get(), ch, cw, 1, 1, false, nullptr, nullptr, {}, {}, 0, {}, {}};
        if (op.kind == OpKind::BConv) {  // the first binary conv's input is packed before it
            const size_t words = (op.cin + 63) / 64;
            max_bits = std::max(max_bits, size_t(n) * (ch + 2 * op.pad) * (cw + 2 * op.pad) * words);
        }
        if (op.kind != OpKind::Head) {
            L.out_h = out_size(ch, op.k, op.stride, op.pad);
            L.out_w = out_size(cw, op.k, op.stride, op.pad);
            if (L.out_h < 1 || L.out_w < 1)
                throw std::invalid_argument("input of " + size + " is too small for this model");
            if (op.residual == Residual::Downsample &&
                (ch % op.stride || cw % op.stride || L.out_h != ch / op.stride || L.out_w != cw / op.stride))
                throw std::invalid_argument("input size " + size +
                                            " does not divide evenly through this model's strides");
        }
        const Op* next = j + 1 < compute.size() ? &model_.ops[compute[j + 1]] : nullptr;
        L.float_out = !next || next->kind != OpKind::BConv || next->residual != Residual::None;
        L.next_bconv = next && next->kind == OpKind::BConv ? next : nullptr;
        if (L.next_bconv) L.next_prep = prepared_[compute[j + 1]].get();
        if (op.kind == OpKind::BConv) {
            build_border_table(L);
            max_pop = std::max(max_pop, size_t(L.out_w) * L.prep->cout_blocks * kLanes);
        }
        if (op.kind != OpKind::Head) {
            max_act = std::max(max_act, size_t(n) * L.out_h * L.out_w * op.cout);
            // output row, kPatchPixels patches, and a float conv's zero-padded input rows (fill_band)
            const size_t band = op.kind == OpKind::ConvFP ? size_t(op.k) * (L.in_w + 2 * op.pad) * op.cin : 0;
            max_row = std::max(max_row, size_t(L.out_w) * op.cout + size_t(kPatchPixels) * op.k * op.k * op.cin + band);
            ch = L.out_h, cw = L.out_w;
        }
        ws->layers.push_back(std::move(L));
    }
    const int threads = this->threads();
    ws->image_major = n >= threads;
    // Kernels that take several images per call (tile products: each weight load serves them
    // all) get groups of a few images per thread.
    const Kernels& K = *impl_->kernels;
    ws->group = ws->image_major && K.layer_images && max_act / n <= kGroupImageFloats
                    ? group_size(n, threads) : 1;
    // The late layers (input maps at most a quarter of the largest: little data per image, the
    // largest weights) take twice as many images per call, so that each pass over their weights
    // serves twice the images; the layers before them still take `call` images at a time, one
    // part of the group after the other, each image in its own slot (ops 9-10 ~5% faster). Only
    // where the doubled groups stay balanced over the threads.
    ws->call = ws->group;
    ws->split = ws->layers.size();
    if (ws->group > 1 && n >= 2 * ws->group * threads && balanced(n, 2 * ws->group, threads)) {
        for (size_t j = 1; j < ws->layers.size(); ++j) {
            const Layer& L = ws->layers[j];
            if (L.op->kind == OpKind::BConv && size_t(4) * L.in_h * L.in_w * L.op->cin <= max_act / n) {
                ws->split = j;
                ws->group *= 2;
                break;
            }
        }
    }
    const size_t group = ws->image_major ? ws->group : n;  // images per buffer set
    // each image's slot in the buffers (Layer::act_image), on cache lines
    const size_t act_slot = (max_act / n + 15) / 16 * 16, bits_slot = (max_bits / n + 7) / 8 * 8;
    for (Layer& L : ws->layers) L.act_image = act_slot, L.bits_image = bits_slot;
    // Row pitches of the float maps (Layer::in_pitch): the input dense; a layer's output over its
    // input (writes_over_input, decided here once for run_graph and plan: Layer::in_place) keeps
    // the input's pitch for an identity shortcut and takes stride times it for a downsampling
    // layer (each output pixel over the first row of its window); other outputs dense, in the
    // other buffer.
    size_t pitch = size_t(w) * input_channels();
    for (Layer& L : ws->layers) {
        L.in_pitch = pitch;
        if (L.op->kind == OpKind::Head) break;
        const bool over = L.in_place = writes_over_input(L, n, !ws->image_major);
        L.out_pitch = !over ? size_t(L.out_w) * L.op->cout
                      : L.op->residual == Residual::Identity ? pitch : size_t(L.op->stride) * pitch;
        // (an output over its input stays inside the input map: in = stride * out on each side)
        if (size_t(L.out_h - 1) * L.out_pitch + size_t(L.out_w) * L.op->cout > act_slot)
            throw std::logic_error("a float map past its image's slot");
        pitch = L.out_pitch;
    }
    ws->buffers.resize(ws->image_major ? threads : 1);
    for (Buffers& b : ws->buffers) {
        for (auto& a : b.act) a.assign(act_slot * group, 0.f);
        for (auto& bb : b.bits) bb.assign(bits_slot * group, 0);
    }
    // each thread's slice on its own cache lines (aligned loads, no false sharing)
    ws->pop_stride = (max_pop + 15) / 16 * 16, ws->row_stride = (max_row + 15) / 16 * 16;
    ws->pop.assign(ws->pop_stride * threads, 0);
    ws->row.assign(ws->row_stride * threads, 0.f);
    return ws.release();
}

void Engine::release(Workspace* ws) {
    std::unique_ptr<Workspace> owned(ws);
    std::lock_guard<std::mutex> lock(pool_mutex_);
    if (pool_.size() < 4) pool_.push_back(std::move(owned));  // else freed here
}

void Engine::record_profile(std::vector<double> times) {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    profile_ = std::move(times);
}

std::vector<double> Engine::last_profile() {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    return profile_;
}

namespace {
using WorkspaceGuard = std::unique_ptr<Engine::Workspace, std::function<void(Engine::Workspace*)>>;
}

// A binary conv with an identity shortcut writes y over x: only its own pixel's x is read (the
// conv reads the packed bits), and one float map less streams through the cache. A downsampling
// layer does too where its kernel reads each window first (Kernels::pool_over_input).
bool Engine::writes_over_input(const Layer& L, int n, bool parallel) const {
    if (!L.float_out || L.op->kind != OpKind::BConv) return false;
    if (L.op->residual == Residual::Identity) return true;
    const Kernels& K = *impl_->kernels;
    return !parallel && K.layer_images && K.pool_over_input && K.pool_over_input(L, n);
}

std::vector<Engine::Step> Engine::plan(int n, int h, int w) {
    output_shape(n, h, w);  // sizes checked
    WorkspaceGuard ws(acquire(n, h, w), [this](Workspace* p) { release(p); });
    const Kernels& K = *impl_->kernels;
    std::vector<Step> steps;
    for (size_t li = 0; li < ws->layers.size(); ++li) {
        const Layer& L = ws->layers[li];
        const int images = !ws->image_major ? 0 : li < ws->split ? ws->call : ws->group;
        const int tiles = images && K.pixel_tiles ? K.pixel_tiles(L, images) : 0;
        steps.push_back({images, L.in_place, tiles});
    }
    return steps;
}

void Engine::run_graph(Workspace& ws, Buffers& buf, int n, int first_img, float* out,
                       bool parallel, std::vector<double>* times, size_t l0, size_t l1, int img0,
                       int state[2]) {
    using clock = std::chrono::steady_clock;
    const Kernels& K = *impl_->kernels;
    const int threads = parallel ? this->threads() : 1;
    auto mark = clock::now();
    auto lap = [&](size_t i) {
        if (!times) return;
        const auto now = clock::now();
        (*times)[i] += std::chrono::duration<double>(now - mark).count();
        mark = now;
    };
    auto scratch = [&](int t) {
        return Scratch{ws.pop.data() + size_t(t) * ws.pop_stride, ws.row.data() + size_t(t) * ws.row_stride};
    };
    const int me = omp_get_thread_num();  // the scratch slot of a serial (image-major) caller
    int fa = state[0], ba = state[1];  // which float / bits buffer holds the current input
    const Layer& first = ws.layers.front();
    l1 = std::min(l1, ws.layers.size());
    if (l0 == 0 && first.op->kind == OpKind::BConv) {
        // No op before the first binary conv: pack the input here, as an epilogue would.
        const int C = first.op->cin;
#pragma omp parallel for schedule(static) num_threads(threads) if (parallel)
        for (int r = 0; r < n * first.in_h; ++r) {
            const int img = img0 + r / first.in_h, yy = r % first.in_h;
            K.pack_row(first.in_at(buf.act[0].data(), img, yy, 0), C, first.in_h,
                       first.in_w, *first.op, buf.bits[0].data() + img * first.bits_image, yy);
        }
    }
    for (size_t li = l0; li < l1; ++li) {
        const Layer& L = ws.layers[li];
        const float* in = buf.act[fa].data();
        if (L.op->kind == OpKind::Head) {
#pragma omp parallel for schedule(static) num_threads(threads) if (parallel)
            for (int i = img0; i < img0 + n; ++i) head(L, in, i, out + size_t(first_img) * L.op->cout);
            lap(li);
            return;
        }
        const bool over_input = L.float_out && L.op->kind == OpKind::BConv &&
                                L.op->residual == Residual::Identity;
        const bool in_place = L.in_place;  // decided with the pitches (acquire)
        float* const act_out = !L.float_out ? nullptr : in_place ? buf.act[fa].data() : buf.act[1 - fa].data();
        const LayerIO io{in, buf.bits[ba].data(), act_out, L.next_bconv ? buf.bits[1 - ba].data() : nullptr,
                         over_input};
        if (!parallel && K.layer_images) {  // an image-major group: its n images in one call
            Scratch s = scratch(me);
            K.layer_images(L, io, img0, n, s);
        } else {
            const int parts = row_parts(K, L.out_h, n, threads);
#pragma omp parallel for schedule(static) num_threads(threads) if (parallel)
            for (int r = 0; r < n * parts; ++r) {
                Scratch s = scratch(parallel ? omp_get_thread_num() : me);
                const int part = r % parts;
                K.layer_rows(L, io, r / parts, part_start(part, parts, L.out_h),
                             part_start(part + 1, parts, L.out_h), s);
            }
        }
        if (!in_place) fa = 1 - fa;
        if (L.next_bconv) ba = 1 - ba;
        lap(li);
    }
    state[0] = fa, state[1] = ba;
    if (l1 < ws.layers.size()) return;
    // No head: the last feature map, as NCHW.
    const Layer& last = ws.layers.back();
    const int C = last.op->cout, HW = last.out_h * last.out_w;
    const float* a = buf.act[fa].data();
    for (int i = img0; i < img0 + n; ++i)
        for (int p = 0; p < HW; ++p) {
            const float* x = last.out_at(a, i, p / last.out_w, p % last.out_w);
            for (int c = 0; c < C; ++c) out[(size_t(first_img + i) * C + c) * HW + p] = x[c];
        }
}

void Engine::execute(Workspace& ws, const std::function<void(float*, int)>& fill, float* out) {
    const bool profiling = profiling_.load();  // read once: another thread may flip it
    std::vector<double> times(profiling ? ws.layers.size() : 0, 0.0);
    std::vector<double>* t = profiling ? &times : nullptr;
    const size_t image_floats = ws.layers.front().act_image;  // each image's slot
    const int threads = this->threads();
    if (threads > 1) pool_started.store(true);
    if (ws.image_major) {
        const int G = ws.group, groups = (ws.n + G - 1) / G;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
        for (int g = 0; g < groups; ++g) {
            const int me = omp_get_thread_num();
            Buffers& buf = ws.buffers[me];
            const int first = g * G, count = std::min(G, ws.n - first);
            for (int i = 0; i < count; ++i) fill(buf.act[0].data() + i * image_floats, first + i);
            std::vector<double>* mine = me == 0 ? t : nullptr;  // thread 0's share
            int state[2] = {0, 0};
            if (count > ws.call && ws.split < ws.layers.size()) {
                int part[2] = {0, 0};  // every part ends in the same buffers
                for (int i0 = 0; i0 < count; i0 += ws.call) {
                    part[0] = part[1] = 0;
                    run_graph(ws, buf, std::min(ws.call, count - i0), first, out, false, mine, 0, ws.split, i0,
                              part);
                }
                state[0] = part[0], state[1] = part[1];
                run_graph(ws, buf, count, first, out, false, mine, ws.split, ws.layers.size(), 0, state);
            } else {
                run_graph(ws, buf, count, first, out, false, mine, 0, ws.layers.size(), 0, state);
            }
        }
    } else {
        Buffers& buf = ws.buffers[0];
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int img = 0; img < ws.n; ++img) fill(buf.act[0].data() + img * image_floats, img);
        int state[2] = {0, 0};
        run_graph(ws, buf, ws.n, 0, out, true, t, 0, ws.layers.size(), 0, state);
    }
    if (t) record_profile(std::move(times));
}

void Engine::run_u8_nhwc(const uint8_t* x, int n, int h, int w, int c, float* out) {
    output_shape(n, h, w);  // sizes checked
    if (!has_input_normalization())
        throw std::invalid_argument("this model has no input normalization: pass float32 NCHW");
    const Op& in = model_.ops.front();
    if (c != in.cin) throw std::invalid_argument("expected " + std::to_string(in.cin) + " channels");
    WorkspaceGuard ws(acquire(n, h, w), [this](Workspace* p) { release(p); });
    const float* mean = in.tensors[0].f32();
    const float* stdv = in.tensors[1].f32();
    // Every normalized value, (v / 255 - mean) / std per channel and byte, looked up instead of
    // computed per pixel (two divisions each): the same floats, a quarter of the time.
    std::vector<float> table(size_t(c) * 256);
    for (int ch = 0; ch < c; ++ch)
        for (int v = 0; v < 256; ++v) table[size_t(v) * c + ch] = (float(v) / 255.f - mean[ch]) / stdv[ch];
    const size_t pixels = size_t(h) * w;
    execute(*ws, [&](float* dst, int img) {
        const uint8_t* src = x + size_t(img) * pixels * c;
        for (size_t i = 0; i < pixels * c; i += c)
            for (int ch = 0; ch < c; ++ch) dst[i + ch] = table[size_t(src[i + ch]) * c + ch];
    }, out);
}

void Engine::run_f32_nchw(const float* x, int n, int c, int h, int w, float* out) {
    output_shape(n, h, w);  // sizes checked
    if (c != input_channels())
        throw std::invalid_argument("expected " + std::to_string(input_channels()) + " channels");
    WorkspaceGuard ws(acquire(n, h, w), [this](Workspace* p) { release(p); });
    const size_t hw = size_t(h) * w;
    execute(*ws, [&](float* dst, int img) {
        const float* src = x + size_t(img) * c * hw;
        for (int ch = 0; ch < c; ++ch)
            for (size_t p = 0; p < hw; ++p) dst[p * c + ch] = src[ch * hw + p];
    }, out);
}

}  // namespace xnornet
