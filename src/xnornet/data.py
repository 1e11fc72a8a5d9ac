"""CIFAR-10 on disk -> uint8 arrays in memory. numpy only (no torch), so inference can use it.

Two layouts are read:
- ``python``: the official cifar-10-batches-py (data_batch_1..5, test_batch), parsed with a
  restricted unpickler that only admits what those files hold;
- ``folder``: ``{train,test}/<class>/*.png|jpg``, class index = position in the sorted class names
  (how ../shared/data/cifar10-jpeg is stored).

Where the data is: ``data_dir`` argument, else ``$XNORNET_DATA``, else the user cache dir. If none
of those holds CIFAR-10, the official archive is downloaded there, md5-checked and extracted.
Arrays: images (N, 32, 32, 3) uint8 NHWC, labels (N,) int64.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .files import write_atomically

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the CIFAR-10 training set, pixels scaled to [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PY_DIR = "cifar-10-batches-py"


@dataclass
class Split:
    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self):
        return len(self.labels)

    def head(self, n: int | None) -> "Split":
        return self if n is None else Split(self.images[:n], self.labels[:n])


@dataclass
class Dataset:
    train: Split
    test: Split
    classes: tuple[str, ...]
    source: str  # where it was read from and in which layout, for logs and result files


# ---------------------------------------------------------------- locating the data

def cache_dir() -> Path:
    """Where downloads and decoded arrays go: $XNORNET_CACHE, else the platform user cache dir."""
    env = os.environ.get("XNORNET_CACHE")
    if env:
        return Path(env)
    import platformdirs
    return Path(platformdirs.user_cache_dir("xnornet"))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("XNORNET_DATA")
    return Path(env) if env else cache_dir() / "data"


def detect_layout(root: Path) -> tuple[str, Path] | None:
    """('python', dir with data_batch_1) or ('folder', dir with train/ and test/), else None."""
    for cand in (root / PY_DIR, root):
        if (cand / "data_batch_1").is_file() and (cand / "test_batch").is_file():
            return "python", cand
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "folder", root
    return None


def load_cifar10(data_dir=None, *, download: bool = True, progress: bool = True,
                 test_only: bool = False) -> Dataset:
    """Load CIFAR-10 from wherever it is (see module doc); download it if allowed and absent.
    test_only: leave the training split empty (evaluation and benchmarks need only the test set;
    a first run on an image folder then decodes 10,000 images instead of 60,000)."""
    root = resolve_data_dir(data_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is a file, not a folder. {_HOW_TO_PROVIDE}")
    found = detect_layout(root)
    if found is None:
        if not download:
            raise DataError(f"no CIFAR-10 found in {root}. {_HOW_TO_PROVIDE}")
        if data_dir is not None or os.environ.get("XNORNET_DATA"):
            _check_chosen_download_folder(root)
        download_cifar10(root, progress=progress)
        found = detect_layout(root)
        assert found is not None, "download_cifar10 extracts cifar-10-batches-py"
    layout, where = found
    if layout == "python":
        train, test = load_python_batches(where, test_only)
        classes = CIFAR10_CLASSES
    else:
        train, test, classes = load_image_folder(where, progress=progress, test_only=test_only)
    return Dataset(train, test, classes, f"{where} ({layout})")


def _check_chosen_download_folder(root: Path) -> None:
    """A folder the user named gets a 170 MB download only if it exists and is empty: a typo in
    --data-dir, or a folder of something else, must be an error, not a download."""
    if not root.exists():
        raise DataError(f"{root} does not exist. To download CIFAR-10 into it, create it first; "
                        "without --data-dir and $XNORNET_DATA it is downloaded into the cache "
                        f"({cache_dir() / 'data'}). {_HOW_TO_PROVIDE}")
    # Leftovers that do not make it someone else's folder: hidden files (a killed download's
    # .download-* folder too), lost+found, an incomplete cifar-10-batches-py (replaced).
    other = sorted(p.name for p in root.iterdir()
                   if not p.name.startswith(".") and p.name not in ("lost+found", PY_DIR))
    if other:
        raise DataError(f"no CIFAR-10 found in {root}, and the folder holds other things "
                        f"({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}), so nothing "
                        f"was downloaded into it. {_HOW_TO_PROVIDE}")


_HOW_TO_PROVIDE = (
    "Pass --data-dir (or set XNORNET_DATA) to a folder holding either cifar-10-batches-py/ "
    f"(extracted from {CIFAR10_URL}, md5 {CIFAR10_MD5}) or train/<class>/*.png|jpg and "
    "test/<class>/*.png|jpg.")


# ---------------------------------------------------------------- python (pickle) layout

class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only the globals a CIFAR-10 batch needs to rebuild a numpy array.

    A pickle can call any importable function while loading; a file from the internet must never
    be given that power, so every other global is refused before it is looked up.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles; runs no code
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a data file")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, any version
        if module == "_codecs":
            return _latin1_encode
        return getattr(np, name)


def _latin1_encode(text, encoding="latin1"):
    """The only codec use a protocol-2 pickle of bytes needs."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing codec {encoding!r} in a data file")
    return text.encode(encoding)


