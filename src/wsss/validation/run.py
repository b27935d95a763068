"""Validate a dataset drop with Great Expectations: image table → suite → checkpoint → Data Docs,
plus readable verdict lines and `summary.json`. Reads the dataset only; writes only under `out_dir`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from wsss.data.images import DEFAULT_MAX_PIXELS
from wsss.data.manifest import Dataset
from wsss.errors import ConfigError
from wsss.io import atomic_dir, atomic_path, write_json
from wsss.settings import Settings, ValidationSettings
from wsss.validation.content import near_duplicates
from wsss.validation.store import ContentStore
from wsss.validation.suite import WARNING, Check, build_suite, checks
from wsss.validation.table import DEFAULT_MIN_SIDE, image_table

MAX_NAMED = 10  # offending files named per verdict line
DOCS_INDEX = Path("uncommitted/data_docs/local_site/index.html")


@dataclass
class ValidationResult:
    success: bool
    verdicts: list[str]  # one line per failing check
    summary: dict  # also in out_dir/summary.json
    table: pd.DataFrame = field(repr=False)  # the per-image metadata table (also out_dir/images.csv)
    probs: np.ndarray | None = field(default=None, repr=False)  # CLIP's [N, C] per-class probabilities (audit)
    clip_key: str = ""  # what made `probs` (wsss.clip.scores.scorer_key)

    @property
    def warnings(self) -> list[str]:  # one line per warning kind (converted modes, near-duplicates, audit, drift)
        return self.summary["warnings"]

    def store(self, classes) -> ContentStore:
        """The content store of this (whole) dataset: what a later drop is compared with."""
        from wsss.validation.store import store_from_table

        return store_from_table(self.table, classes, self.probs, self.clip_key)

    @property
    def headline(self) -> str:
        s = self.summary
        state = "PASS" if self.success else f"FAIL ({len(s['failed_checks'])} of {s['checks_run']} checks)"
        return f"dataset {s['dataset']}: {state}, {s['images']} images; report {s['data_docs']}"


def report_lines(summary: dict) -> list[str]:
    """What a person reads on the console (CLI and flow alike): one FAIL line per failing expectation,
    one WARN line per warning (converted colour modes, near-duplicates, label audit, drift, ...), then the
    verdict with the report's location."""
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
                  min_side: int | None = None, known_content=None, workers: int | None = None,
                  settings: Settings | None = None, reference: ContentStore | None = None,
                  progress: bool = True) -> ValidationResult:
    """Read the dataset drop at `path` and validate it: the one entry point of `wsss validate`, the
    `validate-drop` flow and the ingest. `classes`/`labels` files: relative paths are looked up in the
    current directory, then in the drop (`find_user_file`). The report goes to `report_dir`, by default
    `default_report_dir(path)`; never into the drop. `settings` (default: `Settings()`) gives the
    `validation` rules, `data.exif` and the CLIP of the label audit; `max_pixels`/`min_side` override its
    limits. `reference`: the content store of the dataset the drop joins (near-duplicates, audit, drift)."""
    from dataclasses import replace

    from wsss.data.readers import read_dataset_source

    settings = settings or Settings()
    rules = replace(settings.validation, **{k: v for k, v in (("max_pixels", max_pixels), ("min_side", min_side))
                                            if v is not None})
    ds = read_dataset_source(path, format=format, classes=classes, splits=splits, labels=labels,
                             exif=settings.data.exif)
    return validate_dataset(ds, default_report_dir(path) if report_dir is None else report_dir,
                            max_pixels=rules.max_pixels, min_side=rules.min_side, known_content=known_content,
                            workers=workers or rules.workers, rules=rules, settings=settings, reference=reference,
                            mode="drop", progress=progress)


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


