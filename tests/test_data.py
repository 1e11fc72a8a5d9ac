"""xnornet.data: CIFAR-10 layouts, restricted unpickling, image-folder cache, download.

Everything runs on tiny synthetic data under tmp_path; XNORNET_CACHE / XNORNET_DATA are always
redirected, so neither the user's cache nor ../shared is ever read or written.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import shlex
import shutil
import socket
import struct
import tarfile
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xnornet.data as data
from xnornet.data import (CIFAR10_CLASSES, PY_DIR, Dataset, download_cifar10, load_cifar10,
                          resolve_data_dir, restricted_load)
from xnornet.errors import DataError, XnornetError


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test may see the real data dir or cache."""
    monkeypatch.setenv("XNORNET_CACHE", str(tmp_path / "xnornet-cache"))
    monkeypatch.delenv("XNORNET_DATA", raising=False)


def _chw_to_nhwc_by_index(rows: np.ndarray) -> np.ndarray:
    """Reference conversion written from the CIFAR-10 spec, independent of reshape/transpose:
    row[c*1024 + y*32 + x] is channel c (0=R, 1=G, 2=B) of pixel (y, x)."""
    out = np.empty((len(rows), 32, 32, 3), np.uint8)
    for c in range(3):
        for y in range(32):
            start = c * 1024 + y * 32
            out[:, y, :, c] = rows[:, start:start + 32]
    return out


def _read_batch_trusted(path: Path) -> dict:
    """Read back a batch *we* wrote, with the unrestricted unpickler (test-side ground truth)."""
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


# ================================================================ python (pickle) layout

def test_python_layout_pixels_follow_chw_rows(tmp_path, write_cifar_batch):
    n = 4
    rows = np.zeros((n, 3072), np.uint8)
    # Distinct, position-dependent values per channel so a swapped axis or channel shows up.
    probes = [(0, 0), (0, 1), (1, 0), (5, 17), (17, 5), (31, 0), (0, 31), (31, 31)]
    for i in range(n):
        for k, (y, x) in enumerate(probes):
            rows[i, 0 * 1024 + y * 32 + x] = 10 + k + 40 * i       # red
            rows[i, 1 * 1024 + y * 32 + x] = 100 + k + 40 * i      # green
            rows[i, 2 * 1024 + y * 32 + x] = 200 + k + 5 * i       # blue
    labels = [3, 0, 9, 5]
    d = tmp_path / "c" / PY_DIR
    write_cifar_batch(d / "data_batch_1", rows, labels)
    write_cifar_batch(d / "test_batch", rows[::-1], labels[::-1])

    ds = load_cifar10(d, download=False, progress=False)

    assert ds.train.images.shape == (n, 32, 32, 3) and ds.train.images.dtype == np.uint8
    assert ds.train.labels.dtype == np.int64 and ds.train.labels.tolist() == labels
    for i in range(n):
        for k, (y, x) in enumerate(probes):
            assert ds.train.images[i, y, x].tolist() == [10 + k + 40 * i, 100 + k + 40 * i,
                                                         200 + k + 5 * i], (i, y, x)
    # Untouched pixels stay zero (nothing leaked from another channel or position).
    mask = np.ones((32, 32), bool)
    for y, x in probes:
        mask[y, x] = False
    assert not ds.train.images[:, mask].any()
    np.testing.assert_array_equal(ds.test.images, ds.train.images[::-1])
    assert ds.test.labels.tolist() == labels[::-1]
    assert ds.classes == CIFAR10_CLASSES


@pytest.mark.parametrize("point_at", ["parent", "batches_dir"])
def test_python_layout_from_parent_or_batches_dir(synthetic_cifar_python, point_at):
    root = synthetic_cifar_python if point_at == "parent" else synthetic_cifar_python / PY_DIR
    ds = load_cifar10(root, download=False, progress=False)

    assert isinstance(ds, Dataset)
    batches = [_read_batch_trusted(synthetic_cifar_python / PY_DIR / f"data_batch_{i}")
               for i in (1, 2)]
    test = _read_batch_trusted(synthetic_cifar_python / PY_DIR / "test_batch")
    # Train = batch 1 then batch 2, in file order.
    np.testing.assert_array_equal(
        ds.train.images, _chw_to_nhwc_by_index(np.concatenate([b[b"data"] for b in batches])))
    assert ds.train.labels.tolist() == batches[0][b"labels"] + batches[1][b"labels"]
    np.testing.assert_array_equal(ds.test.images, _chw_to_nhwc_by_index(test[b"data"]))
    assert ds.test.labels.tolist() == test[b"labels"]
    assert ds.train.labels.dtype == ds.test.labels.dtype == np.int64
    assert len(ds.train) == 40 and len(ds.test) == 20
    assert "python" in ds.source and str(synthetic_cifar_python / PY_DIR) in ds.source


