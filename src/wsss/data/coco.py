"""COCO 2014 with VOC-style masks (the CLIP-ES / WSSS layout).

Layout: `train2014/*.jpg`, `val2014/*.jpg` (2017 folders also accepted), masks
`SegmentationClass/train2014/<stem>.png` and `SegmentationClass/val2014/<stem>.png` (or flat
`SegmentationClass/<stem>.png`) with values 0..80 and 255. Split names are `train` and `val`.
Ids are file stems (`COCO_train2014_000000000009`), unique across splits.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from wsss.data import _rows
from wsss.data.labels import as_vocabulary, load_label_file, map_labels
from wsss.data.manifest import Dataset, make_table
from wsss.data.vocab import COCO_CLASSES
from wsss.errors import DataError

SPLIT_DIRS = {"train": ("train2014", "train2017"), "val": ("val2014", "val2017")}
IMAGE_EXTS = {".jpg", ".jpeg", ".png"}


def split_dir(root: Path, split: str) -> str | None:
    return next((d for d in SPLIT_DIRS.get(split, (split,)) if (root / d).is_dir()), None)


def _lookup(labels: dict, stem: str):
    """Label files key images by full stem or by the numeric tail (`000000000009` / `9`)."""
    tail = stem.rsplit("_", 1)[-1]
    for key in (stem, tail, tail.lstrip("0") or "0"):
        if key in labels:
            return labels[key]
    return None


def read_coco(root: str | Path, classes=None, splits=None, labels_file: str | Path | None = None,
              name: str | None = None, exif: str = "ignore") -> Dataset:
    """Read a COCO (VOC-style masks) dataset into a manifest.

    Labels: `labels_file` (`.npy` one-hot dict as CLIP-ES ships it, or JSON {id: [class ids or names]})
    when given and listing the image, else the classes present in the mask. Vocabulary: `classes`, else
    `<root>/classes.txt`, else COCO's 80 classes."""
    root = _rows.check_root(root)
    vocab = as_vocabulary(classes, root, COCO_CLASSES)
    file_labels = load_label_file(labels_file, root) if labels_file is not None else {}
    if splits is None:
        splits = [s for s in SPLIT_DIRS if split_dir(root, s)]
        if not splits:
            raise DataError(f"{root}: no COCO image folders (train2014/ or val2014/)")
    rows = []
    for split in splits:
        folder = split_dir(root, split)
        if folder is None:
            raise DataError(f"{root}: split {split!r} has no image folder ({' or '.join(SPLIT_DIRS.get(split, (split,)))})")
        files = sorted(p.name for p in (root / folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)
        for fname in tqdm(files, desc=f"read COCO {folder}", unit="img"):
            stem = Path(fname).stem
            image = f"{folder}/{fname}"
            mask = _rows.first_existing(root, [f"SegmentationClass/{folder}/{stem}.png",
                                               f"SegmentationClass/{stem}.png"])
            problems: list[str] = []
            listed = _lookup(file_labels, stem) if file_labels else None
            if listed is not None:
                ids, unknown = map_labels(listed, vocab)
                source = "labels_file"
            elif mask:
                ids, unknown = _rows.mask_labels(root, mask, vocab.num_classes, problems), ()
                source = "mask"
            else:
                ids, unknown, source = (), (), ""
            rows.append(_rows.row(stem, image, _rows.header_size(root, image, exif), split, ids, mask,
                                  unknown, problems, source))
    return Dataset(make_table(rows), vocab, root, name or root.name, exif)
