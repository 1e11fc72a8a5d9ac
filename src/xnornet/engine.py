"""The native runtime's public face. Needs numpy only: importing it never imports torch.

    engine = Engine.load("model.xnor", threads=1)
    logits = engine.run(images)     # uint8 (N, H, W, 3) raw pixels, or float32 (N, C, H, W) normalized
    labels = engine.predict(images)

Inputs are checked here, with errors that say what is wrong; the native side runs the whole
graph in one call, without the GIL, so several threads may share one engine.
"""
from __future__ import annotations

import importlib.util
import operator
import os
import warnings
from pathlib import Path

import numpy as np

from .errors import require_file
from .modelfile import ModelFileError


def _load_native():
    """The compiled extension; $XNORNET_NATIVE_LIB may name another build of it (the sanitizer
    job loads an ASan/UBSan build this way)."""
    path = os.environ.get("XNORNET_NATIVE_LIB")
    if not path:
        from . import _engine
        return _engine
    spec = importlib.util.spec_from_file_location("xnornet._engine", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_engine = _load_native()
MAX_THREADS = 1024  # the native side's limit too


def cpu_features() -> dict[str, bool]:
    """ISA features the native kernels may use on this CPU: popcnt, avx2, avx512f, avx512bw,
    avx512_vpopcntdq, amx_int8. Each is true only when the CPU has it *and* the OS saves its
    registers (for AMX: and grants this process the tile state)."""
    return dict(_engine.cpu_features())


def implementations() -> list[dict]:
    """Kernel implementations in this build, best first: name, description, supported, automatic
    (whether Engine.load picks it by itself; false for opt-in ones such as amx)."""
    return list(_engine.implementations())


def _thread_count(threads):
    """None, or an int (numpy integers too) in 1..MAX_THREADS."""
    if threads is None:
        return None
    try:
        if isinstance(threads, bool):
            raise TypeError
        n = operator.index(threads)
    except TypeError:
        n = None
    if n is None or not 1 <= n <= MAX_THREADS:
        raise ValueError(f"threads must be an int in 1..{MAX_THREADS} or None, got {threads!r}")
    return n


class Engine:
    def __init__(self, native, source: str):
        self._native = native
        self.source = source

    @classmethod
    def load(cls, path, threads: int | None = None, isa: str | None = None) -> "Engine":
        """Load a packed model file. threads: None = OpenMP's default (all cores unless
        $OMP_NUM_THREADS). isa: None = $XNORNET_ISA or the best this CPU supports; 'amx+avx512',
        'avx512', 'amx', 'avx2' or 'generic' forces one (ValueError if the CPU lacks it)."""
        path = Path(path)
        require_file(path, "model file", ModelFileError)
        return cls.from_bytes(path.read_bytes(), threads, isa, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, threads: int | None = None, isa: str | None = None,
                   source: str = "model") -> "Engine":
        threads = _thread_count(threads)
        try:
            native = _engine.Engine(bytes(data), threads or 0, isa or "")
        except ValueError as e:
            msg = str(e)
            if "ISA" in msg:
                raise ValueError(msg) from None
            raise ModelFileError(f"{source}: {msg}") from None
        if _engine.forked_serial() and threads != 1:
            warnings.warn("this process was forked after its parent ran an engine on several threads; "
                          "GNU OpenMP's thread pool does not survive fork, so engines here run on one "
                          "thread (start worker processes with the 'spawn' method to keep threads)",
                          RuntimeWarning, stacklevel=3)
        return cls(native, source)

    @property
    def isa(self) -> str:
        return self._native.isa

    @property
    def threads(self) -> int:
        return self._native.threads

    @property
    def class_names(self) -> list[str]:
        return list(self._native.class_names)

    def run(self, images) -> np.ndarray:
        """Logits (N, classes) as float32; or the last feature map (N, C, H, W) for a model
        without a classifier head."""
        x = np.asarray(images)
        if x.ndim != 4:
            raise ValueError(f"images must be 4-d: uint8 (N, H, W, C) or float32 (N, C, H, W); "
                             f"got shape {x.shape}")
        if x.dtype == np.uint8:
            if not self._native.has_input_normalization:
                raise ValueError("this model has no input normalization: pass float32 (N, C, H, W)")
            n, h, w, c = x.shape
            run = self._native.run_u8_nhwc
        elif np.issubdtype(x.dtype, np.floating):
            n, c, h, w = x.shape
            x = x.astype(np.float32, copy=False)
            if not np.isfinite(x).all():
                raise ValueError("images contain NaN or Inf")
            run = self._native.run_f32_nchw
        else:
            raise ValueError(f"images must be uint8 (raw pixels) or float32 (normalized); got {x.dtype}")
        want = self._native.input_channels
        if c != want:
            layout = "(N, H, W, C)" if x.dtype == np.uint8 else "(N, C, H, W)"
            raise ValueError(f"expected {want} channels in {layout}, got shape {x.shape}")
        if min(h, w) < 1:
            raise ValueError(f"images have no pixels: shape {x.shape}")
        try:  # the shape of one image's output, then n of them
            shape = self._native.output_shape(1, h, w)
        except ValueError as e:
            raise ValueError(f"{e} (input shape {x.shape})") from None
        out = np.empty([n] + list(shape[1:]), np.float32)
        if n == 0:
            return out
        try:
            run(np.ascontiguousarray(x), out)
        except ValueError as e:  # shape the graph cannot take (too small, odd sizes with strides)
            raise ValueError(f"{e} (input shape {x.shape})") from None
        return out

    def plan(self, batch: int, height: int = 32, width: int = 32) -> list[dict]:
        """How a batch of `batch` images of height x width runs, one dict per compute op:
        `images_per_call` (each thread takes groups of this many images through the layer in
        one call; 0: the whole batch in one call, its rows shared by the threads),
        `over_input` (the op writes its float output over its input map) and `pixel_tiles`
        (the tile kernels' 16-pixel tiles per call, dropped columns included; 0 where the op
        runs on none or its rows are shared)."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        return list(self._native.plan(int(batch), int(height), int(width)))

    def predict(self, images) -> np.ndarray:
        """Top-1 class index per image, int64 (N,)."""
        return self.run(images).argmax(axis=1).astype(np.int64)

    def __repr__(self):
        return f"Engine({self.source!r}, isa={self.isa!r}, threads={self.threads})"


def default_isa() -> str:
    """The implementation Engine.load would pick now (honours $XNORNET_ISA; ValueError when it
    names one this build lacks or this CPU cannot run, as Engine.load would raise)."""
    forced = os.environ.get("XNORNET_ISA") or "auto"  # empty means auto, as in Engine.load
    if forced == "auto":
        return next(i["name"] for i in implementations() if i["supported"] and i["automatic"])
    known = {i["name"]: i for i in implementations()}
    if forced not in known:
        raise ValueError(f"unknown ISA '{forced}' (from $XNORNET_ISA); this build has: {', '.join(known)}")
    if not known[forced]["supported"]:
        raise ValueError(f"ISA '{forced}' (from $XNORNET_ISA) is not supported on this CPU")
    return forced