def test_python_layout_via_xnornet_data_env(synthetic_cifar_python, monkeypatch):
    monkeypatch.setenv("XNORNET_DATA", str(synthetic_cifar_python))
    ds = load_cifar10(None, download=False, progress=False)
    assert len(ds.train) == 40 and len(ds.test) == 20


@pytest.mark.parametrize("protocol", sorted({2, 3, 4, pickle.DEFAULT_PROTOCOL}))
def test_python_layout_written_by_python3_pickle_dump(tmp_path, protocol):
    """Batch files re-written with Python 3's pickle.dump load too (protocol 2 encodes bytes
    through _codecs.encode, unlike the Python 2 originals)."""
    d = tmp_path / PY_DIR
    d.mkdir()
    rows = np.random.default_rng(5).integers(0, 256, (3, 3072), dtype=np.uint8)
    for name in ("data_batch_1", "test_batch"):
        with open(d / name, "wb") as f:
            pickle.dump({b"data": rows, b"labels": [1, 2, 9], b"batch_label": b"x",
                         b"filenames": [b"a", b"b", b"c"]}, f, protocol=protocol)
    ds = load_cifar10(d, download=False, progress=False)
    np.testing.assert_array_equal(ds.train.images, _chw_to_nhwc_by_index(rows))
    np.testing.assert_array_equal(ds.test.images, _chw_to_nhwc_by_index(rows))
    assert ds.train.labels.tolist() == [1, 2, 9] and ds.train.labels.dtype == np.int64


def test_split_head():
    s = data.Split(np.arange(5 * 32 * 32 * 3, dtype=np.uint8).reshape(5, 32, 32, 3),
                   np.arange(5, dtype=np.int64))
    assert s.head(None) is s
    h = s.head(2)
    assert len(h) == 2 and h.labels.tolist() == [0, 1]
    np.testing.assert_array_equal(h.images, s.images[:2])


# ================================================================ restricted unpickler

class _OpenPayload:
    """Unpickling this calls builtins.open(marker, 'w'): creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _SystemPayload:
    """Unpickling this runs a shell command via os.system that creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


_PAYLOADS = [pytest.param(_OpenPayload, id="builtins.open"),
             pytest.param(_SystemPayload, id="os.system",
                          marks=pytest.mark.skipif(shutil.which("touch") is None,
                                                   reason="needs a touch command"))]


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("payload", _PAYLOADS)
def test_restricted_load_refuses_code_execution(tmp_path, payload, protocol):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": payload(marker), b"labels": [0]}, protocol=protocol)

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        restricted_load(blob)
    assert not marker.exists()

    # The payload is live: the ordinary unpickler does run it (so the check above means something).
    pickle.loads(blob)
    assert marker.exists()


def test_restricted_load_refuses_before_importing(tmp_path):
    # A global from a module that does not exist: an unpickler that looked it up would raise
    # ModuleNotFoundError; the restricted one must refuse by name first.
    blob = b"\x80\x02cno_such_module_xnornet_test\nfunc\nq\x00)R."
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(blob)
    with pytest.raises(pickle.UnpicklingError, match="no_such_module_xnornet_test"):
        restricted_load(blob)


@pytest.mark.parametrize("protocol", [3, 4])
def test_restricted_load_admits_numpy_arrays(protocol):
    arr = np.arange(3072 * 2, dtype=np.int64).reshape(2, 3072).astype(np.uint8)
    out = restricted_load(pickle.dumps({b"data": arr, b"labels": [1, 2]}, protocol=protocol))
    np.testing.assert_array_equal(out[b"data"], arr)
    assert out[b"data"].dtype == np.uint8 and out[b"labels"] == [1, 2]


@pytest.mark.parametrize("payload", _PAYLOADS)
def test_batch_file_with_malicious_pickle_is_data_error(synthetic_cifar_python, payload):
    marker = synthetic_cifar_python.parent / "pwned"
    bad = synthetic_cifar_python / PY_DIR / "data_batch_2"
    bad.write_bytes(pickle.dumps({b"data": payload(marker), b"labels": [0]}, protocol=2))

    with pytest.raises(DataError) as ei:
        load_cifar10(synthetic_cifar_python, download=False, progress=False)
    assert str(bad) in str(ei.value)
    assert not marker.exists()


# ================================================================ corrupt batch files

