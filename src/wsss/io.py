"""Atomic file output: write to a temporary sibling, then rename, so readers never see half a file
and an interrupted stage leaves the previous output intact."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes it private; the result should be like any new file
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `path`; on success it replaces `path` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.exists():  # a swap interrupted between its two renames: put the old back
        os.replace(old, path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())
        had_old = path.exists()
        if had_old:
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if had_old and not path.exists():
                os.replace(old, path)
            raise
        if had_old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Compressed npz, atomically (np.savez_compressed appends .npz to names without it, so use a handle)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def load_versioned(path: str | os.PathLike, fmt: str, what: str, missing_hint: str) -> dict:
    """A dict saved with `torch.save` whose "format" is `fmt`, loaded with `weights_only=True`; a missing,
    unreadable or foreign file is one `ConfigError` line naming it (`what`: "segmenter file", ...)."""
    import torch

    from wsss.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found ({missing_hint})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"{path}: unreadable {what} ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise ConfigError(f"{path}: not a {what} of this version (expected format {fmt})")
    return state


def load_keyed(path: str | os.PathLike, key: str, stage: str, start: str) -> dict | None:
    """A checkpoint (`torch.save`d dict, loaded `weights_only`) to resume from: None when it is missing,
    unreadable or was written for other inputs (its "key" differs); the two last say why, naming `start`."""
    import torch

    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # damaged, or from another version
        print(f"{stage}: {path} unreadable, starting from {start}")
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        print(f"{stage}: {path} was written for other inputs or settings, starting from {start}")
        return None
    return state
