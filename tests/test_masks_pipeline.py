"""Mask export (parallel, sharded, resumable), evaluation reports, plots and the ablation table on a tiny
synthetic dataset: flat-coloured objects on a grey, textured background, with hand-made CAMs — the raw
CAM blurry and shifted, the refined one blurry but centred — so each stage has something to fix."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter, shift

from wsss.cam.store import cam_path, save_cam
from wsss.data.manifest import make_table, read_dataset, write_dataset, Dataset
from wsss.data.vocab import Vocabulary
from wsss.errors import DataError
from wsss.settings import CrfSettings
from wsss.masks.export import MaskParams, export_masks
from wsss.data.palette import load_mask, save_palette_png
from wsss.metrics.evaluate import (AblationRow, ablation, ablation_markdown, default_ablation_rows, evaluate_masks,
                                   splits_with_gt, write_report)
from wsss.metrics.plots import example_grid, example_rows

H, W = 30, 40
BOXES = {1: (slice(6, 24), slice(4, 18), (200, 30, 30)), 2: (slice(4, 26), slice(23, 37), (30, 40, 210))}
SCENES = {"a": (1,), "b": (2,), "c": (1, 2)}


def _soft(indicator, sigma, dy=0, dx=0, leak=0.0):
    m = gaussian_filter(shift(indicator.astype(np.float32), (dy, dx), order=0), sigma) + leak
    return np.clip(m / m.max(), 0, 1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    rows = []
    for image_id, labels in SCENES.items():
        image = np.clip(rng.normal(120, 4, (H, W, 3)), 0, 255).astype(np.uint8)
        gt = np.zeros((H, W), np.uint8)
        cams, refined = [], []
        for k in labels:
            ys, xs, colour = BOXES[k]
            image[ys, xs] = colour
            gt[ys, xs] = k
            indicator = gt == k
            cams.append(_soft(indicator, 4, dy=3, dx=4, leak=0.15))
            refined.append(_soft(indicator, 2.5))
        gt[ys.start, xs] = 255  # a labelled-ignore border line
        Image.fromarray(image).save(root / f"{image_id}.jpg", quality=98)
        save_palette_png(root / f"{image_id}_gt.png", gt)
        save_cam(cam_path(root / "cams", image_id), labels, np.stack(cams), np.stack(refined))
        rows.append({"id": image_id, "image": f"{image_id}.jpg", "width": W, "height": H, "split": "train",
                     "labels": labels, "mask": f"{image_id}_gt.png"})
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(root / "d.jpg")  # unlabelled, no ground truth
    save_cam(cam_path(root / "cams", "d"), [], np.zeros((0, H, W)), np.zeros((0, H, W)))
    rows.append({"id": "d", "image": "d.jpg", "width": W, "height": H, "split": "test", "labels": (), "mask": ""})
    write_dataset(Dataset(make_table(rows), Vocabulary(("cat", "dog")), root, "toy"), root / "prepared")
    return read_dataset(root / "prepared")


@pytest.fixture(scope="module")
def masks_dir(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("masks")
    stats = export_masks(dataset, dataset.root / "cams", out, MaskParams(), workers=1, progress=False)
    assert stats["written"] == 4 and stats["skipped"] == 0
    return out


def _bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_export_writes_palette_masks(dataset, masks_dir):
    assert sorted(p.name for p in masks_dir.iterdir()) == ["a.png", "b.png", "c.png", "d.png"]
    assert (load_mask(masks_dir / "d.png") == 0).all()  # no labels: all background
    c = load_mask(masks_dir / "c.png")
    assert set(np.unique(c)) <= {0, 1, 2, 255} and {1, 2} <= set(np.unique(c))
    with Image.open(masks_dir / "c.png") as im:
        assert im.mode == "P"


def test_export_is_independent_of_workers_and_shards(dataset, masks_dir, tmp_path):
    parallel = tmp_path / "parallel"
    stats = export_masks(dataset, dataset.root / "cams", parallel, MaskParams(), workers=2, progress=False)
    assert stats["workers"] == 2 and stats["written"] == 4
    sharded = tmp_path / "sharded"
    written = [export_masks(dataset, dataset.root / "cams", sharded, MaskParams(), workers=1, shard=(i, 3),
                            progress=False)["written"] for i in range(3)]
    assert written == [2, 1, 1]
    assert _bytes(parallel) == _bytes(masks_dir) == _bytes(sharded)


def test_export_resumes_and_replaces_only_stale_masks(dataset, tmp_path):
    out = tmp_path / "m"
    first = export_masks(dataset, dataset.root / "cams", out, MaskParams(crf=None), workers=1, progress=False)
    assert (first["written"], first["skipped"]) == (4, 0)
    (out / "b.png").unlink()  # an interrupted run had not finished b
    (out / "c.png").write_bytes(b"not a mask")  # nor this one (no key)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    again = export_masks(dataset, dataset.root / "cams", out, MaskParams(crf=None), progress=False)
    assert (again["written"], again["skipped"]) == (2, 2)
    assert all((out / n).stat().st_mtime_ns == t for n, t in stamp.items() if n not in ("b.png", "c.png"))
    other = export_masks(dataset, dataset.root / "cams", out, MaskParams(crf=None, alpha=2.0), workers=1,
                         progress=False)  # other settings: every mask is stale, replaced one by one
    assert (other["written"], other["skipped"]) == (4, 0)
    assert not list(out.glob(".*"))  # no temp files


def test_export_reports_size_mismatch(dataset, tmp_path):
    cams = tmp_path / "cams"
    for image_id in SCENES:
        save_cam(cam_path(cams, image_id), [1], np.zeros((1, H, W + 1)), np.zeros((1, H, W + 1)))
    with pytest.raises(DataError, match="a.npz.*image"):
        export_masks(dataset.split("train"), cams, tmp_path / "m", workers=1, progress=False)
    with pytest.raises(DataError, match="CAM file not found"):
        export_masks(dataset, tmp_path / "nowhere", tmp_path / "m2", workers=2, progress=False)


def test_evaluate_and_report(dataset, masks_dir, tmp_path):
    assert splits_with_gt(dataset) == ["train"]
    result = evaluate_masks(dataset, masks_dir, split="train", progress=False)
    assert result["images"] == 3 and result["classes"] == ["background", "cat", "dog"]
    assert result["miou"] > 0.9
    assert 0 <= result["ignored_fraction"] < 0.2
    assert result["miou_strict"] <= result["miou"]
    assert set(result["per_class"]["cat"]) == {"iou", "precision", "recall", "iou_strict"}
    assert np.asarray(result["confusion"]).shape == (3, 3)
    json.dumps(result, allow_nan=False)  # strict JSON

    paths = write_report(result, dataset.vocab, tmp_path / "reports")
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["miou"] == result["miou"] and set(metrics["iou"]) == {"background", "cat", "dog"}
    table = pd.read_csv(paths["per_class"])
    assert table["class"].tolist() == ["background", "cat", "dog"]
    assert table["iou"].tolist() == pytest.approx([result["per_class"][c]["iou"] for c in table["class"]], abs=1e-6)
    assert json.loads(paths["confusion"].read_text())["matrix"] == result["confusion"]
    for key in ("per_class_iou_png", "confusion_png"):
        with Image.open(paths[key]) as im:
            im.load()
            assert im.format == "PNG" and im.size[0] > 100


def test_evaluate_errors(dataset, masks_dir, tmp_path):
    with pytest.raises(DataError, match="no ground-truth"):
        evaluate_masks(dataset, masks_dir, split="test", progress=False)
    with pytest.raises(DataError, match="a.png: mask file not found"):
        evaluate_masks(dataset, tmp_path, split="train", progress=False)
    bad = tmp_path / "bad"
    for image_id in SCENES:
        save_palette_png(bad / f"{image_id}.png", np.full((H, W), 9, np.uint8))
    with pytest.raises(DataError, match="prediction holds ids"):
        evaluate_masks(dataset, bad, progress=False)


def test_ablation_rows_improve(dataset):
    table = ablation(dataset, dataset.root / "cams", rows=default_ablation_rows(), split="train",
                     workers=1, progress=False)
    assert [r["name"] for r in table["rows"]] == ["CAM", "+ CAA", "+ CRF"]
    mious = [r["miou"] for r in table["rows"]]
    assert mious[0] < mious[1] < mious[2], mious
    assert table["rows"][0]["ignored_fraction"] == 0  # argmax rows keep every pixel
    md = ablation_markdown(table, dataset.vocab)
    assert md.splitlines()[0] == "| Setting | mIoU | mIoU (strict) | ignored | background | cat | dog |"
    assert "| + CRF |" in md and f"{100 * mious[2]:.1f}" in md
    assert "| + CRF |" in ablation_markdown(table, transpose=True).splitlines()[0]


def test_ablation_is_the_same_in_parallel_and_with_tuple_rows(dataset):
    rows = [("CAM", MaskParams(source="cam", crf=None)),
            AblationRow("+ CRF", MaskParams(crf=CrfSettings(iterations=3)), dataset.root / "cams")]
    one = ablation(dataset, dataset.root / "cams", rows=rows, workers=1, progress=False)
    two = ablation(dataset, dataset.root / "cams", rows=rows, workers=2, progress=False)
    assert one == two and one["split"] is None and one["images"] == 3


def test_ablation_row_of_exported_masks_reads_them(dataset, masks_dir):
    """The `+ CRF` row with the masks stage's own params scores the exported PNGs (no second CRF pass):
    the same numbers as recomputing them."""
    computed = ablation(dataset, dataset.root / "cams", rows=[AblationRow("+ CRF", MaskParams())], workers=1,
                        progress=False)
    read = ablation(dataset, dataset.root / "cams", rows=[AblationRow("+ CRF", MaskParams(), mask_dir=masks_dir)],
                    workers=1, progress=False)
    assert read == computed
    with pytest.raises(DataError, match="none/a.png"):  # a mask the stage has not written: named
        ablation(dataset, dataset.root / "cams", progress=False, workers=1,
                 rows=[AblationRow("+ CRF", MaskParams(), mask_dir=dataset.root / "none")])


def test_example_grid(dataset, masks_dir, tmp_path):
    rows, ids = example_rows(dataset, dataset.root / "cams", masks_dir, n=2)
    assert ids == ["a", "b"] and len(rows[0]) == 5
    path = example_grid(rows, tmp_path / "examples.png", row_labels=ids)
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and im.size[0] > im.size[1]
    rows, _ = example_rows(dataset, dataset.root / "cams", tmp_path / "no_masks", ids=["d"])
    assert rows[0][1] is None and rows[0][4] is None
    example_grid(rows, tmp_path / "empty_cells.png")
    with pytest.raises(ValueError, match="panels"):
        example_grid([rows[0][:3]], tmp_path / "x.png")