def restricted_load(data: bytes):
    return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def _read_batch(path: Path) -> Split:
    try:
        d = restricted_load(path.read_bytes())
        raw = np.asarray(d[b"data"])
        labels = np.asarray(d[b"labels"])
    # The unpickler runs no code, so any exception here means a corrupt file (truncated data,
    # absurd sizes -> OverflowError/MemoryError, wrong types); all get the same clear error.
    except Exception as e:
        raise DataError(f"{path} is not a CIFAR-10 batch file: {type(e).__name__}: {e}") from e
    if (raw.ndim != 2 or raw.shape[1] != 3072 or labels.ndim != 1 or len(raw) != len(labels)
            or raw.dtype.kind not in "ui" or labels.dtype.kind not in "ui"):
        raise DataError(f"{path}: expected integer data (N, 3072) and N integer labels, got "
                        f"{raw.dtype} {raw.shape} and {labels.dtype} {labels.shape}")
    if raw.size and (raw.min() < 0 or raw.max() > 255):
        raise DataError(f"{path}: pixel values outside 0..255")
    if labels.size and (labels.min() < 0 or labels.max() >= 10):
        raise DataError(f"{path}: labels outside 0..9")
    raw, labels = raw.astype(np.uint8), labels.astype(np.int64)
    # Rows are 1024 red, 1024 green, 1024 blue values (CHW); we keep NHWC.
    return Split(raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels)


def load_python_batches(folder: Path, test_only: bool = False) -> tuple[Split, Split]:
    if test_only:
        return _empty_split(), _read_batch(folder / "test_batch")
    present = [i for i in range(1, 6) if (folder / f"data_batch_{i}").is_file()]
    if len(present) < 5:
        import warnings
        missing = ", ".join(f"data_batch_{i}" for i in range(1, 6) if i not in present)
        warnings.warn(f"{folder}: {missing} missing; training on {len(present)} of 5 batches",
                      stacklevel=2)
    parts = [_read_batch(folder / f"data_batch_{i}") for i in present]
    train = Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))
    return train, _read_batch(folder / "test_batch")


def _empty_split() -> Split:
    return Split(np.empty((0, 32, 32, 3), np.uint8), np.empty(0, np.int64))


# ---------------------------------------------------------------- image-folder layout

