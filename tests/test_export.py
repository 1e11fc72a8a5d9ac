"""Export: checkpoints of every model kind -> packed file -> native engine and the PyTorch rebuild
agree with the original PyTorch model; file size; the CLI commands around it."""
import json

import numpy as np
import pytest
import torch

import reference
from xnornet.data import CIFAR10_CLASSES
from xnornet import cli
from xnornet.checkpoint import save_checkpoint
from xnornet.engine import Engine, implementations
from xnornet.transforms import normalize
from xnornet.export import export_model
from xnornet.filemodel import FileModel
from xnornet.models import build_model

ISAS = [i["name"] for i in implementations() if i["supported"]]
RNG = np.random.default_rng(0)


def _checkpoint(kind, tmp_path, **cfg):
    torch.manual_seed(1)
    model = build_model(kind, **cfg)
    model.train()
    with torch.no_grad():  # give batch norms non-trivial running statistics
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32) * 2 + 0.3)
        for m in model.modules():
            if hasattr(m, "threshold"):
                m.threshold.normal_(0, 0.2)
    model.eval()
    path = tmp_path / f"{kind}.safetensors"
    save_checkpoint(path, model, {"model_config": model.config.to_dict(), "mean": [0.5, 0.4, 0.3],
                                  "std": [0.2, 0.3, 0.25], "classes": [f"k{i}" for i in range(10)]})
    return path, model


