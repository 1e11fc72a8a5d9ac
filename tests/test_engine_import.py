"""The native module builds, imports without torch, and detects CPU features like the kernel does."""
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from xnornet import engine


def test_engine_import_needs_no_torch():
    code = "import sys, xnornet.engine; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or
                    not Path("/proc/cpuinfo").exists(), reason="needs Linux on x86-64")
def test_cpu_features_agree_with_the_kernel():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    f = engine.cpu_features()
    assert set(f) == {"popcnt", "avx2", "avx512f", "avx512bw", "avx512_vpopcntdq", "amx_int8"}
    # The kernel lists a flag only when the OS enables its state, as our XGETBV check does.
    for ours, linux in [("popcnt", "popcnt"), ("avx2", "avx2"), ("avx512f", "avx512f"),
                        ("avx512bw", "avx512bw"), ("avx512_vpopcntdq", "avx512_vpopcntdq"),
                        ("amx_int8", "amx_int8")]:
        assert f[ours] == (linux in flags), ours
