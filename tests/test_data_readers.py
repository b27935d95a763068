"""Readers for VOC, COCO (VOC-style masks) and custom folders; label files; manifest round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.data import COCO_TRAIN, COCO_VAL, VOC_IDS, make_coco, make_custom, make_voc, voc_id, write_xml
from wsss.data.coco import read_coco
from wsss.data.custom import read_custom
from wsss.data.labels import load_label_file, parse_labels
from wsss.data.manifest import COLUMNS, read_dataset, write_dataset
from wsss.data.readers import detect_format, read_dataset_source
from wsss.data.vocab import VOC_CLASSES, Vocabulary
from wsss.data.voc import read_voc
from wsss.errors import DataError


@pytest.fixture
def voc_root(tmp_path):
    return make_voc(tmp_path / "voc")


def _row(ds, id_):
    return ds.table.set_index("id").loc[id_]


def test_voc_reader(voc_root):
    ds = read_voc(voc_root)
    assert ds.vocab.names == VOC_CLASSES and list(ds.table.columns[:7]) == COLUMNS
    assert sorted(ds.table["id"]) == VOC_IDS and ds.table["id"].is_unique
    # train ⊂ train_aug: the first requested split wins
    assert dict(zip(ds.table["id"], ds.table["split"])) == {
        VOC_IDS[0]: "train", VOC_IDS[1]: "train", VOC_IDS[2]: "train_aug",
        VOC_IDS[3]: "val", VOC_IDS[4]: "val", VOC_IDS[5]: "val"}
    r = _row(ds, VOC_IDS[1])  # dog + cat, cat marked difficult: still a label
    assert r["labels"] == (voc_id("cat"), voc_id("dog")) and (r["width"], r["height"]) == (32, 24)
    assert r["mask"] == f"SegmentationClassAug/{VOC_IDS[1]}.png"
    assert _row(ds, VOC_IDS[4])["mask"] == f"SegmentationClass/{VOC_IDS[4]}.png"
    assert r["image"] == f"JPEGImages/{VOC_IDS[1]}.jpg"


def test_voc_split_order_and_selection(voc_root):
    ds = read_voc(voc_root, splits=["train_aug", "val"])
    assert set(ds.table.loc[ds.table["id"].isin(VOC_IDS[:3]), "split"]) == {"train_aug"}
    assert len(read_voc(voc_root, splits=["val"])) == 3
    with pytest.raises(DataError, match="split 'test' has no list"):
        read_voc(voc_root, splits=["test"])


def test_voc_fallbacks(voc_root):
    # no XML but a mask → labels from the mask; no <size> → size from the image header
    (voc_root / "Annotations" / f"{VOC_IDS[4]}.xml").unlink()
    write_xml(voc_root / "Annotations" / f"{VOC_IDS[3]}.xml", VOC_IDS[3], ["aeroplane"], size=None)
    ds = read_voc(voc_root)
    assert _row(ds, VOC_IDS[4])["labels"] == (voc_id("bicycle"), voc_id("dog"))
    assert _row(ds, VOC_IDS[4])["label_source"] == "mask"
    assert (_row(ds, VOC_IDS[3])["width"], _row(ds, VOC_IDS[3])["height"]) == (32, 24)


def test_voc_classes_txt_and_unknown_names_are_carried(tmp_path):
    root = make_voc(tmp_path / "toy", classes_txt=True)
    (root / "classes.txt").write_text("cat\ndog\n")
    ds = read_voc(root)
    assert ds.vocab.names == ("cat", "dog")
    r = _row(ds, VOC_IDS[1])
    assert r["labels"] == (1, 2) and r["unknown_labels"] == ()
    assert _row(ds, VOC_IDS[2])["unknown_labels"] == ("bird",)  # kept for validation, no exception


def test_voc_without_split_lists_reads_all_images_as_train(tmp_path):
    root = make_voc(tmp_path / "v", aug=False)
    for f in (root / "ImageSets" / "Segmentation").iterdir():
        f.unlink()
    ds = read_voc(root)
    assert len(ds) == 6 and set(ds.table["split"]) == {"train"}


def test_voc_labels_file_npy_onehot_without_pickle_code(voc_root, tmp_path):
    onehot = {i: np.eye(20, dtype=np.float32)[voc_id("horse") - 1] for i in VOC_IDS}
    np.save(tmp_path / "cls_labels_onehot.npy", onehot)
    ds = read_voc(voc_root, labels_file=tmp_path / "cls_labels_onehot.npy")
    assert set(ds.table["labels"]) == {(voc_id("horse"),)}
    evil = tmp_path / "evil.npy"
    np.save(evil, np.array({"x": print}, dtype=object), allow_pickle=True)  # a global that is not numpy
    with pytest.raises(DataError, match=r"evil\.npy: cannot parse labels file \(forbidden global"):
        load_label_file(evil)


def test_coco_reader_labels_from_masks_and_file(tmp_path):
    root = make_coco(tmp_path / "coco")
    ds = read_coco(root)
    assert sorted(ds.table["id"]) == sorted(COCO_TRAIN + COCO_VAL)
    r = _row(ds, COCO_TRAIN[1])
    assert r["labels"] == (1, 18) and r["split"] == "train" and r["mask"].startswith("SegmentationClass/train2014/")
    assert ds.vocab.num_classes == 80
    (tmp_path / "labels.json").write_text(json.dumps({"000000000009": ["horse", 3], COCO_VAL[0]: [1]}))
    ds = read_coco(root, labels_file=tmp_path / "labels.json", splits=["train", "val"])
    assert _row(ds, COCO_TRAIN[0])["labels"] == (3, 18)
    assert _row(ds, COCO_VAL[0])["labels"] == (1,)
    assert _row(ds, COCO_TRAIN[1])["label_source"] == "mask"  # not listed → from its mask
    assert len(read_coco(root, splits=["val"])) == 1


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_custom_reader(tmp_path, fmt):
    root = make_custom(tmp_path / "c", fmt=fmt)
    ds = read_custom(root)
    assert ds.vocab.names == ("cat", "dog", "traffic light")
    t = ds.table.set_index("id")
    assert t.loc["a", "labels"] == (1, 2) and t.loc["b", "labels"] == (3,)  # multi-word name
    assert t.loc["c", "labels"] == (2,) and t.loc["c", "split"] == "val"  # an id
    assert t.loc["a", "image"] == "images/a.png" and t.loc["a", "mask"] == "masks/a.png"
    assert (t.loc["a", "width"], t.loc["a", "height"]) == (32, 24)
    assert len(read_custom(root, splits=["val"])) == 1


def test_custom_reader_keeps_defects_for_validation(tmp_path):
    rows = [{"image": "a.png", "labels": "cat | unicorn"}, {"image": "b.png", "labels": ""},
            {"image": "../escape.png", "labels": "dog 9"}]
    root = make_custom(tmp_path / "c", rows=rows, masks=False)
    (tmp_path / "c" / "escape.png").write_bytes(b"outside images/, never read")
    t = read_custom(root).table
    assert t["id"].tolist() == ["a", "b", "escape"]
    assert t["unknown_labels"].tolist() == [("unicorn",), (), ("9",)]
    by_id = t.set_index("id")
    assert by_id.loc["a", "labels"] == (1,) and by_id.loc["b", "labels"] == () and by_id.loc["escape", "labels"] == (2,)
    assert by_id.loc["escape", "image"] == "images/../escape.png"  # kept as written
    assert by_id.loc["escape", "width"] == 0  # never opened


def test_custom_reader_structural_errors(tmp_path):
    root = make_custom(tmp_path / "c")
    (root / "labels.csv").write_text("file,tags\na.png,cat\n")
    with pytest.raises(DataError, match=r"labels\.csv: labels CSV needs columns 'image' and 'labels'"):
        read_custom(root)
    (root / "labels.csv").unlink()
    (root / "labels.json").write_text("{broken")
    with pytest.raises(DataError, match=r"labels\.json: cannot parse labels file"):
        read_custom(root)
    with pytest.raises(DataError, match="dataset root not found"):
        read_custom(tmp_path / "nope")
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="no class list"):
        read_custom(root)


def test_parse_labels():
    v = Vocabulary(("cat", "traffic light", "dog"))
    assert parse_labels("traffic light dog", v) == ((2, 3), ())
    assert parse_labels("Cat|3", v) == ((1, 3), ())
    assert parse_labels("cat; cow; 0; 4", v) == ((1,), ("cow", "0", "4"))
    assert parse_labels(["dog", 1], v) == ((1, 3), ())
    assert parse_labels(None, v) == ((), ())


def test_dispatch_and_detect(tmp_path, voc_root):
    coco, custom = make_coco(tmp_path / "coco"), make_custom(tmp_path / "cu")
    assert [detect_format(p) for p in (voc_root, coco, custom)] == ["voc", "coco", "custom"]
    assert len(read_dataset_source(voc_root, splits=["val"], labels=None)) == 3
    (tmp_path / "l.json").write_text(json.dumps({VOC_IDS[3]: ["cow"]}))
    ds = read_dataset_source(voc_root, splits=("val",), labels=tmp_path / "l.json")
    assert ds.table.set_index("id").loc[VOC_IDS[3], "labels"] == (voc_id("cow"),)
    assert len(read_dataset_source(custom, format="custom", classes=["cat", "dog", "traffic light"])) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        read_dataset_source(tmp_path / "empty")
    with pytest.raises(DataError, match="unknown dataset format 'yolo'"):
        read_dataset_source(voc_root, format="yolo")


def test_manifest_round_trip(tmp_path, voc_root):
    ds = read_voc(voc_root)
    write_dataset(ds, tmp_path / "prepared")
    back = read_dataset(tmp_path / "prepared")
    assert list(back.table.columns) == COLUMNS  # reader-only columns are not written
    assert back.table.equals(ds.table[COLUMNS])
    assert back.vocab == ds.vocab and back.root == voc_root.resolve()
    assert back.split("val").table["id"].tolist() == VOC_IDS[3:]
    mask = back.mask_path(back.table.iloc[0])
    assert mask is not None and mask.is_file()
