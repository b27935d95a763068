"""The model registry: each distinct segmenter is logged to MLflow as a model (signature, input example,
its class list) and registered once: a version carries the segmenter's content hash, and evaluating the same
segmenter again (the pipeline rerun for another reason) reuses its version instead of adding one. The alias
`champion` moves to the evaluated version only when its val mIoU beats the current champion's — the gate.
The decision and both numbers go to the run.

The logged model is an MLflow pyfunc (`mlflow models serve` serves it) taking uint8 images [N, H, W, 3] or
encoded image files (`wsss.seg.serving` describes both forms) and returning label maps (0 = background,
1..C = the classes in `metadata.classes`); it loads its weights with `weights_only=True`
(`wsss.seg.infer.load_segmenter`). Its signature declares only the `palette` parameter: MLflow checks a
request against one input schema, and none admits both an unnamed tensor and a column, so the model checks
each form itself (a bad request is one line, HTTP 400).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np

CHAMPION = "champion"
MIOU_TAG = "val_miou"
DIGEST_TAG = "segmenter_sha256"


class SegmenterModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from wsss.seg.infer import load_segmenter

        self.model, self.info = load_segmenter(context.artifacts["segmenter"])

    def predict(self, context, model_input, params=None):
        from mlflow.exceptions import MlflowException

        from wsss.errors import DataError
        from wsss.seg import serving
        from wsss.seg.infer import predict_labels

        try:
            encoded = serving.encoded_images(model_input)
            if encoded is None:
                images = serving.pixel_images(model_input)
                return np.stack([predict_labels(self.model, im, self.info) for im in images])
            labels = [predict_labels(self.model, im, self.info) for im in serving.decode(encoded)]
            return serving.encoded_rows(labels, bool((params or {}).get(serving.PALETTE, False)))
        except DataError as e:
            raise MlflowException.invalid_parameter_value(str(e)) from None


def segmenter_digest(path: str | Path) -> str:
    """The content hash of what a segmenter file computes: its architecture, classes, normalisation and
    weights. Not the file's bytes (each save differs) nor its meta (the key of the inputs it came from)."""
    import torch

    from wsss.io import load_versioned
    from wsss.seg.infer import FORMAT

    state = load_versioned(path, FORMAT, "segmenter file", "run `dvc repro train`")
    digest = hashlib.sha256()
    for key in sorted(set(state) - {"meta", "state_dict"}):
        digest.update(f"{key}={state[key]!r}\n".encode())
    for name, tensor in sorted(state["state_dict"].items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class GateDecision:
    version: str
    candidate_miou: float
    champion_version: str | None
    champion_miou: float | None
    promoted: bool
    reused: bool = False  # the same segmenter was registered before: its version, no new one

    def message(self) -> str:
        same = " (the same segmenter as before: no new version)" if self.reused else ""
        if self.champion_version is None:
            return f"version {self.version} (val mIoU {self.candidate_miou:.4f}) is the first: it becomes {CHAMPION}"
        if self.champion_version == self.version:
            return f"version {self.version} (val mIoU {self.candidate_miou:.4f}) is {CHAMPION} already{same}"
        verdict = "beats" if self.promoted else "does not beat"
        return (f"version {self.version} (val mIoU {self.candidate_miou:.4f}) {verdict} {CHAMPION} version "
                f"{self.champion_version} ({self.champion_miou:.4f})" + (": alias moved" if self.promoted else "")
                + same)


def current_champion(client, name: str) -> tuple[str | None, float | None]:
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    miou = version.tags.get(MIOU_TAG)
    return str(version.version), (float(miou) if miou is not None else -math.inf)


def log_and_gate(run, segmenter_file: str | Path, classes: list[str], val_miou: float, name: str) -> GateDecision:
    """Register the segmenter under `name` (logged as a model of `run`; a segmenter registered before keeps
    its version), tag the version with this val mIoU and move `champion` to it when it is better than the
    current champion (strictly)."""
    client = run.client
    digest = segmenter_digest(segmenter_file)
    known = registered_version(client, name, digest)
    version = known or register(run, segmenter_file, classes, name, digest)
    champion_version, champion_miou = current_champion(client, name)
    client.set_model_version_tag(name, version, MIOU_TAG, repr(float(val_miou)))
    promoted = champion_version is None or (champion_version != version and val_miou > champion_miou)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    decision = GateDecision(version, float(val_miou), champion_version, champion_miou, promoted, known is not None)
    run.log_metrics({"registry.candidate_miou": decision.candidate_miou, "registry.promoted": float(promoted),
                     **({"registry.champion_miou": champion_miou} if champion_miou not in (None, -math.inf) else {})})
    run.set_tags({"registry.model": name, "registry.version": version, "registry.decision": decision.message(),
                  "registry.reused": str(decision.reused)})
    return decision


def registered_version(client, name: str, digest: str) -> str | None:
    """The first version of `name` holding the segmenter with this content hash, if any."""
    found = client.search_model_versions(f"name = '{name}' and tags.`{DIGEST_TAG}` = '{digest}'")
    return str(min(int(v.version) for v in found)) if found else None


def register(run, segmenter_file: str | Path, classes: list[str], name: str, digest: str) -> str:
    """Log the segmenter as a pyfunc model of `run` and register it as a new version of `name`."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import DataType, ParamSchema, ParamSpec

    from wsss.seg import serving

    mlflow.set_tracking_uri(run.client.tracking_uri)
    signature = ModelSignature(params=ParamSchema([ParamSpec(serving.PALETTE, DataType.boolean, False)]))
    example = {serving.ENCODED: [serving.palette_png(np.zeros((8, 8), np.uint8))]}  # any PNG is an image
    with mlflow.start_run(run_id=run.run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=SegmenterModel(),
                                       artifacts={"segmenter": str(segmenter_file)}, signature=signature,
                                       input_example=example, metadata={"classes": list(classes)},
                                       pip_requirements=[])
    return str(mlflow.register_model(info.model_uri, name, tags={DIGEST_TAG: digest}).version)


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
