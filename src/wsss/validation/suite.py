"""The expectation suite for a dataset drop: one expectation per defect kind, on the image table's columns.

Each check carries a key and a human title (in the expectation's `meta` and `description`, so Data Docs
and our verdict lines say the same thing) and a `detail` function that explains one offending row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd


def _size(w, h) -> str:
    return f"{w}x{h}" if pd.notna(w) and pd.notna(h) else "?"


@dataclass(frozen=True)
class Check:
    key: str
    title: str
    column: str
    kind: str  # "in_set" | "unique" | "min"
    detail: Callable[[pd.Series, pd.DataFrame], str]
    value: object = None  # the good value (in_set) or the minimum (min)


def _err(col: str) -> Callable:
    return lambda r, t: str(r[col]).split(": ", 1)[-1] if r[col] else ""


def _same_content(r, t) -> str:
    others = t.loc[(t["sha256"] == r["sha256"]) & (t["row"] != r["row"]), "id"].tolist()
    return f"{r['image']}, same bytes as {', '.join(others[:3])}"


def checks(min_side: int) -> list[Check]:
    """Every defect kind the drop is checked for, in the order a person would fix them."""
    return [
        Check("unique_id", "image ids are unique", "id", "unique", lambda r, t: r["image"]),
        Check("listed_once", "each image is listed once", "listed_once", "in_set",
              lambda r, t: f"{r['image']}: {r['duplicate_listing']}", True),
        Check("image_path_safe", "image path stays inside the dataset root", "image_path_ok", "in_set",
              lambda r, t: f"{r['image']}: {r['image_path_problem']}", True),
        Check("image_exists", "image file exists", "image_exists", "in_set", lambda r, t: r["image"], True),
        Check("not_bomb", "image is not a decompression bomb", "bomb", "in_set", _err("image_error"), False),
        Check("image_decodes", "image decodes", "decodes", "in_set", _err("image_error"), True),
        Check("rgb_convertible", "image converts to RGB", "rgb_convertible", "in_set",
              lambda r, t: f"mode {r['mode']}: {_err('image_error')(r, t)}", True),
        Check("size_matches_manifest", "decoded size equals the manifest size", "size_matches_manifest", "in_set",
              lambda r, t: f"decoded {_size(r['decoded_width'], r['decoded_height'])}, "
                           f"manifest {_size(r['width'], r['height'])}", True),
        Check("min_side", f"image is at least {min_side} px on each side", "min_side", "min",
              lambda r, t: _size(r["decoded_width"], r["decoded_height"]), min_side),
        Check("unique_content", "no duplicate image content", "sha256", "unique", _same_content),
        Check("new_content", "image is not already in the dataset", "new_content", "in_set",
              lambda r, t: f"{r['image']}: same bytes as an image the dataset has", True),
        Check("labels_nonempty", "label set is not empty", "num_labels", "min", lambda r, t: r["image"], 1),
        Check("labels_in_vocab", "labels are in the vocabulary", "labels_in_vocab", "in_set",
              lambda r, t: f"unknown: {r['unknown_labels_text']}", True),
        Check("annotation_readable", "annotation is readable", "annotation_ok", "in_set",
              lambda r, t: r["problems"], True),
        Check("mask_path_safe", "mask path stays inside the dataset root", "mask_path_ok", "in_set",
              lambda r, t: f"{r['mask']}: {r['mask_error']}", True),
        Check("mask_exists", "mask file exists", "mask_exists", "in_set", lambda r, t: r["mask"], True),
        Check("mask_decodes", "mask decodes as class indices", "mask_decodes", "in_set", _err("mask_error"), True),
        Check("mask_size", "mask size equals image size", "mask_size_matches", "in_set",
              lambda r, t: f"mask {_size(r['mask_width'], r['mask_height'])}, "
                           f"image {_size(r['decoded_width'], r['decoded_height'])}", True),
        Check("mask_values", "mask values are class ids or 255", "mask_values_ok", "in_set",
              lambda r, t: f"values {r['mask_bad_values']}", True),
    ]


def expectation(check: Check):
    """The GX expectation for one check (GX imported lazily: it takes seconds)."""
    import great_expectations as gx

    E = gx.expectations
    common = {"column": check.column, "meta": {"check": check.key, "title": check.title},
              "description": check.title}
    if check.kind == "unique":
        return E.ExpectColumnValuesToBeUnique(**common)
    if check.kind == "in_set":
        return E.ExpectColumnValuesToBeInSet(value_set=[check.value], **common)
    if check.kind == "min":
        return E.ExpectColumnValuesToBeBetween(min_value=check.value, **common)
    raise ValueError(check.kind)


def build_suite(name: str, all_checks: list[Check]):
    import great_expectations as gx

    E = gx.expectations
    not_empty = E.ExpectTableRowCountToBeBetween(min_value=1, meta={"check": "not_empty", "title": "drop has images"},
                                                 description="drop has images")
    return gx.ExpectationSuite(name=name, expectations=[not_empty] + [expectation(c) for c in all_checks])