def _corrupt_cases(py2_pickle_dumps):
    ok = np.zeros((3, 3072), np.uint8)
    good_blob = py2_pickle_dumps({b"data": ok, b"labels": [0, 1, 2]})
    return {
        "garbage": b"this is definitely not a pickle \x00\xff\xfe",
        "empty": b"",
        "truncated": good_blob[: len(good_blob) // 2],
        "not_a_dict": py2_pickle_dumps([1, 2, 3]),
        "missing_labels": py2_pickle_dumps({b"data": ok}),
        "missing_data": py2_pickle_dumps({b"labels": [0, 1, 2]}),
        "row_too_short": py2_pickle_dumps({b"data": np.zeros((3, 3071), np.uint8), b"labels": [0, 1, 2]}),
        "data_3d": py2_pickle_dumps({b"data": np.zeros((3, 3, 1024), np.uint8), b"labels": [0, 1, 2]}),
        "data_1d": py2_pickle_dumps({b"data": np.zeros(3072, np.uint8), b"labels": [0]}),
        "ragged_rows": py2_pickle_dumps({b"data": [[0] * 3072, [0] * 10], b"labels": [0, 1]}),
        "label_count_mismatch": py2_pickle_dumps({b"data": ok, b"labels": [0, 1]}),
        "label_10": py2_pickle_dumps({b"data": ok, b"labels": [0, 10, 1]}),
        "label_negative": py2_pickle_dumps({b"data": ok, b"labels": [0, -1, 1]}),
        "label_not_a_number": py2_pickle_dumps({b"data": ok, b"labels": [b"cat", b"dog", b"x"]}),
    }


_CORRUPT_NAMES = ["garbage", "empty", "truncated", "not_a_dict", "missing_labels", "missing_data",
                  "row_too_short", "data_3d", "data_1d", "ragged_rows", "label_count_mismatch",
                  "label_10", "label_negative", "label_not_a_number"]


@pytest.mark.parametrize("which_file", ["data_batch_1", "data_batch_2", "test_batch"])
@pytest.mark.parametrize("case", _CORRUPT_NAMES)
def test_corrupt_batch_file_is_data_error_naming_file(synthetic_cifar_python, cifar_pickle_dumps,
                                                      case, which_file):
    bad = synthetic_cifar_python / PY_DIR / which_file
    bad.write_bytes(_corrupt_cases(cifar_pickle_dumps)[case])
    with pytest.raises(DataError) as ei:
        load_cifar10(synthetic_cifar_python, download=False, progress=False)
    assert str(bad) in str(ei.value)


# ================================================================ image-folder layout

def _write_png(path: Path, arr: np.ndarray, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def _make_folder(root: Path, counts: dict[str, dict[str, int]], seed: int = 0):
    """Writes root/{split}/{class}/{k:03d}.png; returns {split: {class: [arrays in name order]}}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, per_class in counts.items():
        written[split] = {}
        for cls, n in per_class.items():
            arrays = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]
            for k, arr in enumerate(arrays):
                _write_png(root / split / cls / f"{k:03d}.png", arr)
            written[split][cls] = arrays
    return written


# Deliberately unsorted and unbalanced; "mole" has fewer test images than train images.
_COUNTS = {"train": {"zebra": 3, "ant": 1, "mole": 2},
           "test": {"zebra": 1, "ant": 2, "mole": 1}}


def _expected_interleaved(written_split: dict[str, list], classes: list[str]):
    images, labels = [], []
    for k in range(max(len(v) for v in written_split.values())):
        for label, cls in enumerate(classes):
            if k < len(written_split[cls]):
                images.append(written_split[cls][k])
                labels.append(label)
    return np.stack(images), labels


def test_image_folder_roundtrip_sorted_interleaved(tmp_path):
    root = tmp_path / "folder"
    written = _make_folder(root, _COUNTS)
    (root / "train" / "README.txt").write_text("not a class")  # a file, not a class folder
    (root / "train" / "ant" / "notes.txt").write_text("not an image")

    ds = load_cifar10(root, download=False, progress=False)

    classes = sorted(_COUNTS["train"])
    assert ds.classes == tuple(classes) == ("ant", "mole", "zebra")
    assert "folder" in ds.source
    # Class-interleaved: first len(classes) labels are 0, 1, 2.
    assert ds.train.labels[:len(classes)].tolist() == list(range(len(classes)))
    assert ds.train.labels.tolist() == [0, 1, 2, 1, 2, 2]  # ant:1, mole:2, zebra:3
    assert ds.test.labels.tolist() == [0, 1, 2, 0]         # ant:2, mole:1, zebra:1
    for split in ("train", "test"):
        got = getattr(ds, split)
        exp_images, exp_labels = _expected_interleaved(written[split], classes)
        assert got.images.dtype == np.uint8 and got.images.shape == exp_images.shape
        assert got.labels.dtype == np.int64 and got.labels.tolist() == exp_labels
        np.testing.assert_array_equal(got.images, exp_images)  # PNG is lossless


def test_image_folder_grayscale_and_uppercase_suffix(tmp_path):
    root = tmp_path / "folder"
    gray = (np.arange(32 * 32) % 256).astype(np.uint8).reshape(32, 32)
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    _write_png(root / "train" / "a" / "g.png", gray, mode="L")
    _write_png(root / "train" / "b" / "C.PNG", rgb)
    _write_png(root / "test" / "a" / "x.png", rgb)
    (root / "test" / "b").mkdir(parents=True)

    ds = load_cifar10(root, download=False, progress=False)
    assert ds.train.labels.tolist() == [0, 1]
    np.testing.assert_array_equal(ds.train.images[0], np.stack([gray] * 3, axis=-1))
    np.testing.assert_array_equal(ds.train.images[1], rgb)
    assert ds.test.labels.tolist() == [0]


def test_test_only_decodes_and_reads_only_the_test_split(tmp_path, synthetic_cifar_python):
    root = tmp_path / "folder"
    _make_folder(root, _COUNTS)
    ds = load_cifar10(root, download=False, progress=False, test_only=True)
    assert len(ds.train) == 0 and ds.train.images.shape == (0, 32, 32, 3)
    assert ds.test.labels.tolist() == [0, 1, 2, 0]
    npys = sorted(p.name for p in (tmp_path / "xnornet-cache" / "decoded").rglob("*.npy"))
    assert npys == ["test_images.npy", "test_labels.npy"]  # the training images were not decoded
    full = load_cifar10(root, download=False, progress=False)  # later, the train split too
    np.testing.assert_array_equal(full.test.images, ds.test.images)
    assert len(full.train) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 2 of 5 training batches: no "missing" warning for test_only
        py = load_cifar10(synthetic_cifar_python, download=False, test_only=True)
    assert len(py.train) == 0 and len(py.test) == 20


class _DecodeCalled(Exception):
    pass


def _forbid_decode(monkeypatch):
    def boom(*a, **k):
        raise _DecodeCalled("decoding should have been served from the cache")
    monkeypatch.setattr(data, "_decode", boom)


def test_image_folder_second_load_uses_npy_cache(tmp_path, monkeypatch):
    cache = tmp_path / "xnornet-cache"
    root = tmp_path / "folder"
    _make_folder(root, _COUNTS)

    first = load_cifar10(root, download=False, progress=False)
    npys = sorted(p.name for p in (cache / "decoded").rglob("*.npy"))
    assert npys == ["test_images.npy", "test_labels.npy", "train_images.npy", "train_labels.npy"]
    assert not list((cache / "decoded").rglob("*.tmp"))  # atomic writes left no temp files

    _forbid_decode(monkeypatch)
    second = load_cifar10(root, download=False, progress=False)
    assert second.classes == first.classes
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(second, split).images, getattr(first, split).images)
        np.testing.assert_array_equal(getattr(second, split).labels, getattr(first, split).labels)
        assert getattr(second, split).labels.dtype == np.int64

    # Adding an image changes the cache key, so the folder must be decoded again.
    _write_png(root / "train" / "ant" / "999.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(_DecodeCalled):
        load_cifar10(root, download=False, progress=False)
    monkeypatch.undo()
    monkeypatch.setenv("XNORNET_CACHE", str(cache))
    third = load_cifar10(root, download=False, progress=False)
    assert len(third.train) == len(first.train) + 1


def _corrupt_cache_cases():
    header = io.BytesIO()
    np.save(header, np.zeros((1000, 32, 32, 3), np.uint8))  # a header promising 3 MB
    return {
        "truncated": lambda b: b[:len(b) // 2],
        "garbage": lambda b: b"\x00garbage, not an array" * 10,
        "empty": lambda b: b"",
        "pickled": lambda b: pickle.dumps(np.zeros(3, object)),
        "header only": lambda b: b[:60],
        "absurd shape": lambda b: header.getvalue()[:128],
    }


@pytest.mark.parametrize("which", ["test_images.npy", "test_labels.npy"])
@pytest.mark.parametrize("case", list(_corrupt_cache_cases()))
def test_corrupt_npy_cache_is_decoded_again(tmp_path, monkeypatch, which, case):
    """A torn or overwritten cache file costs a re-decode and a warning naming it; never numpy's
    messages ("Failed to read all data", "... allow_pickle", which suggests unsafe loading)."""
    root = tmp_path / "folder"
    _make_folder(root, _COUNTS)
    first = load_cifar10(root, download=False, progress=False, test_only=True)
    [bad] = (tmp_path / "xnornet-cache" / "decoded").rglob(which)
    bad.write_bytes(_corrupt_cache_cases()[case](bad.read_bytes()))

    with pytest.warns(UserWarning) as record:
        again = load_cifar10(root, download=False, progress=False, test_only=True)
    [w] = [str(r.message) for r in record]
    assert str(bad) in w and "corrupt cache file" in w and "decoding the images again" in w
    assert "allow_pickle" not in w and "Failed to read" not in w
    np.testing.assert_array_equal(again.test.images, first.test.images)
    np.testing.assert_array_equal(again.test.labels, first.test.labels)
    _forbid_decode(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the cache was rewritten: served from it, silently
        load_cifar10(root, download=False, progress=False, test_only=True)


@pytest.mark.parametrize("which, arr", [
    ("test_images.npy", np.zeros((3, 32, 32, 3), np.uint8)),   # wrong count
    ("test_images.npy", np.zeros((4, 32, 32, 3), np.float32)),  # wrong dtype
    ("test_labels.npy", np.array([0, 1, 2, 1], np.int64)),      # not the folder's labels
])
def test_npy_cache_of_the_wrong_shape_or_labels_is_decoded_again(tmp_path, which, arr):
    root = tmp_path / "folder"
    _make_folder(root, _COUNTS)
    first = load_cifar10(root, download=False, progress=False, test_only=True)
    [bad] = (tmp_path / "xnornet-cache" / "decoded").rglob(which)
    np.save(bad, arr)
    with pytest.warns(UserWarning, match="corrupt cache file .*" + bad.name):
        again = load_cifar10(root, download=False, progress=False, test_only=True)
    np.testing.assert_array_equal(again.test.labels, first.test.labels)
    np.testing.assert_array_equal(again.test.images, first.test.images)


def test_npy_cache_files_follow_the_umask(tmp_path):
    root = tmp_path / "folder"
    _make_folder(root, _COUNTS)
    old = os.umask(0o022)
    try:
        load_cifar10(root, download=False, progress=False, test_only=True)
    finally:
        os.umask(old)
    npys = list((tmp_path / "xnornet-cache" / "decoded").rglob("*.npy"))
    assert len(npys) == 2
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in npys)  # not mkstemp's 0600


def test_npy_cache_write_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    root = tmp_path / "folder"
    _make_folder(root, _COUNTS)
    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        load_cifar10(root, download=False, progress=False, test_only=True)
    assert not [p for p in (tmp_path / "xnornet-cache").rglob("*") if p.is_file()]


def test_image_folder_16bit_and_exif_rotated_images(tmp_path):
    """The loader decodes with the same to_rgb as `predict`: 16-bit scaled, EXIF applied."""
    root = tmp_path / "folder"
    _make_folder(root, {"train": {"a": 1}, "test": {"a": 1}})
    gradient = (np.arange(32 * 32, dtype=np.uint16) * 64).reshape(32, 32)
    Image.fromarray(gradient).save(root / "train" / "a" / "g16.png")
    upright = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(upright)))
    exif = sideways.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    sideways.save(root / "train" / "a" / "phone.png", exif=exif)

    ds = load_cifar10(root, download=False, progress=False)
    assert len(ds.train) == 3  # 000.png, g16.png, phone.png
    np.testing.assert_array_equal(ds.train.images[1], np.stack([gradient >> 8] * 3, axis=-1))
    np.testing.assert_array_equal(ds.train.images[2], upright)


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("size", [(31, 32), (32, 33), (64, 64)])
def test_image_folder_wrong_size_is_data_error(tmp_path, split, size):
    root = tmp_path / "folder"
    _make_folder(root, {"train": {"a": 2, "b": 1}, "test": {"a": 1, "b": 1}})
    w, h = size
    bad = root / split / "b" / "zzz.png"
    _write_png(bad, np.zeros((h, w, 3), np.uint8))
    with pytest.raises(DataError) as ei:
        load_cifar10(root, download=False, progress=False)
    assert str(bad) in str(ei.value) and "32x32" in str(ei.value)
    cached = sorted(p.name for p in (tmp_path / "xnornet-cache").rglob("*.npy"))
    # Nothing is cached for the split that failed (train is decoded, and cached, first).
    assert cached == ([] if split == "train" else ["train_images.npy", "train_labels.npy"])


def test_image_folder_undecodable_image_is_data_error(tmp_path):
    root = tmp_path / "folder"
    _make_folder(root, {"train": {"a": 1}, "test": {"a": 1}})
    bad = root / "train" / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    with pytest.raises(DataError) as ei:
        load_cifar10(root, download=False, progress=False)
    assert str(bad) in str(ei.value)


def test_image_folder_without_classes_is_data_error(tmp_path):
    root = tmp_path / "folder"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    with pytest.raises(DataError, match="class"):
        load_cifar10(root, download=False, progress=False)


@pytest.mark.parametrize("test_only", [False, True])
def test_image_folder_with_an_empty_test_split_is_data_error(tmp_path, test_only):
    """An empty test split would give an accuracy over 0 images."""
    root = tmp_path / "folder"
    _make_folder(root, {"train": {"a": 1, "b": 1}})
    (root / "test" / "a").mkdir(parents=True)
    (root / "test" / "b").mkdir()
    with pytest.raises(DataError, match="test holds no images"):
        load_cifar10(root, download=False, progress=False, test_only=test_only)


def test_image_folder_class_missing_from_train_is_data_error(tmp_path):
    """Its images would be left out without a word."""
    root = tmp_path / "folder"
    _make_folder(root, {"train": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1, "c": 1}})
    with pytest.raises(DataError, match=r"class folders \['c'\] that .*train lacks"):
        load_cifar10(root, download=False, progress=False, test_only=True)


def test_decompression_bomb_is_data_error(tmp_path, monkeypatch):
    """Pillow refuses images far past MAX_IMAGE_PIXELS with its own error class, not OSError."""
    root = tmp_path / "folder"
    _make_folder(root, {"train": {"a": 1}, "test": {"a": 1}})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32x32 = 1024 > 2 x 100: a "bomb"
    with pytest.raises(DataError, match="cannot decode image"):
        load_cifar10(root, download=False, progress=False, test_only=True)


# ================================================================ locating the data

def test_missing_data_without_download_mentions_data_dir(tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    with pytest.raises(DataError) as ei:
        load_cifar10(empty, download=False, progress=False)
    msg = str(ei.value)
    assert "--data-dir" in msg and "XNORNET_DATA" in msg and str(empty) in msg
    assert isinstance(ei.value, XnornetError)
    assert list(empty.iterdir()) == []  # nothing was created


def test_half_present_python_layout_is_not_detected(tmp_path, write_cifar_batch):
    # data_batch_1 without test_batch is not a usable layout.
    write_cifar_batch(tmp_path / "d" / PY_DIR / "data_batch_1", np.zeros((1, 3072), np.uint8), [0])
    with pytest.raises(DataError, match="--data-dir"):
        load_cifar10(tmp_path / "d", download=False, progress=False)


def test_missing_data_default_location_is_cache(tmp_path):
    with pytest.raises(DataError) as ei:
        load_cifar10(None, download=False, progress=False)
    assert str(tmp_path / "xnornet-cache" / "data") in str(ei.value)
    assert "--data-dir" in str(ei.value)


def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    cache = tmp_path / "xnornet-cache"
    assert data.cache_dir() == cache
    assert resolve_data_dir() == cache / "data"                     # cache dir last
    monkeypatch.setenv("XNORNET_DATA", str(tmp_path / "env-data"))
    assert resolve_data_dir() == tmp_path / "env-data"              # env beats cache
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"  # arg beats env
    assert resolve_data_dir(str(tmp_path / "explicit")) == tmp_path / "explicit"
    monkeypatch.setenv("XNORNET_DATA", "")                          # empty env = unset
    assert resolve_data_dir() == cache / "data"


def test_cache_dir_default_is_platform_cache(monkeypatch):
    import platformdirs
    monkeypatch.delenv("XNORNET_CACHE")
    assert data.cache_dir() == Path(platformdirs.user_cache_dir("xnornet"))


# ================================================================ download

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    """Serves tmp_path/'www' on 127.0.0.1:<free port>; yields (base_url, served_dir)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", www
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _tar_add_bytes(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))


def _make_archive(path: Path, py2_pickle_dumps, n_train=12, n_test=8, seed=7, extra=None,
                  top=PY_DIR):
    """A real tar.gz like the official one; returns (md5, expected rows/labels). ``extra`` is a
    callable(tar) adding more members; ``top`` the folder the batches sit in ('' = top level)."""
    rng = np.random.default_rng(seed)
    expected = {}
    with tarfile.open(path, "w:gz") as tar:
        if top:
            d = tarfile.TarInfo(top)
            d.type, d.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(d)
        for name, n in (("data_batch_1", n_train), ("test_batch", n_test)):
            rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, n).tolist()
            expected[name] = (rows, labels)
            blob = py2_pickle_dumps({b"batch_label": name.encode(), b"labels": labels,
                                     b"data": rows, b"filenames": [b"f.png"] * n})
            _tar_add_bytes(tar, f"{top}/{name}" if top else name, blob)
        if extra is not None:
            extra(tar)
    return hashlib.md5(path.read_bytes()).hexdigest(), expected


