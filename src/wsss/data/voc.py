"""PASCAL VOC 2012 (+ SBD `SegmentationClassAug`) reader.

Layout: `JPEGImages/<id>.jpg`, `Annotations/<id>.xml`, masks in `SegmentationClassAug/<id>.png` (SBD)
falling back to `SegmentationClass/<id>.png`, split lists in `ImageSets/Segmentation/<split>.txt` or
`ImageSets/SegmentationAug/<split>.txt` (where common set-ups put `train_aug.txt`).

One row per image: VOC's `train` ⊂ `train_aug`, so an image listed in several splits gets the *first*
of the requested splits (in the order given; default `train, train_aug, val`) and ids stay unique.
So with the default order `train_aug` holds only the SBD images beyond `train`; ask for
`splits=["train_aug", "val"]` to get the whole augmented training set under one name.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from wsss.data import _rows
from wsss.data.labels import as_vocabulary, load_label_file, map_labels
from wsss.data.manifest import Dataset, make_table
from wsss.data.vocab import VOC_CLASSES
from wsss.errors import DataError

DEFAULT_SPLITS = ("train", "train_aug", "val")
SPLIT_DIRS = ("ImageSets/Segmentation", "ImageSets/SegmentationAug")
MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def split_file(root: Path, split: str) -> Path | None:
    return next((root / d / f"{split}.txt" for d in SPLIT_DIRS if (root / d / f"{split}.txt").is_file()), None)


def read_split_ids(path: Path) -> list[str]:
    """Ids from a split list: one id per line, or deeplab-style `/JPEGImages/<id>.jpg /Seg.../<id>.png`."""
    ids = []
    for line in path.read_text().splitlines():
        tok = line.split()[0] if line.split() else ""
        if not tok or tok.startswith("#"):
            continue
        ids.append(Path(tok).stem if "/" in tok or tok.endswith(IMAGE_EXTS) else tok)
    return ids


def parse_annotation(path: Path) -> tuple[list[str], tuple[int, int] | None]:
    """Object names (difficult and truncated objects included: the class *is* in the image) and the
    `<size>` (width, height) when present and positive."""
    tree = ET.parse(path)
    names = [(o.findtext("name") or "").strip() for o in tree.getroot().iter("object")]
    size = None
    w, h = tree.getroot().findtext("size/width"), tree.getroot().findtext("size/height")
    try:
        if w and h and int(float(w)) > 0 and int(float(h)) > 0:
            size = (int(float(w)), int(float(h)))
    except ValueError:
        size = None
    return [n for n in names if n], size


def _ids_by_split(root: Path, splits) -> tuple[dict[str, str], dict[str, list[str]]]:
    """({id: split}, first requested split wins; {id: notes on a split list naming it more than once}).
    No split lists at all → every image, split 'train'."""
    if splits is None:
        splits = [s for s in DEFAULT_SPLITS if split_file(root, s)]
        if not splits:
            files = sorted(p for p in (root / "JPEGImages").glob("*") if p.suffix in IMAGE_EXTS)
            return {p.stem: "train" for p in files}, {}
    out: dict[str, str] = {}
    repeats: dict[str, list[str]] = {}
    for s in splits:
        f = split_file(root, s)
        if f is None:
            raise DataError(f"{root}: split {s!r} has no list ({' or '.join(d + f'/{s}.txt' for d in SPLIT_DIRS)})")
        ids = read_split_ids(f)
        for i, n in Counter(ids).items():
            if n > 1:
                repeats.setdefault(i, []).append(f"listed {n} times in {f.relative_to(root).as_posix()}")
        for i in ids:
            out.setdefault(i, s)
    return out, repeats


def read_voc(root: str | Path, classes=None, splits=None, labels_file: str | Path | None = None,
             name: str | None = None, exif: str = "ignore") -> Dataset:
    """Read a VOC-layout dataset into a manifest (see the module docstring for layout and split rules).

    Labels: `labels_file` (e.g. CLIP-ES `cls_labels_onehot.npy`) when given and listing the image, else the
    XML objects, else the classes present in the ground-truth mask. Vocabulary: `classes`, else
    `<root>/classes.txt`, else VOC's 20 classes. Per-file defects are carried into the table
    (`unknown_labels`, `problems`) for validation rather than raised."""
    root = _rows.check_root(root)
    vocab = as_vocabulary(classes, root, VOC_CLASSES)
    file_labels = load_label_file(labels_file, root) if labels_file is not None else {}
    rows = []
    listed, repeats = _ids_by_split(root, splits)
    for id_, split in tqdm(listed.items(), desc=f"read VOC {root.name}", unit="img"):
        image = _rows.first_existing(root, [f"JPEGImages/{id_}{e}" for e in IMAGE_EXTS], f"JPEGImages/{id_}.jpg")
        mask = _rows.first_existing(root, [f"{d}/{id_}.png" for d in MASK_DIRS])
        problems: list[str] = []
        names, size, source = None, None, ""
        xml = f"Annotations/{id_}.xml"
        if _rows.existing(root, xml):
            try:
                names, size = parse_annotation(root / xml)
            except ET.ParseError as e:
                problems.append(f"{xml}: unreadable annotation ({e})")
        if id_ in file_labels:
            ids, unknown = map_labels(file_labels[id_], vocab)
            source = "labels_file"
        elif names is not None:
            ids, unknown = map_labels(names, vocab)
            source = "xml"
        elif mask:
            ids, unknown = _rows.mask_labels(root, mask, vocab.num_classes, problems), ()
            source = "mask"
        else:
            ids, unknown = (), ()
        size = size if exif == "ignore" else None  # the XML states the stored size
        rows.append(_rows.row(id_, image, size or _rows.header_size(root, image, exif), split, ids, mask,
                              unknown, problems, source))
    table = make_table(rows)
    table["duplicate_listing"] = table["id"].map(lambda i: "; ".join(repeats.get(i, ())))  # validation fails it
    return Dataset(table, vocab, root, name or root.name, exif)
