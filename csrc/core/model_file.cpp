#include "core/model_file.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

namespace xnornet {

uint32_t crc32(const uint8_t* data, size_t n) {
    // CRC-32/ISO-HDLC (zlib's crc32), table-driven.
    static const std::array<uint32_t, 256> table = [] {
        std::array<uint32_t, 256> t{};
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        return t;
    }();
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; ++i) c = table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

size_t TensorView::count() const {
    size_t n = 1;
    for (auto d : dims) n *= d;
    return n;
}

namespace {

template <typename T>
T read_le(const uint8_t* p) {  // little-endian files on little-endian hosts (x86, arm64)
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}

size_t itemsize(DType t) {
    switch (t) {
        case DType::F32: return 4;
        case DType::U64: return 8;
        case DType::U8: return 1;
    }
    return 0;
}

[[noreturn]] void fail(const std::string& msg) { throw ModelError("invalid model file: " + msg); }

const char* dtype_name(DType t) {
    switch (t) {
        case DType::F32: return "f32";
        case DType::U64: return "u64";
        case DType::U8: return "u8";
    }
    return "?";
}

std::string describe(DType dtype, const std::vector<uint32_t>& dims) {
    std::string s = std::string(dtype_name(dtype)) + "[";
    for (size_t i = 0; i < dims.size(); ++i) s += (i ? "," : "") + std::to_string(dims[i]);
    return s + "]";
}

void expect_tensor(const Op& op, size_t i, DType dtype, std::vector<uint32_t> dims,
                   const std::string& op_name, const char* what) {
    const TensorView& t = op.tensors[i];
    if (t.dtype != dtype || t.dims != dims)
        fail(op_name + ": " + what + ": expected " + describe(dtype, dims) + ", got " +
             describe(t.dtype, t.dims) + (t.dtype != dtype ? " (wrong dtype)" : " (wrong dims)"));
}

// Class names are UTF-8 text (the Python API hands them out as str): well-formed as Python's
// strict decoder demands (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF).
bool valid_utf8(const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n;) {
        const uint8_t c = p[i];
        if (c < 0x80) {
            ++i;
            continue;
        }
        size_t len;
        uint8_t lo = 0x80, hi = 0xBF;  // the range the second byte may take
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) lo = 0xA0;  // else overlong
            if (c == 0xED) hi = 0x9F;  // else a surrogate
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) lo = 0x90;  // else overlong
            if (c == 0xF4) hi = 0x8F;  // else past U+10FFFF
        } else {
            return false;  // a continuation byte, an overlong lead (C0, C1) or F5-FF
        }
        if (i + len > n || p[i + 1] < lo || p[i + 1] > hi) return false;
        for (size_t j = 2; j < len; ++j)
            if ((p[i + j] & 0xC0) != 0x80) return false;
        i += len;
    }
    return true;
}

// NaN or Inf in weights, scales or normalization would turn every output into NaN: a corrupt file.
void expect_finite(const Op& op, const std::string& name) {
    for (const TensorView& t : op.tensors)
        if (t.dtype == DType::F32)
            for (size_t i = 0; i < t.count(); ++i)
                if (!std::isfinite(t.f32()[i])) fail(name + ": NaN or Inf in a float tensor");
}

void check_conv_params(const Op& op, const char* name) {
    const int kMaxC = 1 << 16;
    if (op.cin < 1 || op.cin > kMaxC || op.cout < 1 || op.cout > kMaxC)
        fail(std::string(name) + ": channels out of range");
    if (op.k < 1 || op.k > 7 || op.stride < 1 || op.stride > 4 || op.pad < 0 || op.pad >= op.k)
        fail(std::string(name) + ": kernel/stride/pad out of range");
    // A shortcut adds x to y pixel by pixel: the conv must keep the grid ("same" padding).
    if (op.residual != Residual::None && 2 * op.pad != op.k - 1)
        fail(std::string(name) + ": a shortcut needs 'same' padding (2*pad == k-1)");
    if (op.residual == Residual::Identity && (op.cin != op.cout || op.stride != 1))
        fail(std::string(name) + ": identity shortcut needs cin == cout and stride 1");
    if (op.residual == Residual::Downsample && (op.cout % op.cin != 0))
        fail(std::string(name) + ": downsample shortcut needs cout a multiple of cin");
    if (op.residual != Residual::None && op.residual != Residual::Identity &&
        op.residual != Residual::Downsample)
        fail(std::string(name) + ": unknown residual kind");
}