def _assert_matches_archive(ds: Dataset, expected):
    rows, labels = expected["data_batch_1"]
    np.testing.assert_array_equal(ds.train.images, _chw_to_nhwc_by_index(rows))
    assert ds.train.labels.tolist() == labels
    rows, labels = expected["test_batch"]
    np.testing.assert_array_equal(ds.test.images, _chw_to_nhwc_by_index(rows))
    assert ds.test.labels.tolist() == labels


def test_md5sum_matches_hashlib_across_chunks(tmp_path):
    p = tmp_path / "blob"
    p.write_bytes(bytes(range(256)) * 5 + b"tail")
    assert data.md5sum(p, chunk=7) == data.md5sum(p) == hashlib.md5(p.read_bytes()).hexdigest()


def test_download_extracts_and_loads(tmp_path, http_server, cifar_pickle_dumps):
    base, www = http_server
    md5, expected = _make_archive(www / "cifar-10-python.tar.gz", cifar_pickle_dumps)
    dest = tmp_path / "dest"  # does not exist yet

    final = download_cifar10(dest, url=f"{base}/cifar-10-python.tar.gz", md5=md5, progress=False)

    assert final == dest / PY_DIR
    assert [p.name for p in dest.iterdir()] == [PY_DIR]  # temp folder and archive are gone
    assert sorted(p.name for p in final.iterdir()) == ["data_batch_1", "test_batch"]
    _assert_matches_archive(load_cifar10(dest, download=False, progress=False), expected)


