"""Training: KD loss, schedule, augmentation, checkpoints, a real tiny run, resume, DDP, CLI."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synthetic import write_python_batches
import reference
from xnornet import cli
from xnornet.data import CIFAR10_CLASSES
from xnornet.checkpoint import load_model, read_checkpoint, save_checkpoint
from xnornet.errors import CheckpointError
from xnornet.models import build_model
from xnornet.config import TrunkConfig
from xnornet.export import export_model
from xnornet.layers import QuantConv2d
from xnornet.train import TrainConfig, init_from_checkpoint, kd_loss, lr_at, should_compile, train
from xnornet.transforms import cutout, normalize, random_crop_flip

TINY = dict(widths=(16, 32), depths=(1, 1))


def test_kd_loss_hand_computed():
    s, t, y = [1.0, 0.0], [0.0, 1.0], 0
    alpha, T = 0.3, 2.0
    ce = math.log(1 + math.exp(-1.0))
    def softmax(v):
        e = [math.exp(a / T) for a in v]
        return [a / sum(e) for a in e]
    ps, pt = softmax(s), softmax(t)
    kl = sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    expected = alpha * ce + (1 - alpha) * T * T * kl
    got = kd_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), alpha, T)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # alpha = 1 is plain cross-entropy; identical logits give zero KL
    assert kd_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), 1.0, T).item() == pytest.approx(ce)
    assert kd_loss(torch.tensor([s]), torch.tensor([s]), torch.tensor([y]), 0.0, T).item() == pytest.approx(0, abs=1e-7)
    # Label smoothing eps on K classes: the CE target is (1 - eps) on y plus eps/K everywhere.
    eps, logp = 0.1, [-math.log(1 + math.exp(-1.0)), -math.log(1 + math.exp(1.0))]
    smoothed = -((1 - eps) * logp[y] + eps / 2 * sum(logp))
    got = kd_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), 1.0, T, label_smoothing=eps)
    assert got.item() == pytest.approx(smoothed, rel=1e-6) and smoothed != pytest.approx(ce)


def test_lr_schedule_warmup_then_cosine():
    peak, total, warm = 0.1, 100, 10
    assert lr_at(0, total, warm, peak) == pytest.approx(peak / warm)
    assert lr_at(warm - 1, total, warm, peak) == pytest.approx(peak)
    assert lr_at(warm, total, warm, peak) == pytest.approx(peak)
    assert lr_at(55, total, warm, peak) == pytest.approx(peak / 2)
    assert lr_at(total, total, warm, peak) == pytest.approx(0, abs=1e-12)
    lrs = [lr_at(i, total, warm, peak) for i in range(warm, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_random_crop_flip_takes_windows_of_the_padded_image():
    torch.manual_seed(0)
    x = torch.randint(0, 255, (6, 5, 7, 3), dtype=torch.uint8)
    pad = 2
    out = random_crop_flip(x, pad, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (0, 0, pad, pad, pad, pad))
    flips = 0
    for i in range(len(x)):
        windows = [(padded[i, oy:oy + 5, ox:ox + 7], f) for oy in range(2 * pad + 1)
                   for ox in range(2 * pad + 1) for f in (False, True)]
        matches = [f for w, f in windows if torch.equal(out[i], w.flip(1) if f else w)]
        assert matches, f"image {i} is not a (flipped) crop"
        flips += matches[0]
    again = random_crop_flip(x, pad, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)  # same generator state, same augmentation
    # It does augment: some images flipped, some not, and some windows moved off the centre.
    assert 0 < flips < len(x), flips
    assert any(not torch.equal(out[i], x[i]) and not torch.equal(out[i], x[i].flip(1))
               for i in range(len(x)))
    assert not torch.equal(out, random_crop_flip(x, pad, torch.Generator().manual_seed(4)))


def test_cutout_zeroes_one_clipped_square_per_image():
    x = torch.randn(64, 3, 9, 11) + 5.0  # no zeros of its own
    size = 4
    out = cutout(x, size, torch.Generator().manual_seed(1))
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])  # every channel
    inner = 0
    for i in range(len(x)):
        ys, xs = torch.nonzero(zero[i, 0], as_tuple=True)
        assert len(ys) > 0, f"image {i}: nothing cut"
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        assert zero[i, 0, y0:y1, x0:x1].all(), "the cut region is a rectangle"
        assert (y1 - y0) <= size and (x1 - x0) <= size
        inner += (y1 - y0) == size and (x1 - x0) == size
        keep = ~zero[i]
        assert torch.equal(out[i][keep], x[i][keep])  # the rest untouched
    assert inner > 0  # squares away from the borders are whole
    assert torch.equal(out, cutout(x, size, torch.Generator().manual_seed(1)))
    assert cutout(x, 0, torch.Generator()) is x


def test_normalize_layout_and_values():
    x = torch.full((2, 4, 4, 3), 255, dtype=torch.uint8)
    y = normalize(x, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert y.shape == (2, 3, 4, 4) and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


def test_checkpoint_roundtrip_and_errors(tmp_path):
    model = build_model("bireal", **TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    meta = {"model_config": model.config.to_dict(), "mean": [0, 0, 0], "std": [1, 1, 1]}
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model, meta, opt)
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left
    sd, meta2, osd = read_checkpoint(path)
    assert meta2 == meta
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v)
    opt2 = torch.optim.AdamW(build_model("bireal", **TINY).parameters(), lr=1e-3)
    opt2.load_state_dict(osd)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for pid in s1:
        assert torch.equal(s1[pid]["exp_avg"], s2[pid]["exp_avg"])
        assert torch.equal(s1[pid]["step"], s2[pid]["step"])
    rebuilt, _ = load_model(path)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(rebuilt(x), model.eval()(x))

    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="not an xnornet checkpoint"):
        read_checkpoint(bad)
    wrong = dict(meta, model_config=dict(meta["model_config"], widths=[8, 16]))
    save_checkpoint(tmp_path / "w.safetensors", model, wrong)
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path / "w.safetensors")


@pytest.fixture(scope="module")
def separable_data(tmp_path_factory):
    return write_python_batches(tmp_path_factory.mktemp("cifar"), n_train=600, n_test=200)


def _cfg(data, out, **kw):
    base = dict(model="bireal", epochs=2, data_dir=str(data), out=str(out), subset=None,
                compile="off", amp="off", progress=False, batch_size=50, warmup_epochs=0.0,
                **TINY)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("kind", ["fp32", "xnor", "bireal"])
def test_tiny_training_learns_separable_data(separable_data, tmp_path, kind):
    row = train(_cfg(separable_data, tmp_path, model=kind, epochs=3))
    assert row["test_acc"] > 0.6, row  # chance is 0.1
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3]
    assert (tmp_path / "metrics.csv").read_text().startswith("epoch,")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, meta = load_model(tmp_path / "model.safetensors")
    assert meta["epoch"] == 3 and meta["model_config"]["kind"] == kind


def test_latent_weights_stay_clipped_during_training(separable_data, tmp_path):
    train(_cfg(separable_data, tmp_path, epochs=1, lr=0.5))  # a huge lr pushes weights out
    model, _ = load_model(tmp_path / "model.safetensors")
    assert max(m.weight.abs().max().item() for m in model.modules()
               if getattr(m, "is_binary", False)) <= 1.0


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(separable_data, tmp_path, monkeypatch):
    train(_cfg(separable_data, tmp_path / "straight", epochs=2))

    import xnornet.train as xtrain
    real_write = xtrain.write_metrics
    def crash_after_first_epoch(out, history):
        real_write(out, history)
        raise KeyboardInterrupt  # as if the session ended right after epoch 1's checkpoint
    monkeypatch.setattr(xtrain, "write_metrics", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(separable_data, tmp_path / "split", epochs=2))
    monkeypatch.setattr(xtrain, "write_metrics", real_write)
    assert read_checkpoint(tmp_path / "split" / "checkpoint.safetensors")[1]["epoch"] == 1
    train(_cfg(separable_data, tmp_path / "split", epochs=2, resume=True))

    a, meta_a, _ = read_checkpoint(tmp_path / "straight" / "checkpoint.safetensors")
    b, meta_b, _ = read_checkpoint(tmp_path / "split" / "checkpoint.safetensors")
    assert meta_b["epoch"] == 2 and len(meta_b["history"]) == 2
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert meta_a["history"][1]["test_acc"] == meta_b["history"][1]["test_acc"]


def test_resume_falls_back_to_the_model_file_without_the_checkpoint(separable_data, tmp_path,
                                                                   monkeypatch, capsys):
    """Where only model.safetensors survived (the checkpoint, with the optimizer state, is 3x its
    size), --resume continues from it: weights, epoch and history kept, optimizer afresh, a warning."""
    import xnornet.train as xtrain
    real_write = xtrain.write_metrics
    def crash_after_first_epoch(out, history):
        real_write(out, history)
        raise KeyboardInterrupt
    monkeypatch.setattr(xtrain, "write_metrics", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(separable_data, tmp_path, epochs=2))
    monkeypatch.setattr(xtrain, "write_metrics", real_write)
    (tmp_path / "checkpoint.safetensors").unlink()
    epoch1, meta1, _ = read_checkpoint(tmp_path / "model.safetensors")
    capsys.readouterr()
    train(_cfg(separable_data, tmp_path, epochs=2, resume=True))
    out, err = capsys.readouterr()
    assert f"resuming {tmp_path / 'model.safetensors'} after epoch 1" in out
    assert "optimizer state starts afresh" in err and "% of the peak learning rate" in err
    _, meta, optim = read_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["epoch"] == 2 and meta["history"][0] == meta1["history"][0] and optim is not None
    weights, _, _ = read_checkpoint(tmp_path / "model.safetensors")
    assert any(not torch.equal(epoch1[k], weights[k]) for k in weights)  # it trained on from there
    (tmp_path / "checkpoint.safetensors").unlink()
    # Refused before any data is read (the data folder here does not exist).
    with pytest.raises(ValueError, match="cannot resume .*model.safetensors with different epochs"):
        train(_cfg(tmp_path / "no-data", tmp_path, epochs=3, resume=True))
    # A model file that `xnornet train` did not write: a clear error, not a KeyError.
    model = build_model("bireal", widths=(16, 32), depths=(1, 1))
    save_checkpoint(tmp_path / "model.safetensors", model, {"model_config": model.config.to_dict()})
    with pytest.raises(ValueError, match="not written by `xnornet train`"):
        train(_cfg(tmp_path / "no-data", tmp_path, epochs=2, resume=True))


def test_resume_refuses_another_model(separable_data, tmp_path):
    train(_cfg(separable_data, tmp_path, epochs=1))
    with pytest.raises(ValueError, match="--resume"):
        train(_cfg(separable_data, tmp_path, epochs=2, model="xnor", resume=True))


def test_a_run_folder_is_not_overwritten_unless_asked(separable_data, tmp_path):
    """A second run into an --out that holds one (here another model) is refused before any data
    is read, and leaves it as it was; --overwrite replaces it; --resume continues it."""
    train(_cfg(separable_data, tmp_path, model="fp32", epochs=1))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="already holds a run .*--resume.*--overwrite"):
        train(_cfg(tmp_path / "no-data", tmp_path, model="xnor", epochs=1))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    (tmp_path / "checkpoint.safetensors").unlink()  # model.safetensors alone is a run too
    with pytest.raises(ValueError, match=r"already holds a run \(model.safetensors\)"):
        train(_cfg(tmp_path / "no-data", tmp_path, model="xnor", epochs=1))
    with pytest.raises(ValueError, match="--overwrite and --resume"):
        _cfg(separable_data, tmp_path, epochs=1, overwrite=True, resume=True)
    train(_cfg(separable_data, tmp_path, model="xnor", epochs=1, overwrite=True))
    assert read_checkpoint(tmp_path / "model.safetensors")[1]["model_config"]["kind"] == "xnor"
    assert train(_cfg(separable_data, tmp_path, model="xnor", epochs=1, resume=True))["epoch"] == 1


def test_kd_warns_when_the_teacher_is_not_fp32(tmp_path, capsys):
    from xnornet.train import _check_before_data
    for kind in ("fp32", "bireal"):
        model = build_model(kind, **TINY)
        save_checkpoint(tmp_path / f"{kind}.safetensors", model, {"model_config": model.config.to_dict()})
    _check_before_data(TrainConfig(kd=True, teacher_path=str(tmp_path / "fp32.safetensors"),
                                   out=str(tmp_path / "run"), **TINY))
    assert capsys.readouterr().err == ""
    _check_before_data(TrainConfig(kd=True, teacher_path=str(tmp_path / "bireal.safetensors"),
                                   out=str(tmp_path / "run"), **TINY))
    err = capsys.readouterr().err
    assert err.startswith("warning: --teacher-path") and "kind bireal, not the fp32 teacher" in err
    assert err.count("\n") == 1


def test_cutout_training_and_resume_checks_it(separable_data, tmp_path):
    row = train(_cfg(separable_data, tmp_path, model="fp32", epochs=2, cutout=8))
    assert row["test_acc"] > 0.3
    _, meta, _ = read_checkpoint(tmp_path / "model.safetensors")
    assert meta["train_config"]["cutout"] == 8
    with pytest.raises(ValueError, match="cutout"):
        train(_cfg(separable_data, tmp_path, model="fp32", epochs=2, cutout=0, resume=True))


def test_kd_training_with_a_teacher(separable_data, tmp_path, monkeypatch):
    train(_cfg(separable_data, tmp_path / "teacher", model="fp32", epochs=2))
    row = train(_cfg(separable_data, tmp_path / "student", epochs=2, kd=True, kd_alpha=0.5,
                     teacher_path=str(tmp_path / "teacher" / "model.safetensors")))
    assert row["test_acc"] > 0.3
    _, meta, _ = read_checkpoint(tmp_path / "student" / "model.safetensors")
    assert meta["train_config"]["kd"] is True
    # With alpha = 0 the labels play no part: the student learns from the teacher's logits alone.
    import xnornet.train as xtrain
    seen = []
    real_kd_loss = xtrain.kd_loss

    def spy(student_logits, teacher_logits, labels, alpha, *rest):
        seen.append(alpha)
        return real_kd_loss(student_logits, teacher_logits, labels, alpha, *rest)
    monkeypatch.setattr(xtrain, "kd_loss", spy)
    row = train(_cfg(separable_data, tmp_path / "pure-kd", epochs=2, kd=True, kd_alpha=0.0,
                     teacher_path=str(tmp_path / "teacher" / "model.safetensors")))
    assert seen and set(seen) == {0.0}
    assert row["test_acc"] > 0.3, row  # chance is 0.1


@pytest.mark.parametrize("kind", ["xnor", "bireal"])
def test_real_weights_model_binarizes_activations_only(kind):
    model = build_model(kind, binary_weights=False, **TINY)
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    assert convs and all(not m.is_binary and m.input_quantizer is not None for m in convs)
    for m in convs:  # the conv uses its float weights as they are
        assert torch.equal(m.scaled_kernel(), m.weight)
    assert all(m.is_binary for m in build_model(kind, **TINY).modules() if isinstance(m, QuantConv2d))


def test_init_from_real_weights_resets_scales(tmp_path):
    stage1 = build_model("bireal", binary_weights=False, **TINY)
    with torch.no_grad():
        for p in stage1.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_checkpoint(tmp_path / "s1.safetensors", stage1, {"model_config": stage1.config.to_dict()})
    stage2 = build_model("bireal", **TINY)
    assert "binarized" in init_from_checkpoint(stage2, tmp_path / "s1.safetensors")
    s1, s2 = stage1.state_dict(), stage2.state_dict()
    for k in s1:
        if k.endswith(".alpha"):  # mean |W| of the loaded weights, per output channel
            w = s1[k.replace(".alpha", ".weight")]
            assert torch.allclose(s2[k], w.abs().mean(dim=(1, 2, 3)))
            assert not torch.allclose(s2[k], s1[k])
        else:
            assert torch.equal(s1[k], s2[k]), k
    other = build_model("bireal", widths=(16, 64), depths=(1, 1))
    with pytest.raises(ValueError, match="differs in widths"):
        init_from_checkpoint(other, tmp_path / "s1.safetensors")
    with pytest.raises(ValueError, match="differs in kind"):
        init_from_checkpoint(build_model("xnor", **TINY), tmp_path / "s1.safetensors")


def test_two_stage_training(separable_data, tmp_path):
    row = train(_cfg(separable_data, tmp_path / "s1", epochs=2, real_weights=True))
    assert row["test_acc"] > 0.3
    s1 = tmp_path / "s1" / "model.safetensors"
    _, meta, _ = read_checkpoint(s1)
    assert meta["model_config"]["binary_weights"] is False
    with pytest.raises(CheckpointError, match="--init-from"):
        export_model(s1, tmp_path / "s1.xnor")
    row = train(_cfg(separable_data, tmp_path / "s2", epochs=2, init_from=str(s1)))
    assert row["test_acc"] > 0.3
    assert export_model(tmp_path / "s2" / "model.safetensors", tmp_path / "s2.xnor")["bytes"] > 0
    with pytest.raises(ValueError, match="--resume"):  # stage 1's checkpoint is another model
        train(_cfg(separable_data, tmp_path / "s1", epochs=2, resume=True))


def test_resume_accepts_checkpoints_from_before_binary_weights(separable_data, tmp_path, monkeypatch):
    real = TrunkConfig.to_dict
    monkeypatch.setattr(TrunkConfig, "to_dict",
                        lambda self: {k: v for k, v in real(self).items() if k != "binary_weights"})
    train(_cfg(separable_data, tmp_path, epochs=1))
    assert "binary_weights" not in read_checkpoint(tmp_path / "checkpoint.safetensors")[1]["model_config"]
    monkeypatch.setattr(TrunkConfig, "to_dict", real)
    row = train(_cfg(separable_data, tmp_path, epochs=1, resume=True))  # nothing left to run
    assert row["epoch"] == 1


def test_config_errors():
    with pytest.raises(ValueError, match="teacher-path"):
        TrainConfig(kd=True)
    with pytest.raises(ValueError, match="kd-alpha"):
        TrainConfig(kd=True, teacher_path="x", kd_alpha=1.5)
    with pytest.raises(ValueError, match="--cutout"):
        TrainConfig(cutout=-1)
    with pytest.raises(ValueError, match="--cutout .* smaller than the 32-pixel image side, got 32"):
        TrainConfig(cutout=32)  # a 32x32 square can blank the whole image
    assert TrainConfig(cutout=31).cutout == 31
    with pytest.raises(ValueError, match="--real-weights"):
        TrainConfig(model="fp32", real_weights=True)
    with pytest.raises(ValueError, match="no binary weights"):
        TrunkConfig(kind="fp32", binary_weights=False)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # DDP tests: gloo on CPU
    env.pop("XNORNET_DATA", None)
    return env


# Run by torchrun in each rank: `xnornet train` through the CLI, then the ranks compare their
# weights. Each rank trains on its own half of every epoch, so only averaged gradients (a model
# really wrapped in DistributedDataParallel) keep them equal.
_DDP_DRIVER = """
import sys
import torch
import torch.distributed as dist
from xnornet import cli
nets = []
real_ddp = torch.nn.parallel.DistributedDataParallel
class Spy(real_ddp):
    def __init__(self, module, *args, **kwargs):
        super().__init__(module, *args, **kwargs)
        nets.append(module)
