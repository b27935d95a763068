"""Sharding of per-image work: shard i of n takes the manifest rows at positions p with p % n == i.

Each image's output depends only on that image, so results are identical for any shard count; a
finished output file (written atomically) is never recomputed, which makes every per-image stage
resumable after an interruption.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from wsss.io import write_json

FINGERPRINT = "_inputs.json"


def shard_rows(table: pd.DataFrame, index: int, count: int) -> pd.DataFrame:
    if not (isinstance(index, int) and isinstance(count, int)) or count < 1 or not 0 <= index < count:
        from wsss.errors import ConfigError

        raise ConfigError(f"shard must be (index, count) with 0 <= index < count, got {(index, count)!r}")
    return table.iloc[index::count]


def fingerprint(config: dict[str, Any]) -> str:
    """A stable hash of everything an output depends on besides the image itself."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def output_key(out_dir: str | Path) -> str:
    """The settings fingerprint an output folder was made with (downstream stages chain on it)."""
    marker = Path(out_dir) / FINGERPRINT
    if not marker.exists():
        from wsss.errors import DataError

        raise DataError(f"{out_dir}: no {FINGERPRINT} (run the stage that produces it first)")
    return json.loads(marker.read_text())["key"]


def prepare_output_dir(out_dir: str | Path, config: dict[str, Any], keep_ids: set[str], suffix: str) -> int:
    """Make `out_dir` hold only outputs that are still valid for `config` and the current image ids.

    A changed config invalidates everything (the folder is emptied); ids no longer in the manifest are
    removed. Returns how many valid outputs remain (the work a rerun skips).
    """
    out_dir = Path(out_dir)
    marker = out_dir / FINGERPRINT
    key = fingerprint(config)
    if out_dir.exists() and (not marker.exists() or json.loads(marker.read_text()).get("key") != key):
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"key": key, "config": config})
    kept = 0
    for f in out_dir.glob(f"*{suffix}"):
        if f.name[: -len(suffix)] in keep_ids:
            kept += 1
        else:
            f.unlink()
    for tmp in out_dir.glob(".*.tmp*"):  # leftovers of an interrupted atomic write
        tmp.unlink()
    return kept


def drop_stale(out_dir: str | Path, src_dir: str | Path, suffix: str, src_suffix: str) -> int:
    """Remove outputs older than the input file they were made from (e.g. a mask whose CAM was
    recomputed), so a resumed run redoes exactly those. Returns how many were removed."""
    removed = 0
    for out in Path(out_dir).glob(f"*{suffix}"):
        src = Path(src_dir) / (out.name[: -len(suffix)] + src_suffix)
        if not src.exists() or src.stat().st_mtime_ns > out.stat().st_mtime_ns:
            out.unlink()
            removed += 1
    return removed
