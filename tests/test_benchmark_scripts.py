"""The scripts in benchmarks/ still run against the current package (smoke runs, tiny sizes).

They are benchmarks, so nothing here checks a speed; only that each script runs to the end and
prints what its docstring promises, and that a bad argument is refused with a message."""
import subprocess
import sys
from pathlib import Path

import pytest

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
