"""The expectation suite for a dataset drop: one expectation per defect kind, on the image table's columns.

Each check carries a key and a human title (in the expectation's `meta` and `description`, so Data Docs
and our verdict lines say the same thing) and a `detail` function that explains one offending row. A
check's `severity` is GX's: `critical` refuses the drop (a FAIL line), `warning` is reported (a WARN line,
and in Data Docs with its unexpected rows) and lets it pass. `mostly` lets a share of rows fail before the
expectation does (the label audit's `refuse` policy); `bounds` are for table-level checks (drift: a
column's mean or median between two values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd

from wsss.data.images import TRANSPOSED

CRITICAL, WARNING = "critical", "warning"


def _size(w, h) -> str:
    return f"{w}x{h}" if pd.notna(w) and pd.notna(h) else "?"


@dataclass(frozen=True)
class Check:
    key: str
    title: str
    column: str
    kind: str  # "in_set" | "unique" | "min" | "mean_between" | "median_between"
    detail: Callable[[pd.Series, pd.DataFrame], str]
    value: object = None  # the good value (in_set) or the minimum (min)
    severity: str = CRITICAL
    mostly: float | None = None
    bounds: tuple[float, float] | None = None
    observed: Callable[[float], str] | None = None  # a table-level check's finding, from GX's observed value


def _err(col: str) -> Callable:
    return lambda r, t: str(r[col]).split(": ", 1)[-1] if r[col] else ""


def _same_content(r, t) -> str:
    others = t.loc[(t["sha256"] == r["sha256"]) & (t["row"] != r["row"]), "id"].tolist()
    return f"{r['image']}, same bytes as {', '.join(others[:3])}"


def _mask_size(r, t) -> str:
    line = f"mask {_size(r['mask_width'], r['mask_height'])}, image {_size(r['decoded_width'], r['decoded_height'])}"
    o = r.get("exif_orientation")
    if pd.notna(o) and int(o) != 1 and (r["mask_width"], r["mask_height"]) == (r["displayed_width"], r["displayed_height"]):
        line += (f" as stored; its EXIF orientation {int(o)} displays it {_size(r['displayed_width'], r['displayed_height'])},"
                 f" as the mask was drawn: set data.exif: apply")
    return line


def _exif(r, t) -> str:
    o = int(r["exif_orientation"])
    shown = _size(r["displayed_width"], r["displayed_height"])
    turned = " (width and height swap)" if o in TRANSPOSED else ""
    return (f"{r['image']}: EXIF orientation {o}{turned}; read as stored {_size(r['decoded_width'], r['decoded_height'])},"
            f" displayed {shown} (data.exif: ignore; apply reads it as displayed)")


def _blank(min_entropy: float) -> Callable:
    def detail(r, t) -> str:
        e = float(r["entropy"])
        what = "one flat colour" if e == 0 else f"grey-level entropy {e:.2f} bits < {min_entropy:g}"
        return f"{r['image']}: {what}"
    return detail


def checks(min_side: int, *, min_entropy: float = 1.0, blank: str = "refuse", audit: str = "off",
           audit_max_share: float = 0.1, drift: list[Check] | None = None) -> list[Check]:
    """Every defect kind the drop is checked for, in the order a person would fix them; `blank` and
    `audit` are the `validation` policies, `drift` the table-level checks against the dataset (if any)."""
    blank_severity = CRITICAL if blank == "refuse" else WARNING
    out = [
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
        Check("not_blank", "image is not blank", "not_blank", "in_set", _blank(min_entropy), True,
              severity=blank_severity),
        Check("exif_orientation", "image has no EXIF orientation the pipeline ignores", "exif_as_read", "in_set",
              _exif, True, severity=WARNING),
        Check("unique_content", "no duplicate image content", "sha256", "unique", _same_content),
        Check("new_content", "image is not already in the dataset", "new_content", "in_set",
              lambda r, t: f"{r['image']}: same bytes as an image the dataset has", True),
        Check("no_held_out_duplicate", "no near-duplicate across a held-out split (val/test leak)",
              "no_held_out_duplicate", "in_set", lambda r, t: f"{r['image']} ≈ {r['near_duplicates']}", True),
        Check("no_near_duplicate", "no near-duplicate image", "no_near_duplicate", "in_set",
              lambda r, t: f"{r['image']} ≈ {r['near_duplicates']}", True, severity=WARNING),
        Check("labels_nonempty", "label set is not empty", "num_labels", "min", lambda r, t: r["image"], 1),
        Check("labels_in_vocab", "labels are in the vocabulary", "labels_in_vocab", "in_set",
              lambda r, t: f"unknown: {r['unknown_labels_text']}", True),
        Check("annotation_readable", "annotation is readable", "annotation_ok", "in_set",
              lambda r, t: r["problems"], True),
        Check("mask_path_safe", "mask path stays inside the dataset root", "mask_path_ok", "in_set",
              lambda r, t: f"{r['mask']}: {r['mask_error']}", True),
        Check("mask_exists", "mask file exists", "mask_exists", "in_set", lambda r, t: r["mask"], True),
        Check("mask_decodes", "mask decodes as class indices", "mask_decodes", "in_set", _err("mask_error"), True),
        Check("mask_size", "mask size equals image size", "mask_size_matches", "in_set", _mask_size, True),
        Check("mask_values", "mask values are class ids or 255", "mask_values_ok", "in_set",
              lambda r, t: f"values {r['mask_bad_values']}", True),
        Check("mask_classes_labelled", "every class painted in the mask is among the image's labels",
              "mask_labels_ok", "in_set", lambda r, t: r["mask_label_conflict"], True),
        Check("labels_painted", "every label has pixels in the mask", "labels_painted", "in_set",
              lambda r, t: r["unpainted_labels"], True, severity=WARNING),
    ]
    if audit != "off":
        refuse = audit == "refuse"
        title = ("image labels agree with CLIP" + (f" (at most {audit_max_share:.0%} of the images flagged)" if refuse
                                                    else ""))
        out.append(Check("label_audit", title, "label_audit_ok", "in_set", lambda r, t: r["label_findings"], True,
                         severity=CRITICAL if refuse else WARNING, mostly=1 - audit_max_share if refuse else None))
    return out + list(drift or [])


def expectation(check: Check):
    """The GX expectation for one check (GX imported lazily: it takes seconds)."""
    import great_expectations as gx

    E = gx.expectations
    description = check.title + (" (warning: reported, the drop still passes)" if check.severity == WARNING else "")
    common = {"column": check.column, "meta": {"check": check.key, "title": check.title},
              "description": description, "severity": check.severity}
    if check.mostly is not None:
        common["mostly"] = check.mostly
    if check.kind == "unique":
        return E.ExpectColumnValuesToBeUnique(**common)
    if check.kind == "in_set":
        return E.ExpectColumnValuesToBeInSet(value_set=[check.value], **common)
    if check.kind == "min":
        return E.ExpectColumnValuesToBeBetween(min_value=check.value, **common)
    if check.kind in ("mean_between", "median_between"):
        cls = E.ExpectColumnMeanToBeBetween if check.kind == "mean_between" else E.ExpectColumnMedianToBeBetween
        common.pop("mostly", None)
        return cls(min_value=check.bounds[0], max_value=check.bounds[1], **common)
    raise ValueError(check.kind)


def build_suite(name: str, all_checks: list[Check]):
    import great_expectations as gx

    E = gx.expectations
    not_empty = E.ExpectTableRowCountToBeBetween(min_value=1, meta={"check": "not_empty", "title": "drop has images"},
                                                 description="drop has images")
    return gx.ExpectationSuite(name=name, expectations=[not_empty] + [expectation(c) for c in all_checks])
