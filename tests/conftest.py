"""Shared fixtures: tiny synthetic CIFAR-10 data on disk, never the real data set or cache."""
from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

PY_DIR = "cifar-10-batches-py"


class _Py2Pickler(pickle._Pickler):
    """Writes pickles the way the official CIFAR-10 files were written (Python 2, protocol 2).

    Python 2 had no separate bytes type: every str became a (SHORT_)BINSTRING opcode, and numpy's
    reconstructor lived in ``numpy.core.multiarray``. Python 3's ``pickle.dump(protocol=2)`` instead
    encodes bytes through ``_codecs.encode``, which is *not* what the official files contain.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_str8(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        n = len(data)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_str8
    dispatch[str] = _save_str8

    def save_global(self, obj, name=None):
        module = obj.__module__
        name = name or obj.__qualname__
        if module.startswith("numpy._core"):  # numpy 2 -> the name numpy 1 / Python 2 wrote
            module = "numpy.core" + module[len("numpy._core"):]
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)


def py2_pickle_dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _write_cifar_batch(path: Path, data: np.ndarray, labels, batch_label: str = "synthetic") -> Path:
    """One batch file in the official layout: data (N, 3072) uint8 CHW rows, labels a list of ints."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    labels = [int(v) for v in labels]
    obj = {
        b"batch_label": batch_label.encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(labels))],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(py2_pickle_dumps(obj))
    return path


@pytest.fixture
def cifar_pickle_dumps():
    """cifar_pickle_dumps(obj) -> bytes pickled the way the official CIFAR-10 files are."""
    return py2_pickle_dumps


@pytest.fixture
def write_cifar_batch():
    """write_cifar_batch(path, data (N, 3072) uint8, labels) -> path, in the official pickle format."""
    return _write_cifar_batch


@pytest.fixture
def synthetic_cifar_python(tmp_path) -> Path:
    """A tiny CIFAR-10 (2 train batches of 20 images, a test batch of 20) in the official
    python-pickle layout. Returns the folder that holds ``cifar-10-batches-py/``."""
    root = tmp_path / "synthetic-cifar"
    rng = np.random.default_rng(1234)
    for name, n in (("data_batch_1", 20), ("data_batch_2", 20), ("test_batch", 20)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = np.arange(n) % 10  # every class present
        _write_cifar_batch(root / PY_DIR / name, data, labels, batch_label=name)
    return root
