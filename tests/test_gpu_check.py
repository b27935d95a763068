"""`benchmarks/gpu_check.py --tiny` runs end to end on a CPU, as on the bare GPU machine it is made for: in a
fresh interpreter where MLflow, Prefect, DVC, Great Expectations and boto3 (and open_clip's optional hub
packages) cannot be imported, without the project installed or on PYTHONPATH. Every row of its table has a
number and every check a result; it imports nothing beyond the GPU machine's packages and the wheels the
README says to carry."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
# not on the GPU machine: the pipeline's services, and what open_clip only tries to import
ABSENT = ("mlflow", "prefect", "dvc", "great_expectations", "boto3", "botocore", "pandas", "huggingface_hub",
          "timm", "safetensors", "transformers")
ON_THE_MACHINE = ("torch", "torchvision", "numpy", "PIL", "cv2", "scipy", "yaml", "typer", "tqdm")
CARRIED = {"open_clip", "ftfy", "wcwidth", "regex"}  # the wheels benchmarks/README.md says to carry
OWN = {"wsss", "cam_reference"}
SECTIONS = {"cam": 15, "prompts": 3, "seg": 3, "predict": 2}  # rows per section in a full table


def blocking_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose interpreters (the torchrun child too) fail to import ABSENT, via sitecustomize."""
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys

        class _Hide:
            \"\"\"A meta-path finder that finds nothing of ABSENT, as if not installed (find_spec → None).\"\"\"

            def __init__(self, inner):
                self.inner = inner

            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {ABSENT!r}:
                    return None
                find = getattr(self.inner, "find_spec", None)
                return find(name, path, target) if find is not None else None

            def __getattr__(self, attr):
                return getattr(self.inner, attr)

        sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env.update(PYTHONPATH=str(stub), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    return env


def test_blocker_works(tmp_path):
    env = blocking_env(tmp_path)
    probe = textwrap.dedent(f"""
        import importlib
        for m in {ABSENT!r}:
            try:
                importlib.import_module(m)
                print(m)
            except ImportError:
                pass
    """)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def machine_modules(env: dict[str, str]) -> set[str]:
    """Third-party top-level modules that importing the GPU machine's own packages brings in here."""
    code = textwrap.dedent(f"""
        import importlib, sys
        for m in {ON_THE_MACHINE!r}:
            try:
                importlib.import_module(m)
            except ImportError:
                pass
        print(" ".join(sorted({{n.split(".")[0] for n in sys.modules}} - set(sys.stdlib_module_names))))
    """)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_gpu_check_tiny_runs_without_the_pipeline_services(tmp_path):
    env = blocking_env(tmp_path)
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["failed"] == []
    rows = report["rows"]
    for row in rows:
        assert row["error"] is None, row
        assert isinstance(row["value"], (int, float)) and math.isfinite(row["value"]), row
        if row["check"] is not None:
            assert isinstance(row["ok"], bool), row
            assert row["result"] in (("met", "missed") if row["goal"] else ("pass",)), row
    counts = {s: sum(r["section"] == s for r in rows) for s in SECTIONS}
    assert counts == SECTIONS
    names = " / ".join(r["name"] for r in rows)
    for part in ("GradCAM max", "CAA mean", "fp16 autocast", "bf16 autocast", "reference, per class",
                 "engine, batched", "speed-up", "train_prompts, batch", "train_segmenter",
                 "torchrun --nproc_per_node 1", "scales 0.75,1,1.25 + flip"):
        assert part in names, part
    assert sum(r["check"] is not None and not r["goal"] for r in rows) >= 10
    # the table printed and the environment recorded
    assert "| section | measurement |" in proc.stdout
    assert report["environment"]["tiny"] is True and report["environment"]["torch"]
    # nothing beyond the GPU machine's packages, the carried wheels and the project
    extra = set(report["modules"]) - machine_modules(env)
    assert extra <= CARRIED | OWN, sorted(extra - CARRIED - OWN)
    assert not set(report["modules"]) & set(ABSENT)


def test_gpu_check_refuses_without_a_gpu(tmp_path):
    env = blocking_env(tmp_path)  # CUDA_VISIBLE_DEVICES="": no GPU even where there is one
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--tiny" in proc.stderr
    assert not (tmp_path / "x.json").exists()