void validate_op(const Op& op, size_t index) {
    const std::string name = "op " + std::to_string(index);
    const auto n = op.tensors.size();
    auto need = [&](size_t count) {
        if (n != count) fail(name + ": expected " + std::to_string(count) + " tensors, got " +
                             std::to_string(n));
    };
    const uint32_t ci = op.cin, co = op.cout, k = op.k;
    switch (op.kind) {
        case OpKind::Input:
            need(2);
            if (op.height < 1 || op.height > 4096 || op.width < 1 || op.width > 4096 ||
                op.cin < 1 || op.cin > 64)
                fail(name + ": input size out of range");
            expect_tensor(op, 0, DType::F32, {ci}, name, "input mean");
            expect_tensor(op, 1, DType::F32, {ci}, name, "input std");
            for (size_t c = 0; c < ci; ++c)
                if (!(op.tensors[1].f32()[c] > 0.f)) fail(name + ": input std must be > 0");
            break;
        case OpKind::ConvFP:
            need(3);
            check_conv_params(op, name.c_str());
            expect_tensor(op, 0, DType::F32, {co, k, k, ci}, name, "conv weight");
            expect_tensor(op, 1, DType::F32, {co}, name, "conv scale");
            expect_tensor(op, 2, DType::F32, {co}, name, "conv bias");
            break;
        case OpKind::BConv: {
            need(5);
            check_conv_params(op, name.c_str());
            const uint32_t words = (ci + 63) / 64;
            expect_tensor(op, 0, DType::F32, {ci}, name, "bconv input scale");
            expect_tensor(op, 1, DType::F32, {ci}, name, "bconv input bias");
            expect_tensor(op, 2, DType::U64, {co, k, k, words}, name, "bconv packed weight");
            expect_tensor(op, 3, DType::F32, {co}, name, "bconv output scale");
            expect_tensor(op, 4, DType::F32, {co}, name, "bconv output bias");
            // Bits past cin in the last word must be 0: the kernels rely on it.
            if (ci % 64) {
                const uint64_t junk = ~0ull << (ci % 64);
                const uint64_t* w = op.tensors[2].u64();
                for (size_t i = words - 1; i < op.tensors[2].count(); i += words)
                    if (w[i] & junk) fail(name + ": packed weight has bits set past cin");
            }
            break;
        }
        case OpKind::Head:
            need(5);
            if (op.cin < 1 || op.cout < 1 || op.cin > (1 << 16) || op.cout > (1 << 16))
                fail(name + ": head sizes out of range");
            expect_tensor(op, 0, DType::F32, {ci}, name, "head scale");
            expect_tensor(op, 1, DType::F32, {ci}, name, "head bias");
            expect_tensor(op, 2, DType::F32, {co, ci}, name, "classifier weight");
            expect_tensor(op, 3, DType::F32, {co}, name, "classifier bias");
            if (op.tensors[4].dtype != DType::U8 || op.tensors[4].dims.size() != 1)
                fail(name + ": class names must be a 1-d u8 tensor");
            if (!valid_utf8(op.tensors[4].u8(), op.tensors[4].count()))
                fail(name + ": class names are not UTF-8 text");
            break;
        default:
            fail(name + ": unknown op kind " + std::to_string(static_cast<uint32_t>(op.kind)));
    }
}

void validate_graph(const Model& m) {
    if (m.ops.empty()) fail("no ops");
    if (m.ops.size() == 1 && m.ops[0].kind == OpKind::Input) fail("no compute op after the input op");
    int channels = -1;  // channels flowing between ops; -1 = not yet known
    for (size_t i = 0; i < m.ops.size(); ++i) {
        const Op& op = m.ops[i];
        const std::string name = "op " + std::to_string(i);
        if (op.kind == OpKind::Input && i != 0) fail(name + ": input op must come first");
        if (op.kind == OpKind::Head && i + 1 != m.ops.size()) fail(name + ": head must be last");
        if (op.kind != OpKind::Input && channels != -1 && op.cin != channels)
            fail(name + ": expects " + std::to_string(op.cin) + " channels, previous op gives " +
                 std::to_string(channels));
        channels = op.kind == OpKind::Input ? op.cin : op.cout;
    }
}

