"""Pictures: per-class IoU bars, a confusion heatmap, an example grid (pseudo-mask quality) and loss curves.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global state, no display needed) and
saved atomically as PNG — they are DVC image plots and MLflow artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from wsss.data.vocab import Vocabulary
from wsss.io import atomic_path
from wsss.data.palette import colorize, load_mask

if TYPE_CHECKING:
    from wsss.data.manifest import Dataset

GRID_TITLES = ("image", "ground truth", "CAM", "refined CAM", "pseudo mask")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _names(result: dict, vocab: Vocabulary | None) -> list[str]:
    names = list(result["classes"])
    if vocab is not None and names != ["background", *vocab.names]:
        raise ValueError("evaluation result classes do not match the vocabulary")
    return names


def per_class_iou_bar(result: dict, vocab: Vocabulary | None, path: str | Path) -> Path:
    """Horizontal bars of IoU (%) per class, the mIoU as a dashed line; classes without an IoU are blank."""
    names = _names(result, vocab)
    iou = np.array([np.nan if result["per_class"][n]["iou"] is None else result["per_class"][n]["iou"]
                    for n in names]) * 100
    fig = _figure(7, 1.5 + 0.3 * len(names))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, np.nan_to_num(iou), color=colorize(np.arange(len(names))) / 255.0, edgecolor="black", linewidth=0.5)
    for yi, v in zip(y, iou):
        ax.text(1 if np.isnan(v) else v + 1, yi, "n/a" if np.isnan(v) else f"{v:.1f}", va="center", fontsize=8)
    title = f"Per-class IoU{_where(result)}"
    if result.get("miou") is not None:
        ax.axvline(result["miou"] * 100, color="black", linestyle="--", linewidth=1)
        title += f" (mIoU {result['miou'] * 100:.1f}, dashed)"
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xlabel("IoU (%)")
    ax.set_title(title)
    return _save(fig, path)


def _where(result: dict) -> str:
    return f" — {result['split']}" if result.get("split") else ""


def confusion_heatmap(result: dict, vocab: Vocabulary | None, path: str | Path) -> Path:
    """Row-normalised confusion matrix (each ground-truth class sums to 100 %), with an extra `ignored`
    column for pixels the masks left as 255; cells are annotated when there are few classes."""
    names = _names(result, vocab)
    m = np.asarray(result["confusion"], dtype=np.float64)
    ignored = np.asarray(result.get("pred_ignored") or np.zeros(len(names)), dtype=np.float64)
    cols = list(names)
    if ignored.sum() > 0:
        m = np.concatenate([m, ignored[:, None]], axis=1)
        cols.append("ignored")
    totals = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    size = 2.5 + 0.4 * len(cols)
    fig = _figure(size + 1.5, size)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the ground-truth class")
    ax.set_xticks(np.arange(len(cols)), cols, rotation=90)
    ax.set_yticks(np.arange(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(f"Confusion (row-normalised){_where(result)}")
    if len(cols) <= 25:
        for i, j in zip(*np.nonzero(norm >= 0.005)):
            ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    return _save(fig, path)


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A CAM (H×W, or K×H×W shown as its max over classes) as a jet heat map over the image, uint8 RGB."""
    from matplotlib import colormaps

    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim == 3:
        cam = cam.max(axis=0) if cam.shape[0] else np.zeros(cam.shape[1:], np.float32)
    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255
    if image is None:
        return heat.astype(np.uint8)
    if image.shape[:2] != cam.shape:
        raise ValueError(f"CAM {cam.shape} and image {image.shape[:2]} differ in size")
    return ((1 - alpha) * image.astype(np.float32) + alpha * heat).round().astype(np.uint8)


def _panel(x, image):
    """What to draw for one grid cell: RGB as is, an integer 2-D array as a VOC-coloured mask, a float
    map (H×W or K×H×W) as a CAM overlay, None as an empty cell."""
    if x is None:
        return None
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[2] == 3 and x.dtype == np.uint8:
        return x
    if x.ndim == 2 and np.issubdtype(x.dtype, np.integer):
        return colorize(x)
    return cam_overlay(image, x)


def example_grid(rows: Sequence[Sequence], path: str | Path, *, titles: Sequence[str] = GRID_TITLES,
                 row_labels: Sequence[str] | None = None) -> Path:
    """One row per example: (image, ground truth, CAM, refined CAM, pseudo mask). Masks are id arrays
    (drawn in VOC colours, 255 in the ignore colour), CAMs float maps (jet overlay on the row's image)."""
    if not rows:
        raise ValueError("example_grid needs at least one row")
    ncols = len(titles)
    h, w = np.asarray(rows[0][0]).shape[:2]
    cell = 2.6
    fig = _figure(cell * ncols, cell * len(rows) * h / max(w, 1) + 0.4)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, row in enumerate(rows):
        if len(row) != ncols:
            raise ValueError(f"example row {r} has {len(row)} panels, expected {ncols}")
        image = np.asarray(row[0]) if row[0] is not None else None
        for c, x in enumerate(row):
            ax = axes[r, c]
            ax.set_axis_off()
            panel = _panel(x, image)
            if panel is not None:
                ax.imshow(panel, interpolation="nearest")
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
        if row_labels is not None:
            axes[r, 0].text(-0.03, 0.5, row_labels[r], transform=axes[r, 0].transAxes, rotation=90,
                            ha="right", va="center", fontsize=8)
    return _save(fig, path)


def example_rows(dataset: "Dataset", cam_dir: str | Path, mask_dir: str | Path, *, n: int = 6,
                 ids: Sequence[str] | None = None,
                 image_loader: Callable[[Path], np.ndarray] | None = None) -> tuple[list[tuple], list[str]]:
    """Grid rows from files: the given ids, else the first `n` images with ground truth (then any).
    Returns (rows, ids) for `example_grid(rows, path, row_labels=ids)`."""
    from wsss.cam.store import cam_path, load_cam
    from wsss.data.images import load_rgb_array

    loader = image_loader or (lambda path: load_rgb_array(path, exif=dataset.exif))
    table = dataset.table
    if ids is None:
        order = table.assign(_has=table["mask"] != "").sort_values("_has", ascending=False, kind="stable")
        ids = order["id"].head(n).tolist()
    by_id = table.set_index("id")
    rows = []
    for image_id in ids:
        row = by_id.loc[image_id]
        image = loader(dataset.root / row["image"])
        gt = load_mask(dataset.root / row["mask"]) if row["mask"] else None
        record = load_cam(cam_path(cam_dir, image_id))
        pseudo_file = Path(mask_dir) / f"{image_id}.png"
        pseudo = load_mask(pseudo_file) if pseudo_file.exists() else None
        rows.append((image, gt, record.cam.astype(np.float32), record.refined.astype(np.float32), pseudo))
    return rows, list(ids)


def loss_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Per-epoch training loss and its terms (one line each) from a history of {"epoch", "loss", ...}."""
    fig = _figure(6, 3.5)
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    for name in [k for k in history[0] if k not in ("epoch", "lr")] if history else []:  # lr: not a loss
        ax.plot(epochs, [h.get(name) for h in history], label=name, linewidth=2 if name == "loss" else 1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (weighted terms)")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.legend(fontsize=8)
    return _save(fig, path)
