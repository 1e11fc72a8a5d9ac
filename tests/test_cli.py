"""The CLI's answers to the mistakes a new user makes first: each is a one-line error (exit 2)
that names the problem, found before any long work, and nothing half-written is left behind."""
import pytest

from test_export import _checkpoint
from xnornet import cli
from xnornet import e2e_bench
from xnornet import modelfile as mf
from xnornet.assets import shipped_model
from xnornet.errors import CheckpointError
from xnornet.modelfile import ModelFileError
from xnornet.export import export_model
from xnornet.train import TrainConfig, train


def _error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"xnornet {argv[0]}: error: ") and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path, _ = _checkpoint("bireal", tmp_path_factory.mktemp("cli"), widths=(64,), depths=(1,))
    return path


def test_output_paths_are_checked_before_the_work(tmp_path, capsys, monkeypatch):
    # A data folder that does not exist: had the work started first, the error would be about it.
    monkeypatch.setenv("XNORNET_DATA", str(tmp_path / "no-data-here"))
    missing = tmp_path / "no-such-folder" / "out.json"
    assert "--json" in _error(capsys, ["eval", "--json", str(missing)])
    assert "is a folder" in _error(capsys, ["eval", "--json", str(tmp_path)])
    assert "--plot" in _error(capsys, ["bench", "--plot", str(missing)])
    assert "does not exist" in _error(capsys, ["bench", "kernels", "--json", str(missing)])
    assert "--json" in _error(capsys, ["predict", "x.png", "--json", str(missing)])


def test_export_into_a_folder_or_missing_folder(ckpt, tmp_path, capsys):
    assert "is a folder" in _error(capsys, ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path)])
    bad = tmp_path / "nodir" / "m.xnor"
    assert "nodir" in _error(capsys, ["export", "--checkpoint", str(ckpt), "--out", str(bad)])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no .tmp left anywhere


