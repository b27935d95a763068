"""Drop-area projects: a git + DVC project whose dataset is `dvc add`ed (made once per session: tests copy the
`drop_project` fixture's), and complete custom drops for it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from helpers.data import make_custom, rgb_image
from wsss.ops.drops import READY
from wsss.validation import validate_drop

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def run(*cmd, cwd):
    subprocess.run(list(cmd), cwd=cwd, check=True, capture_output=True, text=True)


def make_project(path: Path) -> Path:
    """A git + DVC project whose dataset (custom format, 3 images) is tracked with `dvc add`."""
    path.mkdir(parents=True)
    (path / "dvc.yaml").write_text("stages: {}\n")
    (path / "params.yaml").write_text(yaml.safe_dump({"data": {"root": "data/raw/base", "format": "custom"},
                                                      "ops": {"push": False}}))
    make_custom(path / "data/raw/base")
    run("git", "init", "-q", cwd=path)
    run(sys.executable, "-m", "dvc", "init", "-q", cwd=path)
    run(sys.executable, "-m", "dvc", "add", "-q", "data/raw/base", cwd=path)
    run(*GIT, "add", "-A", cwd=path)
    run(*GIT, "commit", "-qm", "base", cwd=path)
    validate_drop(path / "data/raw/base", report_dir=path / "reports/validation")  # what `prepare` leaves
    return path


def copy_project(template: Path, path: Path) -> Path:
    """A project of `make_project`'s as a copy of one made before (the `drop_project` session fixture): git,
    DVC cache and validation report included, for a test to change as it likes."""
    shutil.copytree(template, path, symlinks=True)
    return path


def make_drop(root: Path, seed: int, labels=("cat", "dog;traffic light")) -> Path:
    """A complete custom drop (its _READY marker written last) of new images (distinct content per seed);
    labels by name."""
    (root / "images").mkdir(parents=True)
    lines = ["image,labels"]
    for k, lab in enumerate(labels):
        rgb_image(seed + k).save(root / "images" / f"{seed}-{k}.png")
        lines.append(f'{seed}-{k}.png,"{lab}"')
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    (root / READY).write_text("")
    return root


def dvc_file(project: Path) -> bytes:
    return (project / "data/raw/base.dvc").read_bytes()
