"""DVC stage `evaluate`: the segmenter on `evaluate.split` (val), single-scale and multi-scale + flip;
mIoU, per-class IoU / precision / recall, confusion matrix, example predictions; the headline mIoU
single- and multi-scale in `reports/metrics.json` (DVC metrics, `wsss.metrics.headline`), every score in
`reports/seg/` (tables, figures) and MLflow; then the model registry gate: the model is registered (once
per distinct segmenter: an unchanged one keeps its version), and `champion` moves to it only when its
multi-scale val mIoU is the best so far.

Registering needs the MLflow server; everything before it does not. With the server gone the stage keeps
its reports, records the registration (`wsss.seg.pending`) and fails with one line; its rerun, or
`wsss tracking sync`, registers and gates from that record without evaluating again.
"""

from __future__ import annotations

from pathlib import Path

from stages.common import main, stage


def _segmenter(settings) -> Path:
    return Path(settings.train.out) / "segmenter.pt"  # wsss.seg.run.SEGMENTER_FILE (not imported: torch)


def has_work(settings) -> bool:
    """False only when `wsss tracking sync` registered this very evaluation (a record says so)."""
    from wsss.seg.pending import is_registered

    return not is_registered(settings, _segmenter(settings))


@stage("evaluate", ["train", "evaluate"], has_work=has_work,
       imports=("torch", "torchvision", "wsss.seg.infer", "wsss.seg.registry", "wsss.metrics.plots"))
def evaluate(settings, run) -> dict:
    """Score, report, register, gate."""
    from wsss.data.manifest import read_dataset
    from wsss.io import atomic_dir, write_json
    from wsss.metrics.evaluate import metrics_summary, write_report
    from wsss.metrics.headline import SEG_METRICS, seg_headline
    from wsss.seg import pending
    from wsss.seg.infer import evaluate_segmenter, load_segmenter
    from wsss.seg.train import pick_device, World

    cfg = settings.evaluate
    segmenter = _segmenter(settings)
    record = pending.current(settings, segmenter)
    if record is not None:  # evaluated before, registration left over: no evaluation again
        print(f"{cfg.split}: evaluated before (reports kept); registering")
        _log_scores(run, record["metrics"])
        decision = pending.register(run, record)
        print(f"registry: {decision.message()}")
        return record["metrics"]
    model, info = load_segmenter(segmenter, pick_device(cfg.device, World()))
    ds = read_dataset(settings.data.prepared).split(cfg.split)
    single, kept = evaluate_segmenter(model, info, ds, (1.0,), False, keep=cfg.examples)
    same = [float(x) for x in cfg.scales] == [1.0] and not cfg.flip  # the multi-scale pass would repeat it
    multi = single if same else evaluate_segmenter(model, info, ds, cfg.scales, cfg.flip)[0]
    results = {"single_scale": single, "multi_scale": multi}
    metrics = {name: {k: v for k, v in metrics_summary(r).items() if k != "iou"} for name, r in results.items()}
    with atomic_dir(Path(cfg.out)) as tmp:
        for name, result in results.items():
            write_report(result, ds.vocab, tmp / name, plots=True)
        write_json(tmp / "per_class.json", {name: metrics_summary(r)["iou"] for name, r in results.items()})
        if kept:
            _examples(ds, kept, tmp / "examples.png")
    write_json(SEG_METRICS, seg_headline(cfg.split, single, multi))
    metrics["per_class_iou"] = {name: {c: s["iou"] for c, s in r["per_class"].items() if s["iou"] is not None}
                                for name, r in results.items()}
    _log_scores(run, metrics)
    run.log_artifact(Path(cfg.out), "seg")
    run.log_artifact(SEG_METRICS)
    print(f"{cfg.split}: mIoU single-scale {single['miou']:.4f}, multi-scale + flip {multi['miou']:.4f}")
    record = pending.save(settings, segmenter, info["classes"], multi["miou"], metrics, run)  # kept until registered
    decision = pending.register(run, record)
    print(f"registry: {decision.message()}")
    return metrics


def _log_scores(run, metrics: dict) -> None:
    for name, values in metrics.items():
        if name != "per_class_iou":
            run.log_metrics({f"{name}.{k}": v for k, v in values.items()})
    run.log_metrics({f"{name}.iou.{c}": v for name, ious in metrics.get("per_class_iou", {}).items()
                     for c, v in ious.items()})


def _examples(ds, kept: dict, path: Path) -> None:
    from wsss.data.images import load_rgb_array
    from wsss.data.palette import load_mask
    from wsss.metrics.plots import example_grid

    table = ds.table.set_index("id")
    rows = [(load_rgb_array(ds.root / table.loc[i, "image"], exif=ds.exif), load_mask(ds.root / table.loc[i, "mask"]), pred)
            for i, pred in kept.items()]
    example_grid(rows, path, titles=("image", "ground truth", "prediction"), row_labels=list(kept))


if __name__ == "__main__":
    main(evaluate)