// Names separated by '\n': k separators give k+1 names (an empty tensor gives none), the same
// rule as Python's str.split("\n") in xnornet.modelfile.class_names.
std::vector<std::string> split_names(const TensorView& t) {
    std::vector<std::string> names;
    if (t.count() == 0) return names;
    std::string cur;
    for (size_t i = 0; i < t.count(); ++i) {
        const char c = static_cast<char>(t.u8()[i]);
        if (c == '\n') {
            names.push_back(cur);
            cur.clear();
        } else {
            cur += c;
        }
    }
    names.push_back(cur);
    return names;
}

int expected_params(OpKind kind) {
    switch (kind) {
        case OpKind::Input: return 3;
        case OpKind::ConvFP:
        case OpKind::BConv: return 7;
        case OpKind::Head: return 2;
    }
    return -1;
}

}  // namespace

Model parse_model(aligned_vector<uint8_t> bytes) {
    Model m;
    m.bytes = std::move(bytes);
    const uint8_t* b = m.bytes.data();
    const size_t size = m.bytes.size();
    if (reinterpret_cast<uintptr_t>(b) % 64)  // the allocator's promise: tensors on cache lines
        throw std::logic_error("model buffer is not 64-byte aligned");
    if (size < kHeaderBytes) fail("file is " + std::to_string(size) + " bytes, shorter than the header");
    if (std::memcmp(b, kMagic, 8) != 0) fail("bad magic (not an xnornet model file)");
    const uint32_t version = read_le<uint32_t>(b + 8);
    if (version != kVersion)
        fail("format version " + std::to_string(version) + ", this engine reads version " +
             std::to_string(kVersion));
    if (read_le<uint32_t>(b + 12) != kHeaderBytes) fail("bad header size");
    const uint64_t file_bytes = read_le<uint64_t>(b + 16);
    if (file_bytes != size)
        fail("header says " + std::to_string(file_bytes) + " bytes, file has " +
             std::to_string(size) + " (truncated or padded)");
    const uint32_t crc = read_le<uint32_t>(b + 24);
    if (crc32(b + kHeaderBytes, size - kHeaderBytes) != crc) fail("checksum mismatch (corrupt body)");
    const uint32_t n_ops = read_le<uint32_t>(b + 28);
    const uint32_t n_tensors = read_le<uint32_t>(b + 32);
    if (n_ops == 0 || n_ops > 4096 || n_tensors > 65536) fail("absurd op or tensor count");
    const uint64_t ops_at = kHeaderBytes;
    const uint64_t tensors_at = ops_at + uint64_t(n_ops) * kOpEntryBytes;
    const uint64_t data_at = tensors_at + uint64_t(n_tensors) * kTensorEntryBytes;
    if (data_at > size) fail("op/tensor tables run past the end of the file");

    std::vector<TensorView> tensors(n_tensors);
    for (uint32_t t = 0; t < n_tensors; ++t) {
        const uint8_t* e = b + tensors_at + uint64_t(t) * kTensorEntryBytes;
        TensorView& v = tensors[t];
        v.dtype = static_cast<DType>(read_le<uint32_t>(e));
        const uint32_t ndim = read_le<uint32_t>(e + 4);
        const size_t isz = itemsize(v.dtype);
        if (isz == 0) fail("tensor " + std::to_string(t) + ": unknown dtype");
        if (ndim > 4) fail("tensor " + std::to_string(t) + ": more than 4 dims");
        uint64_t count = 1;
        for (uint32_t d = 0; d < ndim; ++d) {
            const uint32_t dim = read_le<uint32_t>(e + 8 + 4 * d);
            v.dims.push_back(dim);
            count *= dim;
            if (count > (uint64_t(1) << 32)) fail("tensor " + std::to_string(t) + ": absurd size");
        }
        const uint64_t offset = read_le<uint64_t>(e + 24);
        const uint64_t nbytes = count * isz;
        if (offset < data_at || offset % 64 != 0 || offset > size || nbytes > size - offset)
            fail("tensor " + std::to_string(t) + ": data out of bounds or misaligned");
        v.data = b + offset;
    }
    // Tensor data may not overlap either (each byte of data has one meaning).
    std::vector<uint32_t> by_offset(n_tensors);
    for (uint32_t t = 0; t < n_tensors; ++t) by_offset[t] = t;
    std::sort(by_offset.begin(), by_offset.end(), [&](uint32_t x, uint32_t y) {
        return tensors[x].data < tensors[y].data;
    });
    const uint8_t* end_of_previous = b;
    uint32_t previous = 0;
    for (uint32_t t : by_offset) {
        const TensorView& v = tensors[t];
        const size_t nbytes = v.count() * itemsize(v.dtype);
        if (nbytes == 0) continue;
        const uint8_t* start = static_cast<const uint8_t*>(v.data);
        if (start < end_of_previous)
            fail("tensor " + std::to_string(previous) + ": data overlaps tensor " + std::to_string(t) + "'s");
        end_of_previous = start + nbytes, previous = t;
    }
    std::vector<bool> claimed(n_tensors, false);
    for (uint32_t i = 0; i < n_ops; ++i) {
        const uint8_t* e = b + ops_at + uint64_t(i) * kOpEntryBytes;
        Op op;
        op.kind = static_cast<OpKind>(read_le<uint32_t>(e));
        const uint32_t n_params = read_le<uint32_t>(e + 4);
        const int want = expected_params(op.kind);
        if (want < 0)
            fail("op " + std::to_string(i) + ": unknown op kind " +
                 std::to_string(static_cast<uint32_t>(op.kind)));
        if (n_params != uint32_t(want))
            fail("op " + std::to_string(i) + ": expected " + std::to_string(want) + " params, got " +
                 std::to_string(n_params));
        int32_t p[kMaxParams];
        for (int j = 0; j < kMaxParams; ++j) p[j] = read_le<int32_t>(e + 8 + 4 * j);
        const uint32_t first = read_le<uint32_t>(e + 48), count = read_le<uint32_t>(e + 52);
        if (first > n_tensors || count > n_tensors - first)
            fail("op " + std::to_string(i) + ": tensor range out of bounds");
        op.tensors.assign(tensors.begin() + first, tensors.begin() + first + count);
        if (op.kind == OpKind::Input) {
            op.height = p[0], op.width = p[1], op.cin = p[2], op.cout = p[2];
        } else if (op.kind == OpKind::Head) {
            op.cin = p[0], op.cout = p[1];
        } else {
            op.cin = p[0], op.cout = p[1], op.k = p[2], op.stride = p[3], op.pad = p[4];
            op.relu = p[5] != 0;
            op.residual = static_cast<Residual>(p[6]);
        }
        // Each tensor belongs to one op: shared ranges would let a small file make the engine
        // prepare the same large weights over and over.
        for (uint32_t t = first; t < first + count; ++t) {
            if (claimed[t]) fail("op " + std::to_string(i) + ": tensor " + std::to_string(t) +
                                 " already belongs to another op");
            claimed[t] = true;
        }
        validate_op(op, i);
        expect_finite(op, "op " + std::to_string(i));
        m.ops.push_back(std::move(op));
    }
    validate_graph(m);
    if (m.ops.back().kind == OpKind::Head) {
        m.class_names = split_names(m.ops.back().tensors[4]);
        if (m.class_names.size() != static_cast<size_t>(m.ops.back().cout))
            fail("class names do not match the classifier's outputs");
    }
    return m;
}

Model load_model_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) throw ModelError("cannot open model file " + path);
    const std::streamoff size = f.tellg();
    if (size < 0 || size > (std::streamoff(1) << 31)) throw ModelError("model file too large: " + path);
    aligned_vector<uint8_t> bytes(static_cast<size_t>(size));
    f.seekg(0);
    if (size > 0 && !f.read(reinterpret_cast<char*>(bytes.data()), size))
        throw ModelError("cannot read model file " + path);
    return parse_model(std::move(bytes));
}

}  // namespace xnornet
