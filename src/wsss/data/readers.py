"""One entry point for every raw dataset format: `read_dataset_source(root, format=...)` → Dataset."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from wsss.data import voc
from wsss.data._rows import check_root
from wsss.data.coco import read_coco
from wsss.data.custom import read_custom
from wsss.data.labels import find_user_file
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
                        labels: str | Path | None = None, **kw) -> Dataset:
    """Read a raw dataset (VOC, COCO with VOC-style masks, or custom folder) into a manifest Dataset.

    `classes`: a Vocabulary, a class-list file, or a list of names (each reader has its default);
    `splits`: the splits to read (default: all present); `labels`: a labels file (custom CSV/JSON,
    VOC/COCO `.npy`/`.json` image labels; None = the reader's default); `**kw` goes to the reader
    (`images_dir`, `masks_dir`, `name`). A relative `classes` or `labels` path is looked up in the
    current directory first, then in the dataset root (`find_user_file`). Split-list lines naming an id
    already listed are carried in the `duplicate_listing` column for validation to fail."""
    fmt = detect_format(root) if format == "auto" else format
    if fmt not in READERS:
        raise DataError(f"unknown dataset format {format!r} (use auto, {', '.join(READERS)})")
    root = check_root(root)
    if isinstance(classes, (str, os.PathLike)):
        classes = find_user_file(classes, root, "class list file")
    if labels is not None:
        kw["labels_file"] = find_user_file(labels, root, "labels file")
    splits = list(splits) if splits else None
    ds = READERS[fmt](root, classes=classes, splits=splits, **kw)
    if fmt == "voc":
        _mark_repeated_split_lines(ds, splits)
    return ds


def _mark_repeated_split_lines(ds: Dataset, splits: list[str] | None) -> None:
    """The VOC reader keeps one row per id; an id a split list names more than once is noted on its row
    (`duplicate_listing`), so validation names it instead of the repeat vanishing."""
    root = Path(ds.root)
    notes: dict[str, list[str]] = {}
    for split in splits or [s for s in voc.DEFAULT_SPLITS if voc.split_file(root, s)]:
        f = voc.split_file(root, split)
        if f is None:
            continue
        for id_, n in Counter(voc.read_split_ids(f)).items():
            if n > 1:
                notes.setdefault(id_, []).append(f"listed {n} times in {f.relative_to(root).as_posix()}")
    ds.table["duplicate_listing"] = ds.table["id"].map(lambda i: "; ".join(notes.get(i, ())))