def _list_folder(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """Files in class-interleaved order (k-th image of each class in turn), so that the first N
    images of a class-sorted folder are still balanced across classes (--subset relies on it)."""
    per_class = []
    for label, name in enumerate(classes):
        if not (split_dir / name).is_dir():
            raise DataError(f"class folder {split_dir / name} is missing ({split_dir.parent / 'train'} "
                            f"has classes {classes})")
        files = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        per_class.append([(p, label) for p in files])
    extra = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        # Their images would be silently left out, and an accuracy on the rest misleads.
        raise DataError(f"{split_dir} has class folders {extra} that {split_dir.parent / 'train'} "
                        f"lacks (classes: {classes})")
    out = []
    for k in range(max((len(f) for f in per_class), default=0)):
        out.extend(f[k] for f in per_class if k < len(f))
    return out


def to_rgb(im) -> np.ndarray:
    """A Pillow image as (H, W, 3) uint8 RGB, turned upright as its EXIF orientation says.

    Used for training data and for ``predict`` alike, so both see an image the same way.
    """
    im = _upright(im)
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        # convert("RGB") clips these to 255 instead of scaling them: a 16-bit gray PNG would
        # come out all white.
        gray = _wide_to_8bit(np.asarray(im), im.mode)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"))


_ORIENTATION = 0x0112  # EXIF tag


def _upright(im):
    """Phone photos are stored sideways with an EXIF Orientation tag; apply it."""
    import warnings
    from PIL import ImageOps
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's "Corrupt EXIF data", which names no file
            orientation = im.getexif().get(_ORIENTATION, 1)
    # Pillow's EXIF parser raises assorted types (SyntaxError, struct.error, ...) on malformed
    # metadata; the pixels are still fine, so such an image is taken as stored, as before.
    except Exception:
        return im
    return im if orientation == 1 else ImageOps.exif_transpose(im)


def _wide_to_8bit(a: np.ndarray, mode: str) -> np.ndarray:
    """Samples of a 16/32-bit integer ("I;16*", "I") or float ("F") gray image -> uint8."""
    if mode == "F":
        a = np.nan_to_num(a.astype(np.float64))
        # Floats within [0, 1] are taken as normalised intensities; anything else as 0..255
        # values, clipped (there is no other convention to tell them apart by).
        if a.size and a.min() >= 0 and a.max() <= 1:
            a = a * 255
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    a = np.clip(a.astype(np.int64), 0, None)
    # Mode "I" holds int32, but it is where Pillow puts 16-bit PNG/TIFF samples (older Pillow
    # opened every 16-bit PNG as "I"), so values that fit in 16 bits are taken as 16-bit; only
    # wider values are scaled from the full non-negative int32 range.
    shift = 23 if mode == "I" and a.size and a.max() > 0xFFFF else 8
    return (np.minimum(a, (1 << (shift + 8)) - 1) >> shift).astype(np.uint8)


def _decode(files: list[tuple[Path, int]], desc: str, progress: bool) -> Split:
    from PIL import Image
    from tqdm import tqdm

    images = np.empty((len(files), 32, 32, 3), np.uint8)
    for i, (path, _) in enumerate(tqdm(files, desc=desc, unit="img", disable=not progress,
                                       mininterval=1.0)):
        try:
            with Image.open(path) as im:
                arr = to_rgb(im)
        except (OSError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot decode image {path}: {e}") from e
        if arr.shape != (32, 32, 3):
            raise DataError(f"{path}: expected a 32x32 image, got {arr.shape[1]}x{arr.shape[0]}")
        images[i] = arr
    return Split(images, np.array([label for _, label in files], np.int64))


def load_image_folder(root: Path, progress: bool = True,
                      test_only: bool = False) -> tuple[Split, Split, tuple[str, ...]]:
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root / 'train'} holds no class folders")
    listing = {s: _list_folder(root / s, classes) for s in ("train", "test")}
    # Cache key: the folder and every file's name, size and mtime, so any change re-decodes.
    h = hashlib.sha256(str(root.resolve()).encode())
    for s in ("train", "test"):
        for p, label in listing[s]:
            st = p.stat()
            h.update(f"{s}/{label}/{p.name}/{st.st_size}/{st.st_mtime_ns}".encode())
    cached = cache_dir() / "decoded" / h.hexdigest()[:24]
    splits = {"train": _empty_split()}
    for s in ("test",) if test_only else ("train", "test"):
        if not listing[s]:
            raise DataError(f"{root / s} holds no images ({', '.join(IMAGE_SUFFIXES)} files "
                            f"in its class folders)")
        x_path, y_path = cached / f"{s}_images.npy", cached / f"{s}_labels.npy"
        labels = np.array([label for _, label in listing[s]], np.int64)
        hit = _load_cached(x_path, y_path, labels)
        if hit is not None:
            splits[s] = hit
            continue
        splits[s] = _decode(listing[s], f"decoding {s}", progress)
        cached.mkdir(parents=True, exist_ok=True)
        _atomic_npy(x_path, splits[s].images)
        _atomic_npy(y_path, splits[s].labels)
    return splits["train"], splits["test"], tuple(classes)


def _load_cached(x_path: Path, y_path: Path, labels: np.ndarray) -> Split | None:
    """The cached split, or None to decode it (again) when the cache is absent or corrupt.

    A cache file can be torn (full disk, a copy cut short) or overwritten; it is only a copy of
    the images, so that costs a re-decode and a warning, not an error. Nothing is unpickled.
    """
    if not (x_path.is_file() and y_path.is_file()):
        return None
    x = _read_npy(x_path, np.uint8, (len(labels), 32, 32, 3))
    y = _read_npy(y_path, np.int64, labels.shape)
    if x is None or y is None:
        return None
    if not np.array_equal(y, labels):  # the cache key covers the labels, so this is corruption
        _warn_corrupt(y_path, "labels that do not match the image folder")
        return None
    return Split(x, y)


def _read_npy(path: Path, dtype, shape: tuple) -> np.ndarray | None:
    try:
        # Memory-mapped first, so a header claiming an absurd shape is refused before any of it
        # is read into memory; np.array then reads it (and closes the map).
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.dtype != dtype or arr.shape != shape:
            _warn_corrupt(path, f"{arr.dtype} {arr.shape}, expected {np.dtype(dtype)} {shape}")
            return None
        return np.array(arr)
    # numpy's own messages ("Failed to read all data", "... allow_pickle") do not name the file,
    # and the latter suggests unsafe loading.
    except (ValueError, OSError, EOFError):
        _warn_corrupt(path, "not a readable .npy file")
        return None


def _warn_corrupt(path: Path, what: str) -> None:
    import warnings
    warnings.warn(f"ignoring corrupt cache file {path} ({what}); decoding the images again "
                  "(the cache file is rewritten)")


def _atomic_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.save(name) would append ".npy"
            np.save(f, arr)
    write_atomically(path, write)


# ---------------------------------------------------------------- download

def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_cifar10(dest: Path, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
                     progress: bool = True) -> Path:
    """Download, verify and extract the CIFAR-10 archive into dest/cifar-10-batches-py.

    Everything is written to a temporary folder inside dest and moved into place only after the
    checksum and extraction succeed, so a failure leaves nothing half-written behind.
    """
    from tqdm import tqdm

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        archive = Path(tmp) / "cifar-10-python.tar.gz"
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(archive, "wb") as f:
                total = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc="downloading CIFAR-10",
                          disable=not progress) as bar:
                    while block := r.read(1 << 16):
                        f.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise DataError(f"could not download CIFAR-10 from {url} ({e}). {_HOW_TO_PROVIDE}") from e
        got = md5sum(archive)
        if got != md5:
            raise DataError(f"checksum mismatch for {url}: md5 {got}, expected {md5}; "
                            "the download is corrupt or not CIFAR-10 and was deleted")
        extracted = Path(tmp) / "extracted"
        _safe_extract(archive, extracted)
        if not all((extracted / PY_DIR / f).is_file() for f in ("data_batch_1", "test_batch")):
            raise DataError(f"{url} did not contain {PY_DIR}/data_batch_1 and test_batch")
        final = dest / PY_DIR
        if final.exists():
            shutil.rmtree(final)
        os.replace(extracted / PY_DIR, final)
    return final


def _safe_extract(archive: Path, out: Path) -> None:
    """Extract regular files and folders only, each strictly inside ``out``."""
    out = out.resolve()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar.getmembers():
                target = (out / m.name).resolve()
                if not (m.isfile() or m.isdir()) or (target != out and out not in target.parents):
                    raise DataError(f"refusing unsafe archive member {m.name!r} in {archive.name}")
            # The checks above are the guard; the "data" filter (Python >= 3.11.4) is a second one.
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(out, **kwargs)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{archive.name} is not a readable tar.gz archive: {e}") from e
