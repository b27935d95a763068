"""Pseudo-mask evaluation and the ablation table (docs/method.md §7).

Ground truth comes from the manifest's `mask` column; only images that have one are scored, so
evaluation runs on every split that has ground truth (`splits_with_gt`). Masks never feed back into
mask generation: this module only reads them to score.

How low-confidence pixels count: a pseudo mask marks pixels it is not sure of as 255. They are left out
of the confusion matrix — `miou` is the mIoU on the pixels the mask commits to, as CLIP-ES reports it —
and reported separately as `ignored_fraction` (share of valid ground-truth pixels predicted 255) and as
`miou_strict`, where they count as misses of their true class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from wsss.cam.store import cam_path, load_cam
from wsss.data.vocab import IGNORE, Vocabulary
from wsss.errors import DataError
from wsss.io import atomic_path, write_json
from wsss.settings import CrfSettings
from wsss.data.images import load_rgb_array
from wsss.masks.export import MaskParams, export_mask
from wsss.parallel import run_pool
from wsss.data.palette import load_mask
from wsss.metrics.confusion import ConfusionMatrix

if TYPE_CHECKING:
    from wsss.data.manifest import Dataset

SCALARS = ("miou", "miou_strict", "pixel_accuracy", "ignored_fraction")


def _clean(x):
    """NaN → None, so the result is strict JSON (DVC and MLflow both choke on NaN)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def class_names(vocab: Vocabulary) -> list[str]:
    return ["background", *vocab.names]


def splits_with_gt(dataset: "Dataset") -> list[str]:
    """The splits in which at least one image has a ground-truth mask."""
    table = dataset.table
    return sorted(set(table.loc[table["mask"] != "", "split"]))


def summarize(cm: ConfusionMatrix, vocab: Vocabulary, **extra) -> dict:
    """A JSON-ready evaluation result from an accumulated matrix: scalars, per-class scores keyed by class
    name, the confusion matrix (rows = ground truth, columns = prediction) and per-class ignored counts."""
    scores = cm.compute()
    names = class_names(vocab)
    if len(names) != cm.num_classes:
        raise ValueError(f"{cm.num_classes}-class matrix but {len(names)} class names")
    per_class = {name: {"iou": scores["iou"][i], "precision": scores["precision"][i],
                        "recall": scores["recall"][i], "iou_strict": scores["iou_strict"][i]}
                 for i, name in enumerate(names)}
    result = {**extra, **{k: scores[k] for k in SCALARS}, "pixels": scores["pixels"], "classes": names,
              "per_class": per_class, "confusion": cm.matrix.tolist(), "pred_ignored": cm.pred_ignored.tolist()}
    return _clean(result)


def _gt_rows(dataset: "Dataset", split: str | None) -> "Dataset":
    from wsss.data.manifest import Dataset

    ds = dataset.split(split) if split else dataset
    ds = ds.subset(ds.table["mask"] != "")
    if len(ds) == 0:
        raise DataError(f"dataset {dataset.name}: split {split!r} has no ground-truth masks to evaluate against")
    return ds


def _score(cm: ConfusionMatrix, pred: np.ndarray, gt: np.ndarray, pred_name, gt_name) -> None:
    if pred.shape != gt.shape:
        raise DataError(f"{pred_name}: mask is {pred.shape[0]}×{pred.shape[1]} but ground truth {gt_name} "
                        f"is {gt.shape[0]}×{gt.shape[1]}")
    try:
        cm.update(pred, gt)
    except ValueError as e:
        raise DataError(f"{pred_name} / {gt_name}: {e}") from None


def evaluate_masks(dataset: "Dataset", pred_dir: str | Path, *, split: str | None = None,
                   progress: bool = True) -> dict:
    """Score `<pred_dir>/<id>.png` against the ground truth of every image of `split` that has one.
    A missing prediction is an error (a partial folder must not look like a good score)."""
    from tqdm import tqdm

    ds = _gt_rows(dataset, split)
    cm = ConfusionMatrix(ds.vocab.num_classes + 1, IGNORE)
    for _, row in tqdm(ds.table.iterrows(), total=len(ds), desc=f"evaluate {split or 'all'}", unit="img",
                       disable=not progress):
        pred_file = Path(pred_dir) / f"{row['id']}.png"
        gt_file = ds.mask_path(row)
        _score(cm, load_mask(pred_file), load_mask(gt_file), pred_file, gt_file)
    return summarize(cm, ds.vocab, split=split, images=len(ds))


