"""Trained models shipped inside the package (see docs/results.md for how they were made)."""
from __future__ import annotations

from pathlib import Path

from ..errors import XnornetError

HERE = Path(__file__).parent
SHIPPED_MODEL = HERE / "bireal.xnor"                # the best BNN, packed
SHIPPED_TEACHER = HERE / "teacher.safetensors"      # its FP32 teacher (same trunk)


def shipped_model() -> Path:
    if not SHIPPED_MODEL.is_file():
        raise XnornetError("this build ships no trained model yet; pass --model-file "
                           "(a packed model from `xnornet export`)")
    return SHIPPED_MODEL
