"""End-to-end benchmark plumbing on tiny data: every row runs in its own process, agrees with
pytorch-bnn, and reports every number; OpenVINO's BinaryConvolution model matches our engine."""
import json
import time

import numpy as np
import pytest
import torch

import synthetic
from test_export import _checkpoint
from xnornet import cli
from xnornet import modelfile as mf
from xnornet.engine import Engine
from xnornet.export import export_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    data = synthetic.write_python_batches(tmp / "data", n_train=10, n_test=40)
    bnn, _ = _checkpoint("bireal", tmp, widths=(64, 128), depths=(1, 1))
    fp32, _ = _checkpoint("fp32", tmp, widths=(64, 128), depths=(1, 1))
    export_model(bnn, tmp / "bnn.xnor")
    return tmp, data, tmp / "bnn.xnor", fp32


def test_bench_end_to_end_quick(files):
    tmp, data, model, teacher = files
    out, png = tmp / "bench.json", tmp / "bench.png"
    assert cli.main(["bench", "--model-file", str(model), "--teacher", str(teacher), "--data-dir",
                     str(data), "--quick", "--threads", "1", "--json", str(out), "--plot", str(png)]) == 0
    report = json.loads(out.read_text())
    rows = {r["engine"]: r for r in report["results"]}
    skipped = " ".join(report["notes"])
    for engine in cli.ENGINE_NAMES:
        assert engine in rows or engine in skipped, engine
    assert {"xnornet", "pytorch-bnn", "pytorch-fp32"} <= set(rows)
    for name, r in rows.items():
        assert r["n"] == 40 and r["images_per_s"] > 0 and r["latency_ms"] > 0 and r["peak_rss_mb"] > 0
        if name.endswith("bnn") or name == "xnornet":
            assert r["agreement_with_pytorch_bnn"] == 1.0, name
    assert rows["xnornet"]["model_bytes"] == model.stat().st_size
    assert rows["xnornet"]["accuracy"] == rows["pytorch-bnn"]["accuracy"]
    assert {"cpu", "cores", "cpu_features", "versions"} <= set(report["machine"])
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bench_rounds_report_medians(files):
    tmp, data, model, _ = files
    out = tmp / "rounds.json"
    assert cli.main(["bench", "--model-file", str(model), "--data-dir", str(data), "--quick",
                     "--threads", "1", "--engines", "pytorch-bnn,xnornet", "--rounds", "3",
                     "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["rounds"] == 3 and len(report["results"]) == 2
    for r in report["results"]:
        for key in ("images_per_s", "latency_ms", "peak_rss_mb"):
            values = r[f"{key}_rounds"]
            assert len(values) == 3 and all(v > 0 for v in values)
            # speed: the median; memory: the peak over all rounds (the first runs the accuracy pass)
            assert r[key] == (max(values) if key == "peak_rss_mb" else sorted(values)[1])
        assert r["accuracy"] is not None and r["agreement_with_pytorch_bnn"] == 1.0


def test_xor_peak_isa_skips_tile_product_implementations():
    from xnornet.bench import xor_peak_isa

    def impls(*rows):
        return [{"name": n, "supported": s, "automatic": a} for n, s, a in rows]
    every = impls(("amx+avx512", True, True), ("avx512", True, True), ("amx", True, False),
                  ("avx2", True, True), ("generic", True, True))
    assert xor_peak_isa(every) == "avx512"
    no_avx512 = impls(("amx+avx512", False, True), ("avx512", False, True), ("amx", False, False),
                      ("avx2", True, True), ("generic", True, True))
    assert xor_peak_isa(no_avx512) == "avx2"
    assert xor_peak_isa(impls(("generic", True, True))) == "generic"


def test_engine_lists_agree():
    from xnornet.e2e_bench import ENGINES
    assert tuple(cli.ENGINE_NAMES) == ENGINES


def test_bench_and_bench_kernels_options_do_not_collide():
    args = cli.build_parser().parse_args(["bench", "--model-file", "x.xnor", "--threads", "2",
                                          "kernels", "--model-file", "y.xnor"])
    assert (args.model_file, args.threads, args.k_model_file) == ("x.xnor", (2,), "y.xnor")


def test_bench_rejects_unknown_engine(files, capsys):
    tmp, data, model, _ = files
    assert cli.main(["bench", "--model-file", str(model), "--engines", "tensorflow"]) == 2
    assert "unknown engines" in capsys.readouterr().err


def test_openvino_binary_convolution_matches_engine(files):
    ov = pytest.importorskip("openvino")
    from xnornet.openvino_model import to_openvino
    tmp, _, model, _ = files
    ops = mf.read_model(model)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    from xnornet.filemodel import FileModel
    x = FileModel(ops).normalize(images).numpy()
    compiled = ov.Core().compile_model(to_openvino(ops, batch=3), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    types = {n.get_rt_info()["layerType"].astype(str) for n in compiled.get_runtime_model().get_ordered_ops()}
    assert "BinaryConvolution" in types  # OpenVINO's own binary kernel runs, not a fallback
    np.testing.assert_allclose(compiled(x)[0], Engine.load(model).run(images), rtol=1e-4, atol=1e-4)


def test_bench_kernels_reports_every_op_of_the_run(files, tmp_path):
    """`xnornet bench kernels` on a small model: one row per binary conv with positive times and
    ratios, and the float stem conv and the head in the per-part line, whose parts add up to
    the whole network's time."""
    from xnornet.bench import bench_kernels, format_kernels, plot_kernels
    _, _, model, _ = files
    result = bench_kernels(model, batch=2, repeats=3, progress=False)
    binary = [i for i, op, _, _ in mf.layer_shapes(mf.read_model(model)) if op.kind == mf.BCONV]
    assert [r["op"] for r in result["layers"]] == binary
    assert all(r["engine_ms"] > 0 and r["torch_fp32_ms"] > 0 and r["speedup"] > 0 for r in result["layers"])
    # the speed-ups are medians of the per-round ratios, inside their range
    for r in result["layers"] + [{"speedup": result["network_speedup"],
                                  "speedup_range": result["network_speedup_range"]}]:
        low, high = r["speedup_range"]
        assert 0 < low <= r["speedup"] <= high
    assert [o["kind"] for o in result["other_ops"]] == ["conv_fp", "head"]
    parts = sum(r["engine_ms"] for r in result["layers"]) + sum(o["engine_ms"] for o in result["other_ops"])
    assert 0 < parts <= 1.5 * result["engine_total_ms"]
    text = format_kernels(result)
    assert "engine time by part: binary convs" in text and "float conv 3 -> 64" in text
    assert text.count("\n| ") == len(binary) + 1  # header and one row per binary conv
    assert "3 interleaved rounds" in text and f"(rounds: {result['network_speedup_range'][0]:.1f}-" in text
    plot_kernels(result, tmp_path / "k.png")
    assert (tmp_path / "k.png").stat().st_size > 0


def test_bench_refuses_an_empty_engine_list(files, capsys, monkeypatch):
    from xnornet import e2e_bench
    monkeypatch.setattr(e2e_bench, "run_bench", lambda *a, **k: pytest.fail("ran the bench"))
    _, _, model, _ = files
    for engines in (",", "", ",,"):
        assert cli.main(["bench", "--model-file", str(model), "--engines", engines, "--quick"]) == 2
        err = capsys.readouterr().err
        assert "--engines" in err and "no engine named" in err and "xnornet" in err


def test_bench_kernels_refuses_a_model_without_binary_convs(files, capsys, monkeypatch):
    """An exported FP32 teacher has no binary conv to time: an error, not an empty table."""
    import xnornet.bench
    monkeypatch.setattr(xnornet.bench, "bench_kernels", lambda *a, **k: pytest.fail("timed it"))
    tmp, _, _, teacher = files
    fp32 = tmp / "teacher.xnor"
    export_model(teacher, fp32)
    assert cli.main(["bench", "kernels", "--model-file", str(fp32)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xnornet bench: error:") and "has no binary conv layers" in err
    assert str(fp32) in err


def test_bench_refuses_an_fp32_model_file_or_a_binary_teacher(files, capsys, monkeypatch):
    """The BNN rows need a BNN, the FP32 rows the fp32 teacher: swapped files are an error up
    front, not a table whose rows are labelled wrong."""
    import xnornet.e2e_bench
    monkeypatch.setattr(xnornet.e2e_bench, "run_bench", lambda *a, **k: pytest.fail("benched it"))
    tmp, data, model, teacher = files
    fp32 = tmp / "teacher-only.xnor"
    export_model(teacher, fp32)
    assert cli.main(["bench", "--model-file", str(fp32), "--teacher", str(teacher), "--quick"]) == 2
    err = capsys.readouterr().err
    assert "has no binary conv layers" in err and str(fp32) in err
    student = tmp / "bireal.safetensors"  # the BNN's checkpoint, from the fixture
    assert cli.main(["bench", "--model-file", str(model), "--teacher", str(student), "--quick"]) == 2
    err = capsys.readouterr().err
    assert "holds a bireal model, not the fp32 teacher" in err


def test_kernel_rounds_interleave_the_engine_and_pytorch():
    """Each round times the engine, then every PyTorch run (each called twice, timed the second
    time), so a ratio compares two times taken moments apart."""
    from types import SimpleNamespace

    from xnornet.bench import interleaved_rounds
    log = []
    native = SimpleNamespace(set_profiling=lambda on: log.append(f"profiling {on}"),
                             last_profile=lambda: [len(log)])
    engine = SimpleNamespace(_native=native, run=lambda images: log.append("engine"))

    def slow_first_call():  # each round's first call of "torch a" is the slow one, untimed
        log.append("torch a")
        if log.count("torch a") % 2:
            time.sleep(0.05)
    runs = [slow_first_call, lambda: log.append("torch b")]
    totals, per_op, torch_times = interleaved_rounds(engine, None, runs, 3, progress=False)
    round_ = ["engine", "torch a", "torch a", "torch b", "torch b"]
    assert log == ["profiling True", "engine"] + round_ * 3 + ["profiling False"]
    assert totals.shape == (3,) and torch_times.shape == (3, 2) and per_op.shape == (3, 1)
    assert list(per_op[:, 0]) == [3, 8, 13]  # each round's own profile, read right after its run
    assert torch_times.max() < 0.04  # the second call of each pair is the one timed


def test_bench_kernels_pairs_each_layer_with_its_own_times(files, monkeypatch):
    """Each layer's speed-up is its PyTorch conv's time over its own op's share of the engine
    run, round by round (the FP32 network in column 0 of the PyTorch times): synthetic times
    with a different value per op, round and run catch any index mix-up."""
    import xnornet.bench
    _, _, model, _ = files
    shapes = mf.layer_shapes(mf.read_model(model))
    binary = [j for j, (_, op, _, _) in enumerate(shapes) if op.kind == mf.BCONV]
    rounds = 3

    def fake_rounds(engine, images, torch_runs, repeats, progress=True):
        assert repeats == rounds and len(torch_runs) == 1 + len(binary)
        per_op = np.array([[(j + 1) * (r + 1) for j in range(len(shapes))] for r in range(rounds)], float)
        torch_times = np.array([[100 * (n + 1) + r for n in range(len(torch_runs))] for r in range(rounds)], float)
        return per_op.sum(axis=1), per_op, torch_times
    monkeypatch.setattr(xnornet.bench, "interleaved_rounds", fake_rounds)
    result = xnornet.bench.bench_kernels(model, batch=2, repeats=rounds, progress=False)
    for n, (j, row) in enumerate(zip(binary, result["layers"])):
        ratios = [(100 * (n + 2) + r) / ((j + 1) * (r + 1)) for r in range(rounds)]
        assert row["speedup"] == pytest.approx(np.median(ratios))
        assert row["speedup_range"] == pytest.approx([min(ratios), max(ratios)])
        assert row["engine_ms"] == pytest.approx(1e3 * (j + 1) * 2)  # the median round's
        assert row["torch_fp32_ms"] == pytest.approx(1e3 * (100 * (n + 2) + 1))
    totals = [sum(j + 1 for j in range(len(shapes))) * (r + 1) for r in range(rounds)]
    assert result["network_speedup"] == pytest.approx(np.median([(100 + r) / totals[r] for r in range(rounds)]))
