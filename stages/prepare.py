"""DVC stage `prepare`: read a dataset (VOC, COCO, custom), validate it, write the manifest.

A dataset that fails validation is refused: the previous `data/prepared/` stays as it was, the GX report
lands in `reports/validation/`, and the stage exits non-zero with one line per failing expectation.
"""

from __future__ import annotations

from pathlib import Path

from stages.common import main, stage


@stage("prepare", ["data", "validation"], imports=("great_expectations", "wsss.validation", "wsss.data.readers"))
def prepare(settings, run) -> dict:
    """Read (the base dataset and its accepted drops) → validate (Great Expectations) → write the manifest,
    refusing a failing drop."""
    from prefect import task

    from wsss.data.drops import read_with_drops
    from wsss.data.manifest import write_dataset
    from wsss.data.readers import read_dataset_source
    from wsss.errors import DataError
    from wsss.io import atomic_dir, write_json
    from wsss.validation import validate_dataset

    data, rules = settings.data, settings.validation

    def read_one(path, fmt, vocab):  # the base with its settings; a drop in its own format, the base classes
        if fmt is None:
            return read_dataset_source(path, format=data.format, classes=data.classes, splits=data.splits,
                                       labels=data.labels)
        return read_dataset_source(path, format=fmt, classes=vocab)

    ds = task(read_with_drops, name="read")(data.root, data.drops, read_one, data.splits)
    print(f"prepare: read {len(ds)} images, {ds.vocab.num_classes} classes from {data.root}; validating, then "
          f"writing {data.prepared} only if the drop passes")
    report_dir = Path(rules.report_dir)
    result = task(validate_dataset, name="validate")(ds, report_dir, max_pixels=rules.max_pixels,
                                                     min_side=rules.min_side)
    run.log_dict(result.summary, "validation/summary.json")
    run.log_artifact(report_dir, "validation")
    run.log_metrics({"images": len(ds), "classes": ds.vocab.num_classes,
                     "validation.failed_expectations": len(result.verdicts)})
    for line in result.summary.get("warnings", []):
        print(line)
    if not result.success:  # the verdicts are the message: they must not depend on the log level
        raise DataError(f"{data.root}: dataset refused, {len(result.verdicts)} expectation(s) failed "
                        f"(report: {report_dir}); {data.prepared} left unchanged\n" + "\n".join(result.verdicts))

    @task(name="write")
    def write() -> None:
        with atomic_dir(data.prepared) as tmp:
            write_dataset(ds, tmp)
            write_json(tmp / "validation.json", result.summary)

    write()
    run.log_artifact(Path(data.prepared) / "manifest.csv", "prepared")
    run.log_artifact(Path(data.prepared) / "classes.json", "prepared")
    return {"images": len(ds)}


if __name__ == "__main__":
    main(prepare)
