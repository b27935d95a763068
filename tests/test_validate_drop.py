"""`wsss validate` and the `validate-drop` flow: one entry point, a report of its own, class-list and
labels files found the same way, warnings on the console, repeated split-list lines reported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers.data import VOC_IDS, make_custom, make_voc, rgb_image
from wsss.errors import DataError
from wsss.settings import ValidationSettings
from wsss.validation import default_report_dir, validate_drop


def wsss(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsss.cli", "validate", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def summary_at(cwd, name: str) -> dict:
    return json.loads((cwd / "reports" / "drops" / name / "summary.json").read_text())


@pytest.fixture
def drop(tmp_path):
    """A custom drop at <tmp>/incoming/drop-42 (classes.txt and labels.csv inside), and a work dir."""
    root = make_custom(tmp_path / "incoming" / "drop-42")
    work = tmp_path / "work"
    work.mkdir()
    return root, work


def test_readme_example_files_relative_to_the_drop(drop):
    root, work = drop  # classes.txt / labels.csv are only in the drop: found there
    proc = wsss(str(root), "--format", "custom", "--classes", "classes.txt", "--labels", "labels.csv", cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("PASSED: 3 images")
    summary = summary_at(work, "drop-42")  # the default report: reports/drops/<drop folder name>/
    assert summary["success"] and summary["images"] == 3
    assert not (work / "reports" / "validation").exists()  # never the prepare stage's report folder
    assert summary["limits"] == {"max_pixels": ValidationSettings().max_pixels,
                                 "min_side": ValidationSettings().min_side}


def test_files_relative_to_the_current_directory_come_first(drop):
    root, work = drop
    (work / "classes.txt").write_text("cat\ndog\nbird\n")  # shadows the drop's classes.txt (traffic light)
    # b.png's mask paints class 3 (the drop's traffic light): labelled here by the shadowing list's 3rd name
    (work / "labels.csv").write_text('image,labels\n"a.png","cat;dog"\n"b.png","bird"\n')
    proc = wsss(str(root), "--format", "custom", "--classes", "classes.txt", "--labels", "labels.csv", cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = summary_at(work, "drop-42")
    assert summary["images"] == 2 and list(summary["class_balance"]["drop"]) == ["cat", "dog", "bird"]


def test_file_found_nowhere_is_one_line_naming_both_places(drop):
    root, work = drop
    proc = wsss(str(root), "--format", "custom", "--classes", "nope.txt", cwd=work)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert str(work / "nope.txt") in proc.stderr and str(root / "nope.txt") in proc.stderr
    with pytest.raises(DataError, match="labels file not found"):
        validate_drop(root, format="custom", labels="nope.csv", report_dir=work / "r")


def test_classes_and_labels_resolve_alike_for_voc(tmp_path, monkeypatch):
    root = make_voc(tmp_path / "voc", classes_txt=True)
    (root / "labels.json").write_text(json.dumps({VOC_IDS[3]: ["aeroplane", "dog"]}))  # the mask paints aeroplane
    monkeypatch.chdir(tmp_path)  # neither file is here: both come from the drop root
    res = validate_drop(root, classes="classes.txt", labels="labels.json", splits=["val"])
    assert res.success, res.verdicts
    assert res.table.set_index("id").loc[VOC_IDS[3], "labels"] == "1 12"  # + dog, from the labels file
    assert (tmp_path / "reports" / "drops" / "voc" / "summary.json").is_file()
    assert default_report_dir(root) == default_report_dir(str(root) + "/.")


def test_grayscale_warning_is_printed(drop):
    root, work = drop
    rgb_image(7).convert("L").save(root / "images" / "b.png")
    proc = wsss(str(root), cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warn = [line for line in proc.stdout.splitlines() if line.startswith("WARN")]
    assert warn == ["WARN image mode L: 1 image converted to RGB (e.g. b)"]
    assert summary_at(work, "drop-42")["warnings"] == warn  # and still in the JSON
    assert "1 warning;" in proc.stdout.splitlines()[-1]


def test_split_list_naming_an_id_twice(tmp_path):
    root = make_voc(tmp_path / "voc")
    val = root / "ImageSets" / "Segmentation" / "val.txt"
    val.write_text(val.read_text() + f"{VOC_IDS[4]}\n")
    proc = wsss(str(root), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fails = [line for line in proc.stdout.splitlines() if line.startswith("FAIL ")]
    assert fails == [f"FAIL each image is listed once: 1 image — {VOC_IDS[4]} (JPEGImages/{VOC_IDS[4]}.jpg: "
                     f"listed 2 times in ImageSets/Segmentation/val.txt)"]
    assert proc.stdout.splitlines()[-1].startswith("FAILED: 6 images, 1 failing expectation(s)")


def test_flow_and_cli_give_the_same_summary(drop, prefect_harness, monkeypatch, capsys):
    from flows import validate_drop as flow_module

    root, work = drop
    rgb_image(8).convert("CMYK").save(root / "images" / "d.jpg")
    with open(root / "labels.csv", "a") as f:
        f.write('"d.jpg","cat"\n"c.png","dog"\n')  # a warning (CMYK) and a failure (c.png listed twice)
    cli = wsss(str(root), "--labels", "labels.csv", cwd=work)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    by_cli = summary_at(work, "drop-42")
    (work / "reports").rename(work / "reports-cli")

    monkeypatch.chdir(work)
    code = flow_module.main([str(root), "--labels", "labels.csv"])
    by_flow = summary_at(work, "drop-42")
    assert code == 1
    assert by_flow == by_cli and by_flow["warnings"] and by_flow["verdicts"]
    assert capsys.readouterr().out == cli.stdout  # the same console lines
