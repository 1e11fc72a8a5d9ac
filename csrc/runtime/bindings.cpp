// Python bindings of the native runtime: the private module xnornet._engine. The public, checked
// API is xnornet.engine; these functions assume arrays that it has already validated.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "core/model_file.h"
#include "runtime/cpu.h"
#include "runtime/dispatch.h"
#include "runtime/engine.h"

namespace nb = nanobind;
using namespace xnornet;

using U8Images = nb::ndarray<const uint8_t, nb::ndim<4>, nb::c_contig, nb::device::cpu>;
using F32Images = nb::ndarray<const float, nb::ndim<4>, nb::c_contig, nb::device::cpu>;
using F32Out = nb::ndarray<float, nb::c_contig, nb::device::cpu>;

namespace {

size_t count(const std::vector<int64_t>& shape) {
    size_t n = 1;
    for (auto d : shape) n *= size_t(d);
    return n;
}

void check_out(Engine& e, const F32Out& out, int n, int h, int w) {
    if (out.size() != count(e.output_shape(n, h, w)))
        throw std::invalid_argument("output buffer has the wrong size");
}

}  // namespace

NB_MODULE(_engine, m) {
    m.doc() = "xnornet native runtime (private; use xnornet.engine)";
    nb::register_exception_translator([](const std::exception_ptr& p, void*) {
        try {
            std::rethrow_exception(p);
        } catch (const ModelError& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        }
    });

    m.def("cpu_features", [] {
        const auto& f = cpu_features();
        nb::dict d;
        d["popcnt"] = f.popcnt;
        d["avx2"] = f.avx2;
        d["avx512f"] = f.avx512f;
        d["avx512bw"] = f.avx512bw;
        d["avx512_vpopcntdq"] = f.avx512_vpopcntdq;
        d["amx_int8"] = f.amx_int8;
        return d;
    }, "ISA features usable on this CPU (CPUID and OS support via XGETBV).");

    m.def("implementations", [] {
        nb::list out;
        for (const auto& impl : implementations()) {
            nb::dict d;
            d["name"] = impl.name;
            d["description"] = impl.description;
            d["supported"] = impl.supported;
            d["automatic"] = impl.automatic;
            out.append(d);
        }
        return out;
    }, "Kernel implementations in this build, best first, and whether this CPU can run each.");

    m.def("peak_binary_macs", [](const std::string& isa, double seconds) {
        const Implementation& impl = select_implementation(isa);
        const Kernels& k = *impl.kernels;
        nb::gil_scoped_release release;
        using clock = std::chrono::steady_clock;
        uint64_t iters = 1 << 14, sink = 0;
        double best = 0;  // best rate over repeated runs of ~seconds/5 each
        const auto end = clock::now() + std::chrono::duration<double>(seconds);
        while (clock::now() < end) {
            const auto t0 = clock::now();
            sink += k.peak_loop(iters);
            const double dt = std::chrono::duration<double>(clock::now() - t0).count();
            if (dt < seconds / 20) { iters *= 2; continue; }
            best = std::max(best, double(iters) * k.peak_macs_per_iter / dt);
        }
        if (sink == 42) best += 0;  // use the checksum
        return best;
    }, nb::arg("isa"), nb::arg("seconds") = 1.0,
       "Binary MACs/s of a register-only XOR-popcount loop on one thread (best of repeats).");

    m.def("forked_serial", &forked_serial_engines,
          "True in a process forked after an engine of its parent ran on several threads: engines "
          "here run on one thread (GNU OpenMP's thread pool does not survive fork).");

    nb::class_<Engine>(m, "Engine")
        .def("__init__", [](Engine* self, nb::bytes data, int threads, const std::string& isa) {
            aligned_vector<uint8_t> bytes(data.size());
            if (data.size()) std::memcpy(bytes.data(), data.c_str(), data.size());
            new (self) Engine(parse_model(std::move(bytes)), threads, isa);
        }, nb::arg("data"), nb::arg("threads") = 0, nb::arg("isa") = "")
        .def_prop_ro("isa", &Engine::isa)
        .def_prop_ro("threads", &Engine::threads)
        .def_prop_ro("class_names", &Engine::class_names)
        .def_prop_ro("input_channels", &Engine::input_channels)
        .def_prop_ro("has_input_normalization", &Engine::has_input_normalization)
        .def("output_shape", &Engine::output_shape)
        .def("plan", [](Engine& e, int n, int h, int w) {
            nb::list steps;
            for (const Engine::Step& s : e.plan(n, h, w)) {
                nb::dict d;
                d["images_per_call"] = s.images_per_call;
                d["over_input"] = s.over_input;
                d["pixel_tiles"] = s.pixel_tiles;
                steps.append(d);
            }
            return steps;
        })
        .def("set_profiling", &Engine::set_profiling)
        .def("last_profile", &Engine::last_profile)
        .def("run_u8_nhwc", [](Engine& e, U8Images x, F32Out out) {
            const int n = int(x.shape(0)), h = int(x.shape(1)), w = int(x.shape(2)), c = int(x.shape(3));
            check_out(e, out, n, h, w);
            nb::gil_scoped_release release;
            e.run_u8_nhwc(x.data(), n, h, w, c, out.data());
        })
        .def("run_f32_nchw", [](Engine& e, F32Images x, F32Out out) {
            const int n = int(x.shape(0)), c = int(x.shape(1)), h = int(x.shape(2)), w = int(x.shape(3));
            check_out(e, out, n, h, w);
            nb::gil_scoped_release release;
            e.run_f32_nchw(x.data(), n, c, h, w, out.data());
        });
}
