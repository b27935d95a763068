"""Sharding of per-image work: shard i of n takes the manifest rows at positions p with p % n == i.

Each image's output depends only on that image, so results are identical for any shard count. Each
output file is written atomically and records the key of its inputs (image, labels, settings): a rerun
skips files whose key matches and replaces the others one by one, which makes every per-image stage
resumable after an interruption and never deletes finished work before its replacement exists.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd


def shard_rows(table: pd.DataFrame, index: int, count: int) -> pd.DataFrame:
    if not (isinstance(index, int) and isinstance(count, int)) or count < 1 or not 0 <= index < count:
        from wsss.errors import ConfigError

        raise ConfigError(f"shard must be (index, count) with 0 <= index < count, got {(index, count)!r}")
    return table.iloc[index::count]


def fingerprint(config: dict[str, Any]) -> str:
    """A stable hash of everything an output depends on besides the image itself."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def orphans(out_dir: str | Path, keep_ids: set[str], suffix: str) -> list[Path]:
    """Outputs of images no longer in the manifest."""
    return [f for f in Path(out_dir).glob(f"*{suffix}")
            if not f.name.startswith(".") and f.name[: -len(suffix)] not in keep_ids]


def remove_orphans(out_dir: str | Path, keep_ids: set[str], suffix: str) -> int:
    """After a successful run: remove the outputs of images no longer in the manifest and leftovers of
    interrupted atomic writes. Returns how many outputs were removed."""
    stale = orphans(out_dir, keep_ids, suffix)
    for f in stale:
        f.unlink()
    for tmp in Path(out_dir).glob(".*.tmp*"):
        tmp.unlink()
    return len(stale)
