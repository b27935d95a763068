"""Dataset drops: list → fetch → validate → merge (`dvc add`, git commit) or quarantine with the report.
Idempotent, interruption-safe, and a refused drop leaves the dataset as it was. Local drop areas here;
the same code against an S3 server in test_ops_s3.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from helpers.drops import copy_project, dvc_file, make_drop
from wsss.data.drops import read_with_drops
from wsss.data.readers import read_dataset_source
from wsss.ops import commands
from wsss.ops.drops import READY, LocalDropArea
from wsss.ops.ingest import ingest
from wsss.settings import load_settings

pytestmark = pytest.mark.slow


@pytest.fixture
def world(tmp_path, monkeypatch, drop_project):
    project = copy_project(drop_project, tmp_path / "project")
    area = tmp_path / "area"
    (area / "incoming").mkdir(parents=True)
    monkeypatch.chdir(project)
    monkeypatch.setenv("GIT_AUTHOR_NAME", "t")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "t@t")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "t")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "t@t")
    return project, area


def test_good_drop_merged_bad_and_duplicate_quarantined(world):
    project, area = world
    make_drop(area / "incoming/good", 500)
    make_drop(area / "incoming/bad", 600, labels=("cat", "zebra"))  # not in the vocabulary
    shutil.copytree(project / "data/raw/base", area / "incoming/dup")  # the dataset's own images again
    (area / "incoming/dup" / READY).write_text("")
    before = dvc_file(project)
    outcomes = {o.drop: o for o in ingest(LocalDropArea(area), load_settings(), project, log=lambda s: None)}

    assert outcomes["good"].status == "merged" and outcomes["good"].images == 2
    assert outcomes["bad"].status == "quarantined" and "labels are in the vocabulary" in outcomes["bad"].detail
    assert outcomes["dup"].status == "quarantined" and "already in the dataset" in outcomes["dup"].detail
    merged = project / "data/raw/base/drops/good"
    assert json.loads((merged / "drop.json").read_text())["images"] == 2
    assert sorted(p.name for p in (merged / "images").iterdir()) == ["500-0.png", "500-1.png"]
    assert not (project / "data/raw/base/drops/bad").exists()
    assert dvc_file(project) != before  # a new dataset version ...
    log = subprocess.run(["git", "log", "--format=%s", "-1", "--", "data/raw/base.dvc"], cwd=project,
                         capture_output=True, text=True).stdout
    assert log.strip() == "data: merge drop(s) good"  # ... committed
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "data/raw/base.dvc"], cwd=project,
                            capture_output=True, text=True).stdout
    assert "changed" not in status
    # the area: nothing in incoming, the good drop archived, the bad one beside its report (Data Docs)
    assert not any((area / "incoming").iterdir())
    assert (area / "accepted/good/labels.csv").is_file()
    assert (area / "quarantine/bad/labels.csv").is_file()
    report = area / "quarantine/bad.report"
    assert not json.loads((report / "summary.json").read_text())["success"]
    assert (report / "gx/uncommitted/data_docs/local_site/index.html").is_file()

    # the manifest sees one dataset: base rows, then the drop's under unique ids and root-relative paths
    settings = load_settings()
    ds = read_with_drops(settings.data.root, settings.data.drops,
                         lambda p, fmt, vocab: read_dataset_source(p, format=fmt or "custom", classes=vocab),
                         settings.data.splits)
    drop_rows = ds.table[ds.table["id"].str.startswith("good__")]
    assert len(ds) == 5 and len(drop_rows) == 2
    assert all((ds.root / p).is_file() for p in drop_rows["image"])
    assert set(drop_rows["labels"]) == {(1,), (2, 3)}


def test_same_drop_twice_changes_nothing_and_a_renamed_conflict_is_refused(world):
    project, area = world
    make_drop(area / "incoming/good", 500)
    ingest(LocalDropArea(area), load_settings(), project, log=lambda s: None)
    version = dvc_file(project)
    commits = subprocess.run(["git", "rev-list", "--count", "HEAD"], cwd=project, capture_output=True, text=True).stdout

    make_drop(area / "incoming/good", 500)  # delivered again, same bytes
    [again] = ingest(LocalDropArea(area), load_settings(), project, log=lambda s: None)
    assert again.status == "already processed" and "warning" not in again.detail  # its twin is in accepted/
    assert dvc_file(project) == version
    assert subprocess.run(["git", "rev-list", "--count", "HEAD"], cwd=project, capture_output=True,
                          text=True).stdout == commits
    assert not (area / "incoming/good").exists()

    make_drop(area / "incoming/good", 700)  # another drop under a merged drop's name
    [clash] = ingest(LocalDropArea(area), load_settings(), project, log=lambda s: None)
    assert clash.status == "error" and "already merged" in clash.detail
    assert (area / "incoming/good").is_dir() and dvc_file(project) == version


def test_failed_validation_leaves_the_dataset_unchanged(world):
    project, area = world
    make_drop(area / "incoming/bad", 600, labels=("cat", ""))  # an image without labels
    before = dvc_file(project)
    files = sorted(p.relative_to(project) for p in (project / "data/raw/base").rglob("*"))
    [o] = ingest(LocalDropArea(area), load_settings(), project, log=lambda s: None)
    assert o.status == "quarantined"
    assert dvc_file(project) == before
    assert sorted(p.relative_to(project) for p in (project / "data/raw/base").rglob("*")) == files
    assert not (project / ".wsss/staging/bad").exists()


def test_unreadable_drop_is_quarantined_with_the_reason(world):
    project, area = world
    (area / "incoming/empty").mkdir()
    (area / "incoming/empty/notes.txt").write_text("no labels here")
    (area / "incoming/empty" / READY).write_text("")
    [o] = ingest(LocalDropArea(area), load_settings(), project, log=lambda s: None)
    assert o.status == "quarantined" and "incoming/empty: cannot tell the dataset format" in o.detail
    assert json.loads((area / "quarantine/empty.report/summary.json").read_text())["verdicts"]


def test_a_half_uploaded_drop_waits_for_its_marker(world):
    project, area = world
    src, half = make_drop(area.parent / "src", 500), area / "incoming/half"
    shutil.copytree(src, half, ignore=shutil.ignore_patterns(READY, "500-1.png"))  # uploading: labels.csv and
    # one of its two images so far; the marker comes last
    before, lines = dvc_file(project), []
    assert ingest(LocalDropArea(area), load_settings(), project, log=lines.append) == []
    assert "drop half: still uploading (no _READY marker yet); left for a later run" in lines
    assert sorted(p.name for p in half.rglob("*")) == ["500-0.png", "images", "labels.csv"]  # untouched
    assert not (area / "quarantine").exists() and not (area / "accepted").exists()
    assert not (project / "reports/drops/half").exists() and dvc_file(project) == before  # never validated

    shutil.copy(src / "images/500-1.png", half / "images")  # the upload completes, marker last
    shutil.copy(src / READY, half)
    [o] = ingest(LocalDropArea(area), load_settings(), project, log=lambda s: None)
    assert o.status == "merged" and o.images == 2
    assert not (area / "incoming/half").exists() and not (area / "accepted/half" / READY).exists()


def test_interrupted_versioning_leaves_the_dataset_as_it_was_and_a_rerun_finishes(world, monkeypatch):
    project, area = world
    make_drop(area / "incoming/good", 500)
    before = dvc_file(project)
    real = commands.dvc

    def interrupted(*args, **kw):
        if args[0] == "add":  # Ctrl-C while `dvc add` runs
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(commands, "dvc", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest(LocalDropArea(area), load_settings(), project, log=lambda s: None)
    assert dvc_file(project) == before
    assert not (project / "data/raw/base/drops/good").exists()
    assert (area / "incoming/good/labels.csv").is_file()  # the drop is still waiting

    monkeypatch.setattr(commands, "dvc", real)
    [o] = ingest(LocalDropArea(area), load_settings(), project, log=lambda s: None)
    assert o.status == "merged" and dvc_file(project) != before


def test_toy_world_stage_output_cannot_take_drops(tmp_path, monkeypatch):
    from wsss.errors import WsssError
    from wsss.ops.ingest import TrackedDataset
    from wsss.settings import Settings

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WsssError, match=r"tracked with `dvc add`.*toy world"):
        TrackedDataset(Settings(), tmp_path)


def test_wsss_drops_deliver_ls_ingest(world, tmp_path):
    project, area = world

    def wsss(*args):
        return subprocess.run([sys.executable, "-m", "wsss.cli", "drops", *args, "--area", str(area)], cwd=project,
                              capture_output=True, text=True, timeout=300)

    proc = wsss("deliver", str(make_drop(tmp_path / "week-49", 800)))
    assert proc.returncode == 0 and proc.stdout.startswith(f"delivered 3 file(s) to {area}/incoming/week-49")
    assert json.loads((area / "incoming/week-49" / READY).read_text())["files"] == 3
    (area / "incoming/week-48/images").mkdir(parents=True)  # a drop still being copied in by hand
    listing = [line.split() for line in wsss("ls").stdout.splitlines()]
    assert listing[0] == ["incoming", "1", "week-49"] and listing[3] == ["uploading", "1", "week-48"]
    shutil.rmtree(area / "incoming/week-48")
    proc = wsss("ingest")
    assert proc.returncode == 0, proc.stderr
    assert "drop week-49: merged (2 images)" in proc.stdout
    assert wsss("ls").stdout.splitlines()[1].split() == ["accepted", "1", "week-49"]
    proc = wsss("deliver", str(tmp_path / "nope"))
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path / 'nope'}: not a folder"
    make_drop(tmp_path / "week-50", 900)
    assert wsss("deliver", str(tmp_path / "week-50")).returncode == 0
    proc = wsss("deliver", str(tmp_path / "week-50"))  # never over a waiting drop
    assert proc.returncode == 2 and "a drop of that name is waiting" in proc.stderr

    from wsss.ops.lock import workspace_lock

    with workspace_lock(project):  # a retrain holds the workspace: an ingest beside it does nothing
        proc = wsss("ingest")
    assert proc.returncode == 2 and "holds this workspace" in proc.stderr
    assert (area / "incoming/week-50/labels.csv").is_file()


def test_the_same_images_in_two_drops_of_one_run_merge_once(world, tmp_path):
    project, area = world
    make_drop(area / "incoming/a", 500)
    make_drop(area / "incoming/b", 500)  # the same two images again
    outcomes = {o.drop: o for o in ingest(LocalDropArea(area), load_settings(), project, log=lambda s: None)}
    assert outcomes["a"].status == "merged"
    assert outcomes["b"].status == "quarantined" and "already in the dataset" in outcomes["b"].detail
    # and in a later run, before `prepare` has seen drop a: its record carries its images' hashes
    make_drop(area / "incoming/c", 500)
    [c] = ingest(LocalDropArea(area), load_settings(), project, log=lambda s: None)
    assert c.status == "quarantined" and "already in the dataset" in c.detail


def test_a_crash_between_merge_and_version_takes_the_merge_back_out(world, monkeypatch):
    from wsss.ops import ingest as ingest_module

    project, area = world
    make_drop(area / "incoming/a", 500)
    make_drop(area / "incoming/b", 700)
    before = dvc_file(project)
    real = ingest_module._validate

    def crash_on_b(staged, name, *a, **kw):
        if name == "b":
            raise RuntimeError("a bug while validating b")
        return real(staged, name, *a, **kw)

    monkeypatch.setattr(ingest_module, "_validate", crash_on_b)
    with pytest.raises(RuntimeError):
        ingest(LocalDropArea(area), load_settings(), project, log=lambda s: None)
    assert not (project / "data/raw/base/drops/a").exists() and dvc_file(project) == before
    assert (area / "incoming/a/labels.csv").is_file() and (area / "incoming/b/labels.csv").is_file()


def test_a_move_cut_short_is_finished_by_the_next_run(world):
    project, area = world
    make_drop(area / "incoming/good", 500)
    ingest(LocalDropArea(area), load_settings(), project, log=lambda s: None)
    shutil.copytree(area / "accepted/good", area / "incoming/good")  # the copy happened, the delete did not
    (area / "incoming/good" / READY).write_text("")
    version = dvc_file(project)
    [o] = ingest(LocalDropArea(area), load_settings(), project, log=lambda s: None)
    assert o.status == "already processed" and not (area / "incoming/good").exists()
    assert dvc_file(project) == version and (area / "accepted/good/labels.csv").is_file()


def test_drop_names_that_could_escape_are_not_drops(tmp_path):
    from wsss.errors import WsssError
    from wsss.ops.drops import safe_rel, valid_name

    assert valid_name("week-49") and valid_name("drop_2026.12")
    assert not any(valid_name(n) for n in (".", "..", ".hidden", "a b", "x.report", "", "-x"))
    assert safe_rel("images/a.png", "d") == "images/a.png"
    for rel in ("/etc/passwd", "a//b", "../x", "a/./b", ""):
        with pytest.raises(WsssError, match="would leave its drop folder"):
            safe_rel(rel, "d")


def test_a_version_stopped_before_its_commit_is_committed_by_the_next_run(world, monkeypatch):
    from wsss.ops.ingest import TrackedDataset

    project, area = world
    make_drop(area / "incoming/good", 500)
    real = TrackedDataset.publish

    def stopped(self, names, log):
        raise KeyboardInterrupt  # after `dvc add`, before push and commit

    monkeypatch.setattr(TrackedDataset, "publish", stopped)
    with pytest.raises(KeyboardInterrupt):
        ingest(LocalDropArea(area), load_settings(), project, log=lambda s: None)
    monkeypatch.setattr(TrackedDataset, "publish", real)
    [o] = ingest(LocalDropArea(area), load_settings(), project, log=lambda s: None)
    assert o.status == "already merged" and "archived to" in o.detail
    log = subprocess.run(["git", "log", "--format=%s", "-1", "--", "data/raw/base.dvc"], cwd=project,
                         capture_output=True, text=True).stdout
    assert log.strip() == "data: merge drop(s) good"
