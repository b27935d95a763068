"""Validate a dataset drop with Great Expectations: image table → suite → checkpoint → Data Docs,
plus readable verdict lines and `summary.json`. Reads the dataset only; writes only under `out_dir`."""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from wsss.data.images import DEFAULT_MAX_PIXELS
from wsss.data.manifest import Dataset
from wsss.errors import ConfigError
from wsss.io import atomic_dir, atomic_path, write_json
from wsss.validation.suite import Check, build_suite, checks
from wsss.validation.table import DEFAULT_MIN_SIDE, image_table

MAX_NAMED = 10  # offending files named per verdict line
DOCS_INDEX = Path("uncommitted/data_docs/local_site/index.html")


@dataclass
class ValidationResult:
    success: bool
    verdicts: list[str]  # one line per failing check
    summary: dict  # also in out_dir/summary.json
    table: pd.DataFrame = field(repr=False)  # the per-image metadata table (also out_dir/images.csv)

    @property
    def warnings(self) -> list[str]:  # one line per converted colour mode (grayscale, CMYK, alpha, ...)
        return self.summary["warnings"]

    @property
    def headline(self) -> str:
        s = self.summary
        state = "PASS" if self.success else f"FAIL ({len(s['failed_checks'])} of {s['checks_run']} checks)"
        return f"dataset {s['dataset']}: {state}, {s['images']} images; report {s['data_docs']}"


def report_lines(summary: dict) -> list[str]:
    """What a person reads on the console (CLI and flow alike): one FAIL line per failing expectation,
    one WARN line per converted colour mode, then the verdict with the report's location."""
    n = len(summary["warnings"])
    last = (f"{'PASSED' if summary['success'] else 'FAILED'}: {summary['images']} images, "
            f"{len(summary['verdicts'])} failing expectation(s), {n} warning{'s' * (n != 1)}; "
            f"report: {summary['data_docs']}")
    return [*summary["verdicts"], *summary["warnings"], last]


DROPS_REPORT_ROOT = Path("reports/drops")  # never the prepare stage's output (reports/validation)


def default_report_dir(path: str | Path) -> Path:
    """`reports/drops/<drop folder name>/`, relative to the current directory."""
    return DROPS_REPORT_ROOT / Path(path).resolve().name


def validate_drop(path: str | Path, *, format: str = "auto", classes=None, labels: str | Path | None = None,
                  splits=None, report_dir: str | Path | None = None, max_pixels: int | None = None,
                  min_side: int | None = None, known_content=None, workers: int = 4) -> ValidationResult:
    """Read the dataset drop at `path` and validate it: the one entry point of `wsss validate` and the
    `validate-drop` flow. `classes`/`labels` files: relative paths are looked up in the current
    directory, then in the drop (`find_user_file`). The report goes to `report_dir`, by default
    `default_report_dir(path)`; never into the drop. `max_pixels`/`min_side` default to
    `ValidationSettings`."""
    from wsss.data.readers import read_dataset_source
    from wsss.settings import ValidationSettings

    limits = ValidationSettings()
    ds = read_dataset_source(path, format=format, classes=classes, splits=splits, labels=labels)
    return validate_dataset(ds, default_report_dir(path) if report_dir is None else report_dir,
                            max_pixels=limits.max_pixels if max_pixels is None else max_pixels,
                            min_side=limits.min_side if min_side is None else min_side,
                            known_content=known_content, workers=workers)