def metrics_summary(result: dict) -> dict:
    """The small, flat part of a result for DVC metrics / MLflow: scalars and per-class IoU."""
    out = {k: result[k] for k in ("split", "images", *SCALARS) if k in result}
    out["iou"] = {name: s["iou"] for name, s in result["per_class"].items()}
    return out


def write_report(result: dict, vocab: Vocabulary, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write one evaluation into `out_dir`: metrics.json (DVC metrics), per_class.csv (DVC plot data:
    class, iou, precision, recall — for the `bar_horizontal` template with x=iou, y=class),
    confusion.json (full matrix + class names) and, with `plots`, per_class_iou.png and confusion.png.
    Returns the paths by kind."""
    out_dir = Path(out_dir)
    paths = {"metrics": out_dir / "metrics.json", "per_class": out_dir / "per_class.csv",
             "confusion": out_dir / "confusion.json"}
    write_json(paths["metrics"], metrics_summary(result))
    lines = ["class,iou,precision,recall"]
    for name, s in result["per_class"].items():
        cells = ["" if s[k] is None else f"{s[k]:.6f}" for k in ("iou", "precision", "recall")]
        lines.append(",".join([_csv_cell(name), *cells]))
    with atomic_path(paths["per_class"]) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    write_json(paths["confusion"], {"classes": result["classes"], "rows": "ground truth",
                                    "columns": "prediction", "matrix": result["confusion"],
                                    "pred_ignored": result["pred_ignored"]})
    if plots:
        from wsss.metrics.plots import confusion_heatmap, per_class_iou_bar

        paths["per_class_iou_png"] = out_dir / "per_class_iou.png"
        paths["confusion_png"] = out_dir / "confusion.png"
        per_class_iou_bar(result, vocab, paths["per_class_iou_png"])
        confusion_heatmap(result, vocab, paths["confusion_png"])
    return paths


def _csv_cell(text: str) -> str:
    return f'"{text}"' if ("," in text or '"' in text) else text


# ---------------------------------------------------------------------------------------------- ablation


@dataclass(frozen=True)
class AblationRow:
    """One line of the ablation table: how masks are made, and (optionally) from which CAM folder —
    e.g. CAMs scored with learned background prompts. `mask_dir`: the masks were already exported with
    exactly these params (the `masks` stage's own): read them instead of running the CRF again."""

    name: str
    params: MaskParams
    cam_dir: str | Path | None = None
    mask_dir: str | Path | None = None


def default_ablation_rows(*, alpha: float = 1.0, crf: CrfSettings | None = None, confidence: float = 0.95,
                          learned_cam_dir: str | Path | None = None) -> list[AblationRow]:
    """CAM → + CAA → + CRF (and + learned prompts when their CAM folder is given)."""
    crf = crf or CrfSettings()
    rows = [AblationRow("CAM", MaskParams(source="cam", alpha=alpha, crf=None)),
            AblationRow("+ CAA", MaskParams(source="refined", alpha=alpha, crf=None)),
            AblationRow("+ CRF", MaskParams(source="refined", alpha=alpha, crf=crf, confidence=confidence))]
    if learned_cam_dir is not None:
        rows.append(AblationRow("+ learned prompts", rows[-1].params, learned_cam_dir))
    return rows


def _as_row(row) -> AblationRow:
    return row if isinstance(row, AblationRow) else AblationRow(*row)


def _ablation_image(task: tuple) -> list[tuple[np.ndarray, np.ndarray]]:
    """Worker: every row's mask for one image, scored against its ground truth (counts only)."""
    image_path, gt_path, specs, num_classes, image_loader = task
    gt = load_mask(gt_path)
    image = None
    records = {}
    counts = []
    for cam_file, params, mask_file in specs:
        if mask_file is not None:
            pred = load_mask(mask_file)
        else:
            if cam_file not in records:
                records[cam_file] = load_cam(cam_file)
            if params.crf is not None and image is None:
                image = image_loader(Path(image_path))
            pred = export_mask(image, records[cam_file], source=params.source, alpha=params.alpha, crf=params.crf,
                               confidence=params.confidence)
        cm = ConfusionMatrix(num_classes, IGNORE)
        _score(cm, pred, gt, mask_file or cam_file, gt_path)
        counts.append((cm.matrix, cm.pred_ignored))
    return counts


def ablation(dataset: "Dataset", cam_dir: str | Path, image_loader: Callable[[Path], np.ndarray] | None = None,
             rows: Sequence[AblationRow | tuple] | None = None, *, split: str | None = None,
             workers: int | None = None, progress: bool = True) -> dict:
    """Score each row's masks (computed in memory, nothing written) on the images of `split` with ground
    truth. Rows are AblationRow or (name, MaskParams[, cam_dir]) tuples; default `default_ablation_rows()`.
    `image_loader(path) -> H×W×3 uint8` must be picklable (a module-level function) when workers > 1.
    Returns {"split", "images", "classes", "rows": [{"name", miou, miou_strict, pixel_accuracy,
    ignored_fraction, "iou": {class: value}}]}."""
    rows = [_as_row(r) for r in (rows or default_ablation_rows())]
    ds = _gt_rows(dataset, split)
    n = ds.vocab.num_classes + 1
    tasks = []
    for _, r in ds.table.iterrows():
        specs = [(str(cam_path(row.cam_dir or cam_dir, r["id"])), row.params,
                  None if row.mask_dir is None else str(Path(row.mask_dir) / f"{r['id']}.png")) for row in rows]
        tasks.append((str(ds.image_path(r)), str(ds.mask_path(r)), specs, n,
                      image_loader or partial(load_rgb_array, exif=ds.exif)))
    per_image = run_pool(_ablation_image, tasks, workers=workers, desc="ablation", progress=progress)
    table_rows = []
    for j, row in enumerate(rows):
        cm = ConfusionMatrix(n, IGNORE)
        for counts in per_image:
            cm.matrix += counts[j][0]
            cm.pred_ignored += counts[j][1]
        res = summarize(cm, ds.vocab)
        table_rows.append({"name": row.name, **{k: res[k] for k in SCALARS},
                           "iou": {c: s["iou"] for c, s in res["per_class"].items()}})
    return {"split": split, "images": len(ds), "classes": class_names(ds.vocab), "rows": table_rows}


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def ablation_markdown(table: dict, vocab: Vocabulary | None = None, *, transpose: bool | None = None) -> str:
    """The ablation as a Markdown table (values in %). Rows = settings, columns = mIoU, strict mIoU,
    ignored share, then per-class IoU; with many classes (> 25, e.g. COCO) it is transposed so it stays
    readable. `vocab` only checks that the table matches it."""
    classes = table["classes"]
    if vocab is not None and classes != class_names(vocab):
        raise ValueError("ablation table classes do not match the vocabulary")
    transpose = len(classes) > 25 if transpose is None else transpose
    head = ["mIoU", "mIoU (strict)", "ignored"]
    grid = [[_pct(r["miou"]), _pct(r["miou_strict"]), _pct(r["ignored_fraction"])]
            + [_pct(r["iou"][c]) for c in classes] for r in table["rows"]]
    names = [r["name"] for r in table["rows"]]
    cols = head + classes
    if transpose:
        lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        lines += [f"| {c} | " + " | ".join(g[i] for g in grid) + " |" for i, c in enumerate(cols)]
    else:
        lines = ["| Setting | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        lines += [f"| {name} | " + " | ".join(g) + " |" for name, g in zip(names, grid)]
    note = (f"\nIoU in % on split `{table.get('split') or 'all'}` ({table['images']} images with ground truth). "
            "mIoU counts only the pixels a mask commits to; low-confidence pixels (255) are excluded, shown "
            "as `ignored` (share of pixels) and counted as misses in `mIoU (strict)`.\n")
    return "\n".join(lines) + "\n" + note
