"""The scripts in benchmarks/ still run against the current package (smoke runs, tiny sizes).

They are benchmarks, so nothing here checks a speed; only that each script runs to the end and
prints what its docstring promises, and that a bad argument is refused with a message."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xnornet.engine import implementations

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "benchmarks"


def run(script, *args, env=None):
    return subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from xnornet.bench import random_model_file
    return random_model_file(tmp_path_factory.mktemp("bench") / "random.xnor")


def test_compare_builds_reports_every_round_and_the_medians(model_file):
    out = run("compare_builds.py", "--rounds", "2", "--repeats", "1", "--batch", "3",
              "--model-file", model_file, "installed", "installed,XNORNET_ISA=generic")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rounds = [l for l in lines if l.startswith("round ")]
    assert len(rounds) == 4  # 2 rounds x 2 builds
    # the order rotates: round 2 starts with the second build
    assert rounds[0].startswith("round 1 installed:") and rounds[2].startswith("round 2 installed,")
    medians = lines[lines.index("median over 2 round(s):") + 1:]
    assert len(medians) == 2
    for line in medians:  # total and every binary conv layer of the default trunk (ops 2-10)
        assert "total " in line and all(f" {op}:" in line or f"| {op}:" in line for op in range(2, 11))


def test_compare_builds_refuses_a_missing_build():
    out = run("compare_builds.py", "/no/such/_engine.so")
    assert out.returncode != 0 and "no such build: /no/such/_engine.so" in out.stderr


def test_compare_isas_runs_and_agrees(model_file):
    out = run("compare_isas.py", "--isas", "generic", "--cases", "1x3", "--repeats", "1",
              "--model-file", model_file)
    assert out.returncode == 0, out.stderr
    assert "1 thread(s), batch    3: generic" in out.stdout


def test_latency_spread_runs(model_file):
    out = run("latency_spread.py", "--threads", "1", "--runs", "5", "--model-file", model_file)
    assert out.returncode == 0, out.stderr
    assert "threads 1 (OpenMP defaults): batch-1 latency median" in out.stdout


def test_cycles_refuses_a_path_without_the_tile_kernel(model_file):
    env = dict(os.environ, XNORNET_ISA="generic")
    out = run("cycles.py", "--model-file", model_file, "--batch", "2", "--runs", "1", env=env)
    assert out.returncode != 0 and "tile kernel" in out.stderr


@pytest.mark.skipif(not any(i["name"] == "amx" and i["supported"] for i in implementations()),
                    reason="the counters are in the AMX tile kernel")
def test_cycles_counts_every_layer_shape_in_the_diagnostic_build(model_file, tmp_path):
    """The diagnostic build (cmake -DXNORNET_CYCLES=ON, what `make cycles` runs) prints each
    layer shape's expansion, tile and epilogue cycles per output pixel at exit."""
    bin_dir = Path(sys.executable).parent
    build = tmp_path / "cycles"
    subprocess.run([str(bin_dir / "cmake"), "-S", str(ROOT), "-B", str(build), "-G", "Ninja",
                    f"-DCMAKE_MAKE_PROGRAM={bin_dir / 'ninja'}", "-DCMAKE_BUILD_TYPE=Release",
                    "-DXNORNET_CYCLES=ON", f"-DPython_EXECUTABLE={sys.executable}"],
                   check=True, capture_output=True)
    subprocess.run([str(bin_dir / "cmake"), "--build", str(build)], check=True, capture_output=True)
    lib = next(build.glob("_engine*.so"))
    out = run("cycles.py", "--model-file", model_file, "--batch", "8", "--runs", "1",
              env=dict(os.environ, XNORNET_NATIVE_LIB=str(lib)))
    assert out.returncode == 0, out.stderr
    lines = [l for l in out.stderr.splitlines() if "TSC cycles per output pixel" in l]
    # the default trunk's five binary conv shapes (64 -> 64, 64 -> 128 s2, 128 -> 128, ...)
    assert len(lines) == 5, out.stderr
    for line in lines:
        parts = dict(p.strip().split(" ", 1) for p in line.split(":", 1)[1].split(",")[:3])
        assert all(float(v.split()[0]) > 0 for v in parts.values()), line
