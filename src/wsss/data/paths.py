"""Dataset-relative paths: a manifest path must stay inside its dataset root, symlinks included, so a
dataset drop can never make a stage read (or validation hash) a file elsewhere on the machine."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from wsss.errors import DataError


def path_problem(root: str | Path, rel: str | os.PathLike) -> str:
    """Why `rel` is not a safe path inside `root` ("" when it is): absolute, contains `..`, or resolves
    (following symlinks) outside the root. Does not require the file to exist."""
    s = os.fspath(rel)
    if not s:
        return "empty path"
    if PurePosixPath(s).is_absolute() or PureWindowsPath(s).is_absolute() or PureWindowsPath(s).drive:
        return "absolute path"
    if ".." in s.replace("\\", "/").split("/"):
        return "path contains '..'"
    root_r = Path(root).resolve()
    target = (root_r / s).resolve()
    if target != root_r and root_r not in target.parents:
        return f"resolves outside the dataset root (to {target})"
    return ""


def resolve_inside(root: str | Path, rel: str | os.PathLike) -> Path:
    """root / rel, resolved; DataError if rel is absolute, contains `..` or escapes the root via a symlink."""
    problem = path_problem(root, rel)
    if problem:
        raise DataError(f"{os.fspath(rel)}: unsafe dataset path ({problem}; root {root})")
    return (Path(root).resolve() / os.fspath(rel)).resolve()
