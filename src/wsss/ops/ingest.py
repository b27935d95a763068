"""Ingest dataset drops: list the new ones, fetch each, validate it with the Great Expectations suite,
then merge it into the DVC-tracked dataset or quarantine it with its report.

Safety, in order of the steps:
- only complete drops are taken (their `_READY` marker written last); one still uploading is left alone;
- a drop is listed once (`Snapshot`) and fetched whole into a staging folder or not at all (S3 transfers
  retried file by file);
- validation reads only the staged copy and writes only `reports/drops/<drop>/`: a refused drop never
  touches the dataset; images the dataset (or an earlier drop of this run) already has are refused, and so
  are near-copies of its held-out images (the content store `prepare` wrote, plus the hashes of drops merged
  since); the CLIP label audit's policy (`validation.label_audit`) warns, holds the flagged images back
  (`quarantine`: recorded in `drop.json`, never read into the manifest; the rest merges) or refuses the drop;
- a good drop is renamed into `<data.root>/<data.drops>/<drop>/` (complete or absent), then one
  `dvc add <data.root>` versions every drop merged in this run. Any failure or interrupt before that
  version exists takes this run's merges back out and restores the `.dvc` file: the dataset is as it was;
- only then does a drop leave `incoming/` (copy, then delete); a move cut short is finished by the next run;
- the same drop delivered again (same fingerprint) is recognised as merged and just archived; a different
  drop under a merged drop's name is refused with a line saying so, and stays in `incoming/`.
The caller holds the workspace lock (`wsss.ops.lock`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd

from wsss.data.drops import ID_SEPARATOR, RECORD, drop_dirs, read_record
from wsss.errors import WsssError
from wsss.io import atomic_dir, write_json
from wsss.ops import commands
from wsss.ops.drops import ACCEPTED, QUARANTINE, READY, Snapshot
from wsss.settings import Settings
from wsss.validation.run import DROPS_REPORT_ROOT

STAGING = Path(".wsss/staging")


@dataclass
class Outcome:
    drop: str
    status: str  # merged | already merged | already processed | quarantined | error
    detail: str
    images: int = 0
    report: str = ""  # the drop's validation report folder (summary.json, images.csv, Data Docs)

    def line(self) -> str:
        return f"drop {self.drop}: {self.status}" + (f" ({self.detail})" if self.detail else "")


class TrackedDataset:
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
                            f"the toy world cannot take drops; docs/operations.md, Dataset drops)")
        self.drops_dir = self.root / settings.data.drops

    def merged(self) -> dict[str, dict]:
        """{drop name: its record} for the drops already in the dataset."""
        return {d.name: read_record(d) for d in drop_dirs(self.root, self.settings.data.drops)}

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

    def known_content(self, merged: dict[str, dict], store=None) -> set[str]:
        """SHA-256 of the images the dataset has: the last `prepare` validation table and content store,
        plus every merged drop's (recorded at merge time, so a drop merged since the last `prepare` counts too)."""
        table = self.project / self.settings.validation.report_dir / "images.csv"
        known = set(pd.read_csv(table, usecols=["sha256"], dtype=str)["sha256"].dropna()) if table.is_file() else set()
        if store is not None:
            known |= {str(s) for s in store.sha256 if s}
        return known.union(*(set(r.get("sha256", [])) for r in merged.values()))

    def content(self, merged: dict[str, dict], vocab):
        """What a drop is compared with: the content store of the last `prepare` (hashes, labels, CLIP
        scores) with the hashes of the drops merged since (their records)."""
        from dataclasses import replace

        from wsss.validation.store import empty_store, find_store, recorded_reference

        store = find_store(self.project / self.settings.data.prepared) or empty_store(vocab.names)
        listed = set(store.ids.astype(str))
        records = [r for r in merged.values() if not set((r.get("content") or {}).get("ids", [])) <= listed]
        return replace(store, extra=recorded_reference(records))

    def merge(self, name: str, staged: Path, record: dict) -> Path:
        """Rename a validated drop into the dataset (whole or not at all)."""
        target = self.drops_dir / name
        with atomic_dir(target) as tmp:
            shutil.copytree(staged, tmp, dirs_exist_ok=True)
            write_json(tmp / RECORD, record)
        return target

    def version(self, log) -> bool:
        """`dvc add` the root: one new dataset version; True when the `.dvc` file changed."""
        before = self.dvc_file.read_bytes()
        commands.dvc("add", self.settings.data.root, cwd=self.project, log=log)
        return self.dvc_file.read_bytes() != before

    def uncommitted(self) -> bool:
        """The `.dvc` file differs from git's HEAD (a version made by a run stopped before its commit)."""
        if not self.settings.ops.commit or not (self.project / ".git").exists():
            return False
        rel = self.dvc_file.relative_to(self.project).as_posix()
        try:
            commands.run(["git", "diff", "--quiet", "HEAD", "--", rel], self.project, "git diff")
            return False
        except commands.CommandError:
            return True

    def publish(self, names: list[str], log) -> list[str]:
        """`dvc push` the new version, git-commit its .dvc file (and push it with `ops.git_sync`); returns
        warnings: the data is versioned locally either way, the flow's final `dvc push` tries again."""
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
            if ops.git_sync:
                steps.append(lambda: commands.run(["git", "push"], self.project, "git push", log=log))
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
    for name in area.uploading():
        log(f"drop {name}: still uploading (no {READY} marker yet); left for a later run")
    if not names:
        return []
    dataset = TrackedDataset(settings, project)  # checked only when there is something to merge
    merged = dataset.merged()
    vocab = dataset.vocabulary()
    store = dataset.content(merged, vocab)
    known = dataset.known_content(merged, store)
    outcomes, snaps = [], {}
    before = dataset.dvc_file.read_bytes()
    try:
        for name in names:
            try:
                snaps[name] = area.snapshot(name)
                outcome = _one(area, snaps[name], dataset, merged, vocab, known, store, settings, project, log)
            except WsssError as e:  # S3 or file trouble: the drop stays in incoming/ for the next run
                outcome = Outcome(name, "error", f"{e}; left in incoming/, retried next run")
            outcomes.append(outcome)
            log(outcome.line())
        fresh = [o for o in outcomes if o.status in ("merged", "already merged")]
        changed = dataset.version(log) if fresh else False
    except BaseException as e:  # no version made: take this run's merges back out (all it could have made)
        for name in set(names) - set(merged):
            shutil.rmtree(dataset.drops_dir / name, ignore_errors=True)
        dataset.dvc_file.write_bytes(before)
        if not isinstance(e, WsssError):
            raise
        for o in outcomes:
            if o.status in ("merged", "already merged"):
                o.status, o.detail = "error", f"not versioned ({e}); dataset left as it was, retried next run"
        return outcomes
    _publish_and_archive(area, dataset, fresh, snaps, changed, log)
    return outcomes


