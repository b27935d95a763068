"""Sharding and resumable output folders."""

from __future__ import annotations

import pandas as pd
import pytest

from wsss.errors import ConfigError
from wsss.shards import remove_orphans, shard_rows


def test_shards_partition_the_rows():
    table = pd.DataFrame({"id": [str(i) for i in range(10)]})
    parts = [shard_rows(table, i, 3)["id"].tolist() for i in range(3)]
    assert sorted(sum(parts, []), key=int) == table["id"].tolist() and parts[1] == ["1", "4", "7"]
    for bad in [(3, 3), (-1, 2), (0, 0)]:
        with pytest.raises(ConfigError, match="shard"):
            shard_rows(table, *bad)


def test_remove_orphans_keeps_the_manifest_s_outputs(tmp_path):
    out = tmp_path / "cams"
    out.mkdir()
    for name in ("a.npz", "b.npz", "gone.npz", ".a.npz.x.tmp.npz"):
        (out / name).write_bytes(b"x")
    assert remove_orphans(out, {"a", "b"}, ".npz") == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "b.npz"]
