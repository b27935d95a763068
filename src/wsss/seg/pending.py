"""A model registration the MLflow server could not take, kept so that no evaluation is computed twice.

`evaluate` writes its reports and metrics first; registering the segmenter and moving `champion`
(`wsss.seg.registry`) come last and need the tracking server. Before registering, the stage records what
it registers in `.wsss/tracking/registration.json`: the segmenter and its content hash, its classes, the
val mIoU and the scores, and the key of the evaluation's inputs (segmenter, prepared dataset, `evaluate`
settings, the code that evaluates). A registration that succeeds removes the record. When the server is
gone the stage fails with one line and the record stays `pending`; then either
- the rerun of `evaluate` (same inputs: same key) registers and gates from the record, without evaluating
  again, and removes it; or
- `wsss tracking sync` (after sending the buffered runs) registers and gates into the synced `evaluate`
  run, and marks the record `registered`: the rerun that DVC still owes `evaluate` (it failed) finds
  nothing to do (`is_registered`), and DVC records the stage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from wsss.io import write_json
from wsss.settings import Settings, project_root
from wsss.tracking.buffer import BUFFER_DIR

RECORD = BUFFER_DIR / "registration.json"
PENDING, REGISTERED = "pending", "registered"
_CODE = ("wsss/seg", "wsss/metrics")  # what `evaluate` runs (dvc.yaml's code deps), beside stages/evaluate.py


def record_path(root: Path | None = None) -> Path:
    return (root or project_root()) / RECORD


def _sha256(path: Path) -> str:
    from wsss.validation.table import file_sha256

    return file_sha256(path)


def evaluation_key(settings: Settings, segmenter: Path) -> str:
    """What an evaluation's result depends on, as one hash (DVC's deps of `evaluate`, read without DVC)."""
    import wsss

    src = Path(wsss.__file__).parent.parent
    code = {p.relative_to(src).as_posix(): _sha256(p) for d in _CODE for p in sorted((src / d).rglob("*.py"))}
    stage = project_root() / "stages" / "evaluate.py"
    if stage.is_file():
        code["stages/evaluate.py"] = _sha256(stage)
    prepared = Path(settings.data.prepared)
    parts = {"segmenter": _sha256(segmenter), "evaluate": settings.evaluate.work_settings(),
             "prepared": {p.relative_to(prepared).as_posix(): _sha256(p) for p in sorted(prepared.rglob("*"))
                          if p.is_file()} if prepared.is_dir() else {},
             "code": code}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def read(root: Path | None = None) -> dict | None:
    path = record_path(root)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def current(settings: Settings, segmenter: Path) -> dict | None:
    """The record of an evaluation of exactly these inputs whose outputs are all there, else None."""
    from wsss.metrics.headline import SEG_METRICS

    record = read()
    if record is None or not (Path(settings.evaluate.out).is_dir() and SEG_METRICS.is_file() and segmenter.is_file()):
        return None
    return record if record.get("key") == evaluation_key(settings, segmenter) else None


def is_registered(settings: Settings, segmenter: Path) -> bool:
    """`evaluate`'s outputs are current and `wsss tracking sync` registered them: nothing left to do."""
    if read() is None:  # the usual case: no file, no hashing
        return False
    record = current(settings, segmenter)
    return record is not None and record["state"] == REGISTERED


def save(settings: Settings, segmenter: Path, classes: list[str], val_miou: float, metrics: dict, run) -> dict:
    """Record the registration about to be tried (state pending)."""
    record = {"state": PENDING, "key": evaluation_key(settings, segmenter), "segmenter": str(Path(segmenter).resolve()),
              "segmenter_sha256": _sha256(segmenter), "classes": list(classes), "val_miou": float(val_miou),
              "name": settings.evaluate.registered_model, "metrics": metrics,
              "experiment": settings.tracking.experiment, "run": _run_ref(run)}
    write_json(record_path(), record)
    return record


def _run_ref(run) -> dict:
    return {"id": run.run_id, "buffered": bool(getattr(run, "buffered", False)), "uri": getattr(run, "uri", "")}


def register(run, record: dict, *, keep: bool = False):
    """Register and gate the recorded segmenter as a model of `run`; the record is removed (or, with
    `keep`, marked registered). The server gone: one `TrackingUnreachable` line, the record stays pending
    (naming the run the evaluation is logged in now: the buffer's, when it moved there)."""
    from wsss.seg.registry import log_and_gate
    from wsss.tracking.runs import TrackingUnreachable

    try:
        with run.on_server("registering the segmenter (model registry and champion gate)"):
            decision = log_and_gate(run, record["segmenter"], record["classes"], record["val_miou"], record["name"])
    except TrackingUnreachable as e:
        write_json(record_path(), {**record, "run": _run_ref(run)})
        raise TrackingUnreachable(f"{e}: the evaluation is kept ({RECORD}); rerun evaluate or run "
                                  "`wsss tracking sync` once it answers (nothing is evaluated again)") from None
    if keep:
        write_json(record_path(), {**record, "state": REGISTERED, "decision": decision.message()})
    else:
        record_path().unlink(missing_ok=True)
    return decision


def clear() -> None:
    record_path().unlink(missing_ok=True)


def sync_and_register(uri: str | None = None, tracking=None, log: Callable[[str], None] = print) -> list[str]:
    """`wsss tracking sync`: send the buffered runs, then do a pending registration into the run its
    evaluation is logged in on the server. Returns the summary lines."""
    from wsss.tracking.buffer import SYNCED_TAG, open_buffer
    from wsss.tracking.runs import StageRun, open_store, tracking_uri
    from wsss.tracking.sync import sync

    uri = tracking_uri(uri)
    report = sync(uri, log=log, tracking=tracking)
    lines = report.lines()
    record = read()
    if record is None or record["state"] != PENDING:
        return lines
    ref = record["run"]
    if ref.get("uri") and ref["uri"] != uri:
        return lines + [f"a registration is pending for {ref['uri']}, not {uri}"]
    if not Path(record["segmenter"]).is_file() or _sha256(Path(record["segmenter"])) != record["segmenter_sha256"]:
        return lines + [f"pending registration skipped: {record['segmenter']} changed since it was evaluated; "
                        "rerun evaluate"]
    run_id = ref["id"]
    if ref.get("buffered"):
        run_id = report.synced.get(run_id) or open_buffer().get_run(run_id).data.tags.get(SYNCED_TAG)
        if not run_id:
            return lines + ["a registration is pending, but its evaluate run is still running: sync again later"]
    server = open_store(uri, tracking)
    run = StageRun(server, run_id, server.get_run(run_id).info.artifact_uri, uri=uri, stage="evaluate")
    decision = register(run, record, keep=True)
    server.set_tag(run_id, "wsss.registration", "done by `wsss tracking sync` (the stage had found the server gone)")
    server.set_terminated(run_id, status="FINISHED")
    line = f"registry: {decision.message()}"
    log(line)
    return lines + [line]
