// The whole-network runtime: runs every op of a model file in one native call, no Python between
// layers. Buffers are allocated once per input shape and reused; run() is thread-safe.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/model_file.h"
#include "runtime/dispatch.h"
#include "runtime/layer.h"

namespace xnornet {

// True in a process forked after one of its parent's engines ran on several threads: every
// engine here then runs on one thread (GNU OpenMP's thread pool does not survive fork).
bool forked_serial_engines();

class Engine {
public:
    // threads <= 0: all cores (OpenMP's default). isa: "" / "auto" / "amx+avx512" / "avx512" /
    // "amx" / "avx2" / "generic".
    Engine(Model model, int threads, const std::string& isa);
    ~Engine();

    // Raw pixels (N, H, W, C) uint8, normalized inside with the model's mean/std (needs an
    // input op), or already-normalized float32 (N, C, H, W). out: output_shape(n, h, w) floats.
    void run_u8_nhwc(const uint8_t* x, int n, int h, int w, int c, float* out);
    void run_f32_nchw(const float* x, int n, int c, int h, int w, float* out);
    // When profiling, seconds spent in each compute op by the last finished run (engine-wide, not
    // per caller; in image-major runs, thread 0's share of the batch). For benchmarks.
    void set_profiling(bool on) { profiling_.store(on); }
    std::vector<double> last_profile();

    // {n, classes} when the model ends in a head, else {n, C, H, W} of the last feature map.
    std::vector<int64_t> output_shape(int n, int h, int w) const;
    int input_channels() const;
    bool has_input_normalization() const;
    const std::vector<std::string>& class_names() const { return model_.class_names; }
    const std::string& isa() const { return impl_->name; }
    // Threads a run uses: threads_, or 1 in a process forked after some engine of its parent
    // ran on several threads (see forked_serial in engine.cpp).
    int threads() const;
    // How a batch of n images of h x w runs, per compute op: images per layer call (image-major
    // groups; 0: the whole batch in one call per layer, its rows shared by the threads), and
    // whether the op writes its float output over its input. For tests and diagnostics.
    struct Step {
        int images_per_call;
        bool over_input;
        int pixel_tiles;  // per call of images_per_call whole maps (Kernels::pixel_tiles)
    };
    std::vector<Step> plan(int n, int h, int w);

    struct Workspace;  // per-shape plan and buffers
private:
    Workspace* acquire(int n, int h, int w);
    void release(Workspace* ws);
    struct Buffers;    // activations for a group of images
    // fill(dst, img): write image img as normalized float NHWC into dst.
    void execute(Workspace& ws, const std::function<void(float*, int)>& fill, float* out);
    // Layers [l0, l1) on images [img0, img0 + n) of buf (image img0 is batch image first_img +
    // img0); state: which float and bits buffers hold the input (0, 0 at the start), updated.
    void run_graph(Workspace& ws, Buffers& buf, int n, int first_img, float* out, bool parallel,
                   std::vector<double>* times, size_t l0, size_t l1, int img0, int state[2]);
    void record_profile(std::vector<double> times);
    // Whether layer L, on calls of n images, writes its float output over its input.
    bool writes_over_input(const Layer& L, int n, bool parallel) const;

    Model model_;
    const Implementation* impl_;
    int threads_;
    std::vector<std::unique_ptr<Prepared>> prepared_;  // one per op
    std::mutex pool_mutex_;
    std::vector<std::unique_ptr<Workspace>> pool_;     // idle workspaces
    std::atomic<bool> profiling_{false};
    std::vector<double> profile_;                      // guarded by pool_mutex_
};

}  // namespace xnornet
