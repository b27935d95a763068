"""VOC palette and palette-PNG mask files."""

import numpy as np
import pytest
from PIL import Image

from wsss.errors import DataError
from wsss.data.palette import VOC_PALETTE, colorize, load_mask, save_palette_png


def reference_palette():
    """The VOC devkit's bitget loop, written independently."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return np.array(out, np.uint8)


def test_palette_is_voc():
    assert VOC_PALETTE.shape == (256, 3) and VOC_PALETTE.dtype == np.uint8
    np.testing.assert_array_equal(VOC_PALETTE, reference_palette())
    assert VOC_PALETTE[15].tolist() == [192, 128, 128]  # person
    assert VOC_PALETTE[255].tolist() == [224, 224, 192]  # ignore
    assert colorize(np.array([[1, 255]], np.uint8)).tolist() == [[[128, 0, 0], [224, 224, 192]]]


def test_save_palette_png_roundtrip(tmp_path):
    mask = np.random.default_rng(0).integers(0, 21, (30, 40)).astype(np.uint8)
    mask[0, :5] = 255
    path = tmp_path / "sub" / "a.png"
    save_palette_png(path, mask)
    with Image.open(path) as im:
        assert im.mode == "P" and im.size == (40, 30)
        np.testing.assert_array_equal(np.array(im.getpalette(), np.uint8).reshape(-1, 3), VOC_PALETTE)
        np.testing.assert_array_equal(np.array(im), mask)
    np.testing.assert_array_equal(load_mask(path), mask)
    assert [p.name for p in path.parent.iterdir()] == ["a.png"]  # no temp file left behind


def test_save_rejects_wrong_dtype(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        save_palette_png(tmp_path / "a.png", np.zeros((3, 4), np.int32))
    assert not (tmp_path / "a.png").exists()


def test_load_mask_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_mask(tmp_path / "missing.png")
    Image.new("RGB", (4, 3)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="mode RGB"):
        load_mask(tmp_path / "rgb.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="junk.png: cannot decode mask"):
        load_mask(tmp_path / "junk.png")
    Image.fromarray(np.full((3, 4), 7, np.uint8)).save(tmp_path / "grey.png")
    assert (load_mask(tmp_path / "grey.png") == 7).all()