def test_download_replaces_stale_folder(tmp_path, http_server, cifar_pickle_dumps):
    base, www = http_server
    md5, expected = _make_archive(www / "c.tar.gz", cifar_pickle_dumps)
    dest = tmp_path / "dest"
    (dest / PY_DIR).mkdir(parents=True)
    (dest / PY_DIR / "stale").write_text("old")

    download_cifar10(dest, url=f"{base}/c.tar.gz", md5=md5, progress=False)
    assert not (dest / PY_DIR / "stale").exists()
    _assert_matches_archive(load_cifar10(dest, download=False, progress=False), expected)


def test_download_wrong_md5_leaves_nothing(tmp_path, http_server, cifar_pickle_dumps):
    base, www = http_server
    md5, _ = _make_archive(www / "c.tar.gz", cifar_pickle_dumps)
    wrong = "0" * 32 if md5 != "0" * 32 else "1" * 32
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("pre-existing")

    with pytest.raises(DataError, match="checksum") as ei:
        download_cifar10(dest, url=f"{base}/c.tar.gz", md5=wrong, progress=False)
    assert md5 in str(ei.value) and wrong in str(ei.value)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["closed_port", "http_404"])
def test_download_unreachable_is_data_error(tmp_path, http_server, where):
    base, _ = http_server
    url = f"http://127.0.0.1:{_closed_port()}/x" if where == "closed_port" else f"{base}/missing.tar.gz"
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as ei:
        download_cifar10(dest, url=url, md5="0" * 32, progress=False)
    assert url in str(ei.value) and "--data-dir" in str(ei.value)
    assert list(dest.iterdir()) == []


