"""The content store: what validation learned about each image of a dataset, kept so that a later drop is
compared with the whole dataset without reading it again.

`<data.prepared>/content.npz` (written by `prepare` beside the manifest, so it is versioned and pulled with
it): per image its id, split, SHA-256, perceptual hash (packed bits), size, labels (multi-hot) and, when the
label audit ran, CLIP's per-class probabilities with the key of the CLIP and texts that made them (a later
run reuses them for unchanged images, by SHA-256). Plain arrays, read without pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wsss.errors import DataError
from wsss.io import save_npz
from wsss.validation.content import HASH_BYTES, Reference, hash_bits

STORE = "content.npz"
FORMAT = "wsss-content/1"


@dataclass
class ContentStore:
    ids: np.ndarray  # [N] str
    splits: np.ndarray  # [N] str
    sha256: np.ndarray  # [N] str
    phash: np.ndarray  # [N, HASH_BYTES] uint8
    sizes: np.ndarray  # [N, 2] int32 (width, height as read)
    labels: np.ndarray  # [N, C] uint8
    classes: tuple[str, ...]
    probs: np.ndarray | None = None  # [N, C] float16, CLIP's per-class probabilities
    clip_key: str = ""
    extra: Reference | None = None  # hashes of images merged since the store was written (drop records)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def reference(self) -> Reference:
        """Every image's hashes (the store's and the `extra` ones): what near-duplicates are sought in."""
        return join_references(Reference(self.ids, self.splits, self.sha256, self.phash), self.extra)

    def probs_by_sha(self, clip_key: str) -> dict[str, np.ndarray]:
        """{SHA-256: probabilities} made with `clip_key` (empty when another CLIP or texts made them)."""
        if self.probs is None or clip_key != self.clip_key:
            return {}
        return {str(s): p for s, p in zip(self.sha256, self.probs) if np.isfinite(p).all()}

    def save(self, path: str | Path) -> None:
        arrays = dict(format=np.array(FORMAT), ids=self.ids.astype(str), splits=self.splits.astype(str),
                      sha256=self.sha256.astype(str), phash=self.phash, sizes=self.sizes, labels=self.labels,
                      classes=np.array(self.classes, dtype=str), clip_key=np.array(self.clip_key))
        if self.probs is not None:
            arrays["probs"] = self.probs.astype(np.float16)
        save_npz(path, **arrays)


def store_from_table(table: pd.DataFrame, classes, probs: np.ndarray | None, clip_key: str) -> ContentStore:
    """The store of a validated dataset: its validation table (rows that decoded) and audit scores."""
    from wsss.validation.audit import multi_hot

    labels = [tuple(int(x) for x in str(s).split()) for s in table["labels"]]
    return ContentStore(
        ids=table["id"].astype(str).to_numpy(), splits=table["split"].astype(str).to_numpy(),
        sha256=table["sha256"].fillna("").astype(str).to_numpy(), phash=hash_bits(table["phash"].tolist()),
        sizes=np.stack([table["decoded_width"].fillna(0).to_numpy(dtype=np.int32),
                        table["decoded_height"].fillna(0).to_numpy(dtype=np.int32)], axis=1).reshape(-1, 2),
        labels=multi_hot(labels, len(classes)), classes=tuple(classes),
        probs=None if probs is None else np.asarray(probs, np.float16), clip_key=clip_key if probs is not None else "")


def load_store(path: str | Path) -> ContentStore:
    """Read a content store; DataError (one line) when unreadable or of another format."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["format"]) != FORMAT:
                raise DataError(f"{path}: content store of format {f['format']}, expected {FORMAT} (rerun prepare)")
            phash = f["phash"]
            if phash.ndim != 2 or phash.shape[1] != HASH_BYTES:
                raise DataError(f"{path}: perceptual hashes of {phash.shape[1:]} bytes, expected {HASH_BYTES}")
            return ContentStore(f["ids"], f["splits"], f["sha256"], phash, f["sizes"], f["labels"],
                                tuple(str(c) for c in f["classes"]), f["probs"] if "probs" in f else None,
                                str(f["clip_key"]))
    except FileNotFoundError:
        raise DataError(f"{path}: content store not found (run the prepare stage)") from None
    except (KeyError, ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: unreadable content store ({e})") from None


def join_references(a: Reference | None, b: Reference | None) -> Reference | None:
    if a is None or not len(a.ids):
        return b
    if b is None or not len(b.ids):
        return a
    return Reference(*(np.concatenate([x.astype(str) if x.dtype.kind == "U" else x, y.astype(str) if y.dtype.kind == "U" else y])
                       for x, y in zip((a.ids, a.splits, a.sha256, a.phash), (b.ids, b.splits, b.sha256, b.phash))))


def empty_store(classes) -> ContentStore:
    """A store of no images (a dataset prepared before stores existed), for `extra` hashes to join."""
    c = len(classes)
    return ContentStore(np.array([], str), np.array([], str), np.array([], str), np.zeros((0, HASH_BYTES), np.uint8),
                        np.zeros((0, 2), np.int32), np.zeros((0, c), np.uint8), tuple(classes))


def record_content(table: pd.DataFrame, prefix: str) -> dict:
    """A merged drop's hashes for its `drop.json` (ids as the manifest names them): later drops are compared
    with them before the next `prepare` writes them into the store."""
    keep = table["phash"].astype(str) != ""
    return {"ids": [f"{prefix}{i}" for i in table.loc[keep, "id"].astype(str)],
            "splits": table.loc[keep, "split"].astype(str).tolist(),
            "sha256": table.loc[keep, "sha256"].astype(str).tolist(),
            "phash": table.loc[keep, "phash"].astype(str).tolist()}


def recorded_reference(records) -> Reference:
    """The hashes of merged drops' records (`record_content`) as one Reference."""
    parts = [r.get("content") or {} for r in records]
    ids = [i for p in parts for i in p.get("ids", [])]
    return Reference(np.array(ids, dtype=str), np.array([s for p in parts for s in p.get("splits", [])], dtype=str),
                     np.array([s for p in parts for s in p.get("sha256", [])], dtype=str),
                     hash_bits([h for p in parts for h in p.get("phash", [])]))


def find_store(prepared: str | Path) -> ContentStore | None:
    """The store beside a prepared manifest, None when there is none yet (a dataset prepared before it)."""
    path = Path(prepared) / STORE
    return load_store(path) if path.is_file() else None
