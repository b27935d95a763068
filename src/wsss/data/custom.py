"""A custom dataset: a folder of images + a labels table, masks optional.

Labels file (default `<root>/labels.csv`, else `<root>/labels.json`):
- CSV with columns `image` and `labels` (optional `id`, `split`, `mask`); labels separated by `;`, `|`
  or `,` (then names may contain spaces) or by whitespace; each a class name or an id 1..C.
- JSON: {"image": [labels] or "a;b"} or a list of records {"image", "labels", "split"?, "id"?, "mask"?}.
Image paths are relative to the root, or to `images_dir` (default `images/` when that folder exists).
Masks: a record's `mask` (relative to the root), else `<masks_dir>/<image stem>.png` when it exists
(`masks_dir` defaults to `masks/` when that folder exists). Split defaults to `train`.
An image listed more than once gets one row, from its first entry; its `duplicate_listing` column says
where it was listed (validation fails it), so conflicting entries are never silently merged or dropped.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from wsss.data import _rows
from wsss.data.labels import as_vocabulary, find_user_file, parse_labels
from wsss.data.manifest import Dataset, make_table
from wsss.errors import DataError


def find_labels_file(root: Path) -> Path:
    for name in ("labels.csv", "labels.json"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: no labels file (labels.csv or labels.json) in the dataset root")


def read_records(path: Path) -> list[dict]:
    """The labels file as a list of {"image", "labels", ...} records; DataError if it cannot be parsed."""
    try:
        if path.suffix.lower() == ".json":
            obj = json.loads(path.read_text())
            if isinstance(obj, dict):
                return [{"image": k, "labels": v} for k, v in obj.items()]
            if isinstance(obj, list) and all(isinstance(r, dict) and "image" in r for r in obj):
                return obj
            raise DataError(f"{path}: expected {{image: labels}} or a list of records with an 'image' key")
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except DataError:
        raise
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot parse labels file ({str(e).splitlines()[0]})") from None
    missing = {"image", "labels"} - set(table.columns)
    if missing:
        raise DataError(f"{path}: labels CSV needs columns 'image' and 'labels' (missing {sorted(missing)}; "
                        f"has {list(table.columns)})")
    return table.to_dict("records")


def _image_path(root: Path, written: str, images_dir: str) -> str:
    """The image's path relative to the root: as written when that file exists, else under images_dir."""
    return written if _rows.existing(root, written) or not images_dir else posixpath.join(images_dir, written)


def _key(image: str) -> str:
    return posixpath.normpath(image.replace("\\", "/"))


def read_custom(root: str | Path, labels_file: str | Path | None = None, classes=None, splits=None,
                images_dir: str | None = None, masks_dir: str | None = None, name: str | None = None,
                exif: str = "ignore") -> Dataset:
    """Read a custom folder into a manifest. `classes` (Vocabulary, class-list file or names) is required
    unless the root has classes.txt/classes.json. `classes` and `labels_file` paths: see
    `find_user_file` (current directory first, then the root). Unknown labels, missing files, unsafe
    paths and repeated entries are kept in the table for validation to report, per file."""
    root = _rows.check_root(root)
    vocab = as_vocabulary(classes, root)
    path = find_user_file(labels_file, root, "labels file") if labels_file is not None else find_labels_file(root)
    records = read_records(path)
    if images_dir is None:
        images_dir = "images" if (root / "images").is_dir() else ""
    if masks_dir is None:
        masks_dir = "masks" if (root / "masks").is_dir() else ""
    images = [_image_path(root, str(rec["image"]), images_dir) for rec in records]
    listed: dict[str, list[int]] = {}  # the same image listed more than once: the first entry is used
    for k, image in enumerate(images, 1):
        listed.setdefault(_key(image), []).append(k)
    rows = []
    bar = tqdm(zip(records, images), total=len(records), desc=f"read {root.name}", unit="img")
    for k, (rec, image) in enumerate(bar, 1):
        entries = listed[_key(image)]
        if entries[0] != k:
            continue
        split = str(rec.get("split") or "train")
        if splits is not None and split not in splits:
            continue
        written = str(rec["image"])
        stem = posixpath.splitext(posixpath.basename(written.replace("\\", "/")))[0]
        if rec.get("mask"):
            mask = str(rec["mask"])
        elif masks_dir:
            mask = _rows.first_existing(root, [posixpath.join(masks_dir, f"{stem}.png")])
        else:
            mask = ""
        ids, unknown = parse_labels(rec.get("labels"), vocab)
        row = _rows.row(str(rec.get("id") or stem), image, _rows.header_size(root, image, exif), split,
                        ids, mask, unknown, (), "labels_file")
        row["duplicate_listing"] = (f"listed {len(entries)} times in {path.name} (entries "
                                    f"{', '.join(map(str, entries))})" if len(entries) > 1 else "")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no images listed" + (f" in splits {list(splits)}" if splits else ""))
    return Dataset(make_table(rows), vocab, root, name or root.name, exif)
