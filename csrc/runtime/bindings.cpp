// Python bindings of the native runtime: the private module xnornet._engine.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "runtime/cpu.h"

namespace nb = nanobind;

NB_MODULE(_engine, m) {
    m.doc() = "xnornet native runtime (private; use xnornet.engine)";
    m.def("cpu_features", [] {
        const auto& f = xnornet::cpu_features();
        nb::dict d;
        d["popcnt"] = f.popcnt;
        d["avx2"] = f.avx2;
        d["avx512f"] = f.avx512f;
        d["avx512bw"] = f.avx512bw;
        d["avx512_vpopcntdq"] = f.avx512_vpopcntdq;
        return d;
    }, "ISA features usable on this CPU (CPUID and OS support via XGETBV).");
}
