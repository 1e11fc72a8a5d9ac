"""The native runtime's public face. Needs numpy only: importing it never imports torch."""
from __future__ import annotations

from . import _engine


def cpu_features() -> dict[str, bool]:
    """ISA features the native kernels may use on this CPU: popcnt, avx2, avx512f, avx512bw,
    avx512_vpopcntdq. Each is true only when the CPU has it *and* the OS saves its registers."""
    return dict(_engine.cpu_features())