def _finding_line(er, by_key: dict[str, Check], table: pd.DataFrame) -> str:
    """One line for a failed expectation: FAIL (critical) or WARN (warning), naming the offending images
    (row checks) or the numbers (table-level checks such as drift)."""
    meta = er.expectation_config.meta or {}
    check = by_key.get(meta.get("check"))
    word = "WARN" if check is not None and check.severity == WARNING else "FAIL"
    title = meta.get("title", er.expectation_config.type)
    if er.exception_info and er.exception_info.get("raised_exception"):
        return f"{word} {title}: check raised {er.exception_info.get('exception_message')}"
    observed = (er.result or {}).get("observed_value")
    if check is not None and check.observed is not None and observed is not None:
        return f"{word} {check.observed(observed)}"
    rows = [int(d["row"]) for d in (er.result or {}).get("unexpected_index_list") or []]
    if check is None or not rows:
        return f"{word} {title}" + (f": observed {observed}" if observed is not None else "")
    named = []
    for i in rows[:MAX_NAMED]:
        r = table.loc[i]
        detail = check.detail(r, table)
        named.append(f"{r['id']} ({detail})" if detail else str(r["id"]))
    more = f", ... and {len(rows) - MAX_NAMED} more" if len(rows) > MAX_NAMED else ""
    return f"{word} {title}: {len(rows)} image{'s' * (len(rows) != 1)} — {', '.join(named)}{more}"


def _class_balance(table: pd.DataFrame, names, reference: ContentStore | None) -> dict:
    """Fraction of images carrying each class, in the drop and (if given) in the reference dataset."""
    n = max(len(table), 1)
    ids = table["labels"].astype(str).map(str.split)
    out = {"drop": {name: round(sum(str(k) in ls for ls in ids) / n, 4) for k, name in enumerate(names, 1)}}
    if reference is not None and len(reference) and tuple(reference.classes) == tuple(names):
        share = reference.labels.mean(axis=0)
        out["reference"] = {name: round(float(share[k]), 4) for k, name in enumerate(names)}
        out["max_abs_shift"] = round(max(abs(out["drop"][k] - out["reference"][k]) for k in names), 4)
    return out


def _content_columns(table: pd.DataFrame, rules: ValidationSettings, exif: str) -> None:
    """`not_blank` (entropy ≥ min_entropy) and `exif_as_read` (False: an orientation tag the `ignore`
    policy leaves unapplied; None where a mask size failure already explains it)."""
    entropy = table["entropy"]
    table["not_blank"] = pd.Series([None if pd.isna(e) else bool(e >= rules.min_entropy) for e in entropy],
                                   dtype=object)
    flags = []
    for o, mask_ok in zip(table["exif_orientation"], table["mask_size_matches"]):
        if pd.isna(o) or int(o) == 1 or mask_ok is False:
            flags.append(None)
        else:
            flags.append(exif == "apply")
    table["exif_as_read"] = pd.Series(flags, dtype=object)


