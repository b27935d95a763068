"""Prefect flow `validate-drop`: check a new dataset drop before it can reach training.

Run once:      python -m flows.validate_drop data/incoming/drop-2026-11 --format custom --classes classes.txt
Serve (UI):    python -m flows.validate_drop --serve   (a deployment you trigger from the Prefect UI with a path)
A thin wrapper of `wsss.validation.validate_drop`, the entry point `wsss validate` uses too: same
reading rules, same report (`reports/drops/<drop folder name>/` by default), same console lines (each
failing expectation, each warning, the verdict). The flow fails (with those lines) when the drop does not pass.
"""

from __future__ import annotations

import argparse
import sys

from prefect import flow, task
from prefect.states import Failed

from wsss import validation
from wsss.errors import WsssError


@task(name="validate")
def validate(path: str, format: str, classes: str | None, labels: str | None, splits: list[str] | None,
             report_dir: str | None, max_pixels: int | None, min_side: int | None) -> dict:
    from wsss.settings import project_settings

    result = validation.validate_drop(path, format=format, classes=classes, labels=labels, splits=splits,
                                      report_dir=report_dir, max_pixels=max_pixels, min_side=min_side,
                                      settings=project_settings())
    return result.summary


@flow(name="validate-drop", log_prints=True)
def validate_drop(path: str, format: str = "auto", classes: str | None = None, labels: str | None = None,
                  splits: list[str] | None = None, report_dir: str | None = None, max_pixels: int | None = None,
                  min_side: int | None = None):
    """Validate the drop at `path`; returns its summary, or Failed (with the defects, the summary as data)."""
    try:
        summary = validate(path, format, classes, labels, splits, report_dir, max_pixels, min_side)
    except WsssError as e:
        return Failed(message=str(e))
    lines = validation.report_lines(summary)
    for line in lines:
        print(line)  # log_prints: into the flow run's log (the UI) as well
    if not summary["success"]:
        return Failed(message="\n".join([f"{path}: {len(summary['verdicts'])} expectation(s) failed",
                                         *summary["verdicts"]]), data=summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?")
    parser.add_argument("--format", default="auto")
    parser.add_argument("--classes", help="relative: the current directory first, then the drop")
    parser.add_argument("--labels", help="found like --classes")
    parser.add_argument("--split", action="append", help="a split to read (repeatable)")
    parser.add_argument("--report-dir", help="default: reports/drops/<drop folder name>")
    parser.add_argument("--max-pixels", type=int)
    parser.add_argument("--min-side", type=int)
    parser.add_argument("--serve", action="store_true", help="serve as a deployment (trigger from the UI)")
    args = parser.parse_args(argv)
    if args.serve:
        validate_drop.serve(name="validate-drop", pause_on_shutdown=False, limit=1)
        return 0
    if not args.path:
        parser.error("a drop path is required unless --serve")
    state = validate_drop(args.path, args.format, args.classes, args.labels, args.split, args.report_dir,
                          args.max_pixels, args.min_side, return_state=True)
    summary = state.result(raise_on_failure=False)
    if isinstance(summary, dict):  # validated (passed or not): the same lines as `wsss validate`, on stdout
        for line in validation.report_lines(summary):
            print(line)
        return 0 if summary["success"] else 1
    print(f"error: {state.message}", file=sys.stderr)
    return 2 if state.is_failed() else 1


if __name__ == "__main__":
    raise SystemExit(main())
