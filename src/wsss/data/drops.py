"""Accepted dataset drops, stored inside the dataset they extend: `<root>/<drops>/<name>/`.

Each drop keeps its own layout (VOC, COCO or custom) and a `drop.json` record (where it came from, its
fingerprint, its format). Living inside the DVC-tracked root means one `dvc add <root>` versions the
dataset with all its drops. The manifest sees one dataset: drop rows get ids `<name>__<id>` (unique,
and still plain file names for the CAM and mask stores) and paths relative to the base root.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from wsss.data.manifest import Dataset
from wsss.errors import DataError

RECORD = "drop.json"
ID_SEPARATOR = "__"


def drop_dirs(root: str | Path, drops: str | None) -> list[Path]:
    """The accepted drops under `<root>/<drops>/`, by name (hidden and unrecorded folders are not drops:
    a merge in progress is a hidden temporary folder until its rename)."""
    if not drops or not (Path(root) / drops).is_dir():
        return []
    return sorted(d for d in (Path(root) / drops).iterdir()
                  if d.is_dir() and not d.name.startswith(".") and (d / RECORD).is_file())


def read_record(drop_dir: Path) -> dict:
    try:
        return json.loads((drop_dir / RECORD).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{drop_dir / RECORD}: unreadable drop record ({e})") from None


def read_with_drops(root: str | Path, drops: str | None, read, splits=None) -> Dataset:
    """The base dataset at `root` plus every accepted drop, as one Dataset rooted at `root`.

    `read(path, format, classes)` reads one dataset (the caller binds its settings); drops use the base
    vocabulary and keep only rows of the base `splits` (None: all), less the images their record holds
    back (`held_back`: {id: reason}, the label audit's `quarantine` policy)."""
    base = read(root, None, None)
    parts = [base.table]
    for d in drop_dirs(root, drops):
        record = read_record(d)
        ds = read(d, record.get("format", "auto"), base.vocab)
        t = ds.table.copy()
        if splits:
            t = t[t["split"].isin(list(splits))]
        held_back = set(record.get("held_back", {}))  # quarantined by the label audit: never reach training
        t = t[~t["id"].isin(held_back)]
        rel = d.relative_to(root).as_posix()
        t["id"] = d.name + ID_SEPARATOR + t["id"]
        t["image"] = rel + "/" + t["image"]
        t["mask"] = t["mask"].map(lambda m: f"{rel}/{m}" if m else "")
        parts.append(t)
    if len(parts) == 1:
        return base
    table = pd.concat(parts, ignore_index=True).sort_values(["split", "id"], kind="stable").reset_index(drop=True)
    return dataclasses.replace(base, table=table)