def _traversal(name):
    def extra(tar):
        _tar_add_bytes(tar, name, b"evil payload")
    return extra


def _symlink(tar):
    info = tarfile.TarInfo(f"{PY_DIR}/evil_link")
    info.type, info.linkname = tarfile.SYMTYPE, "../../../evil_target"
    tar.addfile(info)


def _hardlink(tar):
    info = tarfile.TarInfo(f"{PY_DIR}/evil_hardlink")
    info.type, info.linkname = tarfile.LNKTYPE, f"{PY_DIR}/data_batch_1"
    tar.addfile(info)


@pytest.mark.parametrize("kind", ["dotdot", "dotdot_deep", "nested_dotdot", "absolute",
                                  "symlink", "hardlink"])
def test_download_rejects_unsafe_archive_members(tmp_path, http_server, cifar_pickle_dumps, kind):
    base, www = http_server
    outside = tmp_path / "evil_abs"
    extra = {"dotdot": _traversal("../evil"),
             "dotdot_deep": _traversal("../../../evil"),  # dest/.download-*/extracted -> tmp_path
             "nested_dotdot": _traversal(f"{PY_DIR}/../../../../evil"),
             "absolute": _traversal(str(outside)),
             "symlink": _symlink,
             "hardlink": _hardlink}[kind]
    md5, _ = _make_archive(www / "c.tar.gz", cifar_pickle_dumps, extra=extra)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("pre-existing")

    with pytest.raises(DataError, match="unsafe") as ei:
        download_cifar10(dest, url=f"{base}/c.tar.gz", md5=md5, progress=False)
    assert "evil" in str(ei.value)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]  # nothing extracted, nothing left
    assert not [p for p in tmp_path.rglob("evil*")]          # nothing written anywhere


