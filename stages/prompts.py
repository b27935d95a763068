"""DVC stage `prompts`: learn each class's background prompt from the teacher CAMs (docs/method.md §6).

Frozen CLIP; image labels and teacher maps only (ground-truth masks are never opened). Per epoch a
checkpoint in `prompts.out`, so an interrupted run resumes; the loss curve and every setting go to the
MLflow run; the readable description (nearest words, most similar background words per class) goes to
`reports/prompts/` and MLflow.
"""

from __future__ import annotations

from pathlib import Path

from stages.common import main, stage

REPORT = Path("reports/prompts")
REPORT_FILES = ("prompts.md", "prompts.json", "loss.png")


def has_work(settings) -> bool:
    """The prompts file or its report is missing, or the prompts were learned from other inputs or settings."""
    from wsss.prompts.run import current_key, prompts_key, training_split

    if not all((REPORT / name).is_file() for name in REPORT_FILES):
        return True
    return current_key(settings) != prompts_key(settings, training_split(settings))


@stage("prompts", ["clip", "text", "prompts"], has_work=has_work,
       imports=("torch", "open_clip", "wsss.clip.model", "wsss.prompts.train", "wsss.metrics.plots"))
def prompts(settings, run) -> dict:
    """Learn the prompts, log the loss per epoch, write and log the readable report."""
    from wsss.io import write_json, write_text
    from wsss.metrics.plots import loss_curves
    from wsss.prompts.readable import prompts_markdown
    from wsss.prompts.run import learn_prompts

    def on_epoch(epoch: int, record: dict) -> None:
        run.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)

    result = learn_prompts(settings, on_epoch=on_epoch)
    markdown = prompts_markdown(result.described)
    write_text(REPORT / "prompts.md", markdown)
    write_json(REPORT / "prompts.json", result.described)
    loss_curves(result.history, REPORT / "loss.png")
    for name in REPORT_FILES:
        run.log_artifact(REPORT / name, "prompts")
    epochs_run = settings.prompts.epochs
    metrics = {"images": result.images, "pairs": result.pairs, "final_loss": result.history[-1]["loss"],
               "seconds_features": result.seconds_features, "seconds_training": result.seconds_training,
               "images_per_second": result.images / result.seconds_features if result.seconds_features else 0.0,
               "pair_epochs_per_second": (result.pairs * epochs_run / result.seconds_training
                                          if result.seconds_training else 0.0)}
    run.log_metrics(metrics)
    print(markdown)
    return metrics


if __name__ == "__main__":
    main(prompts)
