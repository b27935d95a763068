"""Tiny dataset builders for tests: VOC, COCO (VOC-style masks) and custom layouts, a few 32×24 images each,
plus small crafted defects (decompression-bomb PNG header). Tests build their own data; nothing is
downloaded."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 32, 24
VOC_IDS = [f"2007_{i:06d}" for i in range(6)]
# image index → VOC class names present (ids in VOC_CLASSES: aeroplane=1, bicycle=2, bird=3, cat=8, dog=12)
VOC_OBJECTS = [["cat"], ["dog", "cat"], ["bird"], ["aeroplane"], ["bicycle", "dog"], ["cat"]]
VOC_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
             "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
             "tvmonitor")


def voc_id(name: str) -> int:
    return VOC_NAMES.index(name) + 1


def rgb_image(seed: int, size=(W, H)) -> Image.Image:
    """Distinct content per seed (so content hashes differ)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def palette_mask(class_ids, size=(W, H)) -> Image.Image:
    """Background 0, one vertical band per class, a 255 (ignore) border row."""
    a = np.zeros((size[1], size[0]), np.uint8)
    for k, c in enumerate(class_ids):
        a[2:-2, 2 + 6 * k:6 + 6 * k] = c
    a[0, :] = 255
    img = Image.fromarray(a, "L").convert("P")
    img.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    return img


def write_xml(path: Path, id_: str, names, size=(W, H), difficult_last=True) -> None:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(difficult_last and k == len(names) - 1)}</difficult>"
        f"<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        for k, n in enumerate(names))
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    path.write_text(f"<annotation><filename>{id_}.jpg</filename>{size_xml}{objs}</annotation>")


def make_voc(root: Path, *, classes_txt: bool = False, aug: bool = True) -> Path:
    """6 images: train = ids 0-1, train_aug (deeplab-style lines, in SegmentationAug/) = 0-2, val = 3-5.
    Masks for all, in SegmentationClassAug/ for 0-2 and SegmentationClass/ for 3-5."""
    for d in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationClassAug",
              "ImageSets/Segmentation", "ImageSets/SegmentationAug"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i, (id_, names) in enumerate(zip(VOC_IDS, VOC_OBJECTS)):
        rgb_image(i).save(root / "JPEGImages" / f"{id_}.jpg", quality=95)
        write_xml(root / "Annotations" / f"{id_}.xml", id_, names)
        mask_dir = "SegmentationClassAug" if i < 3 else "SegmentationClass"
        palette_mask(sorted({voc_id(n) for n in names})).save(root / mask_dir / f"{id_}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(VOC_IDS[:2]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(VOC_IDS[3:]) + "\n")
    if aug:
        (root / "ImageSets/SegmentationAug/train_aug.txt").write_text(
            "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in VOC_IDS[:3]))
    if classes_txt:
        (root / "classes.txt").write_text("\n".join(VOC_NAMES) + "\n")
    return root


COCO_TRAIN = ["COCO_train2014_000000000009", "COCO_train2014_000000000025"]
COCO_VAL = ["COCO_val2014_000000000042"]


def make_coco(root: Path) -> Path:
    """2 train + 1 val image, masks in SegmentationClass/<split dir>/ (values: person=1, horse=18, 255)."""
    for split, ids, classes in (("train2014", COCO_TRAIN, [[1], [1, 18]]), ("val2014", COCO_VAL, [[18]])):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / "SegmentationClass" / split).mkdir(parents=True, exist_ok=True)
        for k, (id_, cls) in enumerate(zip(ids, classes)):
            rgb_image(100 + len(id_) + k).save(root / split / f"{id_}.jpg", quality=95)
            palette_mask(cls).save(root / "SegmentationClass" / split / f"{id_}.png")
    return root


CUSTOM_CLASSES = ("cat", "dog", "traffic light")


def make_custom(root: Path, *, fmt: str = "csv", rows=None, masks: bool = True) -> Path:
    """images/a.png, b.png, c.png + labels.csv/json + classes.txt (+ masks/<stem>.png)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CUSTOM_CLASSES) + "\n")
    if rows is None:
        rows = [{"image": "a.png", "labels": "cat;dog"}, {"image": "b.png", "labels": "traffic light"},
                {"image": "c.png", "labels": "2", "split": "val"}]
    ids = {"cat": 1, "dog": 2, "traffic light": 3}
    for k, r in enumerate(rows):
        stem = Path(r["image"]).stem
        if "/" not in r["image"]:
            rgb_image(200 + k).save(root / "images" / r["image"])
            if masks:
                (root / "masks").mkdir(exist_ok=True)
                toks = [t for t in str(r["labels"]).replace("|", ";").split(";") if t]
                palette_mask(sorted({ids.get(t, int(t) if t.isdigit() else 0) for t in toks} - {0})).save(
                    root / "masks" / f"{stem}.png")
    if fmt == "csv":
        cols = ["image", "labels"] + sorted({k for r in rows for k in r} - {"image", "labels"})
        lines = [",".join(cols)] + [",".join(f'"{r.get(c, "")}"' for c in cols) for r in rows]
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
    else:
        (root / "labels.json").write_text(json.dumps(rows))
    return root


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> None:
    """A ~60-byte PNG whose header claims width×height pixels (a decompression bomb, cheaply)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
