"""Image-level labels shared by the readers: vocabulary choice, label tokens → class ids, label files.

Readers never fail on a bad label of one image: unknown names/ids are returned separately so they end up
in the table's `unknown_labels` column and validation names the file. Only an unreadable labels *file*
is a hard DataError.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from wsss.data.vocab import BACKGROUND, IGNORE, Vocabulary
from wsss.errors import DataError

_SEPARATORS = re.compile(r"[;|,]")


def find_user_file(path: str | os.PathLike, root: str | Path | None, what: str) -> Path:
    """A file the user named for a dataset (class list, labels file): an absolute path as it is; a
    relative one in the current directory first, else in the dataset root. DataError (one line, naming
    every place tried) when it is in none. `what` names the file in the message ("class list file")."""
    p = Path(path)
    if p.is_absolute():
        if p.is_file():
            return p
        raise DataError(f"{p}: {what} not found")
    tried = [p] + ([Path(root) / p] if root is not None else [])
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise DataError(f"{p}: {what} not found (looked in {' and '.join(str(t.absolute()) for t in tried)})")


def as_vocabulary(classes, root: Path | None = None, default: Sequence[str] | None = None) -> Vocabulary:
    """`classes` as a Vocabulary: a Vocabulary, a class-list file path (relative: the current directory
    first, then `root`; see `find_user_file`), or a list of names. When None: `<root>/classes.txt` /
    `classes.json` if present (the toy world writes one), else `default`."""
    if isinstance(classes, Vocabulary):
        return classes
    if isinstance(classes, (str, os.PathLike)):
        return Vocabulary.from_file(find_user_file(classes, root, "class list file"))
    if classes is not None:
        return Vocabulary(tuple(str(c) for c in classes))
    if root is not None:
        for name in ("classes.txt", "classes.json"):
            if (Path(root) / name).is_file():
                return Vocabulary.from_file(Path(root) / name)
    if default is None:
        raise DataError(f"{root}: no class list given and no classes.txt / classes.json in the dataset root")
    return Vocabulary(tuple(default))


def split_tokens(value) -> list:
    """A labels cell → tokens. Strings split on `;`, `|` or `,` when present (names may contain spaces,
    e.g. "traffic light"), else on whitespace; lists are taken as they are; NaN/None → []."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [v for v in value]
    s = str(value).strip()
    if not s:
        return []
    parts = _SEPARATORS.split(s) if _SEPARATORS.search(s) else s.split()
    return [p.strip() for p in parts if p.strip()]


def _greedy_names(words: list[str], vocab: Vocabulary) -> list[str]:
    """Whitespace-separated words → names, joining words into the longest known multi-word name
    ("traffic light dog" → ["traffic light", "dog"])."""
    known = {n.lower() for n in vocab.names}
    longest = max(len(n.split()) for n in vocab.names)
    out, i = [], 0
    while i < len(words):
        j = next((j for j in range(min(len(words), i + longest), i, -1)
                  if " ".join(words[i:j]).lower() in known), i + 1)
        out.append(" ".join(words[i:j]))
        i = j
    return out


def parse_labels(value, vocab: Vocabulary) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """A labels cell (string or list) → (known ids, unknown tokens); see split_tokens and map_labels.
    Whitespace-separated names may contain spaces when the vocabulary has such names."""
    if isinstance(value, str) and not _SEPARATORS.search(value):
        return map_labels(_greedy_names(value.split(), vocab), vocab)
    return map_labels(split_tokens(value), vocab)


def map_labels(tokens: Iterable, vocab: Vocabulary) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Tokens (class names, or ids 1..C as ints/digit strings) → (known ids, unknown tokens as text).

    Names match exactly, then case-insensitively. Background (0) and ignore (255) are not image labels."""
    lower = {n.lower(): i + 1 for i, n in enumerate(vocab.names)}
    ids, unknown = set(), []
    for tok in tokens:
        if isinstance(tok, (bool, np.bool_)):
            unknown.append(str(tok))
            continue
        if isinstance(tok, (int, np.integer)) or (isinstance(tok, str) and tok.strip().isdigit()):
            cid = int(tok)
            (ids.add(cid) if 1 <= cid <= vocab.num_classes else unknown.append(str(tok).strip()))
            continue
        if isinstance(tok, (float, np.floating)) and float(tok).is_integer():
            cid = int(tok)
            (ids.add(cid) if 1 <= cid <= vocab.num_classes else unknown.append(str(tok)))
            continue
        name = str(tok).strip()
        if name in vocab.names:
            ids.add(vocab.names.index(name) + 1)
        elif name.lower() in lower:
            ids.add(lower[name.lower()])
        else:
            unknown.append(name)
    return tuple(sorted(ids)), tuple(unknown)


def labels_from_mask(mask: np.ndarray, num_classes: int) -> tuple[int, ...]:
    """Classes present in a ground-truth mask (background, ignore and out-of-range values excluded:
    out-of-range values are the mask check's business, not a label)."""
    values = np.unique(mask)
    return tuple(int(v) for v in values if BACKGROUND < v <= num_classes and v != IGNORE)


# --- label files -------------------------------------------------------------------------------------

_NUMPY_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists of numpy arrays and nothing else: a labels file must not run code."""

    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _load_npy_dict(path: Path) -> dict:
    """CLIP-ES style `cls_labels_onehot.npy` (a pickled {id: one-hot} dict), without np.load(allow_pickle)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in reader:
            raise DataError(f"{path}: unsupported .npy version {version}")
        shape, _, dtype = reader[version](f)
        if dtype != object:
            raise DataError(f"{path}: expected a pickled {{image id: labels}} dict, got a {dtype} array {shape}")
        obj = _ArraysOnlyUnpickler(io.BytesIO(f.read())).load()
    if isinstance(obj, np.ndarray) and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a {{image id: labels}} dict, got {type(obj).__name__}")
    return obj


def _onehot_or_ids(value) -> list:
    """A one-hot/multi-hot vector (length C, index i = class i+1) → ids; anything else → tokens as is."""
    arr = np.asarray(value)
    if arr.ndim == 1 and arr.size and arr.dtype.kind in "fbiu" and np.isin(arr, (0, 1)).all() and arr.size > 1:
        return [int(i) + 1 for i in np.flatnonzero(arr)]
    return split_tokens(value)


def load_label_file(path: str | Path, root: str | Path | None = None) -> dict[str, list]:
    """{image id (file stem): label tokens} from `.npy` (pickled dict of one-hot vectors, as CLIP-ES ships
    `cls_labels_onehot.npy`) or `.json` ({id: [names or ids] or a one-hot list}, or a list of
    {"image"/"id", "labels"} records). A relative `path` is found as `find_user_file` finds it (the
    current directory, then `root`). Raises DataError when the file is missing or cannot be parsed."""
    path = find_user_file(path, root, "labels file")
    try:
        if path.suffix.lower() == ".npy":
            raw = _load_npy_dict(path)
        elif path.suffix.lower() == ".json":
            raw = json.loads(path.read_text())
            if isinstance(raw, list):
                raw = {Path(str(r.get("id") or r["image"])).stem: r.get("labels") for r in raw}
        else:
            raise DataError(f"{path}: unsupported labels file type (use .npy or .json)")
    except DataError:
        raise
    except (pickle.UnpicklingError, ValueError, KeyError, TypeError, EOFError, AttributeError) as e:
        raise DataError(f"{path}: cannot parse labels file ({e})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a mapping from image id to labels")
    return {Path(str(k)).stem: _onehot_or_ids(v) for k, v in raw.items()}
