"""DVC stage `train`: DeepLab-V3(+) on the pseudo masks with the confidence-guided loss, plus SemPLeS's
prompt-guided refinement when `train.prompt_refine` > 0, then `train.self_training` rounds on the
segmenter's own labels (docs/method.md §5).

One process: `python -m stages.train` (what `dvc repro` runs). Several GPUs or nodes: the same entry point
under `torchrun --nproc_per_node N -m stages.train` (DDP); rank 0 runs the Prefect flow and the MLflow run,
the other ranks only train. Checkpoints every `train.checkpoint_every` iterations; a rerun after an
interruption (even `kill -9`) continues from the last one.
"""

from __future__ import annotations

from stages.common import main, stage


def has_work(settings) -> bool:
    from wsss.seg.run import current_key, segmenter_key, training_split

    return current_key(settings) != segmenter_key(settings, training_split(settings))


@stage("train", ["clip", "train"], has_work=has_work, imports=("torch", "torchvision", "wsss.seg.train", "wsss.seg.infer"))
def train(settings, run) -> dict:
    """Train (resuming when a checkpoint of the same inputs exists) and log. No ground truth is read here,
    not even for a validation curve: the `evaluate` stage scores the finished segmenter."""
    from wsss.seg.run import train_from_settings
    from wsss.tracking.system import system_metrics

    def on_log(iteration: int, metrics: dict) -> None:
        run.log_metrics(metrics, step=iteration)

    with system_metrics(run, interval=5):
        stats = train_from_settings(settings, on_log)
    run.log_metrics(stats)
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()})
    return stats


def worker(settings) -> None:
    """A non-zero rank of a `torchrun` launch: the same checks, then training only."""
    from wsss.seg.run import train_from_settings

    if has_work(settings):
        train_from_settings(settings, progress=False)


if __name__ == "__main__":
    import os

    if int(os.environ.get("RANK", "0")) > 0:
        from stages.common import run_worker

        run_worker(worker)
    else:
        main(train)
