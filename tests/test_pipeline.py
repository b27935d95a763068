"""Integration: `dvc repro` of the whole default pipeline in a temporary copy of the repository, on a
tiny toy world, then the outputs and the MLflow runs are checked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from helpers.projects import TINY, commit_and_repro, copy_repo, shrink

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    work = tmp_path_factory.mktemp("repo")
    copy_repo(work)
    shrink(work / "params.yaml", TINY)
    env, proc = commit_and_repro(work)
    return work, env, proc


def test_prepare_outputs(repro):
    work, _, _ = repro
    prepared = work / "data/prepared"
    meta = json.loads((prepared / "dataset.json").read_text())
    assert meta["images"] == 24 and meta["splits"] == {"train": 16, "val": 8}
    manifest = (prepared / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "id,image,width,height,split,labels,mask" and len(manifest) == 25
    assert json.loads((prepared / "validation.json").read_text())["success"] is True


def test_mlflow_run_for_prepare(repro):
    work, env, _ = repro
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("wsss")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`dvc.stage` = 'prepare'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name.endswith(":prepare")
    assert run.data.params["data.format"] == "voc" and run.data.params["validation.min_side"] == "16"
    assert run.data.metrics["images"] == 24
    assert "mlflow.parentRunId" in run.data.tags


def test_rerun_is_a_noop(repro):
    work, env, _ = repro
    proc = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert "Data and pipelines are up to date" in proc.stdout, proc.stdout


@pytest.mark.parametrize("stage", ["cams", "prompts", "train"])
def test_forced_stage_with_nothing_to_do_keeps_its_outputs(repro, stage):
    """DVC reruns a stage when only a scheduling setting changed (or with -f): nothing to compute, and
    every declared output is still there for DVC to record."""
    work, env, _ = repro
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "-f", "-s", stage], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{stage}: nothing to do" in proc.stdout + proc.stderr


def test_pseudo_mask_reports(repro):
    work, _, _ = repro
    metrics = json.loads((work / "reports/pseudo/metrics.json").read_text())
    assert metrics == {"pseudo": {split: {"miou": metrics["pseudo"][split]["miou"]} for split in ("train", "val")}}
    assert 0 < metrics["pseudo"]["train"]["miou"] <= 1
    scores = json.loads((work / "reports/pseudo/tables/train/metrics.json").read_text())
    assert scores["miou"] == metrics["pseudo"]["train"]["miou"] and "miou_strict" in scores
    ablation = json.loads((work / "reports/pseudo/ablation.json").read_text())
    assert ablation["split"] == "train"
    assert [r["setting"] for r in ablation["rows"]][:9] == [f"{v}: {s}" for v in ("words", "learned", "both")
                                                            for s in ("CAM", "CAA", "CRF")]
    assert (work / "reports/pseudo/ablation.md").read_text().startswith("# Pseudo-mask ablation")
    for name in ("examples.png", "train_per_class_iou.png", "train_confusion.png"):
        assert (work / "reports/pseudo/plots" / name).stat().st_size > 1000
    assert len(list((work / "data/masks").glob("*.png"))) == 24
    assert len(list((work / "data/cams").glob("*.npz"))) == 24
    assert len(list((work / "data/cams_words").glob("*.npz"))) == 24


def test_prompts_stage_outputs(repro):
    """The prompts file, its readable report, a loss curve, and an MLflow run with one loss point per epoch."""
    work, env, _ = repro
    import torch
    from mlflow.tracking import MlflowClient

    state = torch.load(work / "data/prompts/prompts.pt", weights_only=True)
    assert state["classes"][0] == "triangle" and state["clip"]["model"] == "wsss-toy-vit"
    assert state["embeddings"].shape[0] == 9 and state["clip"]["weights"].startswith("sha256:")
    described = json.loads((work / "reports/prompts/prompts.json").read_text())
    assert set(described) == set(state["classes"]) and all(d["background_words"] for d in described.values())
    assert (work / "reports/prompts/loss.png").stat().st_size > 1000
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("wsss")
    run = client.search_runs([exp.experiment_id], filter_string="tags.`dvc.stage` = 'prompts'")[0]
    epochs = int(run.data.params["prompts.epochs"])
    assert len(client.get_metric_history(run.info.run_id, "loss")) == epochs
    assert run.data.metrics["pairs"] > 0



def test_segmenter_is_trained_evaluated_and_registered(repro):
    work, env, _ = repro
    from mlflow.tracking import MlflowClient

    metrics = json.loads((work / "reports/metrics.json").read_text())
    assert set(metrics["seg"]["val"]) == {"miou", "miou_ms"}
    assert 0 <= metrics["seg"]["val"]["miou_ms"] <= 1
    multi = json.loads((work / "reports/seg/multi_scale/metrics.json").read_text())
    assert multi["miou"] == metrics["seg"]["val"]["miou_ms"] and multi["images"] == 8
    for name in ("per_class.json", "examples.png", "multi_scale/per_class.csv", "multi_scale/confusion.png"):
        assert (work / "reports/seg" / name).is_file(), name
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("wsss-segmenter", "champion")
    assert float(champion.tags["val_miou"]) == pytest.approx(metrics["seg"]["val"]["miou_ms"])
    proc = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert "reports/metrics.json" in proc.stdout


def test_dvc_exp_show_compares_experiments(repro):
    """Metrics are git-tracked outputs, so each experiment commit carries its own numbers."""
    work, env, _ = repro
    subprocess.run(["git", "add", "-A"], cwd=work, check=True, env=env)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], cwd=work,
                   check=True, env=env)
    for name, alphas in (("alpha3", "[1,3]"),):  # one experiment beside the baseline commit
        proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-n", name, "-S",
                               f"evaluate_masks.alphas={alphas}"], cwd=work, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=300, check=True).stdout
    metrics, commits = {}, {}
    for commit in json.loads(shown):
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev["data"]
                name = exp.get("name") or data.get("name")
                metrics[name] = data["metrics"]["reports/pseudo/metrics.json"]["data"]
                commits[name] = data["rev"]
    assert "alpha3" in metrics, shown[:2000]
    for name, alpha in (("alpha3", "3"),):
        ablation = json.loads(subprocess.run(["git", "show", f"{commits[name]}:reports/pseudo/ablation.json"], cwd=work,
                                             env=env, capture_output=True, text=True, check=True).stdout)
        miou = {r["setting"]: r["miou"] for r in ablation["rows"]}
        assert 0 < miou[f"CAM α={alpha}"] <= 1 and 0 < metrics[name]["pseudo"]["train"]["miou"] <= 1
    table = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=300, check=True).stdout
    columns = table.splitlines()[0].split()
    assert columns == ["Path", "pseudo.train.miou", "pseudo.val.miou", "seg.val.miou", "seg.val.miou_ms"], table


def test_prompts_and_train_never_read_ground_truth(repro):
    """With every ground-truth mask unreadable, the prompts and train stages still learn the same prompts
    and the same segmenter (nothing they do, select or log reads a ground-truth mask)."""
    work, env, _ = repro
    import torch

    gt = work / "data/raw/toyworld/SegmentationClass"
    before = torch.load(work / "data/prompts/prompts.pt", weights_only=True)
    seg_before = torch.load(work / "data/train/segmenter.pt", weights_only=True)
    hidden = gt.with_name("SegmentationClass.hidden")
    gt.rename(hidden)
    try:
        gt.mkdir()
        for f in hidden.iterdir():
            (gt / f.name).write_bytes(b"not a png")  # any read of a mask fails
        for name in ("prompts/prompts.pt", "prompts/checkpoint.pt", "prompts/features.pt",  # crops recomputed
                     "train/segmenter.pt", "train/checkpoint.pt"):
            (work / "data" / name).unlink()
        for stage in ("prompts", "train"):
            proc = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finally:
        shutil.rmtree(gt)
        hidden.rename(gt)
    after = torch.load(work / "data/prompts/prompts.pt", weights_only=True)
    torch.testing.assert_close(after["embeddings"], before["embeddings"])
    seg_after = torch.load(work / "data/train/segmenter.pt", weights_only=True)
    for name, tensor in seg_before["state_dict"].items():
        torch.testing.assert_close(seg_after["state_dict"][name], tensor, msg=name)


def test_refused_drop_leaves_prepared_untouched(repro):
    """Runs last: it corrupts the raw data of the temporary copy."""
    work, env, _ = repro
    manifest = work / "data/prepared/manifest.csv"
    before = manifest.read_bytes()
    image = sorted((work / "data/raw/toyworld/JPEGImages").iterdir())[0]
    image.write_bytes(image.read_bytes()[:200])
    proc = subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert f"FAIL image decodes: 1 image — {image.stem}" in out
    assert any(line.startswith("error: prepare failed: ") for line in proc.stderr.splitlines())
    assert "Traceback" not in proc.stderr
    assert manifest.read_bytes() == before
