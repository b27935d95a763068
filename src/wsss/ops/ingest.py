"""Ingest dataset drops: list the new ones, fetch each, validate it with the Great Expectations suite,
then merge it into the DVC-tracked dataset or quarantine it with its report.

Safety, in order of the steps:
- a drop is fetched whole into a staging folder or not at all (S3 transfers retried file by file);
- validation reads only the staged copy and writes only `reports/drops/<drop>/`: a refused drop never
  touches the dataset;
- a good drop is renamed into `<data.root>/<data.drops>/<drop>/` (complete or absent), then one
  `dvc add <data.root>` versions every drop merged in this run; if that fails or is interrupted, the
  merged folders are removed again, so the dataset is as it was;
- only then does a drop leave `incoming/` (copy, then delete);
- the same drop delivered again (same fingerprint) is recognised as merged and just archived; a different
  drop under a merged drop's name is refused with a line saying so, and stays in `incoming/`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd

from wsss.data.drops import RECORD, drop_dirs, read_record
from wsss.errors import WsssError
from wsss.io import atomic_dir, write_json
from wsss.ops import commands
from wsss.settings import Settings

STAGING = Path(".wsss/staging")


@dataclass
class Outcome:
    drop: str
    status: str  # merged | already merged | quarantined | error
    detail: str
    images: int = 0

    def line(self) -> str:
        return f"drop {self.drop}: {self.status}" + (f" ({self.detail})" if self.detail else "")


class Dataset:
    """The DVC-tracked dataset drops merge into: `data.root`, tracked by `<data.root>.dvc`."""

    def __init__(self, settings: Settings, project: Path):
        self.settings, self.project = settings, project
        self.root = project / settings.data.root
        self.dvc_file = self.root.with_name(self.root.name + ".dvc")
        if not settings.data.drops:
            raise WsssError("data.drops is null: set it (e.g. drops) so that accepted drops have a place in the dataset")
        if not self.dvc_file.is_file():
            raise WsssError(f"{settings.data.root}: drops merge into a dataset tracked with `dvc add` "
                            f"({self.dvc_file.relative_to(project)} not found; a pipeline stage's output such as "
                            f"the toy world cannot take drops; README: Operations)")
        self.drops_dir = self.root / settings.data.drops

    def merged(self) -> dict[str, str]:
        """{drop name: fingerprint} of the drops already in the dataset."""
        return {d.name: read_record(d).get("fingerprint", "") for d in drop_dirs(self.root, self.settings.data.drops)}

    def vocabulary(self):
        """The dataset's classes: the prepared manifest's, else read from the base dataset."""
        from wsss.data.manifest import read_dataset
        from wsss.data.readers import read_dataset_source

        data = self.settings.data
        try:
            return read_dataset(self.project / data.prepared).vocab
        except WsssError:
            return read_dataset_source(self.root, format=data.format, classes=data.classes, splits=data.splits,
                                       labels=data.labels).vocab

    def known_content(self) -> set[str]:
        """SHA-256 of the images the dataset has (from the last `prepare` validation table, when there)."""
        table = self.project / self.settings.validation.report_dir / "images.csv"
        if not table.is_file():
            return set()
        return set(pd.read_csv(table, usecols=["sha256"], dtype=str)["sha256"].dropna())

    def merge(self, name: str, staged: Path, record: dict) -> Path:
        """Rename a validated drop into the dataset (whole or not at all)."""
        target = self.drops_dir / name
        with atomic_dir(target) as tmp:
            shutil.copytree(staged, tmp, dirs_exist_ok=True)
            write_json(tmp / RECORD, record)
        return target

    def version(self, names: list[str], new: list[str], log) -> None:
        """`dvc add` the root: one new dataset version. Failed or interrupted, the drops merged in this run
        (`new`) are taken out again and the .dvc file restored: the dataset is as it was."""
        before = self.dvc_file.read_bytes()
        try:
            commands.dvc("add", self.settings.data.root, cwd=self.project, log=log)
        except BaseException:
            for name in new:
                shutil.rmtree(self.drops_dir / name, ignore_errors=True)
            self.dvc_file.write_bytes(before)
            raise

    def publish(self, names: list[str], log) -> list[str]:
        """`dvc push` the new version and git-commit its .dvc file; returns warnings (the data is versioned
        locally either way; the flow's final `dvc push` tries again)."""
        ops, warnings = self.settings.ops, []
        rel = self.dvc_file.relative_to(self.project).as_posix()
        paths = [rel] + [p for p in [(Path(rel).parent / ".gitignore").as_posix()] if (self.project / p).exists()]
        steps = []
        if ops.push and commands.default_remote(self.project):
            steps.append(lambda: commands.dvc("push", rel, cwd=self.project, log=log))
        if ops.commit and (self.project / ".git").exists():
            steps += [lambda: commands.run(["git", "add", *paths], self.project, "git add"),
                      lambda: commands.run(["git", "commit", "-m", f"data: merge drop(s) {', '.join(names)}", "--",
                                            *paths], self.project, "git commit", log=log)]
        for step in steps:
            try:
                step()
            except commands.CommandError as e:  # e.g. remote down, no git identity on the worker
                warnings.append(str(e))
                log(f"warning: {e}")
                break
        return warnings


def ingest(area, settings: Settings, project: Path, log: Callable[[str], None] = print) -> list[Outcome]:
    """Process every drop in `area`'s incoming/ (see the module docstring); returns one Outcome each."""
    names = area.incoming()
    log(f"{len(names)} new drop(s) in {area}" + (f": {', '.join(names)}" if names else ""))
    if not names:
        return []
    dataset = Dataset(settings, project)  # checked only when there is something to merge
    merged, vocab, known = dataset.merged(), dataset.vocabulary(), dataset.known_content()
    outcomes, fresh = [], []
    for name in names:
        try:
            outcome = _one(area, name, dataset, merged, vocab, known, settings, project, log)
        except WsssError as e:  # S3 or file trouble: the drop stays in incoming/ for the next run
            outcome = Outcome(name, "error", f"{e}; left in incoming/, retried next run")
        if outcome.status in ("merged", "already merged"):
            fresh.append(outcome)
        outcomes.append(outcome)
        log(outcome.line())
    if fresh:
        _version_and_archive(area, dataset, fresh, [o for o in fresh if o.status == "merged"], log)
    return outcomes


def _one(area, name, dataset: Dataset, merged, vocab, known, settings, project, log) -> Outcome:
    fingerprint = area.fingerprint(name)
    if name in merged:
        if merged[name] == fingerprint:
            return Outcome(name, "already merged", "same content: archived, dataset unchanged")
        return Outcome(name, "error", f"a different drop named {name} is already merged; rename this one")
    staged = project / STAGING / name
    try:
        files = area.fetch(name, staged)
        log(f"drop {name}: fetched {files} file(s) from {area}")
        result, report = _validate(staged, name, vocab, known, settings, project, f"{area}/incoming/{name}")
        if not result["success"]:
            where = area.quarantine(name, report)
            return Outcome(name, "quarantined", f"{len(result['verdicts'])} failed check(s): "
                           f"{'; '.join(result['verdicts'])}; moved to {where} with its report")
        record = {"name": name, "source": str(area), "fingerprint": fingerprint, "format": settings.ops.drop_format,
                  "images": result["images"], "merged_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        dataset.merge(name, staged, record)
        return Outcome(name, "merged", f"{result['images']} images", result["images"])
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _validate(staged: Path, name: str, vocab, known, settings: Settings, project: Path,
              source: str) -> tuple[dict, Path]:
    """The drop's validation summary and report folder; a drop that cannot even be read fails with that line."""
    from wsss.data.readers import read_dataset_source
    from wsss.validation import validate_dataset

    report = project / "reports" / "drops" / name
    try:
        ds = read_dataset_source(staged, format=settings.ops.drop_format, classes=vocab)
    except WsssError as e:
        reason = str(e).replace(str(staged), source)  # name the drop where its owner sees it, not our staging copy
        summary = {"dataset": name, "success": False, "images": 0, "verdicts": [f"FAIL drop is readable: {reason}"]}
        shutil.rmtree(report, ignore_errors=True)
        write_json(report / "summary.json", summary)
        return summary, report
    rules = settings.validation
    result = validate_dataset(ds, report, max_pixels=rules.max_pixels, min_side=rules.min_side, known_content=known)
    return result.summary, report


def _version_and_archive(area, dataset: Dataset, fresh: list[Outcome], new: list[Outcome], log) -> None:
    """One dataset version for this run's drops, pushed and committed, then the drops are archived."""
    try:
        dataset.version([o.drop for o in fresh], [o.drop for o in new], log)
    except WsssError as e:
        for o in fresh:
            o.status, o.detail = "error", f"not versioned ({e}); dataset left as it was, retried next run"
        return
    for warning in dataset.publish([o.drop for o in fresh], log):
        for o in fresh:
            o.detail += f"; warning: {warning}"
    for o in fresh:
        try:
            o.detail += f"; archived to {area.accept(o.drop)}"
        except WsssError as e:
            o.detail += f"; merged, but archiving failed ({e}): the next run archives it"
