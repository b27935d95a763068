"""Prefect flow `validate-drop`: check a new dataset drop before it can reach training.

Run once:      python -m flows.validate_drop data/incoming/drop-2026-11 --format custom --classes classes.txt
Serve (UI):    python -m flows.validate_drop --serve   (a deployment you trigger from the Prefect UI with a path)
The flow fails (and says why, one line per failing expectation) when the drop does not pass.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow, task
from prefect.states import Failed

from wsss.data.readers import read_dataset_source
from wsss.errors import WsssError
from wsss.validation import validate_dataset


@task(name="validate")
def validate(path: str, format: str, classes: str | None, labels: str | None, report_dir: str) -> dict:
    ds = read_dataset_source(path, format=format, classes=classes, labels=labels)
    result = validate_dataset(ds, Path(report_dir))
    for line in result.verdicts:
        print(line)
    return {"success": result.success, "images": len(ds), "verdicts": result.verdicts,
            "report": result.summary.get("data_docs", report_dir)}


@flow(name="validate-drop", log_prints=True)
def validate_drop(path: str, format: str = "auto", classes: str | None = None, labels: str | None = None,
                  report_dir: str = "reports/validation"):
    """Validate the drop at `path`; Failed (with the defects) when it does not pass."""
    try:
        outcome = validate(path, format, classes, labels, report_dir)
    except WsssError as e:
        return Failed(message=str(e))
    if not outcome["success"]:
        return Failed(message=f"{path}: {len(outcome['verdicts'])} expectation(s) failed; report {outcome['report']}")
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?")
    parser.add_argument("--format", default="auto")
    parser.add_argument("--classes")
    parser.add_argument("--labels")
    parser.add_argument("--serve", action="store_true", help="serve as a deployment (trigger from the UI)")
    args = parser.parse_args(argv)
    if args.serve:
        validate_drop.serve(name="validate-drop", pause_on_shutdown=False, limit=1)
        return 0
    if not args.path:
        parser.error("a drop path is required unless --serve")
    state = validate_drop(args.path, args.format, args.classes, args.labels, return_state=True)
    if state.is_failed():
        print(f"error: {state.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
