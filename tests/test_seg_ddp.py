"""`torchrun` with 2 CPU processes (gloo) through the stage's own entry point: rank 0 runs the Prefect flow
and MLflow run, rank 1 only trains; the checkpoint it writes is what `evaluate` scores and registers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from wsss.data.manifest import write_dataset
    from wsss.data.readers import read_dataset_source
    from wsss.toyworld import generate_toyworld

    root = tmp_path_factory.mktemp("ddp")
    generate_toyworld(root / "world", num_train=8, num_val=4, workers=1, progress=False)
    ds = read_dataset_source(root / "world", format="voc")
    write_dataset(ds, root / "prepared")
    _pseudo_masks(ds, root / "masks")
    clip = {"model": "wsss-toy-vit", "pretrained": str(REPO / "assets/toyclip/wsss-toy-vit.pt")}
    _learned_prompts(root / "prompts", clip, list(ds.vocab.names))
    params = {"data": {"root": "world", "prepared": "prepared"}, "tracking": {"experiment": "ddp"}, "clip": clip,
              "prompts": {"out": "prompts"}, "masks": {"out": "masks"},
              "train": {"out": "train", "arch": "toy", "head": "deeplabv3", "width": 4,
                        "iterations": 4, "batch_size": 2, "checkpoint_every": 2, "log_every": 1, "device": "cpu",
                        "prompt_refine": 0.05,  # SemPLeS's refinement inside DDP training
                        "self_training": 1, "self_training_scales": [1.0]},  # each rank re-labels its share
              "evaluate": {"out": "seg", "scales": [1.0], "flip": False, "examples": 2, "registered_model": "ddp"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text("stages: {}\n")
    return root


def _pseudo_masks(ds, out: Path) -> None:
    """Stand-in pseudo masks (the ground truth, keyed as the masks stage keys its PNGs)."""
    from wsss.data.palette import load_mask, save_palette_png

    for row in ds.table.itertuples(index=False):
        save_palette_png(out / f"{row.id}.png", load_mask(ds.root / row.mask), key="test")


def _learned_prompts(out: Path, clip: dict, classes: list[str]) -> None:
    """A prompts file for the toy CLIP (the refinement's frozen p_k): the class names' own text embeddings
    stand in for learned ones, which is all the term needs."""
    import torch

    from wsss.clip.model import load_clip
    from wsss.clip.text import encode_class_texts
    from wsss.prompts.store import clip_identity, save_prompts

    model, tokenizer = load_clip(clip["model"], clip["pretrained"], device="cpu", precision="fp32")
    embeddings = encode_class_texts(model, tokenizer, classes, ["a photo of {}."])
    save_prompts(out / "prompts.pt", embeddings, torch.zeros(len(classes), 1, 8), classes,
                 clip_identity(clip["model"], clip["pretrained"]), "a photo of {}.", {"key": "test"})


def _env(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "WSSS_PARAMS", "DVC_ROOT")}
    return {**env, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "OMP_NUM_THREADS": "1"}


def test_torchrun_two_processes_then_evaluate_reads_the_checkpoint(project):
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "stages.train"],
                          cwd=project, env=_env(project), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = __import__("torch").load(project / "train/checkpoint.pt", weights_only=True)
    assert state["iteration"] == 4 and (project / "train/segmenter.pt").is_file()
    from wsss.data.palette import stored_png_key

    labels = sorted((project / "train/self_training/round1/labels").glob("*.png"))
    assert len(labels) == 8 and {stored_png_key(p) for p in labels} == {state["key"] + ":self-training-1"}
    student = __import__("torch").load(project / "train/self_training/round1/checkpoint.pt", weights_only=True)
    saved = __import__("torch").load(project / "train/segmenter.pt", weights_only=True)
    assert student["iteration"] == 4 and saved["meta"]["iterations"] == 8  # the student is what is saved
    assert all((saved["state_dict"][k] == v).all() for k, v in student["model"].items())
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ddp")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`dvc.stage` = 'train'")
    assert len(runs) == 1  # one MLflow run for the two processes (rank 0's)
    loss = client.get_metric_history(runs[0].info.run_id, "loss")  # teacher then student, steps continuing
    assert sorted(m.step for m in loss) == [1, 2, 3, 4, 5, 6, 7, 8]
    refine = client.get_metric_history(runs[0].info.run_id, "loss_refine")  # λ₃ · L_refine, every step
    assert len(refine) == 8 and all(0 < m.value < 0.05 * 10 for m in refine)
    assert 0 <= runs[0].data.metrics["self_training_1_ignored_share"] < 1
    assert runs[0].data.metrics["images_per_second"] > 0

    proc = subprocess.run([sys.executable, "-m", "stages.evaluate"], cwd=project, env=_env(project),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert 0 <= metrics["seg"]["val"]["miou_ms"] <= 1
    assert (project / "seg/examples.png").is_file() and (project / "seg/single_scale/confusion.json").is_file()
    assert client.get_model_version_by_alias("ddp", "champion").version in (1, "1")
    again = subprocess.run([sys.executable, "-m", "stages.train"], cwd=project, env=_env(project),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "train: nothing to do" in again.stdout


def test_kill_9_mid_training_then_rerun_continues_from_the_checkpoint(project):
    import signal
    import time

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(out="long", iterations=1000, checkpoint_every=20, log_every=20, target="ground_truth",
                           self_training=0, prompt_refine=0.0)
    (project / "long.yaml").write_text(yaml.safe_dump(params))
    env = {**_env(project), "WSSS_PARAMS": str(project / "long.yaml")}
    proc = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=project, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = project / "long/checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)  # mid-way between two checkpoints (~14 ms an iteration on one core)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    import torch

    done = torch.load(checkpoint, weights_only=True)["iteration"]
    assert 0 < done < 1000, "killed after it finished: use more iterations"
    rerun = subprocess.run([sys.executable, "-m", "stages.train"], cwd=project, env=env, capture_output=True,
                           text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ddp")
    last = client.search_runs([exp.experiment_id], filter_string="tags.`dvc.stage` = 'train'",
                              order_by=["attributes.start_time DESC"])[0]
    assert last.info.status == "FINISHED" and last.data.metrics["resumed_from"] >= done  # it did not restart
    assert torch.load(checkpoint, weights_only=True)["iteration"] == 1000
