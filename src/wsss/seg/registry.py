"""The model registry: each evaluated segmenter is logged to MLflow as a model (signature, input
example, its class list) and registered as a new version; the alias `champion` moves to it only when its
val mIoU beats the current champion's — the gate. The decision and both numbers go to the run.

The logged model is an MLflow pyfunc: `predict` takes uint8 images [N, H, W, 3] and returns label maps
[N, H, W] (0 = background, 1..C = the classes in `metadata.classes`); it loads its weights with
`weights_only=True` (`wsss.seg.infer.load_segmenter`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np

CHAMPION = "champion"
MIOU_TAG = "val_miou"


class SegmenterModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from wsss.seg.infer import load_segmenter

        self.model, self.info = load_segmenter(context.artifacts["segmenter"])

    def predict(self, context, model_input, params=None):
        from wsss.seg.infer import predict_labels

        images = np.asarray(model_input["images"] if isinstance(model_input, dict) else model_input, dtype=np.uint8)
        return np.stack([predict_labels(self.model, im, self.info) for im in images])


@dataclass
class GateDecision:
    version: str
    candidate_miou: float
    champion_version: str | None
    champion_miou: float | None
    promoted: bool

    def message(self) -> str:
        if self.champion_version is None:
            return f"version {self.version} (val mIoU {self.candidate_miou:.4f}) is the first: it becomes {CHAMPION}"
        verdict = "beats" if self.promoted else "does not beat"
        return (f"version {self.version} (val mIoU {self.candidate_miou:.4f}) {verdict} {CHAMPION} version "
                f"{self.champion_version} ({self.champion_miou:.4f})" + (": alias moved" if self.promoted else ""))


def current_champion(client, name: str) -> tuple[str | None, float | None]:
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    miou = version.tags.get(MIOU_TAG)
    return str(version.version), (float(miou) if miou is not None else -math.inf)


def log_and_gate(run, segmenter_file: str | Path, classes: list[str], val_miou: float, name: str) -> GateDecision:
    """Log the segmenter as a model of `run`, register it under `name`, tag it with its val mIoU and move
    `champion` to it when it is better than the current champion (strictly)."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    client = run.client
    mlflow.set_tracking_uri(client.tracking_uri)
    example = np.zeros((1, 64, 64, 3), np.uint8)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                               outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]))
    with mlflow.start_run(run_id=run.run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=SegmenterModel(),
                                       artifacts={"segmenter": str(segmenter_file)}, signature=signature,
                                       input_example=example, registered_model_name=name,
                                       metadata={"classes": list(classes)}, pip_requirements=[])
    version = str(info.registered_model_version)
    client.set_model_version_tag(name, version, MIOU_TAG, repr(float(val_miou)))
    champion_version, champion_miou = current_champion(client, name)
    promoted = champion_version is None or val_miou > champion_miou
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    decision = GateDecision(version, float(val_miou), champion_version, champion_miou, promoted)
    run.log_metrics({"registry.candidate_miou": decision.candidate_miou, "registry.promoted": float(promoted),
                     **({"registry.champion_miou": champion_miou} if champion_miou not in (None, -math.inf) else {})})
    run.set_tags({"registry.model": name, "registry.version": version, "registry.decision": decision.message()})
    return decision


def gate_summary(client, experiment: str, name: str, since_ms: int) -> str:
    """One line: the gate decision of the latest `evaluate` run started since `since_ms` (epoch ms), and
    the champion now; says so when no evaluation ran (nothing changed)."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.start_time >= {since_ms} and "
                              "tags.`dvc.stage` = 'evaluate'", order_by=["attributes.start_time DESC"],
                              max_results=1) if exp else []
    version, miou = current_champion(client, name)
    champion = f"{name}@{CHAMPION} = version {version} (val mIoU {miou:.4f})" if version else f"{name}: no {CHAMPION} yet"
    if not runs or "registry.decision" not in runs[0].data.tags:
        return f"no new model evaluated in this run (nothing changed); {champion}"
    return f"{runs[0].data.tags['registry.decision']}; {champion}"