def _one(area, snap: Snapshot, dataset: TrackedDataset, merged, vocab, known: set, store, settings, project,
         log) -> Outcome:
    name = snap.name
    for place in (ACCEPTED, QUARANTINE):  # a move cut short: its copy is complete, finish it
        if area.moved_to(snap, place):
            area.finish_move(snap)
            return Outcome(name, "already processed", f"same content as {place}/{name}: removed from incoming/")
    if name in merged:
        if merged[name].get("fingerprint") == snap.fingerprint:
            return Outcome(name, "already merged", "same content: dataset unchanged")
        return Outcome(name, "error", f"a different drop named {name} is already merged; rename this one")
    staged = project / STAGING / name
    try:
        files = area.fetch(snap, staged)
        log(f"drop {name}: fetched {files} file(s) from {area}")
        summary, table, report = _validate(staged, name, vocab, known, store, settings, project,
                                           f"{area}/incoming/{name}")
        held_back = _held_back(summary, settings)
        if summary["success"] and table is not None and len(held_back) >= len(table):
            summary = {**summary, "success": False, "verdicts": summary["verdicts"] + [
                f"FAIL every image flagged by the label audit ({len(held_back)}): nothing left to merge"]}
            write_json(report / "summary.json", summary)
        if not summary["success"]:
            where = area.quarantine(snap, report)
            return Outcome(name, "quarantined", f"{len(summary['verdicts'])} failed check(s): "
                           f"{'; '.join(summary['verdicts'])}; moved to {where} with its report",
                           report=str(report))
        hashes = sorted(table["sha256"].dropna())
        known.update(hashes)  # a later drop of this run repeating these images is refused
        from wsss.validation.store import record_content

        record = {"name": name, "source": str(area), "fingerprint": snap.fingerprint, "format": settings.ops.drop_format,
                  "images": summary["images"], "sha256": hashes, "held_back": held_back,
                  "content": record_content(table, name + ID_SEPARATOR),
                  "warnings": len(summary.get("warnings", [])),
                  "merged_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        dataset.merge(name, staged, record)
        _add_to_reference(store, record["content"])  # a later drop of this run is compared with it too
        detail = f"{summary['images'] - len(held_back)} images"
        if held_back:
            detail += f", {len(held_back)} held back by the label audit ({', '.join(list(held_back)[:5])})"
        if summary.get("warnings"):
            detail += f", {len(summary['warnings'])} warning(s): {'; '.join(summary['warnings'])}"
        return Outcome(name, "merged", detail, summary["images"] - len(held_back), report=str(report))
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _held_back(summary: dict, settings: Settings) -> dict[str, str]:
    """{image id: the audit's findings} for the `quarantine` policy (else none held back)."""
    if settings.validation.label_audit != "quarantine":
        return {}
    out: dict[str, str] = {}
    for f in summary.get("label_audit", {}).get("flagged", []):
        out[f["id"]] = "; ".join(filter(None, [out.get(f["id"]), f"{f['kind']} {f['label']} (p {f['score']})"]))
    return out


def _add_to_reference(store, content: dict) -> None:
    from wsss.validation.store import join_references, recorded_reference

    if store is not None and content.get("ids"):
        store.extra = join_references(store.extra, recorded_reference([{"content": content}]))


def _validate(staged: Path, name: str, vocab, known, store, settings: Settings, project: Path, source: str):
    """(summary, image table or None, report folder); a drop that cannot even be read fails with that line."""
    from wsss.validation import validate_drop

    report = project / DROPS_REPORT_ROOT / name
    try:
        result = validate_drop(staged, format=settings.ops.drop_format, classes=vocab, report_dir=report,
                               known_content=known, settings=settings, reference=store)
    except WsssError as e:
        reason = str(e).replace(str(staged), source)  # name the drop where its owner sees it, not our staging copy
        summary = {"dataset": name, "success": False, "images": 0, "verdicts": [f"FAIL drop is readable: {reason}"]}
        shutil.rmtree(report, ignore_errors=True)
        write_json(report / "summary.json", summary)
        return summary, None, report
    return result.summary, result.table, report


def _publish_and_archive(area, dataset: TrackedDataset, fresh: list[Outcome], snaps: dict, changed: bool, log) -> None:
    """Push and commit the new version (when there is one), then archive the drops to accepted/."""
    if changed or dataset.uncommitted():
        for warning in dataset.publish([o.drop for o in fresh], log):
            for o in fresh:
                o.detail += f"; warning: {warning}"
    for o in fresh:
        try:
            o.detail += f"; archived to {area.accept(snaps[o.drop], Path(o.report) if o.report else None)}"
        except WsssError as e:
            o.detail += f"; merged, but archiving failed ({e}): the next run archives it"


def read_summary(outcome: Outcome) -> dict | None:
    """The validation summary behind an outcome (its report's summary.json), None when there is none."""
    import json

    path = Path(outcome.report) / "summary.json" if outcome.report else None
    try:
        return json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        return None


def findings_markdown(outcomes: list[Outcome]) -> str:
    """The drops of one ingest and every finding of their validation, as Markdown (a Prefect artifact)."""
    if not outcomes:
        return "No new drops."
    out = ["| drop | status | images | failures | warnings | held back |", "|---|---|---|---|---|---|"]
    details = []
    for o in outcomes:
        s = read_summary(o) or {}
        audit = s.get("label_audit") or {}
        held = audit.get("images_flagged", 0) if audit.get("policy") == "quarantine" and s.get("success") else 0
        out.append(f"| {o.drop} | {o.status} | {o.images} | {len(s.get('verdicts', []))} | "
                   f"{len(s.get('warnings', []))} | {held} |")
        lines = list(s.get("verdicts", [])) + list(s.get("warnings", []))
        if lines:
            details += [f"\n**{o.drop}** ({s.get('data_docs', 'no report')})\n"] + [f"- {ln}" for ln in lines]
        flagged = audit.get("flagged") or []
        if flagged:
            details += ["", f"Label audit of {o.drop} ({audit.get('policy')}):", "",
                        "| image | label | kind | CLIP p | suggested |", "|---|---|---|---|---|"]
            details += [f"| {f['id']} | {f['label']} | {f['kind']} | {f['score']:.2f} | {f['suggestion'] or ''} |"
                        for f in flagged[:200]]
    return "\n".join(out + details)