torch.nn.parallel.DistributedDataParallel = Spy
dist.init_process_group("gloo")  # ours, so train() leaves it up for the check below
assert cli.main(["train", *sys.argv[1:]]) == 0
assert dist.is_initialized()
assert len(nets) == 1, "the model was not wrapped in DistributedDataParallel"
mine = torch.cat([p.detach().flatten().double() for p in nets[0].parameters()])
every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
dist.all_gather(every, mine)
assert all(torch.equal(every[0], w) for w in every), "ranks hold different weights"
print("ranks agree on", mine.numel(), "weights")
dist.destroy_process_group()
"""


def test_ddp_two_processes_on_cpu(separable_data, tmp_path):
    out = tmp_path / "ddp"
    driver = tmp_path / "ddp_driver.py"
    driver.write_text(_DDP_DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(driver), "--model", "xnor", "--epochs", "2", "--batch-size", "50",
           "--widths", "16,32", "--depths", "1,1", "--data-dir", str(separable_data),
           "--out", str(out), "--compile", "off", "--amp", "off", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "world 2" in r.stdout and "6 steps/epoch" in r.stdout  # 600 images / 2 ranks / 50
    assert r.stdout.count("ranks agree on") == 2, r.stdout
    _, meta, _ = read_checkpoint(out / "checkpoint.safetensors")
    assert meta["world_size"] == 2 and meta["epoch"] == 2
    assert meta["history"][-1]["test_acc"] > 0.3


_DDP_OWNED_DRIVER = """
import sys
import torch.distributed as dist
from xnornet import cli
assert cli.main(["train", *sys.argv[1:]]) == 0
assert not dist.is_initialized(), "train() left its process group up"
print("group torn down")
"""


def test_ddp_train_tears_down_the_group_it_created(separable_data, tmp_path):
    """Under torchrun `xnornet train` creates the process group and must destroy it: a gloo group
    alive at interpreter exit can abort the process after a finished run."""
    driver = tmp_path / "owned_driver.py"
    driver.write_text(_DDP_OWNED_DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(driver), "--model", "xnor", "--epochs", "1", "--batch-size", "50", "--subset", "200",
           "--widths", "16,32", "--depths", "1,1", "--data-dir", str(separable_data),
           "--out", str(tmp_path / "ddp"), "--compile", "off", "--amp", "off", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("group torn down") == 2, r.stdout


def test_cli_eval_writes_json_and_bad_input_is_a_clear_error(separable_data, tmp_path, capsys):
    train(_cfg(separable_data, tmp_path / "m", epochs=1))
    ckpt = tmp_path / "m" / "model.safetensors"
    out = tmp_path / "eval.json"
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--data-dir", str(separable_data),
                     "--subset", "100", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 100 and 0.0 <= result["accuracy"] <= 1.0
    reference.check_eval_per_class(result, CIFAR10_CLASSES)
    _, meta, _ = read_checkpoint(ckpt)
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "nope.safetensors"),
                     "--data-dir", str(separable_data)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--data-dir", str(tmp_path / "empty")]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_cli_version(capsys):
    import xnornet
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and xnornet.__version__ in capsys.readouterr().out


def test_cli_summary_and_help(capsys):
    assert cli.main(["summary", "--model", "xnor", "--widths", "64,128", "--depths", "1,1"]) == 0
    out = capsys.readouterr().out
    assert "QuantConv2d" in out and "binary" in out
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    assert "--kd-temperature" in capsys.readouterr().out


def test_partial_python_layout_warns(separable_data, recwarn):
    from xnornet.data import load_cifar10
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_cifar10(separable_data, download=False, progress=False)
    assert len(ds.train) == 600
    assert any("data_batch_2" in str(w.message) and "1 of 5" in str(w.message) for w in caught)


def test_compile_auto_compiles_full_runs_and_skips_smoke_runs():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert should_compile(TrainConfig(compile="auto"), cpu)
    assert not should_compile(TrainConfig(compile="auto", subset=100), cpu)
    assert should_compile(TrainConfig(compile="auto"), cuda)  # re-checked by tests/test_cuda.py
    assert not should_compile(TrainConfig(compile="auto", subset=100), cuda)
    assert should_compile(TrainConfig(compile="on"), cuda)
    assert not should_compile(TrainConfig(compile="off"), cpu)
    with pytest.raises(ValueError, match="--compile"):
        should_compile(TrainConfig(compile="maybe"), cpu)