def test_write_model_leaves_no_temporary_file_when_writing_fails(ckpt, tmp_path, monkeypatch):
    export_model(ckpt, tmp_path / "good.xnor")
    ops = mf.read_model(tmp_path / "good.xnor")

    def fail(self, target):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(mf.Path, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        mf.write_model(tmp_path / "m.xnor", ops)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.xnor"]


def test_wrong_kind_of_file(ckpt, tmp_path, capsys):
    model = tmp_path / "m.xnor"
    export_model(ckpt, model)
    err = _error(capsys, ["eval", "--checkpoint", str(model)])
    assert "packed model file" in err and "--model-file" in err
    with pytest.raises(CheckpointError, match="packed model file"):
        export_model(model, tmp_path / "again.xnor")
    assert "is a folder, not a file" in _error(capsys, ["eval", "--model-file", str(tmp_path)])
    with pytest.raises(ModelFileError, match="is a folder"):
        mf.read_model(tmp_path)
    assert "is a folder" in _error(capsys, ["export", "--checkpoint", str(tmp_path),
                                            "--out", str(tmp_path / "x.xnor")])


def test_options_that_would_be_ignored_are_refused(ckpt, capsys):
    err = _error(capsys, ["eval", "--checkpoint", str(ckpt), "--engine", "both"])
    assert "--engine and --threads are for --model-file" in err
    _error(capsys, ["eval", "--checkpoint", str(ckpt), "--threads", "1"])
    err = _error(capsys, ["bench", "--model-file", "my.xnor", "--json", "k.json", "kernels"])
    assert "--model-file, --json before `kernels`" in err
    with pytest.raises(ValueError, match="only with --kd"):
        TrainConfig(teacher_path="teacher.safetensors")
    with pytest.raises(SystemExit):  # argparse: thread counts must be >= 1
        cli.build_parser().parse_args(["bench", "--threads", "1,0"])
    capsys.readouterr()


def test_bench_checks_the_model_file_first_and_fails_when_an_engine_fails(tmp_path, capsys,
                                                                          monkeypatch):
    called = []
    monkeypatch.setattr(e2e_bench, "run_bench", lambda *a, **k: called.append(1) or {})
    bad = tmp_path / "typo.xnor"
    assert "does not exist" in _error(capsys, ["bench", "--model-file", str(bad)])
    bad.write_bytes(b"not a model")
    assert "invalid model file" in _error(capsys, ["bench", "--model-file", str(bad)])
    assert called == []  # refused before the data set, the teacher export, the subprocesses

    report = {"machine": {"cpu": "test", "cores": 2}, "data": "d", "results": [], "notes": [],
              "failures": ["xnornet (1 threads), round 1: RuntimeError: boom"]}
    monkeypatch.setattr(e2e_bench, "run_bench", lambda *a, **k: report)
    assert cli.main(["bench", "--model-file", str(shipped_model())]) == 1
    out = capsys.readouterr()
    assert "failed: xnornet (1 threads), round 1: RuntimeError: boom" in out.out
    assert "1 engine run(s) failed" in out.err


def _raising(monkeypatch, error):
    def command(a):
        raise error
    monkeypatch.setitem(cli.COMMANDS, "summary", command)


def test_bad_shapes_and_missing_packages_are_one_line_errors(capsys, monkeypatch):
    assert "widths" in _error(capsys, ["summary", "--widths", "0,0,0"])
    _raising(monkeypatch, ModuleNotFoundError("No module named 'onnx'", name="onnx"))
    err = _error(capsys, ["summary"])
    assert "No module named 'onnx'" in err and "pip install 'xnornet[onnx]'" in err
    _raising(monkeypatch, PermissionError(13, "Permission denied", "/root/x.json"))
    assert "Permission denied" in _error(capsys, ["summary"])


@pytest.mark.parametrize("error", [
    ModuleNotFoundError("No module named 'xnornet._engine'", name="xnornet._engine"),  # broken build
    ImportError("cannot import name 'x' from 'xnornet.models'"),  # a bug
    OSError(28, "No space left on device"),  # about no file the user named
    RuntimeError("a bug")])
def test_internal_errors_keep_their_traceback(monkeypatch, error):
    _raising(monkeypatch, error)
    with pytest.raises(type(error)):
        cli.main(["summary"])


def test_debug_switch_and_broken_pipe(monkeypatch, capsys):
    _raising(monkeypatch, ValueError("bad value"))
    monkeypatch.setenv("XNORNET_DEBUG", "1")
    with pytest.raises(ValueError):
        cli.main(["summary"])
    monkeypatch.delenv("XNORNET_DEBUG")
    _raising(monkeypatch, BrokenPipeError())
    monkeypatch.setattr("sys.stderr", open("/dev/null", "w"))  # main closes it
    assert cli.main(["summary"]) == 1


def test_export_onnx_without_onnx_writes_nothing(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # import onnx -> ModuleNotFoundError
    out = tmp_path / "m.xnor"
    err = _error(capsys, ["export", "--checkpoint", str(ckpt), "--out", str(out), "--onnx",
                          str(tmp_path / "m.onnx")])
    assert "xnornet[onnx]" in err and not out.exists()


def test_bench_checks_the_teacher_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(e2e_bench, "run_bench", lambda *a, **k: pytest.fail("ran the bench"))
    err = _error(capsys, ["bench", "--teacher", str(tmp_path / "teacher.safetensors")])
    assert "teacher.safetensors does not exist" in err


def test_write_model_refuses_what_readers_refuse(ckpt, tmp_path):
    export_model(ckpt, tmp_path / "good.xnor")
    ops = mf.read_model(tmp_path / "good.xnor")
    b = next(i for i, op in enumerate(ops) if op.kind == mf.BCONV)
    ops[b].tensors[3] = ops[b].tensors[3].copy()
    ops[b].tensors[3][0] = float("nan")  # a diverged run's output scale
    with pytest.raises(ModelFileError, match="NaN or Inf"):
        mf.write_model(tmp_path / "nan.xnor", ops)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mf.write_model(tmp_path / "nodir" / "m.xnor", mf.read_model(tmp_path / "good.xnor"))
    with pytest.raises(ValueError, match="is a folder"):
        mf.write_model(tmp_path, mf.read_model(tmp_path / "good.xnor"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.xnor"]


def test_train_resume_does_not_need_the_init_checkpoint(tmp_path):
    """--init-from is ignored when --resume finds a checkpoint: its file may be gone by then.
    The checkpoint itself is checked up front (a broken one: a clear error before any data)."""
    from dataclasses import asdict

    from xnornet.checkpoint import save_checkpoint
    from xnornet.models import build_model
    from xnornet.train import _check_before_data
    out = tmp_path / "stage2"
    out.mkdir()
    gone = str(tmp_path / "stage1" / "model.safetensors")
    cfg = TrainConfig(out=str(out), resume=True, init_from=gone)
    model = build_model(cfg.model)
    save_checkpoint(out / "checkpoint.safetensors", model,
                    {"model_config": model.config.to_dict(), "train_config": asdict(cfg),
                     "world_size": 1, "history": [], "epoch": 1})
    _check_before_data(cfg)
    (out / "checkpoint.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not an xnornet checkpoint"):
        _check_before_data(cfg)
    with pytest.raises(CheckpointError, match="does not exist"):
        _check_before_data(TrainConfig(out=str(out), init_from=gone))
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        _check_before_data(TrainConfig(out=str(tmp_path / "a-file")))


def test_train_checks_its_inputs_before_loading_data(tmp_path):
    no_data = str(tmp_path / "no-data")  # loading it would fail with a DataError
    base = dict(data_dir=no_data, out=str(tmp_path / "run"), epochs=1)
    with pytest.raises(CheckpointError, match="teacher.safetensors does not exist"):
        train(TrainConfig(kd=True, teacher_path=str(tmp_path / "teacher.safetensors"), **base))
    with pytest.raises(CheckpointError, match="is a folder"):
        train(TrainConfig(init_from=str(tmp_path), **base))
    with pytest.raises(ValueError, match="must pair up"):
        train(TrainConfig(widths=(64, 128), depths=(1,), **base))


def test_summary_of_a_model_file_needs_no_torch(ckpt, tmp_path):
    """Ops, shapes, bytes and MACs of a packed file, on an inference-only install."""
    import subprocess
    import sys
    model = tmp_path / "m.xnor"
    export_model(ckpt, model)
    code = ("import sys; from xnornet.cli import main; rc = main(['summary', '--model-file', sys.argv[1]]);"
            "assert 'torch' not in sys.modules, 'imported torch'; sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines() if line[:4].strip().isdigit()]
    assert [r[1] for r in rows] == ["INPUT", "CONV_FP", "BCONV", "HEAD"]
    conv = rows[2]  # the one binary conv: 64 -> 64 k3 on 32x32, identity shortcut
    assert conv[2:5] == ["64", "->", "64"] and conv[5:7] == ["3/1/1", "identity"]
    assert int(conv[-2].replace(",", "")) == 32 * 32 * 64 * 64 * 9
    assert "classes (10): k0, k1" in run.stdout
    assert "is a folder" in subprocess.run(
        [sys.executable, "-m", "xnornet", "summary", "--model-file", str(tmp_path)],
        capture_output=True, text=True).stderr


def test_more_options_that_would_be_ignored_are_refused(ckpt, tmp_path, capsys):
    model = tmp_path / "m.xnor"
    export_model(ckpt, model)
    err = _error(capsys, ["summary", "--model", "xnor", "--widths", "64,128", "--checkpoint", str(ckpt)])
    assert "--model, --widths: not used here" in err
    assert "--depths" in _error(capsys, ["summary", "--depths", "1,1,1", "--model-file", str(model)])
    assert "--threads" in _error(capsys, ["eval", "--model-file", str(model), "--engine", "torch",
                                          "--threads", "2"])
    err = _error(capsys, ["train", "--kd-alpha", "0.3", "--kd-temperature", "4",
                          "--out", str(tmp_path / "run")])
    assert "--kd-alpha, --kd-temperature: not used here" in err and "add --kd" in err
    assert not (tmp_path / "run").exists()
    assert cli.main(["summary", "--model", "xnor", "--widths", "16,32", "--depths", "1,1"]) == 0
    assert "widths (16, 32)" in capsys.readouterr().out


@pytest.mark.parametrize("field,value,flag", [("lr", -0.1, "--lr"), ("lr", 0.0, "--lr"),
                                              ("weight_decay", -1e-4, "--weight-decay"),
                                              ("label_smoothing", 1.0, "--label-smoothing"),
                                              ("label_smoothing", -0.1, "--label-smoothing"),
                                              ("warmup_epochs", -1, "--warmup-epochs")])
def test_train_numbers_are_checked_by_name(field, value, flag):
    """Not by torch, at the first step after the data has loaded, in its own words."""
    with pytest.raises(ValueError, match=flag):
        TrainConfig(**{field: value})


def test_plot_format_is_checked_before_the_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XNORNET_DATA", str(tmp_path / "no-data-here"))
    err = _error(capsys, ["eval", "--plot", str(tmp_path / "c.txt")])
    assert "--plot" in err and "unknown image format '.txt'" in err and ".png" in err
    assert "--plot" in _error(capsys, ["bench", "kernels", "--plot", str(tmp_path / "k")])
    assert "--plot" in _error(capsys, ["bench", "--plot", str(tmp_path / "b.json")])


def test_eval_compares_the_models_classes_with_the_data_sets(ckpt, tmp_path, capsys):
    import numpy as np
    import synthetic
    from xnornet.data import CIFAR10_CLASSES
    data = synthetic.write_python_batches(tmp_path / "data", n_train=10, n_test=20)
    model = tmp_path / "m.xnor"
    export_model(ckpt, model)  # classes k0..k9: another naming, scored but said
    assert cli.main(["eval", "--model-file", str(model), "--data-dir", str(data), "--no-progress"]) == 0
    assert "note: the model's classes ['k0'" in capsys.readouterr().err
    ops = mf.read_model(model)
    names = "\n".join(reversed(CIFAR10_CLASSES)).encode()
    ops[-1].tensors[4] = np.frombuffer(names, np.uint8)
    mf.write_model(model, ops)
    assert "another order" in _error(capsys, ["eval", "--model-file", str(model), "--data-dir", str(data)])
    ops[-1].tensors[4] = np.frombuffer("\n".join(CIFAR10_CLASSES).encode(), np.uint8)
    mf.write_model(model, ops)
    assert cli.main(["eval", "--model-file", str(model), "--data-dir", str(data), "--no-progress"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_predict_refuses_decompression_bombs(tmp_path, capsys, monkeypatch):
    import numpy as np
    from PIL import Image
    img = tmp_path / "big.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 > 2 x 1000: Pillow's own error
    assert "cannot read image" in _error(capsys, ["predict", str(img)])


def test_python_readers_refuse_what_the_engine_refuses(ckpt, tmp_path, capsys):
    """Summary and the PyTorch rebuild read files in Python: a valid checksum over a bad op must
    give the same one-line error as the engine, not a ZeroDivisionError or an IndexError."""
    good = tmp_path / "good.xnor"
    export_model(ckpt, good)
    ops = mf.read_model(good)
    b = next(i for i, op in enumerate(ops) if op.kind == mf.BCONV)
    ops[b].params[3] = 0  # stride 0
    bad = tmp_path / "stride0.xnor"
    bad.write_bytes(mf.to_bytes(ops))
    for argv in (["summary", "--model-file", str(bad)],
                 ["eval", "--model-file", str(bad), "--engine", "torch"]):
        assert "kernel/stride/pad out of range" in _error(capsys, argv)


def test_non_xnornet_safetensors_says_what_is_missing(tmp_path, capsys):
    import numpy as np
    from safetensors.numpy import save_file
    generic = tmp_path / "generic.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(generic))
    for argv in (["summary", "--checkpoint", str(generic)],
                 ["export", "--checkpoint", str(generic), "--out", str(tmp_path / "m.xnor")]):
        assert "no xnornet metadata" in _error(capsys, argv)


def test_whole_number_options_say_what_they_expect(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["eval", "--subset", "abc"])
    err = capsys.readouterr().err
    assert "expected a whole number >= 1, got 'abc'" in err and "_positive" not in err


def test_train_alias_writes_to_the_models_own_folder(monkeypatch):
    """`--model baseline` trains fp32, so its default output folder is runs/fp32."""
    import xnornet.train as xtrain
    seen = []
    monkeypatch.setattr(xtrain, "train", lambda cfg: seen.append(cfg) or None)
    assert cli.main(["train", "--model", "baseline", "--epochs", "1"]) == 0
    assert seen[0].model == "fp32" and seen[0].out == "runs/fp32"


def test_export_never_writes_over_its_input_or_one_output_over_the_other(ckpt, tmp_path, capsys,
                                                                          monkeypatch):
    """`--out` naming the checkpoint (however spelled) would replace it with the .xnor; `--out X
    --onnx X` would leave only the ONNX. Both refused before anything is written."""
    import shutil
    mine = tmp_path / "ck.safetensors"
    shutil.copy(ckpt, mine)
    original = mine.read_bytes()
    (tmp_path / "link.safetensors").symlink_to(mine)
    monkeypatch.chdir(tmp_path)
    for out in (str(mine), "ck.safetensors", f"../{tmp_path.name}/ck.safetensors", "link.safetensors"):
        err = _error(capsys, ["export", "--checkpoint", str(mine), "--out", out])
        assert "is the --checkpoint file" in err and "replace the input" in err
    err = _error(capsys, ["export", "--checkpoint", str(mine), "--out", "m.xnor", "--onnx", str(mine)])
    assert "--onnx" in err and "is the --checkpoint file" in err
    err = _error(capsys, ["export", "--checkpoint", str(mine), "--out", "m.xnor", "--onnx", "./m.xnor"])
    assert "--out and --onnx are one file" in err
    assert mine.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors", "link.safetensors"]


def test_files_that_are_not_regular_files_are_named_so(capsys):
    """A device (or a FIFO) exists: "does not exist" would send the user looking for a typo."""
    assert "model file /dev/zero is not a regular file" in _error(
        capsys, ["summary", "--model-file", "/dev/zero"])
    assert "checkpoint /dev/null is not a regular file" in _error(
        capsys, ["export", "--checkpoint", "/dev/null", "--out", "/tmp/never-written.xnor"])
    assert "does not exist" in _error(capsys, ["summary", "--model-file", "/no/such/file.xnor"])


@pytest.mark.parametrize("kind", ["bireal", "xnor", "fp32"])
def test_summary_counts_binary_weights_as_the_model_file_does(kind, tmp_path, capsys):
    """The learnable per-channel scales (alpha) of a binary conv are 32-bit floats, not binary
    parameters: `summary --checkpoint` and `summary --model-file` agree on the binary count."""
    import re
    path, model = _checkpoint(kind, tmp_path, widths=(64, 128), depths=(1, 1))
    export_model(path, tmp_path / "m.xnor")
    assert cli.main(["summary", "--checkpoint", str(path)]) == 0
    torch_side = capsys.readouterr().out
    assert cli.main(["summary", "--model-file", str(tmp_path / "m.xnor")]) == 0
    file_side = capsys.readouterr().out
    binary = int(re.search(r"parameters: ([\d,]+) binary", torch_side)[1].replace(",", ""))
    floats = int(re.search(r"binary \(1 bit\), ([\d,]+) float", torch_side)[1].replace(",", ""))
    in_file = int(re.search(r"([\d,]+) binary weights", file_side)[1].replace(",", ""))
    assert binary == in_file
    assert binary + floats == sum(p.numel() for p in model.parameters())
    if kind != "fp32":
        assert binary == 64 * 64 * 9 + 64 * 128 * 9  # the two binary convs' kernels, nothing else


def test_train_refuses_an_out_folder_holding_a_run_and_cutout_as_big_as_the_image(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XNORNET_DATA", str(tmp_path / "no-data-here"))  # refused before the data
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"hours of training")
    err = _error(capsys, ["train", "--out", str(run), "--epochs", "1"])
    assert "already holds a run (model.safetensors)" in err and "--overwrite" in err
    assert (run / "model.safetensors").read_bytes() == b"hours of training"
    assert "--overwrite and --resume" in _error(capsys, ["train", "--out", str(run), "--overwrite",
                                                         "--resume"])
    assert "--cutout" in _error(capsys, ["train", "--cutout", "100", "--out", str(tmp_path / "new")])
    import xnornet.train as xtrain
    seen = []
    monkeypatch.setattr(xtrain, "train", lambda cfg: seen.append(cfg) or None)
    assert cli.main(["train", "--out", str(run), "--overwrite"]) == 0
    assert seen[0].overwrite and not seen[0].resume
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "--overwrite" in capsys.readouterr().out
