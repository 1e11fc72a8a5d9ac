"""Checkpoint (safetensors) -> packed model file. numpy and safetensors only: exporting needs no
torch.

Batch norms are folded into per-channel affines: BN(v) = v*s + b with s = gamma/sqrt(var+eps),
b = beta - mean*s. Where they sit decides where they go:
    fp32    conv -> BN -> (+shortcut) -> ReLU      CONV_FP scale=s, bias=b
    xnor    BN -> sign -> conv(alpha=mean|W|)      BCONV in_scale=s, in_bias=b, out_scale=alpha
    bireal  sign(x+t) -> conv(alpha) -> BN (+sc)   BCONV in_scale=1, in_bias=t,
                                                   out_scale=alpha*s, out_bias=b
Binary kernels are stored as sign bits (W >= 0 -> 1), 1 bit per weight.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import modelfile as mf
from .config import TrunkConfig
from .errors import CheckpointError, require_file

BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default, which every model here uses


def check_checkpoint_path(path: Path) -> None:
    """Clear errors for the usual wrong paths: missing, a folder, a packed model file."""
    require_file(path, "checkpoint", CheckpointError)
    with open(path, "rb") as f:
        if f.read(len(mf.MAGIC)) == mf.MAGIC:
            raise CheckpointError(f"{path} is a packed model file (.xnor), not a training "
                                  "checkpoint (commands that run .xnor files take them with "
                                  "--model-file)")


def read_checkpoint_np(path) -> tuple[dict[str, np.ndarray], dict]:
    """Weights (the model.* tensors) and metadata of a checkpoint, without torch."""
    from safetensors import SafetensorError, safe_open
    path = Path(path)
    check_checkpoint_path(path)
    try:
        with safe_open(str(path), "np") as f:
            meta = json.loads((f.metadata() or {})["xnornet"])
            weights = {k[6:]: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise not_a_checkpoint(path, e) from e
    return weights, meta


def not_a_checkpoint(path, e: Exception) -> CheckpointError:
    """The error for a file that safetensors cannot read, or that lacks our metadata."""
    why = ("no xnornet metadata (a safetensors file not written by `xnornet train`)"
           if isinstance(e, KeyError) else str(e))
    return CheckpointError(f"{path} is not an xnornet checkpoint: {why}")


def _bn(w, prefix):
    gamma, beta = w[f"{prefix}.weight"], w[f"{prefix}.bias"]
    mean, var = w[f"{prefix}.running_mean"], w[f"{prefix}.running_var"]
    s = (gamma / np.sqrt(var + BN_EPS)).astype(np.float32)
    return s, (beta - mean * s).astype(np.float32)


def _ohwi(weight):  # (cout, cin, k, k) -> (cout, k, k, cin)
    return np.ascontiguousarray(weight.transpose(0, 2, 3, 1), dtype=np.float32)


def _conv_params(cin, cout, stride, relu, residual):
    return [cin, cout, 3, stride, 1, int(relu), residual]


def _residual(cin, cout, stride):
    return mf.RES_IDENTITY if cin == cout and stride == 1 else mf.RES_DOWNSAMPLE


def _block_op(kind, w, prefix, cin, cout, stride) -> mf.Op:
    if kind == "fp32":
        s, b = _bn(w, f"{prefix}.bn")
        return mf.Op(mf.CONV_FP, _conv_params(cin, cout, stride, True, _residual(cin, cout, stride)),
                     [_ohwi(w[f"{prefix}.conv.weight"]), s, b])
    weight = w[f"{prefix}.conv.weight"]
    bits = mf.pack_bits(_ohwi(weight) >= 0)
    if kind == "xnor":
        in_s, in_b = _bn(w, f"{prefix}.bn")
        alpha = np.abs(weight).mean(axis=(1, 2, 3)).astype(np.float32)
        return mf.Op(mf.BCONV, _conv_params(cin, cout, stride, False, mf.RES_NONE),
                     [in_s, in_b, bits, alpha, np.zeros(cout, np.float32)])
    s, b = _bn(w, f"{prefix}.bn")
    alpha = w[f"{prefix}.conv.alpha"].astype(np.float32)
    thr = w[f"{prefix}.threshold"].reshape(cin).astype(np.float32)
    return mf.Op(mf.BCONV, _conv_params(cin, cout, stride, False, _residual(cin, cout, stride)),
                 [np.ones(cin, np.float32), thr, bits, (alpha * s).astype(np.float32), b])


def ops_from_checkpoint(path, checkpoint=None) -> list[mf.Op]:
    """checkpoint: (weights, metadata) already read from path, to avoid reading it twice."""
    w, meta = checkpoint or read_checkpoint_np(path)
    try:
        cfg = TrunkConfig(**meta["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: weights do not match the model it describes: {e}") from e
    if not cfg.binary_weights:
        raise CheckpointError(f"{path} has real-valued weights in its binary convs (stage 1 of "
                              "two-stage training, --real-weights): train stage 2 from it with "
                              "--init-from, then export that")
    try:
        w0 = cfg.widths[0]
        stem_s, stem_b = _bn(w, "stem.1")
        ops = [mf.Op(mf.INPUT, [32, 32, 3], [np.asarray(meta["mean"], np.float32),
                                             np.asarray(meta["std"], np.float32)]),
               mf.Op(mf.CONV_FP, _conv_params(3, w0, 1, cfg.kind == "fp32", mf.RES_NONE),
                     [_ohwi(w["stem.0.weight"]), stem_s, stem_b])]
        cin, i = w0, 0
        for s, (width, depth) in enumerate(zip(cfg.widths, cfg.depths)):
            for d in range(depth):
                stride = 2 if (s > 0 and d == 0) else 1
                ops.append(_block_op(cfg.kind, w, f"blocks.{i}", cin, width, stride))
                cin, i = width, i + 1
        head_s, head_b = _bn(w, "head.0")
        names = "\n".join(meta["classes"]).encode()
        ops.append(mf.Op(mf.HEAD, [cin, cfg.num_classes],
                         [head_s, head_b, w["head.4.weight"].astype(np.float32),
                          w["head.4.bias"].astype(np.float32), np.frombuffer(names, np.uint8)]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: weights do not match the model it describes: {e}") from e
    return ops


def export_model(checkpoint, out) -> dict:
    """Write the packed model file; returns sizes for reporting."""
    weights, meta = read_checkpoint_np(checkpoint)
    ops = ops_from_checkpoint(checkpoint, (weights, meta))
    size = mf.write_model(out, ops)
    fp32_bytes = sum(4 * v.size for k, v in weights.items()
                     if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    return {"path": str(out), "bytes": size, "fp32_weight_bytes": fp32_bytes,
            "ratio": fp32_bytes / size, "ops": len(ops)}
