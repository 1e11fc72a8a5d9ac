#include "runtime/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_thread_num() { return 0; }
inline int omp_get_max_threads() { return 1; }
#endif

namespace xnornet {

// ------------------------------------------------------------------ prepared weights

struct Engine::Prepared {
    // ConvFP: weights as [k*k][cin][cout] so the inner loop runs over output channels.
    std::vector<float> fp_weight;
    // BConv: kernel layout (see kernels/bconv.h) and, per output channel and tap, the popcount
    // of that tap's weight words: what a zero (padding) input word adds to the raw popcount.
    std::vector<uint64_t> bin_weight;
    std::vector<int32_t> tap_popcount;  // [cout][k*k]
    int words = 0, cout_blocks = 0;
};

namespace {

int out_size(int in, int k, int stride, int pad) { return (in + 2 * pad - k) / stride + 1; }
bool is_compute(const Op& op) { return op.kind != OpKind::Input; }

std::unique_ptr<Engine::Prepared> prepare(const Op& op) {
    auto p = std::make_unique<Engine::Prepared>();
    const int kk = op.k * op.k;
    if (op.kind == OpKind::ConvFP) {
        const float* w = op.tensors[0].f32();  // [cout][k][k][cin]
        p->fp_weight.resize(size_t(kk) * op.cin * op.cout);
        for (int o = 0; o < op.cout; ++o)
            for (int t = 0; t < kk; ++t)
                for (int c = 0; c < op.cin; ++c)
                    p->fp_weight[(size_t(t) * op.cin + c) * op.cout + o] = w[(size_t(o) * kk + t) * op.cin + c];
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

}  // namespace

// ------------------------------------------------------------------ per-shape plan and buffers

struct Layer {
    const Op* op;
    const Engine::Prepared* prep;
    int in_h, in_w, out_h, out_w;
    bool float_out;             // the next op (or the caller) needs this op's float output
    const Op* next_bconv;       // pack the output for this binary conv (null: don't)
    // BConv only: border classes of output rows/columns and, per (row class, column class), the
    // number of valid taps and per output channel the weight popcount on invalid taps.
    std::vector<int> row_class, col_class;
    int col_classes = 0;
    std::vector<int> valid_taps;
    std::vector<int32_t> invalid_popcount;  // [class][cout]
};

struct Engine::Workspace {
    int n, h, w;
    std::vector<Layer> layers;
    std::vector<float> act[2];      // float activations, NHWC
    std::vector<uint64_t> bits[2];  // packed activations, [N][H+2p][W+2p][P]
    std::vector<int32_t> pop;       // per thread: out_w * cout_pad
    std::vector<float> row;         // per thread: out_w * cout
    size_t pop_stride = 0, row_stride = 0;
};

static void build_border_table(Layer& L) {
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
    const size_t classes = rid.size() * cid.size();
    L.valid_taps.assign(classes, 0);
    L.invalid_popcount.assign(classes * op.cout, 0);
    for (auto [rm, ri] : rid)
        for (auto [cm, ci] : cid) {
            const size_t cls = size_t(ri) * cid.size() + ci;
            for (int t = 0; t < kk; ++t) {
                const bool invalid = (rm >> (t / op.k) & 1) || (cm >> (t % op.k) & 1);
                if (!invalid) {
                    L.valid_taps[cls]++;
                    continue;
                }
                for (int o = 0; o < op.cout; ++o)
                    L.invalid_popcount[cls * op.cout + o] += L.prep->tap_popcount[size_t(o) * kk + t];
            }
        }
}

// ------------------------------------------------------------------ engine

Engine::Engine(Model model, int threads, const std::string& isa)
    : model_(std::move(model)), impl_(&select_implementation(isa)),
      threads_(threads > 0 ? threads : omp_get_max_threads()) {
    for (const Op& op : model_.ops) prepared_.push_back(prepare(op));
}

Engine::~Engine() = default;

int Engine::input_channels() const {
    for (const Op& op : model_.ops)
        if (is_compute(op)) return op.cin;
    return model_.ops.front().cin;
}

bool Engine::has_input_normalization() const { return model_.ops.front().kind == OpKind::Input; }

std::vector<int64_t> Engine::output_shape(int n, int h, int w) const {
    int c = input_channels();
    for (const Op& op : model_.ops) {
        if (op.kind == OpKind::Head) return {n, op.cout};
        if (!is_compute(op)) continue;
        h = out_size(h, op.k, op.stride, op.pad);
        w = out_size(w, op.k, op.stride, op.pad);
        c = op.cout;
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
    size_t max_act = size_t(n) * h * w * input_channels(), max_bits = 0;
    size_t max_pop = 0, max_row = 0;
    int ch = h, cw = w;
    std::vector<size_t> compute;
    for (size_t i = 0; i < model_.ops.size(); ++i)
        if (is_compute(model_.ops[i])) compute.push_back(i);
    for (size_t j = 0; j < compute.size(); ++j) {
        const Op& op = model_.ops[compute[j]];
        Layer L{&op, prepared_[compute[j]].get(), ch, cw, 1, 1, false, nullptr, {}, {}, 0, {}, {}};
        if (op.kind != OpKind::Head) {
            L.out_h = out_size(ch, op.k, op.stride, op.pad);
            L.out_w = out_size(cw, op.k, op.stride, op.pad);
            if (L.out_h < 1 || L.out_w < 1)
                throw std::invalid_argument("input of " + std::to_string(h) + "x" + std::to_string(w) +
                                            " is too small for this model");
            if (op.residual == Residual::Downsample &&
                (ch % op.stride || cw % op.stride || L.out_h != ch / op.stride || L.out_w != cw / op.stride))
                throw std::invalid_argument("input size " + std::to_string(h) + "x" + std::to_string(w) +
                                            " does not divide evenly through this model's strides");
        }
        const Op* next = j + 1 < compute.size() ? &model_.ops[compute[j + 1]] : nullptr;
        L.float_out = !next || next->kind != OpKind::BConv || next->residual != Residual::None;
        L.next_bconv = next && next->kind == OpKind::BConv ? next : nullptr;
        if (op.kind == OpKind::BConv) {
            build_border_table(L);
            const size_t words = (op.cin + 63) / 64;
            max_bits = std::max(max_bits, size_t(n) * (ch + 2 * op.pad) * (cw + 2 * op.pad) * words);
            max_pop = std::max(max_pop, size_t(L.out_w) * L.prep->cout_blocks * kLanes);
        }
        if (op.kind != OpKind::Head) {
            max_act = std::max(max_act, size_t(n) * L.out_h * L.out_w * op.cout);
            max_row = std::max(max_row, size_t(L.out_w) * op.cout);
            ch = L.out_h, cw = L.out_w;
        }
        ws->layers.push_back(std::move(L));
    }
    for (auto& a : ws->act) a.assign(max_act, 0.f);
    for (auto& b : ws->bits) b.assign(max_bits, 0);
    ws->pop_stride = max_pop, ws->row_stride = max_row;
    ws->pop.assign(max_pop * threads_, 0);
    ws->row.assign(max_row * threads_, 0.f);
    return ws.release();
}

void Engine::release(Workspace* ws) {
    std::unique_ptr<Workspace> owned(ws);
    std::lock_guard<std::mutex> lock(pool_mutex_);
    if (pool_.size() < 4) pool_.push_back(std::move(owned));  // else freed here
}

namespace {

// Where a row of C x H x W output goes: float NHWC (if act_out) and/or bits packed with the next
// binary conv's input affine, bit = (y * s + b >= 0), into its zero-bordered layout.
struct RowSink {
    int C, H, W;
    float* act_out;           // null: not needed
    const Op* next_bconv;     // null: no packing
    uint64_t* bits_out;
};

void emit_row(const RowSink& k, const float* y, int n, int oy) {
    const int C = k.C, W = k.W;
    if (k.act_out) std::memcpy(k.act_out + ((size_t(n) * k.H + oy) * W) * C, y, sizeof(float) * W * C);
    if (!k.next_bconv) return;
    const Op& nx = *k.next_bconv;
    const float* s = nx.tensors[0].f32();
    const float* b = nx.tensors[1].f32();
    const int P = (C + 63) / 64, pad = nx.pad, Wp = W + 2 * pad, Hp = k.H + 2 * pad;
    uint64_t* bits_out = k.bits_out;
    uint64_t* img = bits_out + size_t(n) * Hp * Wp * P;
    // Border rows/columns stay 0: a zero word is what the border tables correct for.
    if (oy == 0) std::memset(img, 0, sizeof(uint64_t) * pad * Wp * P);
    if (oy == k.H - 1) std::memset(img + size_t(Hp - pad) * Wp * P, 0, sizeof(uint64_t) * pad * Wp * P);
    uint64_t* row = img + size_t(oy + pad) * Wp * P;
    std::memset(row, 0, sizeof(uint64_t) * pad * P);
    std::memset(row + size_t(Wp - pad) * P, 0, sizeof(uint64_t) * pad * P);
    for (int x = 0; x < W; ++x) {
        const float* v = y + size_t(x) * C;
        uint64_t* out = row + size_t(x + pad) * P;
        for (int q = 0; q < P; ++q) {
            uint64_t word = 0;
            const int end = std::min(64, C - 64 * q);
            for (int j = 0; j < end; ++j) {
                const int c = 64 * q + j;
                word |= uint64_t(v[c] * s[c] + b[c] >= 0.f) << j;
            }
            out[q] = word;
        }
    }
}

// y += shortcut(x) at output row oy: identity, or average pool + channel repeat.
void add_shortcut(const Layer& L, const float* in, int n, int oy, float* y) {
    const Op& op = *L.op;
    if (op.residual == Residual::None) return;
    const int C = op.cout, ci = op.cin, s = op.stride;
    if (op.residual == Residual::Identity) {
        const float* x = in + ((size_t(n) * L.in_h + oy) * L.in_w) * ci;
        for (int i = 0; i < L.out_w * C; ++i) y[i] += x[i];
        return;
    }
    const float inv = 1.f / float(s * s);
    for (int ox = 0; ox < L.out_w; ++ox)
        for (int c = 0; c < ci; ++c) {
            float sum = 0.f;
            for (int dy = 0; dy < s; ++dy)
                for (int dx = 0; dx < s; ++dx)
                    sum += in[((size_t(n) * L.in_h + oy * s + dy) * L.in_w + ox * s + dx) * ci + c];
            const float avg = sum * inv;
            for (int r = c; r < C; r += ci) y[size_t(ox) * C + r] += avg;
        }
}

void finish_row(const Layer& L, float* y) {
    if (!L.op->relu) return;
    for (int i = 0; i < L.out_w * L.op->cout; ++i) y[i] = std::max(y[i], 0.f);
}

void conv_fp_row(const Layer& L, const float* in, int n, int oy, float* y) {
    const Op& op = *L.op;
    const int C = op.cout, ci = op.cin, k = op.k;
    const float* wt = L.prep->fp_weight.data();
    const float* scale = op.tensors[1].f32();
    const float* bias = op.tensors[2].f32();
    for (int ox = 0; ox < L.out_w; ++ox) {
        float* acc = y + size_t(ox) * C;
        std::fill(acc, acc + C, 0.f);
        for (int ky = 0; ky < k; ++ky) {
            const int iy = oy * op.stride - op.pad + ky;
            if (iy < 0 || iy >= L.in_h) continue;
            for (int kx = 0; kx < k; ++kx) {
                const int ix = ox * op.stride - op.pad + kx;
                if (ix < 0 || ix >= L.in_w) continue;
                const float* x = in + ((size_t(n) * L.in_h + iy) * L.in_w + ix) * ci;
                const float* w = wt + size_t(ky * k + kx) * ci * C;
                for (int c = 0; c < ci; ++c) {
                    const float xv = x[c];
                    const float* wc = w + size_t(c) * C;
                    for (int o = 0; o < C; ++o) acc[o] += xv * wc[o];
                }
            }
        }
        for (int o = 0; o < C; ++o) acc[o] = acc[o] * scale[o] + bias[o];
    }
}

void bconv_row(const Layer& L, BConvRowFn kernel, const uint64_t* bits, int n, int oy,
               int32_t* pop, float* y) {
    const Op& op = *L.op;
    const Engine::Prepared& p = *L.prep;
    const int P = p.words, Wp = L.in_w + 2 * op.pad, Hp = L.in_h + 2 * op.pad;
    BConvRow args{bits + size_t(n) * Hp * Wp * P, Wp, P, op.k, op.stride, oy, L.out_w,
                  p.bin_weight.data(), p.cout_blocks, pop};
    kernel(args);
    const int C = op.cout, cpad = p.cout_blocks * kLanes;
    const float* scale = op.tensors[3].f32();
    const float* bias = op.tensors[4].f32();
    const int rc = L.row_class[oy];
    for (int ox = 0; ox < L.out_w; ++ox) {
        const size_t cls = size_t(rc) * L.col_classes + L.col_class[ox];
        const int32_t* inv = L.invalid_popcount.data() + cls * C;
        const int32_t base = L.valid_taps[cls] * op.cin;
        const int32_t* pp = pop + size_t(ox) * cpad;
        float* out = y + size_t(ox) * C;
        for (int o = 0; o < C; ++o) {
            // +-1 dot product over valid taps: matches - mismatches (see docs/engine.md)
            const int32_t dot = base - 2 * (pp[o] - inv[o]);
            out[o] = float(dot) * scale[o] + bias[o];
        }
    }
}

void head(const Layer& L, const float* in, int n, float* out) {
    const Op& op = *L.op;
    const int C = op.cin, K = op.cout, HW = L.in_h * L.in_w;
    const float* s = op.tensors[0].f32();
    const float* b = op.tensors[1].f32();
    const float* fw = op.tensors[2].f32();
    const float* fb = op.tensors[3].f32();
    std::vector<float> z(C, 0.f);
    const float* x = in + size_t(n) * HW * C;
    for (int i = 0; i < HW; ++i)
        for (int c = 0; c < C; ++c) z[c] += std::max(x[size_t(i) * C + c] * s[c] + b[c], 0.f);
    for (int c = 0; c < C; ++c) z[c] /= float(HW);
    for (int k = 0; k < K; ++k) {
        float acc = 0.f;
        for (int c = 0; c < C; ++c) acc += fw[size_t(k) * C + c] * z[c];
        out[size_t(n) * K + k] = acc + fb[k];
    }
}

}  // namespace

void Engine::forward(Workspace& ws, float* out) {
    const int n = ws.n;
    int fa = 0, ba = 0;  // which float / bits buffer holds the current input
    const Layer& first = ws.layers.front();
    if (first.op->kind == OpKind::BConv) {
        // No op before the first binary conv: pack the input here, as an epilogue would.
        const int C = first.op->cin;
        const RowSink sink{C, first.in_h, first.in_w, nullptr, first.op, ws.bits[0].data()};
#pragma omp parallel for schedule(static) num_threads(threads_)
        for (int r = 0; r < n * first.in_h; ++r) {
            const int img = r / first.in_h, yy = r % first.in_h;
            emit_row(sink, ws.act[0].data() + (size_t(img) * first.in_h + yy) * first.in_w * C, img, yy);
        }
    }
    for (const Layer& L : ws.layers) {
        const float* in = ws.act[fa].data();
        if (L.op->kind == OpKind::Head) {
#pragma omp parallel for schedule(static) num_threads(threads_)
            for (int i = 0; i < n; ++i) head(L, in, i, out);
            return;
        }
        float* act_out = ws.act[1 - fa].data();
        uint64_t* bits_out = ws.bits[1 - ba].data();
        const uint64_t* bits_in = ws.bits[ba].data();
        BConvRowFn kernel = impl_->bconv_row;
        const RowSink sink{L.op->cout, L.out_h, L.out_w, L.float_out ? act_out : nullptr,
                           L.next_bconv, bits_out};
#pragma omp parallel for schedule(static) num_threads(threads_)
        for (int r = 0; r < n * L.out_h; ++r) {
            const int img = r / L.out_h, oy = r % L.out_h;
            const int t = omp_get_thread_num();
            float* y = ws.row.data() + size_t(t) * ws.row_stride;
            if (L.op->kind == OpKind::ConvFP)
                conv_fp_row(L, in, img, oy, y);
            else
                bconv_row(L, kernel, bits_in, img, oy, ws.pop.data() + size_t(t) * ws.pop_stride, y);
            add_shortcut(L, in, img, oy, y);
            finish_row(L, y);
            emit_row(sink, y, img, oy);
        }
        fa = 1 - fa;
        if (L.next_bconv) ba = 1 - ba;
    }
    // No head: return the last feature map as NCHW.
    const Layer& last = ws.layers.back();
    const int C = last.op->cout, HW = last.out_h * last.out_w;
    const float* a = ws.act[fa].data();
    for (int i = 0; i < n; ++i)
        for (int p = 0; p < HW; ++p)
            for (int c = 0; c < C; ++c) out[(size_t(i) * C + c) * HW + p] = a[(size_t(i) * HW + p) * C + c];
}

void Engine::run_u8_nhwc(const uint8_t* x, int n, int h, int w, int c, float* out) {
    if (!has_input_normalization())
        throw std::invalid_argument("this model has no input normalization: pass float32 NCHW");
    const Op& in = model_.ops.front();
    if (c != in.cin) throw std::invalid_argument("expected " + std::to_string(in.cin) + " channels");
    Workspace* ws = acquire(n, h, w);
    std::unique_ptr<Workspace, std::function<void(Workspace*)>> guard(ws, [this](Workspace* p) { release(p); });
    const float* mean = in.tensors[0].f32();
    const float* stdv = in.tensors[1].f32();
    float* a = ws->act[0].data();
    const size_t total = size_t(n) * h * w;
    for (size_t i = 0; i < total; ++i)
        for (int ch = 0; ch < c; ++ch)
            a[i * c + ch] = (float(x[i * c + ch]) / 255.f - mean[ch]) / stdv[ch];
    forward(*ws, out);
}

void Engine::run_f32_nchw(const float* x, int n, int c, int h, int w, float* out) {
    if (c != input_channels())
        throw std::invalid_argument("expected " + std::to_string(input_channels()) + " channels");
    Workspace* ws = acquire(n, h, w);
    std::unique_ptr<Workspace, std::function<void(Workspace*)>> guard(ws, [this](Workspace* p) { release(p); });
    float* a = ws->act[0].data();
    const size_t hw = size_t(h) * w;
    for (int i = 0; i < n; ++i)
        for (int ch = 0; ch < c; ++ch)
            for (size_t p = 0; p < hw; ++p) a[(size_t(i) * hw + p) * c + ch] = x[(size_t(i) * c + ch) * hw + p];
    forward(*ws, out);
}

}  // namespace xnornet
