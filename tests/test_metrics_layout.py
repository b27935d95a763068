"""The metrics layout: `dvc metrics show` lists a few readable headline keys; everything else (every
scalar, the ablation) lives in the report folders."""

from __future__ import annotations

from dataclasses import replace

import pytest

from wsss.errors import ConfigError
from wsss.metrics import pseudo_ablation
from wsss.metrics.headline import pseudo_headline, seg_headline, seg_summary
from wsss.metrics.pseudo_report import report_dir
from wsss.settings import Settings

SCORES = {"miou": 0.5, "miou_strict": 0.4, "pixel_accuracy": 0.9, "ignored_fraction": 0.1, "images": 3}


def test_headline_files_hold_only_the_miou_per_split_and_scale():
    assert pseudo_headline({"train": SCORES, "val": dict(SCORES, miou=0.25)}) == {
        "pseudo": {"train": {"miou": 0.5}, "val": {"miou": 0.25}}}
    assert seg_headline("val", SCORES, dict(SCORES, miou=0.75)) == {"seg": {"val": {"miou": 0.5, "miou_ms": 0.75}}}


def test_seg_summary_is_one_line_and_survives_missing_numbers():
    assert seg_summary({"seg": {"val": {"miou": 0.5, "miou_ms": 0.75}}}) == "val mIoU 0.5000, multi-scale 0.7500"
    assert seg_summary({"seg": {"val": {"miou": None, "miou_ms": 0.75}}}) == "val mIoU n/a, multi-scale 0.7500"
    assert seg_summary({}) == "n/a"


def _table() -> dict:
    rows = [{"name": name, "miou": m, "miou_strict": m / 2, "pixel_accuracy": 0.9, "ignored_fraction": 0.1,
             "iou": {"background": m, "circle": m}}
            for name, m in (("words: CAM", 0.2), ("words: CRF", 0.3), ("learned: CAM", 0.4), ("CAM α=2", 0.1))]
    return {"split": "train", "images": 4, "classes": ["background", "circle"], "rows": rows}


def test_ablation_plot_data_is_flat_records_for_dvc_plots():
    data = pseudo_ablation.plot_data(_table())
    assert data["split"] == "train" and data["images"] == 4
    assert data["rows"][0] == {"setting": "words: CAM", "miou": 0.2, "miou_strict": 0.1, "ignored_fraction": 0.1}
    assert [r["setting"] for r in data["rows"]] == ["words: CAM", "words: CRF", "learned: CAM", "CAM α=2"]
    assert pseudo_ablation.plot_data(None) == {"split": None, "images": 0, "rows": []}


def test_ablation_markdown_has_the_configured_set_then_all_sets_then_alpha():
    md = pseudo_ablation.markdown(_table(), 3, "words", None)
    first, sets, alpha = md.split("\n## ")
    assert first.startswith("# Pseudo-mask ablation") and "| words: CRF |" in first and "learned" not in first
    assert "| learned: CAM |" in sets and "α=2" not in sets
    assert alpha.startswith("Background exponent α") and "| CAM α=2 |" in alpha


def test_report_folder_may_not_hold_another_stages_output():
    settings = Settings()
    assert report_dir(settings).as_posix() == settings.evaluate_masks.out
    for other in ("reports/cams", settings.masks.out, settings.validation.report_dir):
        bad = replace(settings, evaluate_masks=replace(settings.evaluate_masks, out=other))
        with pytest.raises(ConfigError, match="another stage's output"):
            report_dir(bad)
