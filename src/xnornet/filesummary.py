"""Per-op summary of a packed model file (numpy only, no torch): what `xnornet summary
--model-file` prints. MACs are per image at the model's input size (32x32 when it has no INPUT op)."""
from __future__ import annotations

from pathlib import Path

from . import modelfile as mf

_KINDS = {mf.INPUT: "INPUT", mf.CONV_FP: "CONV_FP", mf.BCONV: "BCONV", mf.HEAD: "HEAD"}
_SHORTCUTS = {mf.RES_NONE: "-", mf.RES_IDENTITY: "identity", mf.RES_DOWNSAMPLE: "avgpool"}


def format_model_file(path) -> str:
    path = Path(path)
    ops = mf.read_model(path)
    h, w = (ops[0].params[0], ops[0].params[1]) if ops[0].kind == mf.INPUT else (32, 32)
    shapes = {i: (ih, iw) for i, _, ih, iw in mf.layer_shapes(ops, h, w)}
    header = (f"{'op':>2}  {'kind':<8} {'channels':<12} {'k/s/p':<6} {'shortcut':<9} {'output':<8} "
              f"{'bytes':>9} {'binary MACs':>12} {'FP MACs':>11}")
    lines = [f"model file: {path} ({path.stat().st_size:,} bytes)", header, "-" * len(header)]
    binary = fp = weight_bits = 0
    for i, op in enumerate(ops):
        nbytes = sum(t.nbytes for t in op.tensors)
        if op.kind == mf.INPUT:
            lines.append(f"{i:>2}  {'INPUT':<8} {op.params[2]:<12} {'':<6} {'':<9} "
                         f"{f'{h}x{w}':<8} {nbytes:>9,} {0:>12,} {0:>11,}")
            continue
        cin, cout = op.params[:2]
        if op.kind == mf.HEAD:
            macs, geometry, shortcut, out = cin * cout, "", "", "logits"
        else:
            k, stride, pad, relu, residual = op.params[2:7]
            ih, iw = shapes[i]
            oh, ow = (ih + 2 * pad - k) // stride + 1, (iw + 2 * pad - k) // stride + 1
            macs = oh * ow * cout * cin * k * k
            geometry, shortcut = f"{k}/{stride}/{pad}", _SHORTCUTS.get(residual, "?")
            out = f"{oh}x{ow}" + (" relu" if relu else "")
        is_binary = op.kind == mf.BCONV
        binary += macs if is_binary else 0
        fp += 0 if is_binary else macs
        if is_binary:
            weight_bits += cout * cin * op.params[2] ** 2
        lines.append(f"{i:>2}  {_KINDS[op.kind]:<8} {f'{cin} -> {cout}':<12} {geometry:<6} "
                     f"{shortcut:<9} {out:<8} {nbytes:>9,} {macs if is_binary else 0:>12,} "
                     f"{0 if is_binary else macs:>11,}")
    names = mf.class_names(ops)
    lines += ["-" * len(header),
              f"per image: {binary:,} binary MACs, {fp:,} FP MACs "
              f"({100 * binary / max(1, binary + fp):.1f}% binary); {weight_bits:,} binary weights "
              f"(1 bit each: {weight_bits // 8:,} bytes; {4 * weight_bits:,} as FP32)"]
    if names:
        lines.append(f"classes ({len(names)}): {', '.join(names)}")
    return "\n".join(lines)
