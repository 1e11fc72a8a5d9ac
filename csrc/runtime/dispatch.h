// Run-time kernel selection: a table of implementations in priority order; the first one this
// CPU (and OS) supports wins, unless XNORNET_ISA or an explicit name forces one. An unsupported
// or unknown choice is an error, never a crash.
#pragma once
#include <string>
#include <vector>

#include "kernels/bconv.h"

namespace xnornet {

struct Implementation {
    std::string name;         // "amx+avx512", "avx512", "amx", "avx2", "generic"
    std::string description;
    const Kernels* kernels;
    bool supported;           // compiled in and usable on this CPU
    bool automatic = true;    // may `auto` pick it (false: only when asked for by name)
};

// Every implementation known to this build, best first.
const std::vector<Implementation>& implementations();

// name: "" or "auto" = $XNORNET_ISA if set, else the best supported. Throws std::invalid_argument.
const Implementation& select_implementation(const std::string& name);

}  // namespace xnornet