def _audit(ds: Dataset, table: pd.DataFrame, settings: Settings, rules: ValidationSettings,
           reference: ContentStore | None, reuse: ContentStore | None, progress: bool
           ) -> tuple[dict, np.ndarray | None, str]:
    """Score the table's usable images with the configured CLIP (reusing the reference's scores of the same
    images and CLIP), audit them together with the reference's scored images, and set `label_audit_ok` /
    `label_findings`. Returns (the summary's `label_audit`, probabilities [N, C] or None, their key)."""
    from wsss.validation.audit import audit_labels, multi_hot

    names = list(ds.vocab.names)
    c = len(names)
    table["label_audit_ok"] = pd.Series([None] * len(table), dtype=object)
    table["label_findings"] = ""
    usable = ((table["rgb_convertible"].map(lambda v: v is True)) & table["labels_in_vocab"].astype(bool)
              & (table["num_labels"] > 0)).to_numpy(dtype=bool)
    ref_ok = reference is not None and tuple(reference.classes) == tuple(names) and reference.probs is not None
    n_ref = len(reference) if ref_ok else 0
    summary = {"policy": rules.label_audit, "images": int(usable.sum()), "flagged": [], "images_flagged": 0}
    if usable.sum() + n_ref < rules.audit_min_images:
        summary["skipped"] = (f"{int(usable.sum())} images{f' + {n_ref} of the dataset' if n_ref else ''}, fewer than "
                              f"validation.audit_min_images ({rules.audit_min_images}) to learn per-class thresholds")
        return summary, None, ""
    from wsss.clip.scores import ClassScorer, score_images, scorer_key

    key = scorer_key(settings.clip, settings.text, names)
    known = {}
    for store in (reuse, reference):
        if store is not None and tuple(store.classes) == tuple(names):
            known.update(store.probs_by_sha(key))
    ref_ok = ref_ok and reference.clip_key == key  # scores of another CLIP or texts lend no statistics
    n_ref = len(reference) if ref_ok else 0
    probs = np.full((len(table), c), np.nan, np.float32)
    rows = np.flatnonzero(usable)
    todo = [i for i in rows if str(table.at[i, "sha256"]) not in known]
    for i in rows:
        if str(table.at[i, "sha256"]) in known:
            probs[i] = known[str(table.at[i, "sha256"])]
    if todo:
        scorer = ClassScorer(settings.clip, settings.text, names)
        images = (ds.load_rgb(ds.table.iloc[i]) for i in todo)
        probs[todo] = score_images(scorer, images, len(todo), progress=progress)
    labels = multi_hot([tuple(int(x) for x in str(s).split()) for s in table.loc[rows, "labels"]], c)
    all_labels, all_probs = labels, probs[rows]
    if ref_ok and n_ref:
        scored = np.isfinite(reference.probs.astype(np.float32)).all(axis=1)  # images it could not score: none
        all_labels = np.concatenate([labels, reference.labels[scored].astype(np.uint8)])
        all_probs = np.concatenate([all_probs, reference.probs[scored].astype(np.float32)])
    result = audit_labels(all_labels, all_probs, rules.audit_min_images)
    flagged = {}
    for f in result.findings:
        if f.row < len(rows):  # the reference's rows lend statistics; only this set's are reported
            flagged.setdefault(int(rows[f.row]), []).append(f)
    table.loc[rows, "label_audit_ok"] = [i not in flagged for i in rows]
    for i, fs in flagged.items():
        table.at[i, "label_findings"] = "; ".join(f.text(names) for f in fs)
    summary.update(
        audited_classes=[names[k - 1] for k in result.audited_classes], skipped=result.skipped,
        reference_images=n_ref, images_flagged=len(flagged), share_flagged=round(len(flagged) / max(len(rows), 1), 4),
        flagged=[{"id": str(table.at[i, "id"]), "label": names[f.label - 1], "kind": f.kind,
                  "score": round(f.score, 4), "suggestion": names[f.suggestion - 1] if f.suggestion else None}
                 for i, fs in sorted(flagged.items()) for f in fs])
    return summary, probs, key


