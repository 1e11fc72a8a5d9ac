"""xnornet.data.to_rgb, the one image decoder of training data and `predict`: wide sample types
(16-bit PNG, 32-bit int, float) scaled to 8 bits rather than clipped, EXIF orientation applied."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from xnornet import cli
from xnornet.data import to_rgb

ORIENTATION = 0x0112  # EXIF tag


def _gray3(gray: np.ndarray) -> np.ndarray:
    return np.stack([gray] * 3, axis=-1)


def _reopened(tmp_path, im: Image.Image, name: str = "x.png", **save) -> Image.Image:
    path = tmp_path / name
    im.save(path, **save)
    return Image.open(path)


def _sideways(tmp_path, upright: np.ndarray, name: str) -> Image.Image:
    """The upright image stored turned 90 degrees counter-clockwise with EXIF Orientation 6
    ("rotate 90 clockwise to view"), as phone cameras write portrait photos."""
    im = Image.fromarray(np.ascontiguousarray(np.rot90(upright)))
    exif = im.getexif()
    exif[ORIENTATION] = 6
    return _reopened(tmp_path, im, name, exif=exif)


def test_16bit_gray_png_is_scaled_not_clipped(tmp_path):
    gradient = (np.arange(32 * 32, dtype=np.uint16) * 64).reshape(32, 32)  # 0 .. 65472
    with _reopened(tmp_path, Image.fromarray(gradient)) as im:
        assert im.mode in ("I;16", "I")  # "I" on older Pillow
        got = to_rgb(im)
    assert got.dtype == np.uint8 and got.shape == (32, 32, 3)
    np.testing.assert_array_equal(got, _gray3((gradient >> 8).astype(np.uint8)))
    mid = np.full((4, 4), 0x8080, np.uint16)
    with _reopened(tmp_path, Image.fromarray(mid), "mid.png") as im:
        np.testing.assert_array_equal(to_rgb(im), np.full((4, 4, 3), 0x80, np.uint8))


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<i4"])  # modes I;16, I;16B, I
def test_wide_integer_modes_in_16bit_range(dtype):
    values = np.array([[0, 255, 256, 0x7FFF], [0x8000, 0xFF00, 0xFFFF, 1000]])
    im = Image.fromarray(values.astype(dtype))
    expected = (values >> 8).astype(np.uint8)
    np.testing.assert_array_equal(to_rgb(im), _gray3(expected))


def test_mode_I_wider_than_16_bits_uses_the_int32_range():
    im = Image.fromarray(np.array([[0, 1 << 30, (1 << 31) - 1, -5]], np.int32))
    assert im.mode == "I"
    np.testing.assert_array_equal(to_rgb(im)[..., 0], [[0, 128, 255, 0]])


def test_float_mode():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert unit.mode == "F"
    np.testing.assert_array_equal(to_rgb(unit)[..., 0], [[0, 128, 255]])  # [0, 1]: scaled
    wide = Image.fromarray(np.array([[-3.0, 127.4, 300.0, np.nan]], np.float32))
    np.testing.assert_array_equal(to_rgb(wide)[..., 0], [[0, 127, 255, 0]])  # else clipped


def test_8bit_modes_unchanged():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb(Image.fromarray(rgb)), rgb)
    gray = rgb[..., 0].copy()
    np.testing.assert_array_equal(to_rgb(Image.fromarray(gray)), _gray3(gray))
    rgba = Image.fromarray(rgb).convert("RGBA")
    np.testing.assert_array_equal(to_rgb(rgba), rgb)


def test_exif_orientation_is_applied(tmp_path):
    upright = np.random.default_rng(1).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    with _sideways(tmp_path, upright, "phone.png") as im:
        assert im.size == (6, 10)  # stored sideways
        np.testing.assert_array_equal(to_rgb(im), upright)
    wide = (np.arange(60, dtype=np.uint16) * 1000).reshape(6, 10)
    with _sideways(tmp_path, wide, "phone16.png") as im:
        np.testing.assert_array_equal(to_rgb(im), _gray3((wide >> 8).astype(np.uint8)))


def test_corrupt_exif_leaves_the_image_as_stored(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    with _reopened(tmp_path, Image.fromarray(rgb), exif=b"Exif\x00\x00not a tiff header") as im:
        np.testing.assert_array_equal(to_rgb(im), rgb)


# ---------------------------------------------------------------- predict

def _predict(tmp_path, *images) -> list:
    out = tmp_path / "pred.json"
    assert cli.main(["predict", *map(str, images), "--top", "10", "--json", str(out)]) == 0
    return [{c["class"]: c["probability"] for c in r["top"]} for r in json.loads(out.read_text())]


def _structured(seed: int) -> np.ndarray:
    """Not symmetric under rotation, so a sideways image scores differently."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (4, 4, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)


def test_predict_applies_exif_orientation(tmp_path):
    upright = _structured(3)
    Image.fromarray(upright).save(tmp_path / "upright.png")
    _sideways(tmp_path, upright, "phone.png").close()
    got_upright, got_phone = _predict(tmp_path, tmp_path / "upright.png", tmp_path / "phone.png")
    assert got_phone == got_upright


def test_predict_reads_16bit_png_like_its_8bit_version(tmp_path):
    gray8 = _structured(4)[..., 0]
    Image.fromarray(gray8).save(tmp_path / "8.png")
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "16.png")  # same, in 16 bits
    got8, got16 = _predict(tmp_path, tmp_path / "8.png", tmp_path / "16.png")
    assert got16 == got8