def _quiet_gx() -> None:
    """No analytics, no 'Calculating Metrics' bars, no INFO chatter."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.ERROR)


def _run_checkpoint(context_dir: Path, table: pd.DataFrame, all_checks: list[Check], name: str):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="file", context_root_dir=str(context_dir))
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    ctx.variables.save()
    batch = (ctx.data_sources.add_or_update_pandas("drop").add_dataframe_asset("images")
             .add_batch_definition_whole_dataframe("all_images"))
    suite = ctx.suites.add_or_update(build_suite("dataset_drop", all_checks))
    vd = ctx.validation_definitions.add_or_update(gx.ValidationDefinition(name=f"validate_{name}", data=batch,
                                                                          suite=suite))
    cp = ctx.checkpoints.add_or_update(gx.Checkpoint(
        name="dataset_drop", validation_definitions=[vd],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["row", "id"]}))
    result = cp.run(batch_parameters={"dataframe": table})
    return [er for vr in result.run_results.values() for er in vr.results]


def _verdict(er, by_key: dict[str, Check], table: pd.DataFrame) -> str:
    meta = er.expectation_config.meta or {}
    check = by_key.get(meta.get("check"))
    title = meta.get("title", er.expectation_config.type)
    if er.exception_info and er.exception_info.get("raised_exception"):
        return f"FAIL {title}: check raised {er.exception_info.get('exception_message')}"
    rows = [int(d["row"]) for d in (er.result or {}).get("unexpected_index_list") or []]
    if check is None or not rows:
        observed = (er.result or {}).get("observed_value")
        return f"FAIL {title}" + (f": observed {observed}" if observed is not None else "")
    named = []
    for i in rows[:MAX_NAMED]:
        r = table.loc[i]
        detail = check.detail(r, table)
        named.append(f"{r['id']} ({detail})" if detail else str(r["id"]))
    more = f", ... and {len(rows) - MAX_NAMED} more" if len(rows) > MAX_NAMED else ""
    return f"FAIL {title}: {len(rows)} image{'s' * (len(rows) != 1)} — {', '.join(named)}{more}"


def _class_balance(ds: Dataset, reference: Dataset | None) -> dict:
    """Fraction of images carrying each class, in the drop and (if given) in the reference dataset."""
    def freq(d: Dataset) -> dict[str, float]:
        c = Counter(x for ls in d.table["labels"] for x in ls)
        n = max(len(d.table), 1)
        return {d.vocab.name(k): round(c.get(k, 0) / n, 4) for k in range(1, d.vocab.num_classes + 1)}

    out = {"drop": freq(ds)}
    if reference is not None:
        out["reference"] = freq(reference)
        common = set(out["drop"]) & set(out["reference"])
        out["max_abs_shift"] = max((abs(out["drop"][k] - out["reference"][k]) for k in common), default=0.0)
        out["classes_not_in_reference"] = sorted(set(out["drop"]) - set(out["reference"]))
    return out


def validate_dataset(ds: Dataset, out_dir: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                     min_side: int = DEFAULT_MIN_SIDE, context_root: str | Path | None = None,
                     reference: Dataset | None = None, known_content=None, workers: int = 4) -> ValidationResult:
    """Validate a dataset drop; write `out_dir/summary.json`, `out_dir/images.csv` and GX Data Docs.

    Data Docs: `<context_root>/uncommitted/data_docs/local_site/index.html`, where `context_root` (a GX
    file-context directory) defaults to `out_dir/gx`, rebuilt from scratch and swapped in atomically;
    a given `context_root` is kept and accumulates validation history. Non-RGB modes (L, P, CMYK, RGBA,
    ...) that convert safely are reported in the summary (`modes`, `warnings`), not failed.
    `reference` (the current dataset) adds class frequencies to the summary for comparison;
    `known_content` (SHA-256 digests of the images a dataset already has) fails drop images that repeat
    one; `workers` threads decode and hash images."""
    out_dir = Path(out_dir).resolve()
    root = Path(ds.root).resolve()
    if out_dir == root or root in out_dir.parents:
        raise ConfigError(f"{out_dir}: validation output must not be inside the dataset root {root}")
    _quiet_gx()
    all_checks = checks(min_side)
    by_key = {c.key: c for c in all_checks}
    table = image_table(ds, max_pixels=max_pixels, workers=workers)
    table["new_content"] = ~table["sha256"].isin(set(known_content or ()))
    with atomic_path(out_dir / "images.csv") as tmp:
        table.to_csv(tmp, index=False)

    if context_root is None:
        with atomic_dir(out_dir / "gx") as tmp:
            results = _run_checkpoint(tmp, table, all_checks, ds.name)
        context_dir = out_dir / "gx"
        context_dir.chmod(0o755)  # the temporary directory was created private (0700)
    else:
        context_dir = Path(context_root).resolve()
        results = _run_checkpoint(context_dir, table, all_checks, ds.name)

    failed = [er for er in results if not er.success]
    verdicts = [_verdict(er, by_key, table) for er in failed]
    decoded = table[table["decodes"].map(lambda v: v is True).to_numpy(dtype=bool)]
    non_rgb = decoded[decoded["mode"] != "RGB"]
    warnings = [f"WARN image mode {m}: {n} image{'s' * (n != 1)} converted to RGB (e.g. "
                f"{', '.join(non_rgb.loc[non_rgb['mode'] == m, 'id'].head(5))})"
                for m, n in non_rgb["mode"].value_counts().sort_index().items()]
    summary = {
        "dataset": ds.name,
        "root": str(root),
        "images": int(len(table)),
        "success": not failed,
        "checks_run": len(results),
        "failed_checks": [(er.expectation_config.meta or {}).get("check", er.expectation_config.type)
                          for er in failed],
        "verdicts": verdicts,
        "warnings": warnings,
        "checks": {(er.expectation_config.meta or {}).get("check", er.expectation_config.type):
                   {"title": (er.expectation_config.meta or {}).get("title", ""), "success": bool(er.success),
                    "unexpected": int((er.result or {}).get("unexpected_count") or 0)} for er in results},
        "modes": {str(k): int(v) for k, v in decoded["mode"].value_counts().sort_index().items()},
        "non_rgb": [{"id": str(i), "mode": str(m)} for i, m in zip(non_rgb["id"], non_rgb["mode"])][:100],
        "limits": {"max_pixels": max_pixels, "min_side": min_side},
        "class_balance": _class_balance(ds, reference),
        "data_docs": str(context_dir / DOCS_INDEX),
        "table": str(out_dir / "images.csv"),
    }
    write_json(out_dir / "summary.json", summary)
    return ValidationResult(not failed, verdicts, summary, table)