def test_download_archive_without_batches_is_data_error(tmp_path, http_server):
    base, www = http_server
    path = www / "c.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        _tar_add_bytes(tar, "something-else/readme.txt", b"hello")
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="data_batch_1"):
        download_cifar10(dest, url=f"{base}/c.tar.gz", md5=hashlib.md5(path.read_bytes()).hexdigest(),
                         progress=False)
    assert list(dest.iterdir()) == []


@pytest.fixture
def local_download(http_server, monkeypatch, cifar_pickle_dumps):
    """Routes load_cifar10's download through the real download_cifar10, pointed at the local
    server (its url/md5 defaults are bound at definition time, so wrap the module attribute)."""
    base, www = http_server
    archive_md5, expected = _make_archive(www / "cifar-10-python.tar.gz", cifar_pickle_dumps)
    real = data.download_cifar10
    calls = []

    def wrapper(dest, url=data.CIFAR10_URL, md5=data.CIFAR10_MD5, progress=True):
        # load_cifar10 asks for the official archive; serve the local one instead.
        assert (url, md5) == (data.CIFAR10_URL, data.CIFAR10_MD5)
        calls.append(Path(dest))
        return real(dest, url=f"{base}/cifar-10-python.tar.gz", md5=archive_md5, progress=progress)

    monkeypatch.setattr(data, "download_cifar10", wrapper)
    return calls, expected


