"""One entry point for every raw dataset format: `read_dataset_source(root, format=...)` → Dataset."""

from __future__ import annotations

from pathlib import Path

from wsss.data.coco import read_coco
from wsss.data.custom import read_custom
from wsss.data.manifest import Dataset
from wsss.data.voc import read_voc
from wsss.errors import DataError

READERS = {"voc": read_voc, "coco": read_coco, "custom": read_custom}


def detect_format(root: str | Path) -> str:
    """voc if Annotations/ or JPEGImages/, coco if train2014/ or val2014/ (or 2017), custom if labels.csv/json."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found (or not a directory)")
    if (root / "Annotations").is_dir() or (root / "JPEGImages").is_dir():
        return "voc"
    if any((root / d).is_dir() for d in ("train2014", "val2014", "train2017", "val2017")):
        return "coco"
    if (root / "labels.csv").is_file() or (root / "labels.json").is_file():
        return "custom"
    raise DataError(f"{root}: cannot tell the dataset format (no JPEGImages/, train2014/ or labels.csv); "
                    f"set the format explicitly (voc, coco, custom)")


def read_dataset_source(root: str | Path, format: str = "auto", classes=None, splits=None,
                        labels: str | Path | None = None, exif: str = "ignore", **kw) -> Dataset:
    """Read a raw dataset (VOC, COCO with VOC-style masks, or custom folder) into a manifest Dataset.

    `classes`: a Vocabulary, a class-list file, or a list of names (each reader has its default);
    `splits`: the splits to read (default: all present); `labels`: a labels file (custom CSV/JSON,
    VOC/COCO `.npy`/`.json` image labels; None = the reader's default); `**kw` goes to the reader
    (`images_dir`, `masks_dir`, `name`). Each reader looks a relative `classes` or `labels` path up in the
    current directory first, then in the dataset root (`wsss.data.labels.find_user_file`). `exif`: how EXIF
    orientation tags are read (`data.exif`, `wsss.data.images`): the manifest's sizes follow it."""
    fmt = detect_format(root) if format == "auto" else format
    if fmt not in READERS:
        raise DataError(f"unknown dataset format {format!r} (use auto, {', '.join(READERS)})")
    if labels is not None:
        kw["labels_file"] = labels
    return READERS[fmt](root, classes=classes, splits=list(splits) if splits else None, exif=exif, **kw)
