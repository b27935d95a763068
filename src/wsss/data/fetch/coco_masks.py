"""COCO instance annotations → VOC-style class masks and image-level labels (pycocotools).

Class ids: COCO's category ids sorted → 1..80 (0 = background), names in that order in `classes.txt`.
Masks: crowd regions (`iscrowd`, coarse outlines of many objects) are 255 = ignore; the outlined objects
are then drawn over them, largest area first, so a small object in front of a large one stays visible.
Labels: the categories of an image's non-crowd annotations. An image with none (no annotation, or crowds
only: none of its objects is outlined) has no label to learn from; it is moved to `unlabelled/<folder>/`
so that the dataset root holds only images the pipeline can use (`wsss validate` requires a label).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss.data.palette import save_palette_png, stored_png_key
from wsss.errors import DataError
from wsss.io import write_json, write_text

IGNORE = 255
LABELS_FILE = "image_labels.json"
VERSION = "coco-masks/1"  # bump when the drawing rule changes: stored masks are redrawn


def load_coco(path: Path):
    """pycocotools' COCO index of an instances file, its chatter silenced; a bad file is one line."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a COCO instances file ({type(e).__name__}: {e})") from None


def class_ids(coco) -> dict[int, int]:
    """{COCO category id: class id 1..C}, in the order of the sorted category ids."""
    return {cat: k for k, cat in enumerate(sorted(coco.getCatIds()), 1)}


def class_names(coco) -> list[str]:
    return [coco.cats[cat]["name"] for cat in sorted(coco.getCatIds())]


def image_labels(anns: list[dict], ids: dict[int, int]) -> list[int]:
    return sorted({ids[a["category_id"]] for a in anns if not a.get("iscrowd")})


def class_mask(coco, image: dict, anns: list[dict], ids: dict[int, int]) -> np.ndarray:
    """H×W uint8: 0 background, crowd 255, then objects largest first (smaller ones end on top)."""
    mask = np.zeros((image["height"], image["width"]), np.uint8)
    for a in anns:
        if a.get("iscrowd"):
            mask[coco.annToMask(a).astype(bool)] = IGNORE
    for a in sorted((a for a in anns if not a.get("iscrowd")), key=lambda a: -a["area"]):
        mask[coco.annToMask(a).astype(bool)] = ids[a["category_id"]]
    return mask


def write_split(root: Path, folder: str, instances: Path, key: str) -> dict[str, list[int]]:
    """Masks for the images in `root/folder` (`SegmentationClass/<folder>/<stem>.png`, each written
    atomically and skipped when its stored key is current, so an interrupted run resumes); images without
    a label moved to `unlabelled/<folder>/`. Returns {stem: labels}."""
    coco = load_coco(instances)
    ids = class_ids(coco)
    key = f"{VERSION} {key}"
    labels: dict[str, list[int]] = {}
    for image in tqdm(coco.loadImgs(sorted(coco.getImgIds())), desc=f"masks {folder}", unit="img"):
        stem = Path(image["file_name"]).stem
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"], iscrowd=None))
        found = image_labels(anns, ids)
        if not found:
            _set_aside(root, folder, image["file_name"])
            continue
        labels[stem] = found
        out = root / "SegmentationClass" / folder / f"{stem}.png"
        if stored_png_key(out) != key:
            save_palette_png(out, class_mask(coco, image, anns, ids), key=key)
    write_text(root / "classes.txt", "".join(f"{n}\n" for n in class_names(coco)))
    return labels


def _set_aside(root: Path, folder: str, name: str) -> None:
    src = root / folder / name
    if src.is_file():
        dst = root / "unlabelled" / folder / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


def write_labels(root: Path, labels: dict[str, list[int]]) -> Path:
    """Merge `labels` into `<root>/image_labels.json` ({stem: [class ids]}, the format `data.labels` reads)."""
    path = root / LABELS_FILE
    old = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, {**old, **labels})
    return path
