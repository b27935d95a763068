"""A dataset drop as a per-image metadata table: the thing Great Expectations can validate.

One row per manifest row. Check columns are booleans where True is good, or None when the check does
not apply because an earlier one already failed (a missing file is only "missing", not also "does not
decode"); GX ignores nulls, so each defect fails exactly one expectation. Only safe paths are opened,
files are only read, and every image is fully decoded (corruption shows up here, not mid-training).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from wsss.data.images import (DEFAULT_MAX_PIXELS, DecompressionBomb, displayed_size, exif_orientation, open_image,
                               orient, read_mask, to_rgb)
from wsss.data.manifest import Dataset
from wsss.data.paths import path_problem
from wsss.data.vocab import IGNORE
from wsss.errors import DataError
from wsss.settings import ValidationSettings
from wsss.validation.content import grey_entropy, perceptual_hash

DEFAULT_MIN_SIDE = ValidationSettings().min_side
_HASH_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def check_image(root: Path, rel: str, max_pixels: int | None, exif: str = "ignore") -> dict:
    """Path safety, existence, bomb refusal, full decode, original mode, RGB convertibility, size (as the
    `exif` policy reads it; the EXIF orientation and displayed size beside), hash, and what the pixels
    carry: perceptual hash and grey-level entropy."""
    out = {"image_path_ok": None, "image_path_problem": "", "image_exists": None, "bomb": None,
           "decoded_width": None, "decoded_height": None, "sha256": None, "decodes": None, "image_error": "",
           "mode": None, "channels": None, "rgb_convertible": None, "exif_orientation": None,
           "displayed_width": None, "displayed_height": None, "phash": "", "entropy": None}
    out["image_path_problem"] = path_problem(root, rel)
    out["image_path_ok"] = not out["image_path_problem"]
    if not out["image_path_ok"]:
        return out
    path = root / rel
    out["image_exists"] = path.is_file()
    if not out["image_exists"]:
        return out
    out["sha256"] = file_sha256(path)
    try:
        img = open_image(path, max_pixels)
    except DecompressionBomb as e:
        out.update(bomb=True, image_error=str(e))
        return out
    except DataError as e:
        out.update(bomb=False, decodes=False, image_error=str(e))
        return out
    with img:
        orientation = exif_orientation(img)
        shown = displayed_size(img.size, orientation)
        read = shown if exif == "apply" else img.size
        out.update(bomb=False, decodes=True, mode=img.mode, channels=len(img.getbands()),
                   decoded_width=read[0], decoded_height=read[1], exif_orientation=orientation,
                   displayed_width=shown[0], displayed_height=shown[1])
        try:
            rgb = orient(to_rgb(img, path), exif) if orientation != 1 else to_rgb(img, path)
            out["rgb_convertible"] = True
        except DataError as e:
            out.update(rgb_convertible=False, image_error=str(e))
            return out
        grey = rgb.convert("L")
        out.update(phash=perceptual_hash(grey), entropy=round(grey_entropy(grey), 4))
    return out


def check_mask(root: Path, rel: str, image_size: tuple | None, num_classes: int, max_pixels: int | None) -> dict:
    """Mask path safety, existence, decode (palette/L indices), size = image size, values ⊆ {0..C, 255}."""
    out = {"mask_path_ok": None, "mask_exists": None, "mask_decodes": None, "mask_error": "",
           "mask_width": None, "mask_height": None, "mask_size_matches": None, "mask_values_ok": None,
           "mask_bad_values": "", "mask_classes": None}
    if not rel:
        return out  # no ground truth: fine for weak supervision
    problem = path_problem(root, rel)
    out["mask_path_ok"] = not problem
    if problem:
        out["mask_error"] = problem
        return out
    out["mask_exists"] = (root / rel).is_file()
    if not out["mask_exists"]:
        return out
    try:
        mask = read_mask(root / rel, max_pixels)
    except DataError as e:
        out.update(mask_decodes=False, mask_error=str(e))
        return out
    out.update(mask_decodes=True, mask_height=mask.shape[0], mask_width=mask.shape[1])
    if image_size is not None:
        out["mask_size_matches"] = (mask.shape[1], mask.shape[0]) == tuple(image_size)
    values = np.unique(mask)
    bad = values[(values > num_classes) & (values != IGNORE)]
    out["mask_values_ok"] = bad.size == 0
    out["mask_bad_values"] = " ".join(str(int(v)) for v in bad[:20])
    out["mask_classes"] = tuple(int(v) for v in values if 0 < v <= num_classes)
    return out


def _label_columns(table: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """num_labels, labels_in_vocab, unknown (text), annotation_ok — vectorised over the manifest."""
    unknown_names = table["unknown_labels"] if "unknown_labels" in table else pd.Series([()] * len(table))
    bad_ids = table["labels"].map(lambda ls: tuple(str(x) for x in ls if not 1 <= int(x) <= num_classes))
    unknown = [tuple(a) + tuple(b) for a, b in zip(unknown_names.fillna("").map(lambda v: v or ()), bad_ids)]
    problems = table["problems"].fillna("").astype(str) if "problems" in table else pd.Series([""] * len(table))
    return pd.DataFrame({
        "num_labels": table["labels"].map(len).astype(int).to_numpy(),
        "labels_in_vocab": [not u for u in unknown],
        "unknown_labels_text": [", ".join(u) for u in unknown],
        "annotation_ok": (problems == "").to_numpy(),
        "problems": problems.to_numpy(),
    })


def _nullable(values) -> pd.Series:
    """Booleans with None kept as None (object dtype): GX then skips the not-applicable rows."""
    return pd.Series(list(values), dtype=object)


def check_row(root: Path, image: str, mask: str, num_classes: int, max_pixels: int | None,
              exif: str = "ignore") -> dict:
    img = check_image(root, image, max_pixels, exif)
    size = (img["decoded_width"], img["decoded_height"]) if img["decodes"] else None
    return {**img, **check_mask(root, mask, size, num_classes, max_pixels)}


def _label_mask_agreement(out: pd.DataFrame, t: pd.DataFrame, masks: list, names) -> None:
    """`mask_labels_ok`: every class painted in the mask is among the image's labels (else the image is
    refused: its pseudo mask would be trained against a contradiction); `labels_painted`: every label has
    pixels in the mask (else a warning: an object too small to paint, or a wrong label). None where the
    mask is absent or unusable, where the labels are (unknown, empty, unreadable: other checks fail those)
    or where they were read from the mask itself."""
    from_mask = (t["label_source"].astype(str) == "mask").to_numpy() if "label_source" in t else np.zeros(len(t), bool)
    ok, painted, unlabelled, unpainted = [], [], [], []
    for k, (labels, classes) in enumerate(zip(t["labels"], masks)):
        usable = (classes is not None and not from_mask[k] and out.at[k, "mask_size_matches"] is not False
                  and bool(out.at[k, "labels_in_vocab"]) and out.at[k, "num_labels"] > 0
                  and bool(out.at[k, "annotation_ok"]))  # a label defect is its own check's business
        extra = sorted(set(classes) - set(labels)) if usable else []
        missing = sorted(set(labels) - set(classes)) if usable else []
        ok.append(None if not usable else not extra)
        painted.append(None if not usable or extra else not missing)
        unlabelled.append(f"mask paints {{{', '.join(names(sorted(classes)))}}}, labels {{{', '.join(names(labels))}}}:"
                          f" {', '.join(names(extra))} not labelled" if extra else "")
        unpainted.append(f"{', '.join(names(missing))} labelled but not painted in {out.at[k, 'mask']}"
                         if missing else "")
    out["mask_labels_ok"], out["labels_painted"] = _nullable(ok), _nullable(painted)
    out["mask_label_conflict"], out["unpainted_labels"] = unlabelled, unpainted


def image_table(ds: Dataset, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, workers: int = 4) -> pd.DataFrame:
    """The per-image metadata table for `ds` (see the module docstring). Column `row` is the position,
    used to point from GX's unexpected rows back to files even when ids are duplicated. Images are read
    as the dataset's EXIF policy reads them (`ds.exif`).

    Decoding and hashing release the GIL, so `workers` threads overlap them (1 = sequential)."""
    root = Path(ds.root)
    t = ds.table.reset_index(drop=True)
    job = partial(check_row, root, num_classes=ds.vocab.num_classes, max_pixels=max_pixels, exif=ds.exif)
    args = (t["image"].astype(str).tolist(), t["mask"].fillna("").astype(str).tolist())
    bar = dict(total=len(t), desc=f"validate {ds.name}", unit="img")
    if workers > 1 and len(t) > 1:
        with ThreadPoolExecutor(workers) as pool:
            records = list(tqdm(pool.map(job, *args), **bar))
    else:
        records = list(tqdm(map(job, *args), **bar))
    checks = pd.DataFrame.from_records(records, index=range(len(t))) if records else pd.DataFrame(
        columns=list(check_image(root, "", None)) + list(check_mask(root, "", None, 1, None)))
    out = pd.DataFrame({"row": np.arange(len(t)), "id": t["id"].astype(str), "image": t["image"].astype(str),
                        "mask": t["mask"].astype(str), "split": t["split"].astype(str),
                        "width": t["width"].astype(int), "height": t["height"].astype(int),
                        "labels": t["labels"].map(lambda ls: " ".join(str(x) for x in ls))})
    mask_classes = checks.pop("mask_classes").tolist() if "mask_classes" in checks else [None] * len(t)
    out = pd.concat([out, checks.reset_index(drop=True), _label_columns(t, ds.vocab.num_classes)], axis=1)
    # readers note an image listed more than once (split list, labels file) instead of dropping the repeat
    listing = (t["duplicate_listing"].fillna("").astype(str) if "duplicate_listing" in t
               else pd.Series([""] * len(t), dtype=str))
    out["duplicate_listing"] = listing.to_numpy()
    out["listed_once"] = (listing == "").to_numpy()
    for col in ("decoded_width", "decoded_height", "channels", "mask_width", "mask_height", "exif_orientation",
                "displayed_width", "displayed_height"):
        out[col] = pd.array(out[col].tolist(), dtype="Int64")
    decoded = out["decodes"].map(lambda v: v is True)
    out["size_matches_manifest"] = _nullable(
        (int(w) == mw and int(h) == mh) if d else None
        for d, w, h, mw, mh in zip(decoded, out["decoded_width"].fillna(0), out["decoded_height"].fillna(0),
                                   out["width"], out["height"]))
    out["min_side"] = pd.array([min(int(w), int(h)) if d else None for d, w, h in
                                zip(decoded, out["decoded_width"].fillna(0), out["decoded_height"].fillna(0))],
                               dtype="Int64")
    out["pixels"] = out["decoded_width"] * out["decoded_height"]
    for col in ("image_path_ok", "image_exists", "bomb", "decodes", "rgb_convertible", "mask_path_ok",
                "mask_exists", "mask_decodes", "mask_size_matches", "mask_values_ok"):
        out[col] = _nullable(out[col].map(lambda v: None if v is None or v is pd.NA or v != v else bool(v)))
    out["entropy"] = pd.array([None if v is None or v != v else float(v) for v in out["entropy"]], dtype="Float64")
    out["phash"] = out["phash"].fillna("").astype(str)
    _label_mask_agreement(out, t, mask_classes, lambda ids: [ds.vocab.name(int(c)) for c in ids])
    return out