@pytest.mark.parametrize("kind", ["fp32", "xnor", "bireal"])
def test_exported_model_agrees_with_pytorch(kind, tmp_path):
    ckpt, model = _checkpoint(kind, tmp_path, widths=(64, 128), depths=(2, 1))
    info = export_model(ckpt, tmp_path / "m.xnor")
    images = RNG.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    file_model = FileModel.load(tmp_path / "m.xnor")
    x = file_model.normalize(images)
    # The input normalization, from the checkpoint's mean/std (not the file's), as training has it.
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.3, 0.25])
    by_hand = ((images / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(x.numpy(), by_hand, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x.numpy(), normalize(torch.from_numpy(images), [0.5, 0.4, 0.3],
                                                    [0.2, 0.3, 0.25]).numpy(), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        from_file, original = file_model(x).numpy(), model(x).numpy()
    np.testing.assert_allclose(from_file, original, rtol=1e-4, atol=1e-4)
    for isa in ISAS:
        engine = Engine.load(tmp_path / "m.xnor", threads=2, isa=isa)
        logits = engine.run(images)
        np.testing.assert_allclose(logits, from_file, rtol=1e-4, atol=1e-4)
        assert np.array_equal(engine.predict(images), from_file.argmax(1))
    assert info["ops"] == 2 + 3 + 1 and info["bytes"] == (tmp_path / "m.xnor").stat().st_size


def test_default_bireal_file_is_25x_smaller_than_fp32(tmp_path):
    ckpt, model = _checkpoint("bireal", tmp_path)
    info = export_model(ckpt, tmp_path / "m.xnor")
    assert info["ratio"] >= 25, info
    # Counted here too: 4 bytes per trained parameter against the file's size on disk.
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert fp32_bytes / (tmp_path / "m.xnor").stat().st_size >= 25
    assert info["bytes"] == (tmp_path / "m.xnor").stat().st_size


def test_cli_export_eval_and_bench(tmp_path, capsys):
    import synthetic
    data = synthetic.write_python_batches(tmp_path / "data", n_train=10, n_test=60)
    ckpt, _ = _checkpoint("bireal", tmp_path, widths=(64, 128), depths=(1, 1))
    out = tmp_path / "m.xnor"
    assert cli.main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert "smaller" in capsys.readouterr().out and out.is_file()
    results = {}
    for engine in ("native", "torch"):
        js = tmp_path / f"{engine}.json"
        assert cli.main(["eval", "--model-file", str(out), "--engine", engine, "--data-dir", str(data),
                         "--json", str(js), "--batch-size", "25"]) == 0
        results[engine] = json.loads(js.read_text())
        assert results[engine]["n"] == 60 and results[engine]["engine"] == engine
        reference.check_eval_per_class(results[engine], CIFAR10_CLASSES)
    png = tmp_path / "confusion.png"
    assert cli.main(["eval", "--model-file", str(out), "--data-dir", str(data), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "per class (%)" in capsys.readouterr().out
    assert results["native"]["accuracy"] == results["torch"]["accuracy"]
    # Against an answer computed here, outside the CLI: every image scored against its own label.
    from xnornet.data import load_cifar10
    test = load_cifar10(str(data), test_only=True).test
    preds = Engine.load(out).predict(test.images)
    assert len(set(preds)) > 2  # the model tells images apart, so misaligned labels would show
    expected = np.zeros((10, 10), int)
    np.add.at(expected, (test.labels, preds), 1)
    assert results["native"]["accuracy"] == pytest.approx((preds == test.labels).mean())
    np.testing.assert_array_equal(results["native"]["confusion"], expected)
    js = tmp_path / "both.json"
    assert cli.main(["eval", "--model-file", str(out), "--engine", "both", "--data-dir", str(data),
                     "--json", str(js)]) == 0
    both = json.loads(js.read_text())
    assert both["top1_agreement"] == 1.0 and both["max_abs_logit_diff"] < 1e-3
    assert both["accuracy_native"] == results["native"]["accuracy"]
    js = tmp_path / "bench.json"
    png = tmp_path / "kernels.png"
    assert cli.main(["bench", "kernels", "--model-file", str(out), "--batch", "2", "--repeats", "1",
                     "--json", str(js), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bench = json.loads(js.read_text())
    assert [r["cin"] for r in bench["layers"]] == [64, 64]  # the two binary convs
    assert all(r["engine_ms"] > 0 and r["torch_fp32_ms"] > 0 for r in bench["layers"])
    assert bench["peak_binary_gmacs"] > 0
    assert "| op |" in capsys.readouterr().out
    from xnornet.engine import implementations
    if any(i["name"] == "amx" and i["supported"] for i in implementations()):
        # amx's own peak is the tile-product loop's; the table adds the XOR-popcount one
        assert cli.main(["bench", "kernels", "--model-file", str(out), "--batch", "2", "--repeats", "1",
                         "--isa", "amx", "--json", str(js)]) == 0
        amx = json.loads(js.read_text())
        assert amx["xor_peak_isa"] != "amx" and amx["xor_peak_binary_gmacs"] > 0
        assert amx["peak_binary_gmacs"] != amx["xor_peak_binary_gmacs"]
        for r in amx["layers"]:
            assert r["xor_peak_fraction"] == pytest.approx(
                r["peak_fraction"] * amx["peak_binary_gmacs"] / amx["xor_peak_binary_gmacs"])
        assert "% of XOR-popcount peak" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["export", "--checkpoint", str(tmp_path / "none.safetensors"),
                     "--out", str(tmp_path / "x.xnor")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.xnor"
    bad.write_bytes(b"XNORNET\0" + b"\0" * 100)
    assert cli.main(["eval", "--model-file", str(bad), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "invalid model file" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["fp32", "xnor", "bireal"])
def test_onnx_export_runs_in_onnxruntime_and_agrees(kind, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    ckpt, _ = _checkpoint(kind, tmp_path, widths=(64, 128), depths=(1, 1))
    export_model(ckpt, tmp_path / "m.xnor")
    assert cli.main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.xnor"),
                     "--onnx", str(tmp_path / "m.onnx")]) == 0
    file_model = FileModel.load(tmp_path / "m.xnor")
    images = RNG.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    x = file_model.normalize(images)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": x.numpy()})[0]
    with torch.no_grad():
        want = file_model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if kind != "fp32":  # binary weights 1 bit each, as in the packed file, not 32
        assert (tmp_path / "m.onnx").stat().st_size < 1.5 * (tmp_path / "m.xnor").stat().st_size


def test_onnx_sign_weights_subgraph_unpacks_every_bit(tmp_path):
    """Awkward sizes (not a multiple of 8) and both signs: the folded subgraph gives the weights."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from xnornet.onnx_export import _Graph
    signs = RNG.random((5, 3, 3, 7)) < 0.5  # 315 bits
    g = _Graph()
    g.sign_weights(signs)
    g.nodes[-1].output[0] = "w"
    graph = helper.make_graph(g.nodes, "t", [], [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)],
                              g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "w.onnx"
    path.write_bytes(model.SerializeToString())
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["w"], {})[0]
    np.testing.assert_array_equal(got, np.where(signs, 1.0, -1.0).astype(np.float32))


def test_cli_predict_top_classes(tmp_path, capsys):
    from PIL import Image
    ckpt, _ = _checkpoint("bireal", tmp_path, widths=(64, 128), depths=(1, 1))
    export_model(ckpt, tmp_path / "m.xnor")
    paths = []
    for i, size in enumerate([(32, 32), (48, 40)]):  # any size: resized to the model's input
        path = tmp_path / f"img{i}.png"
        Image.fromarray(RNG.integers(0, 256, size + (3,), dtype=np.uint8)).save(path)
        paths.append(str(path))
    out = tmp_path / "p.json"
    assert cli.main(["predict", *paths, "--model-file", str(tmp_path / "m.xnor"), "--top", "3",
                     "--json", str(out)]) == 0
    preds = json.loads(out.read_text())
    assert [p["image"] for p in preds] == paths
    for p in preds:
        probs = [t["probability"] for t in p["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(t["class"].startswith("k") for t in p["top"])
    # The same numbers computed here: PIL's bilinear resize, the engine's logits, a softmax.
    engine = Engine.load(tmp_path / "m.xnor")
    for p, path in zip(preds, paths):
        with Image.open(path) as im:
            x = np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR))[None]
        logits = engine.run(x)[0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        best = np.argsort(-probs)[:3]
        assert [t["class"] for t in p["top"]] == [engine.class_names[i] for i in best]
        np.testing.assert_allclose([t["probability"] for t in p["top"]], probs[best], rtol=1e-5)
    assert paths[0] in capsys.readouterr().out
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert cli.main(["predict", str(tmp_path / "bad.png"), "--model-file", str(tmp_path / "m.xnor")]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_cli_defaults_to_the_shipped_model_or_says_there_is_none(tmp_path, capsys, monkeypatch):
    import xnornet.assets as assets
    monkeypatch.setattr(assets, "SHIPPED_MODEL", tmp_path / "none.xnor")
    assert cli.main(["eval", "--data-dir", str(tmp_path)]) == 2
    assert "--model-file" in capsys.readouterr().err
    ckpt, _ = _checkpoint("xnor", tmp_path, widths=(64, 128), depths=(1, 1))
    export_model(ckpt, tmp_path / "shipped.xnor")
    monkeypatch.setattr(assets, "SHIPPED_MODEL", tmp_path / "shipped.xnor")
    import synthetic
    data = synthetic.write_python_batches(tmp_path / "data", n_train=10, n_test=20)
    assert cli.main(["eval", "--data-dir", str(data), "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["model_file"] == str(tmp_path / "shipped.xnor")


def test_shipped_models_are_small_trained_and_run(capsys):
    """The packed BNN in the package: < 1 MB, CIFAR-10 classes, engine == its PyTorch rebuild, and
    the default of eval/bench; its teacher loads as the same trunk."""
    from xnornet.assets import SHIPPED_MODEL, SHIPPED_TEACHER
    from xnornet.checkpoint import load_model
    assert SHIPPED_MODEL.stat().st_size < 1_000_000
    file_model = FileModel.load(SHIPPED_MODEL)
    assert list(file_model.class_names) == ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                            "frog", "horse", "ship", "truck"]
    images = RNG.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = file_model(file_model.normalize(images)).numpy()
    engine = Engine.load(SHIPPED_MODEL, threads=1)
    np.testing.assert_allclose(engine.run(images), expected, rtol=1e-3, atol=1e-3)
    teacher, meta = load_model(SHIPPED_TEACHER)
    assert meta["model_config"]["widths"] == [64, 128, 256] and meta["test_acc"] > 0.85
    assert cli.main(["bench", "kernels", "--batch", "1", "--repeats", "1"]) == 0
    assert str(SHIPPED_MODEL) in capsys.readouterr().out
