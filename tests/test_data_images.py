"""Safe image opening, RGB conversion, mask reading and dataset-relative paths."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from helpers.data import bomb_png, palette_mask, rgb_image
from wsss.data.images import DecompressionBomb, load_rgb, open_image, peek_size, read_mask, to_rgb
from wsss.data.paths import path_problem, resolve_inside
from wsss.errors import DataError


def test_open_image_decodes_and_keeps_mode(tmp_path):
    p = tmp_path / "g.png"
    Image.new("L", (5, 4), 7).save(p)
    with open_image(p) as img:
        assert img.mode == "L" and img.size == (5, 4)
    assert peek_size(p) == (5, 4)


def test_truncated_image_is_a_data_error_naming_the_file(tmp_path):
    p = tmp_path / "t.jpg"
    rgb_image(0).save(p, quality=95)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(DataError, match=r"t\.jpg: cannot decode image"):
        open_image(p)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"junk\.png: cannot decode image"):
        open_image(tmp_path / "junk.png")
    with pytest.raises(DataError, match="not found"):
        open_image(tmp_path / "missing.png")


def test_decompression_bomb_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    bomb_png(p)  # claims 100000x100000 = 10 GP, beyond even PIL's own hard limit
    with pytest.raises(DecompressionBomb, match=r"bomb\.png: refused as a decompression bomb"):
        open_image(p)
    small = tmp_path / "s.png"
    rgb_image(1).save(small)
    with pytest.raises(DecompressionBomb, match="768 pixels > limit 100"):
        open_image(small, max_pixels=100)
    assert open_image(small, max_pixels=768).size == (32, 24)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA", "1", "I;16"])
def test_to_rgb_converts_modes(mode):
    src = rgb_image(3).convert(mode) if mode != "I;16" else Image.fromarray(
        np.full((4, 5), 65535, np.uint16))
    out = to_rgb(src, "x.png")
    assert out.mode == "RGB" and out.size == src.size
    if mode == "I;16":
        assert np.asarray(out).min() == 255  # scaled, not clipped from 16 bits


def test_alpha_composited_on_black():
    a = np.zeros((2, 2, 4), np.uint8)
    a[..., :3] = 200  # colour under a fully transparent pixel must not show
    a[0, 0, 3] = 255
    out = np.asarray(to_rgb(Image.fromarray(a, "RGBA")))
    assert out[0, 0].tolist() == [200, 200, 200] and out[1, 1].tolist() == [0, 0, 0]


def test_float_image_out_of_range_is_refused_not_clipped():
    img = Image.fromarray(np.array([[0.0, 1000.0]], np.float32), "F")
    with pytest.raises(DataError, match="f.tif: cannot convert mode F to RGB without clipping"):
        to_rgb(img, "f.tif")


def test_load_rgb(tmp_path):
    p = tmp_path / "p.png"
    rgb_image(2).convert("P").save(p)
    assert load_rgb(p).mode == "RGB"


def test_read_mask_palette_and_grey(tmp_path):
    palette_mask([3, 7]).save(tmp_path / "m.png")
    m = read_mask(tmp_path / "m.png")
    assert m.dtype == np.uint8 and m.shape == (24, 32)
    assert set(np.unique(m).tolist()) == {0, 3, 7, 255}
    Image.fromarray(np.full((3, 3), 5, np.uint8), "L").save(tmp_path / "g.png")
    assert read_mask(tmp_path / "g.png").max() == 5
    rgb_image(0).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"rgb\.png: mask must be a palette or grayscale"):
        read_mask(tmp_path / "rgb.png")


def test_resolve_inside(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"x")
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"s")
    assert resolve_inside(root, "a/x.jpg") == (root / "a" / "x.jpg").resolve()
    assert resolve_inside(root, "a/not_yet.jpg").name == "not_yet.jpg"  # existence is not required
    for bad, why in [("../secret.jpg", r"\.\."), ("a/../../secret.jpg", r"\.\."), ("a/../x.jpg", r"\.\."),
                     (str(outside), "absolute"), ("C:\\x.jpg", "absolute"), ("", "empty")]:
        with pytest.raises(DataError, match=why):
            resolve_inside(root, bad)
    os.symlink(outside, root / "a" / "link.jpg")
    os.symlink(tmp_path, root / "dirlink")
    assert "outside the dataset root" in path_problem(root, "a/link.jpg")
    with pytest.raises(DataError, match="link.jpg: unsafe dataset path"):
        resolve_inside(root, "a/link.jpg")
    assert "outside" in path_problem(root, "dirlink/secret.jpg")
    os.symlink(root / "a" / "x.jpg", root / "inner.jpg")  # a symlink that stays inside is fine
    assert path_problem(root, "inner.jpg") == ""
