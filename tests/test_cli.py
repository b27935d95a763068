"""`wsss` command line: exit codes, one-line user errors, the validate verdicts."""

from __future__ import annotations

import subprocess
import sys

from helpers.data import make_voc

from conftest import REPO


def wsss(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsss.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_help_is_the_map_of_the_product():
    out = wsss("--help").stdout
    for command in ("repro", "stage", "validate", "select-template", "toyworld", "train-toy-clip"):
        assert command in out


def test_validate_clean_and_broken_drops(tmp_path):
    root = make_voc(tmp_path / "voc")
    ok = wsss("validate", str(root), "--report-dir", str(tmp_path / "r1"), "--min-side", "8")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASSED" in ok.stdout and (tmp_path / "r1/summary.json").exists()

    image = sorted((root / "JPEGImages").iterdir())[0]
    image.write_bytes(image.read_bytes()[:100])
    (root / "SegmentationClassAug" / f"{sorted((root / 'JPEGImages').iterdir())[1].stem}.png").unlink()
    bad = wsss("validate", str(root), "--report-dir", str(tmp_path / "r2"), "--min-side", "8")
    assert bad.returncode == 1
    fails = [line for line in bad.stdout.splitlines() if line.startswith("FAIL")]
    assert any(f"image decodes: 1 image — {image.stem}" in line for line in fails), bad.stdout
    assert len(fails) == 2 and "FAILED" in bad.stdout


def test_user_error_is_one_line_exit_2(tmp_path):
    proc = wsss("validate", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "nowhere" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_stage_is_a_user_error():
    proc = wsss("stage", "nope")
    assert proc.returncode == 2 and "unknown stage 'nope'" in proc.stderr
