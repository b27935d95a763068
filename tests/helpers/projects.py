"""Projects the slow tests run stages and pipelines in: a copy of this repository shrunk to a tiny toy world
(`copy_repo`, `shrink`, `TINY`), and a bare folder with a prepared toy world for single stages
(`stage_project`, `stage_env`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO

CHECKPOINT = str(REPO / "assets/toyclip/wsss-toy-vit.pt")
TINY = {
    "toyworld": {"num_train": 16, "num_val": 8},
    "prompts": {"epochs": 4},
    "train": {"iterations": 6, "batch_size": 4, "checkpoint_every": 3, "log_every": 1, "width": 4},
    "evaluate": {"scales": [0.75, 1.0], "examples": 2},
}


def copy_repo(dst: Path) -> None:
    """The repository's files as git sees them (tracked and untracked, not ignored), into `dst`."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def shrink(params_file: Path, overrides: dict) -> None:
    """Update sections of a params file in place (`TINY`: a pipeline that runs in minutes)."""
    params = yaml.safe_load(params_file.read_text())
    for section, values in overrides.items():
        params[section].update(values)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def commit_copy(work: Path) -> None:
    """`git init` + one commit of everything in `work` (a `copy_repo` copy): DVC experiments and the
    retrain flow need a git repository."""
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=work, check=True, capture_output=True)


def commit_and_repro(work: Path, **extra_env: str) -> tuple[dict, subprocess.CompletedProcess]:
    """`commit_copy`, then `dvc repro` in `work` with its own MLflow store (and `extra_env`); returns (the
    environment the stages ran with, the finished `dvc repro`), which must have succeeded."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra_env}
    commit_copy(work)
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    return env, proc


def stage_project(root: Path, num_train: int, num_val: int) -> Path:
    """A project folder with a generated, prepared toy world and a params.yaml pointing at it."""
    from wsss.data.manifest import write_dataset
    from wsss.data.readers import read_dataset_source
    from wsss.toyworld import generate_toyworld

    root.mkdir(parents=True, exist_ok=True)
    generate_toyworld(root / "world", num_train=num_train, num_val=num_val, workers=1, progress=False)
    write_dataset(read_dataset_source(root / "world", format="voc"), root / "prepared")
    params = {"data": {"root": "world", "prepared": "prepared"},
              "clip": {"pretrained": CHECKPOINT, "device": "cpu"},
              "text": {"background_prompts": "words"},  # no prompts stage here
              "cams": {"overlays": 0, "out": "cams"}, "masks": {"out": "masks", "workers": 1},
              "tracking": {"experiment": "safety"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text("stages: {}\n")  # marks the project root
    return root


def stage_env(root: Path, **extra) -> dict:
    """The environment of a stage run in `root`: its own MLflow store, no inherited API or params file."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "WSSS_PARAMS", "DVC_ROOT")}
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", **extra}
