"""Sharding and resumable output folders."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from wsss.errors import ConfigError, DataError
from wsss.shards import FINGERPRINT, drop_stale, output_key, prepare_output_dir, shard_rows


def test_shards_partition_the_rows():
    table = pd.DataFrame({"id": [str(i) for i in range(10)]})
    parts = [shard_rows(table, i, 3)["id"].tolist() for i in range(3)]
    assert sorted(sum(parts, []), key=int) == table["id"].tolist() and parts[1] == ["1", "4", "7"]
    for bad in [(3, 3), (-1, 2), (0, 0)]:
        with pytest.raises(ConfigError, match="shard"):
            shard_rows(table, *bad)


def test_output_dir_keeps_valid_outputs_and_drops_the_rest(tmp_path):
    out = tmp_path / "cams"
    assert prepare_output_dir(out, {"thr": 0.4}, {"a", "b"}, ".npz") == 0
    for name in ("a.npz", "b.npz", "gone.npz", ".a.npz.x.tmp.npz"):
        (out / name).write_bytes(b"x")
    assert prepare_output_dir(out, {"thr": 0.4}, {"a", "b"}, ".npz") == 2  # same settings: resume
    assert sorted(p.name for p in out.iterdir()) == [FINGERPRINT, "a.npz", "b.npz"]
    key = output_key(out)
    assert prepare_output_dir(out, {"thr": 0.5}, {"a", "b"}, ".npz") == 0  # new settings: start over
    assert sorted(p.name for p in out.iterdir()) == [FINGERPRINT] and output_key(out) != key


def test_output_key_of_a_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no _inputs.json"):
        output_key(tmp_path / "nothing")


def test_drop_stale_redoes_outputs_older_than_their_input(tmp_path):
    src, out = tmp_path / "cams", tmp_path / "masks"
    src.mkdir(), out.mkdir()
    for name in ("a", "b", "c"):
        (src / f"{name}.npz").write_bytes(b"x")
        (out / f"{name}.png").write_bytes(b"x")
    os.utime(src / "b.npz", ns=(2**62, 2**62))  # b's CAM was recomputed after its mask
    (src / "c.npz").unlink()  # c's CAM is gone
    assert drop_stale(out, src, ".png", ".npz") == 2
    assert [p.name for p in out.iterdir()] == ["a.png"]
