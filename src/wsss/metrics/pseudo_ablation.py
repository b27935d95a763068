"""The pseudo-mask ablation of stage `evaluate_masks`, from the settings (docs/method.md §7): CAM → + CAA →
+ CRF for each background set of the softmax (hand-written words, learned prompts, both) and the
background exponent α. The words' CAMs are the teacher's and the configured set's are `cams.out`; the
other sets are computed here, on the ablation split only, into a scratch folder that is not kept.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from wsss.masks.export import MaskParams, mask_params
from wsss.metrics.evaluate import AblationRow, ablation, ablation_markdown, default_ablation_rows
from wsss.settings import Settings

if TYPE_CHECKING:
    from wsss.data.manifest import Dataset

VARIANTS = ("words", "learned", "both")
TITLE = "# Pseudo-mask ablation\n\n"


def alpha_rows(alphas) -> list[AblationRow]:
    """CAM-only and CAA-refined labelling (argmax, no CRF) for each background exponent α."""
    return [AblationRow(f"{name} α={a:g}", MaskParams(source=source, alpha=a, crf=None))
            for source, name in (("cam", "CAM"), ("refined", "CAA")) for a in alphas]


def variant_cam_dirs(settings: Settings, ds: Dataset, scratch: Path) -> dict[str, str]:
    """The CAM folder of each background set (`text.background_prompts`): `words` is the teacher's, the
    configured set is `cams.out`, and the others are computed here for `ds` only, into `scratch`. A set
    needing learned prompts is left out when there are none."""
    from wsss.cam.runner import compute_shard
    from wsss.prompts.background import cam_engine, cam_key
    from wsss.prompts.store import prompts_file

    dirs = {"words": settings.prompts.teacher, settings.text.background_prompts: settings.cams.out}
    for variant in VARIANTS:
        if variant in dirs or not prompts_file(settings).is_file():
            continue
        s = replace(settings, text=replace(settings.text, background_prompts=variant),
                    cams=replace(settings.cams, out=str(scratch / variant)))
        compute_shard(ds, s.cams.out, lambda: cam_engine(s, ds.vocab), cam_key(s))
        dirs[variant] = s.cams.out
    return {v: dirs[v] for v in VARIANTS if v in dirs}


def variant_rows(dirs: dict[str, str], mp: MaskParams, configured: str, mask_dir: str) -> list[AblationRow]:
    """CAM → + CAA → + CRF for each background set; the configured set's CRF row reads the exported masks."""
    rows = []
    for variant, cam_dir in dirs.items():
        for step in default_ablation_rows(alpha=mp.alpha, crf=mp.crf, confidence=mp.confidence):
            exported = variant == configured and step.params == mp
            rows.append(AblationRow(f"{variant}: {step.name.lstrip('+ ')}", step.params, cam_dir,
                                    mask_dir if exported else None))
    return rows


def run_ablation(settings: Settings, ds: Dataset, split: str) -> tuple[dict, int]:
    """Every row scored on `split`: the background sets' rows first, then the α rows. Returns the table
    (`wsss.metrics.evaluate.ablation`) and how many of its rows are background-set rows."""
    cfg = settings.evaluate_masks
    with tempfile.TemporaryDirectory(prefix="wsss-ablation-") as scratch:
        dirs = variant_cam_dirs(settings, ds.split(split), Path(scratch))
        background_sets = variant_rows(dirs, mask_params(settings.masks), settings.text.background_prompts,
                                       settings.masks.out)
        table = ablation(ds, settings.cams.out, rows=background_sets + alpha_rows(cfg.alphas), split=split,
                         workers=cfg.workers or None)
    return table, len(background_sets)


def markdown(table: dict, n_sets: int, configured: str, vocab) -> str:
    """`ablation.md`: the configured set's steps, then all background sets, then the α rows."""
    rows = table["rows"]
    steps = [r for r in rows[:n_sets] if r["name"].startswith(f"{configured}: ")]
    return (TITLE + f"Background set `{configured}` (text.background_prompts), as exported by the masks stage.\n\n"
            + ablation_markdown(dict(table, rows=steps), vocab)
            + "\n## Background set of the softmax: hand-written words, learned prompts, both\n\n"
            + ablation_markdown(dict(table, rows=rows[:n_sets]), vocab)
            + "\n## Background exponent α (bg = (1 − max CAM)^α, argmax, no CRF)\n\n"
            + ablation_markdown(dict(table, rows=rows[n_sets:]), vocab))


def plot_data(table: dict | None) -> dict:
    """`ablation.json`: one flat record per row (a `dvc plots` bar chart of mIoU per setting)."""
    if table is None:
        return {"split": None, "images": 0, "rows": []}
    keys = ("miou", "miou_strict", "ignored_fraction")
    return {"split": table["split"], "images": table["images"],
            "rows": [{"setting": r["name"], **{k: r[k] for k in keys}} for r in table["rows"]]}
