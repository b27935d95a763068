"""Small helpers the readers share to build manifest rows without failing on per-file defects."""

from __future__ import annotations

from pathlib import Path

from wsss.data.images import peek_size, read_mask
from wsss.data.labels import labels_from_mask
from wsss.data.paths import path_problem
from wsss.errors import DataError


def existing(root: Path, rel: str) -> bool:
    """True if `rel` is a safe path inside root and the file exists (unsafe paths are never touched)."""
    return not path_problem(root, rel) and (root / rel).is_file()


def first_existing(root: Path, candidates: list[str], default: str = "") -> str:
    return next((c for c in candidates if existing(root, c)), default)


def header_size(root: Path, rel: str, exif: str = "ignore") -> tuple[int, int]:
    """(width, height) from the image header, as the `exif` policy reads it; (0, 0) when unknown
    (missing/corrupt: validation reports it)."""
    if not existing(root, rel):
        return 0, 0
    try:
        return peek_size(root / rel, exif=exif)
    except DataError:
        return 0, 0


def mask_labels(root: Path, rel: str, num_classes: int, problems: list[str]) -> tuple[int, ...]:
    """Labels derived from a ground-truth mask; an unreadable mask adds a problem instead of raising."""
    try:
        return labels_from_mask(read_mask(root / rel), num_classes)
    except DataError as e:
        problems.append(f"labels not derivable from mask ({e})")
        return ()


def row(id_: str, image: str, size: tuple[int, int], split: str, labels, mask: str,
        unknown=(), problems=(), source: str = "") -> dict:
    """A manifest row plus the extra columns validation reads: unknown_labels, problems, label_source."""
    return {"id": id_, "image": image, "width": size[0], "height": size[1], "split": split,
            "labels": tuple(labels), "mask": mask, "unknown_labels": tuple(unknown),
            "problems": "; ".join(problems), "label_source": source}


def check_root(root) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found (or not a directory)")
    return root