def test_load_downloads_when_absent_then_reuses(tmp_path, local_download):
    calls, expected = local_download
    dest = tmp_path / "explicit-dest"
    dest.mkdir()  # a folder the user chose gets a download only if it exists and is empty

    ds = load_cifar10(dest, download=True, progress=False)
    assert calls == [dest]
    assert "python" in ds.source
    _assert_matches_archive(ds, expected)

    again = load_cifar10(dest, download=True, progress=False)
    assert calls == [dest]  # already there: no second download
    _assert_matches_archive(again, expected)


def test_load_downloads_into_cache_by_default(tmp_path, local_download):
    calls, expected = local_download
    ds = load_cifar10(None, download=True, progress=False)
    target = tmp_path / "xnornet-cache" / "data"
    assert calls == [target]
    assert (target / PY_DIR / "data_batch_1").is_file()
    _assert_matches_archive(ds, expected)


def test_chosen_folder_must_exist_and_be_empty_to_download(tmp_path, local_download, monkeypatch):
    calls, _ = local_download
    with pytest.raises(DataError, match="does not exist.*create it first"):
        load_cifar10(tmp_path / "typo", download=True, progress=False)
    assert not (tmp_path / "typo").exists()
    other = tmp_path / "holiday-photos"
    other.mkdir()
    (other / "beach.jpg").write_bytes(b"not cifar")
    with pytest.raises(DataError, match=r"holds other things \(beach.jpg\), so nothing was downloaded"):
        load_cifar10(other, download=True, progress=False)
    monkeypatch.setenv("XNORNET_DATA", str(tmp_path / "env-typo"))  # $XNORNET_DATA: the same rule
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(None, download=True, progress=False)
    a_file = tmp_path / "data.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_cifar10(a_file, download=True, progress=False)
    assert calls == []


def test_chosen_folder_with_only_leftovers_gets_the_download(tmp_path, local_download):
    calls, expected = local_download
    dest = tmp_path / "mnt"
    (dest / ".download-killed").mkdir(parents=True)  # a killed download's temporary folder
    (dest / "lost+found").mkdir()
    (dest / PY_DIR).mkdir()  # incomplete: no batches
    (dest / PY_DIR / "data_batch_1").write_bytes(b"partial")
    ds = load_cifar10(dest, download=True, progress=False)
    assert calls == [dest]
    _assert_matches_archive(ds, expected)


def test_load_does_not_download_when_forbidden(tmp_path, local_download):
    calls, _ = local_download
    with pytest.raises(DataError, match="--data-dir"):
        load_cifar10(tmp_path / "dest", download=False, progress=False)
    assert calls == []


# ================================================================ corrupt input found by review

def test_scalar_labels_is_data_error(synthetic_cifar_python, cifar_pickle_dumps):
    bad = synthetic_cifar_python / PY_DIR / "test_batch"
    bad.write_bytes(cifar_pickle_dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": 5}))
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(synthetic_cifar_python, download=False, progress=False)


def test_pixel_out_of_uint8_range_is_data_error(synthetic_cifar_python, cifar_pickle_dumps):
    bad = synthetic_cifar_python / PY_DIR / "test_batch"
    bad.write_bytes(cifar_pickle_dumps({b"data": [[256] * 3072], b"labels": [0]}))
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(synthetic_cifar_python, download=False, progress=False)


def test_int_array_out_of_uint8_range_is_data_error(synthetic_cifar_python, cifar_pickle_dumps):
    bad = synthetic_cifar_python / PY_DIR / "test_batch"
    bad.write_bytes(cifar_pickle_dumps({b"data": np.full((1, 3072), 300, np.int64), b"labels": [0]}))
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(synthetic_cifar_python, download=False, progress=False)


def test_corrupt_pickle_overflow_is_data_error(synthetic_cifar_python):
    bad = synthetic_cifar_python / PY_DIR / "test_batch"
    bad.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**63))  # BINBYTES8 with absurd length
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(synthetic_cifar_python, download=False, progress=False)


def test_test_split_missing_class_folder_is_data_error(tmp_path):
    root = tmp_path / "folder"
    _make_folder(root, {"train": {"a": 1, "b": 1}, "test": {"a": 1}})
    with pytest.raises(DataError, match=r"test[/\\]b is missing"):
        load_cifar10(root, download=False, progress=False)


def test_archive_with_top_level_batches(tmp_path, http_server, cifar_pickle_dumps):
    base, www = http_server
    md5, _ = _make_archive(www / "c.tar.gz", cifar_pickle_dumps, top="")
    dest = tmp_path / "dest"
    with pytest.raises(DataError):
        download_cifar10(dest, url=f"{base}/c.tar.gz", md5=md5, progress=False)


def test_not_a_tarball_is_data_error(tmp_path, http_server):
    base, www = http_server
    (www / "c.tar.gz").write_bytes(b"not a tarball at all")
    dest = tmp_path / "dest"
    with pytest.raises(DataError):
        download_cifar10(dest, url=f"{base}/c.tar.gz",
                         md5=hashlib.md5(b"not a tarball at all").hexdigest(), progress=False)
