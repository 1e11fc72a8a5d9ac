// The packed model file (.xnor): parsing and validation. Knows nothing of Python or PyTorch.
// Format: docs/model-format.md. Every size, offset and parameter is checked before use, so a
// corrupt or hostile file yields a ModelError, never a crash or an out-of-bounds read.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/aligned.h"

namespace xnornet {

struct ModelError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

constexpr char kMagic[8] = {'X', 'N', 'O', 'R', 'N', 'E', 'T', '\0'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kHeaderBytes = 64;
constexpr uint32_t kOpEntryBytes = 64;
constexpr uint32_t kTensorEntryBytes = 32;
constexpr int kMaxParams = 10;

enum class OpKind : uint32_t { Input = 1, ConvFP = 2, BConv = 3, Head = 4 };
enum class DType : uint32_t { F32 = 1, U64 = 2, U8 = 3 };
enum class Residual : int32_t { None = 0, Identity = 1, Downsample = 2 };

struct TensorView {
    DType dtype;
    std::vector<uint32_t> dims;
    const void* data;  // into the model's own buffer, 64-byte aligned within the file
    size_t count() const;
    const float* f32() const { return static_cast<const float*>(data); }
    const uint64_t* u64() const { return static_cast<const uint64_t*>(data); }
    const uint8_t* u8() const { return static_cast<const uint8_t*>(data); }
};

// One op of the graph, its parameters decoded (see docs/model-format.md for each kind).
struct Op {
    OpKind kind;
    int cin = 0, cout = 0, k = 0, stride = 1, pad = 0;
    bool relu = false;
    Residual residual = Residual::None;
    int height = 0, width = 0;         // Input only
    std::vector<TensorView> tensors;
};

struct Model {
    // the whole file; TensorViews point into it (aligned: the tensors' 64-byte file offsets are
    // then cache-line boundaries, and an epilogue's loads of scales and thresholds never split)
    aligned_vector<uint8_t> bytes;
    std::vector<Op> ops;
    std::vector<std::string> class_names;
};

uint32_t crc32(const uint8_t* data, size_t n);

// Parses and validates a model held in memory (takes ownership of the bytes).
Model parse_model(aligned_vector<uint8_t> bytes);
Model load_model_file(const std::string& path);

}  // namespace xnornet
