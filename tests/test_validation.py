"""Dataset-drop validation: a clean drop passes; each broken drop fails *its* expectation, naming the file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers.data import VOC_IDS, bomb_png, make_custom, make_voc, palette_mask, rgb_image, write_xml
from wsss.data.custom import read_custom
from wsss.data.voc import read_voc
from wsss.errors import ConfigError
from wsss.validation import validate_dataset


@pytest.fixture
def voc(tmp_path):
    return make_voc(tmp_path / "drop")


def validate(ds, tmp_path, **kw):
    return validate_dataset(ds, tmp_path / "report", **kw)


def failed(res) -> set[str]:
    return set(res.summary["failed_checks"])


def verdict(res, key) -> str:
    title = res.summary["checks"][key]["title"]
    [line] = [v for v in res.verdicts if v.startswith(f"FAIL {title}:")]
    return line


def tree_digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_clean_drop_passes_with_data_docs(voc, tmp_path):
    before = tree_digest(voc)
    res = validate(read_voc(voc), tmp_path)
    assert res.success and res.verdicts == [] and failed(res) == set()
    assert tree_digest(voc) == before  # validation never modifies the drop
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["success"] and summary["images"] == 6 and summary["modes"] == {"RGB": 6}
    assert summary["checks_run"] == len(summary["checks"]) >= 17
    docs = tmp_path / "report" / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    assert summary["data_docs"] == str(docs.resolve()) and docs.is_file()
    assert "PASS" in res.headline
    assert (tmp_path / "report" / "images.csv").is_file()
    # a persistent GX context keeps history across drops
    ctx = tmp_path / "ctx"
    first = validate_dataset(read_voc(voc), tmp_path / "r2", context_root=ctx)
    res2 = validate_dataset(read_voc(voc), tmp_path / "r2", context_root=ctx,
                            reference=first.store(read_voc(voc).vocab.names))
    assert (ctx / "uncommitted" / "data_docs" / "local_site" / "index.html").is_file()
    assert res2.summary["class_balance"]["max_abs_shift"] == 0.0


def test_non_rgb_modes_are_reported_not_failed(voc, tmp_path):
    jpg = lambda i: voc / "JPEGImages" / f"{VOC_IDS[i]}.jpg"  # noqa: E731
    rgb_image(0).convert("L").save(jpg(0))
    rgb_image(1).convert("CMYK").save(jpg(1))
    jpg(2).unlink()
    rgb_image(2).convert("P").save(voc / "JPEGImages" / f"{VOC_IDS[2]}.png")
    a = np.asarray(rgb_image(3).convert("RGBA")).copy()
    a[..., 3] = 128
    jpg(3).unlink()
    Image.fromarray(a, "RGBA").save(voc / "JPEGImages" / f"{VOC_IDS[3]}.png")
    res = validate(read_voc(voc), tmp_path)
    assert res.success, res.verdicts
    assert res.summary["modes"] == {"CMYK": 1, "L": 1, "P": 1, "RGB": 2, "RGBA": 1}
    assert {d["id"]: d["mode"] for d in res.summary["non_rgb"]} == {
        VOC_IDS[0]: "L", VOC_IDS[1]: "CMYK", VOC_IDS[2]: "P", VOC_IDS[3]: "RGBA"}
    assert any("CMYK" in w and VOC_IDS[1] in w for w in res.summary["warnings"])


def test_corrupt_image(voc, tmp_path):
    p = voc / "JPEGImages" / f"{VOC_IDS[2]}.jpg"
    p.write_bytes(p.read_bytes()[:300])
    res = validate(read_voc(voc), tmp_path)
    assert not res.success and failed(res) == {"image_decodes"}
    assert VOC_IDS[2] in verdict(res, "image_decodes") and "cannot decode image" in verdict(res, "image_decodes")


def test_decompression_bomb(voc, tmp_path):
    bomb_png(voc / "JPEGImages" / f"{VOC_IDS[0]}.jpg")
    res = validate(read_voc(voc), tmp_path, max_pixels=10_000)
    assert failed(res) == {"not_bomb"}
    assert verdict(res, "not_bomb").startswith("FAIL image is not a decompression bomb: 1 image — 2007_000000 (")
    # a modest limit also refuses an honest but too-large image
    res = validate(read_voc(make_voc(tmp_path / "d2")), tmp_path, max_pixels=700)
    assert failed(res) == {"not_bomb", "mask_decodes"}  # 32x24 = 768 px > 700 for masks too


def test_unknown_label(voc, tmp_path):
    write_xml(voc / "Annotations" / f"{VOC_IDS[1]}.xml", VOC_IDS[1], ["dog", "unicorn"])
    res = validate(read_voc(voc), tmp_path)
    assert failed(res) == {"labels_in_vocab"}
    assert f"{VOC_IDS[1]} (unknown: unicorn)" in verdict(res, "labels_in_vocab")


def test_empty_label_set(voc, tmp_path):
    write_xml(voc / "Annotations" / f"{VOC_IDS[4]}.xml", VOC_IDS[4], [])
    res = validate(read_voc(voc), tmp_path)
    assert failed(res) == {"labels_nonempty"} and VOC_IDS[4] in verdict(res, "labels_nonempty")


def test_unreadable_annotation(voc, tmp_path):
    (voc / "Annotations" / f"{VOC_IDS[5]}.xml").write_text("<annotation><object>")
    res = validate(read_voc(voc), tmp_path)  # labels still come from the mask
    assert failed(res) == {"annotation_readable"} and VOC_IDS[5] in verdict(res, "annotation_readable")


def test_mask_size_mismatch(voc, tmp_path):
    palette_mask([8], size=(10, 10)).save(voc / "SegmentationClassAug" / f"{VOC_IDS[0]}.png")
    res = validate(read_voc(voc), tmp_path)
    assert failed(res) == {"mask_size"}
    assert verdict(res, "mask_size") == \
        f"FAIL mask size equals image size: 1 image — {VOC_IDS[0]} (mask 10x10, image 32x24)"


def test_mask_value_out_of_range(voc, tmp_path):
    m = np.asarray(palette_mask([3])).copy()
    m[5, 5] = 77  # VOC has 20 classes
    Image.fromarray(m, "L").save(voc / "SegmentationClassAug" / f"{VOC_IDS[2]}.png")
    res = validate(read_voc(voc), tmp_path)
    assert failed(res) == {"mask_values"}
    assert f"{VOC_IDS[2]} (values 77)" in verdict(res, "mask_values")


def test_size_differs_from_manifest(voc, tmp_path):
    write_xml(voc / "Annotations" / f"{VOC_IDS[3]}.xml", VOC_IDS[3], ["aeroplane"], size=(64, 48))
    res = validate(read_voc(voc), tmp_path)
    assert failed(res) == {"size_matches_manifest"}
    assert f"{VOC_IDS[3]} (decoded 32x24, manifest 64x48)" in verdict(res, "size_matches_manifest")


def test_too_small(voc, tmp_path):
    res = validate(read_voc(voc), tmp_path, min_side=30)
    assert failed(res) == {"min_side"} and "6 images" in verdict(res, "min_side")


def test_duplicate_content(voc, tmp_path):
    shutil.copy(voc / "JPEGImages" / f"{VOC_IDS[0]}.jpg", voc / "JPEGImages" / f"{VOC_IDS[3]}.jpg")
    res = validate(read_voc(voc), tmp_path)
    assert failed(res) == {"unique_content"}
    line = verdict(res, "unique_content")
    assert "2 images" in line and VOC_IDS[0] in line and VOC_IDS[3] in line


def test_missing_file(voc, tmp_path):
    (voc / "JPEGImages" / f"{VOC_IDS[5]}.jpg").unlink()
    res = validate(read_voc(voc), tmp_path)
    assert failed(res) == {"image_exists"}
    assert f"{VOC_IDS[5]} (JPEGImages/{VOC_IDS[5]}.jpg)" in verdict(res, "image_exists")


def test_symlink_escaping_root(voc, tmp_path):
    outside = tmp_path / "outside.jpg"
    rgb_image(99).save(outside)
    target = voc / "JPEGImages" / f"{VOC_IDS[1]}.jpg"
    target.unlink()
    os.symlink(outside, target)
    res = validate(read_voc(voc), tmp_path)
    assert failed(res) == {"image_path_safe"}
    assert "resolves outside the dataset root" in verdict(res, "image_path_safe")
    assert VOC_IDS[1] in verdict(res, "image_path_safe")


def test_path_with_dotdot(tmp_path):
    rows = [{"image": "a.png", "labels": "cat"}, {"image": "../escape.png", "labels": "dog"}]
    root = make_custom(tmp_path / "c", rows=rows)
    rgb_image(5).save(tmp_path / "c" / "escape.png")
    res = validate(read_custom(root), tmp_path)
    assert failed(res) == {"image_path_safe"}
    assert "escape (images/../escape.png: path contains '..')" in verdict(res, "image_path_safe")
    assert not isinstance(res.table.set_index("id").loc["escape", "sha256"], str)  # never opened


def test_duplicate_id(tmp_path):
    rows = [{"image": "a.png", "labels": "cat", "id": "x"}, {"image": "b.png", "labels": "dog", "id": "x"}]
    res = validate(read_custom(make_custom(tmp_path / "c", rows=rows)), tmp_path)
    assert failed(res) == {"unique_id"}
    assert verdict(res, "unique_id") == "FAIL image ids are unique: 2 images — x (images/a.png), x (images/b.png)"


def test_mask_missing_and_not_convertible(tmp_path):
    rows = [{"image": "f.tif", "labels": "cat"}, {"image": "b.png", "labels": "dog", "mask": "masks/none.png"}]
    root = make_custom(tmp_path / "c", rows=rows)
    Image.fromarray(np.array([[0.0, 1000.0] * 16] * 24, np.float32), "F").save(root / "images" / "f.tif")
    res = validate(read_custom(root), tmp_path)
    assert failed(res) == {"rgb_convertible", "mask_exists"}
    assert "f (mode F: cannot convert mode F to RGB without clipping" in verdict(res, "rgb_convertible")
    assert "b (masks/none.png)" in verdict(res, "mask_exists")


def test_report_must_not_go_inside_the_drop(voc):
    with pytest.raises(ConfigError, match="must not be inside the dataset root"):
        validate_dataset(read_voc(voc), voc / "report")


def test_split_list_naming_an_id_twice_fails_once_naming_it(voc, tmp_path):
    from wsss.data.readers import read_dataset_source

    train = voc / "ImageSets" / "Segmentation" / "train.txt"
    train.write_text(train.read_text() + f"{VOC_IDS[0]}\n")
    ds = read_dataset_source(voc)
    assert len(ds) == 6  # still one row per image: the repeat is noted, not dropped silently
    res = validate(ds, tmp_path)
    assert failed(res) == {"listed_once"}
    assert verdict(res, "listed_once") == (f"FAIL each image is listed once: 1 image — {VOC_IDS[0]} "
                                           f"(JPEGImages/{VOC_IDS[0]}.jpg: listed 2 times in "
                                           f"ImageSets/Segmentation/train.txt)")


def test_custom_image_listed_twice_fails_once(tmp_path):
    rows = [{"image": "a.png", "labels": "cat"}, {"image": "b.png", "labels": "dog"}]
    root = make_custom(tmp_path / "c", rows=rows)
    with open(root / "labels.csv", "a") as f:
        f.write('"a.png","dog"\n')  # the same image again, with other labels
    ds = read_custom(root)
    assert len(ds) == 2 and ds.table.set_index("id").loc["a", "labels"] == (1,)  # the first entry is used
    res = validate(ds, tmp_path)
    assert failed(res) == {"listed_once"}  # not also "unique id" and "duplicate content"
    assert verdict(res, "listed_once") == ("FAIL each image is listed once: 1 image — a "
                                           "(images/a.png: listed 2 times in labels.csv (entries 1, 3))")


def test_default_limits_come_from_the_settings():
    from wsss.data.images import DEFAULT_MAX_PIXELS
    from wsss.settings import ValidationSettings
    from wsss.validation.table import DEFAULT_MIN_SIDE

    assert (DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE) == (ValidationSettings().max_pixels, ValidationSettings().min_side)
