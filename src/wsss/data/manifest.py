"""The manifest: one row per image, the single dataset format every later stage reads.

Columns: id, image (path relative to the dataset root), width, height, split, labels (class ids 1..C),
mask (relative path, or empty when the image has no ground truth). On disk: `manifest.csv` (labels as
space-separated ids) + `classes.json` (the vocabulary) + `dataset.json` (where the root is).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from wsss.data.vocab import Vocabulary
from wsss.errors import DataError
from wsss.io import atomic_path, write_json

COLUMNS = ["id", "image", "width", "height", "split", "labels", "mask"]


@dataclass
class Dataset:
    """A manifest table, its vocabulary and the root its relative paths start from."""

    table: pd.DataFrame  # COLUMNS; `labels` holds tuples of ints, `mask` "" when absent
    vocab: Vocabulary
    root: Path
    name: str = "dataset"
    exif: str = "ignore"  # how its images' EXIF orientation is read (`data.exif`; wsss.data.images)

    def split(self, name: str) -> "Dataset":
        if name not in set(self.table["split"]):
            raise DataError(f"split {name!r} not in dataset {self.name} (has: {sorted(set(self.table['split']))})")
        return self.subset(self.table["split"] == name)

    def subset(self, keep) -> "Dataset":
        """The rows where `keep` (a boolean mask) holds, same vocabulary, root and EXIF policy."""
        return dataclasses.replace(self, table=self.table[keep].reset_index(drop=True))

    def load_rgb(self, row):
        """The row's image as a PIL RGB image, read as every stage reads it (its EXIF policy)."""
        from wsss.data.images import load_rgb

        return load_rgb(self.image_path(row), exif=self.exif)

    def load_rgb_array(self, row):
        from wsss.data.images import load_rgb_array

        return load_rgb_array(self.image_path(row), exif=self.exif)

    def image_path(self, row) -> Path:
        return self.root / row["image"]

    def mask_path(self, row) -> Path | None:
        return self.root / row["mask"] if row["mask"] else None

    def __len__(self) -> int:
        return len(self.table)


def make_table(rows: list[dict]) -> pd.DataFrame:
    """Rows (dicts with COLUMNS; `mask` optional) → a manifest table, sorted by split then id.

    Keys beyond COLUMNS (readers use them to carry defects for validation, e.g. `unknown_labels`,
    `problems`) are kept as extra columns after COLUMNS; `write_dataset` does not write them."""
    extra = list(dict.fromkeys(k for r in rows for k in r if k not in COLUMNS))
    table = pd.DataFrame(rows, columns=COLUMNS + extra)
    table["mask"] = table["mask"].fillna("").astype(str)
    table["labels"] = table["labels"].map(lambda ls: tuple(sorted(int(x) for x in ls)))
    table["width"] = table["width"].astype(int)
    table["height"] = table["height"].astype(int)
    table["id"] = table["id"].astype(str)
    return table.sort_values(["split", "id"], kind="stable").reset_index(drop=True)


def write_dataset(ds: Dataset, out_dir: str | Path) -> None:
    """Write manifest.csv, classes.json and dataset.json into `out_dir`, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = ds.table[COLUMNS].copy()
    table["labels"] = table["labels"].map(lambda ls: " ".join(str(x) for x in ls))
    with atomic_path(out_dir / "manifest.csv") as tmp:
        table.to_csv(tmp, index=False)
    ds.vocab.save(out_dir / "classes.json")
    root = Path(os.path.relpath(ds.root.resolve(), out_dir.resolve()))
    write_json(out_dir / "dataset.json", {"name": ds.name, "root": root.as_posix(), "images": len(table),
                                          "splits": table["split"].value_counts().sort_index().to_dict(),
                                          "exif": ds.exif})


def read_dataset(prepared_dir: str | Path) -> Dataset:
    """Read what `write_dataset` wrote; the root is stored relative to `prepared_dir`."""
    import json

    prepared_dir = Path(prepared_dir)
    manifest = prepared_dir / "manifest.csv"
    if not manifest.exists():
        raise DataError(f"{manifest}: manifest not found (run the prepare stage first)")
    meta = json.loads((prepared_dir / "dataset.json").read_text())
    table = pd.read_csv(manifest, dtype={"id": str, "image": str, "split": str, "labels": str, "mask": str},
                        keep_default_na=False)
    table["labels"] = table["labels"].map(lambda s: tuple(int(x) for x in s.split()) if s else ())
    return Dataset(table, Vocabulary.load(prepared_dir / "classes.json"), (prepared_dir / meta["root"]).resolve(),
                   meta.get("name", "dataset"), meta.get("exif", "ignore"))


def read_split(prepared: str | Path, split: str, setting: str) -> Dataset:
    """Split `split` of the prepared dataset; a split it lacks is one line naming the setting that asked."""
    ds = read_dataset(prepared)
    if split not in set(ds.table["split"]):
        raise DataError(f"{setting}: no split {split!r} in {prepared} "
                        f"(it has {', '.join(sorted(set(ds.table['split'])))})")
    return ds.split(split)