def validate_dataset(ds: Dataset, out_dir: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                     min_side: int = DEFAULT_MIN_SIDE, context_root: str | Path | None = None,
                     reference: ContentStore | None = None, known_content=None, workers: int = 4,
                     rules: ValidationSettings | None = None, settings: Settings | None = None,
                     mode: str = "drop", reuse_scores: ContentStore | None = None,
                     progress: bool = True) -> ValidationResult:
    """Validate a dataset drop; write `out_dir/summary.json`, `out_dir/images.csv` and GX Data Docs.

    Data Docs: `<context_root>/uncommitted/data_docs/local_site/index.html`, where `context_root` (a GX
    file-context directory) defaults to `out_dir/gx`, rebuilt from scratch and swapped in atomically;
    a given `context_root` is kept and accumulates validation history. Non-RGB modes (L, P, CMYK, RGBA,
    ...) that convert safely are reported in the summary (`modes`, `warnings`), not failed.
    `rules` (default: `settings.validation`, else `ValidationSettings()`) set the content checks' thresholds
    and policies (`max_pixels`/`min_side` stay the arguments'); `settings` give the label audit's CLIP and texts (None: no audit). `reference` (the content
    store of the dataset a drop joins) adds near-duplicates against it, its scores to the audit and the
    drift checks; `reuse_scores` (a store, e.g. the previous `prepare`'s) lends CLIP scores of the same
    images made by the same CLIP; `known_content` (SHA-256 digests of the images a dataset already has) fails drop images
    that repeat one; `mode` "drop" refuses near-copies across a held-out split (a leak), "dataset" (a
    whole dataset in `prepare`) reports them; `workers` threads decode and hash images."""
    out_dir = Path(out_dir).resolve()
    root = Path(ds.root).resolve()
    if out_dir == root or root in out_dir.parents:
        raise ConfigError(f"{out_dir}: validation output must not be inside the dataset root {root}")
    if mode not in ("drop", "dataset"):
        raise ValueError(f"mode must be drop or dataset, got {mode!r}")
    rules = rules or (settings.validation if settings is not None else ValidationSettings())
    _quiet_gx()
    table = image_table(ds, max_pixels=max_pixels, workers=workers)
    table["new_content"] = ~table["sha256"].isin(set(known_content or ()))
    _content_columns(table, rules, ds.exif)
    usable_ref = reference is not None and tuple(reference.classes) == tuple(ds.vocab.names)
    dups = near_duplicates(table, rules.near_duplicate, reference.reference if reference is not None else None,
                           leak_is_fatal=mode == "drop")
    table[list(dups.columns)] = dups
    audit, probs, clip_key = {"policy": "off"}, None, ""
    if rules.label_audit != "off" and settings is not None:
        audit, probs, clip_key = _audit(ds, table, settings, rules, reference if usable_ref else None,
                                        reuse_scores, progress)
    drift = []
    if mode == "drop" and usable_ref and len(reference):
        from wsss.validation.drift import drift_checks

        drift = drift_checks(table, ds.vocab.names, reference.labels, reference.sizes, rules.drift_share,
                             rules.drift_size)
    all_checks = checks(min_side, min_entropy=rules.min_entropy, blank=rules.blank,
                        audit=rules.label_audit if "flagged" in audit else "off",
                        audit_max_share=rules.audit_max_share, drift=drift)
    by_key = {c.key: c for c in all_checks}
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

    def severity(er) -> str:
        check = by_key.get((er.expectation_config.meta or {}).get("check"))
        return check.severity if check is not None else "critical"

    failed = [er for er in results if not er.success and severity(er) != WARNING]
    warned = [er for er in results if not er.success and severity(er) == WARNING]
    verdicts = [_finding_line(er, by_key, table) for er in failed]
    decoded = table[table["decodes"].map(lambda v: v is True).to_numpy(dtype=bool)]
    non_rgb = decoded[decoded["mode"] != "RGB"]
    warnings = [f"WARN image mode {m}: {n} image{'s' * (n != 1)} converted to RGB (e.g. "
                f"{', '.join(non_rgb.loc[non_rgb['mode'] == m, 'id'].head(5))})"
                for m, n in non_rgb["mode"].value_counts().sort_index().items()]
    warnings += [_finding_line(er, by_key, table) for er in warned]
    summary = {
        "dataset": ds.name,
        "root": str(root),
        "images": int(len(table)),
        "success": not failed,
        "checks_run": len(results),
        "failed_checks": [(er.expectation_config.meta or {}).get("check", er.expectation_config.type)
                          for er in failed],
        "warned_checks": [(er.expectation_config.meta or {}).get("check", er.expectation_config.type)
                          for er in warned],
        "verdicts": verdicts,
        "warnings": warnings,
        "checks": {(er.expectation_config.meta or {}).get("check", er.expectation_config.type):
                   {"title": (er.expectation_config.meta or {}).get("title", ""), "success": bool(er.success),
                    "severity": severity(er),
                    "unexpected": int((er.result or {}).get("unexpected_count") or 0)} for er in results},
        "modes": {str(k): int(v) for k, v in decoded["mode"].value_counts().sort_index().items()},
        "non_rgb": [{"id": str(i), "mode": str(m)} for i, m in zip(non_rgb["id"], non_rgb["mode"])][:100],
        "limits": {"max_pixels": max_pixels, "min_side": min_side},
        "exif": {"policy": ds.exif, "tagged": int((table["exif_orientation"].fillna(1) != 1).sum())},
        "near_duplicates": int((table["near_duplicates"] != "").sum()),
        "label_audit": audit,
        "class_balance": _class_balance(table, ds.vocab.names, reference),
        "data_docs": str(context_dir / DOCS_INDEX),
        "table": str(out_dir / "images.csv"),
    }
    write_json(out_dir / "summary.json", summary)
    return ValidationResult(not failed, verdicts, summary, table, probs, clip_key)
