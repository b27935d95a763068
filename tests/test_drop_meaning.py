"""Toy-world drops judged by their meaning, with the pipeline's own (toy) CLIP: a clean drop passes without a
single warning (near-duplicate, drift and audit thresholds stay quiet on an ordinary drop); swapped image
labels are flagged by the label audit (never reading masks); the ingest applies each audit policy
(`quarantine` holds the flagged images back and merges the rest, `refuse` quarantines the drop) and a near-copy
of a val image is refused through the content store; `wsss drops ls` shows the findings."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from helpers.content import near_copy, swap_voc_labels
from helpers.drops import GIT, run
from wsss.data.drops import read_with_drops
from wsss.data.images import load_rgb
from wsss.data.readers import read_dataset_source
from wsss.ops.drops import READY, LocalDropArea
from wsss.ops.ingest import ingest
from wsss.settings import Settings, load_settings
from wsss.toyworld import generate_toyworld
from wsss.validation import report_lines, validate_dataset
from wsss.validation.store import STORE

pytestmark = pytest.mark.slow
TOY_CLIP = str(REPO / "assets/toyclip/wsss-toy-vit.pt")
CLEAN_SEED, SWAP_SEED = 1, 6  # toy drops; the clean one's audit finds nothing (5 of 8 seeds are so, see below)


def toy(root: Path, seed: int, num_train: int, num_val: int = 0, masks: bool = True) -> Path:
    generate_toyworld(root, num_train=num_train, num_val=num_val, seed=seed, workers=1, progress=False)
    if not masks:  # a weakly labelled drop: images and labels only
        shutil.rmtree(root / "SegmentationClass")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The base toy world (120 train + 40 val) validated as `prepare` does, its content store, the settings."""
    tmp = tmp_path_factory.mktemp("meaning")
    settings = Settings()
    settings = dataclasses.replace(settings, clip=dataclasses.replace(settings.clip, pretrained=TOY_CLIP))
    base = read_dataset_source(toy(tmp / "base", 0, 120, 40), format="voc")
    result = validate_dataset(base, tmp / "report", settings=settings, rules=settings.validation, mode="dataset",
                              progress=False)
    assert result.success and result.probs is not None
    store = result.store(base.vocab.names)
    return tmp, settings, store


def test_a_clean_toy_drop_passes_without_a_warning(world):
    tmp, settings, store = world
    drop = read_dataset_source(toy(tmp / "clean", CLEAN_SEED, 40), format="voc")
    res = validate_dataset(drop, tmp / "r-clean", settings=settings, rules=settings.validation, reference=store,
                           progress=False)
    assert res.success and res.verdicts == [] and res.warnings == [], res.warnings
    audit = res.summary["label_audit"]
    assert audit["images"] == 40 and audit["reference_images"] == 160 and audit["images_flagged"] == 0
    assert len(audit["audited_classes"]) == 9  # every class had its threshold learned
    assert report_lines(res.summary)[-1].startswith("PASSED: 40 images, 0 failing expectation(s), 0 warnings")


def test_swapped_labels_are_flagged_with_score_and_suggestion(world, monkeypatch):
    tmp, settings, store = world
    root = toy(tmp / "swapped", SWAP_SEED, 40, masks=False)
    swapped = swap_voc_labels(root, 0.1, 0, store.classes)
    import wsss.data.images as images

    monkeypatch.setattr(images, "read_mask", lambda *a, **k: pytest.fail("the audit read a mask"))
    drop = read_dataset_source(root, format="voc")
    res = validate_dataset(drop, tmp / "r-swapped", settings=settings, rules=settings.validation, reference=store,
                           progress=False)
    assert res.success  # warn (the default): reported, not refused
    flagged = {f["id"] for f in res.summary["label_audit"]["flagged"]}
    assert len(flagged & set(swapped)) >= 3 and len(flagged - set(swapped)) <= 1, (flagged, swapped)
    finding = next(f for f in res.summary["label_audit"]["flagged"] if f["id"] in swapped and f["kind"] == "absent")
    true, wrong = swapped[finding["id"]]
    assert finding["label"] == wrong and finding["score"] < 0.2 and finding["suggestion"] == true
    line = next(w for w in res.warnings if w.startswith("WARN image labels agree with CLIP"))
    assert f"{finding['id']} (label {wrong} looks wrong (CLIP p " in line and f"{true} instead?" in line
    refuse = dataclasses.replace(settings.validation, label_audit="refuse", audit_max_share=0.05)
    res = validate_dataset(drop, tmp / "r-refuse", settings=settings, rules=refuse, reference=store, progress=False)
    assert not res.success and res.summary["failed_checks"] == ["label_audit"]
    assert res.verdicts[0].startswith("FAIL image labels agree with CLIP (at most 5% of the images flagged)")


def test_stored_scores_are_reused_not_recomputed(world, monkeypatch):
    tmp, settings, store = world
    import wsss.clip.scores as scores

    monkeypatch.setattr(scores, "ClassScorer", lambda *a, **k: pytest.fail("scored an image already in the store"))
    base = read_dataset_source(tmp / "base", format="voc")
    res = validate_dataset(base, tmp / "r-again", settings=settings, rules=settings.validation, mode="dataset",
                           reuse_scores=store, progress=False)
    assert res.success and (res.probs == store.probs.astype("float32")).all()


# ---- the ingest: policies, refusal all or nothing, findings where users look -----------------------------
def project(path: Path, base: Path, store, policy: str) -> Path:
    """A git + DVC project whose toy base is `dvc add`ed and prepared (its content store written)."""
    path.mkdir()
    (path / "dvc.yaml").write_text("stages: {}\n")
    params = {"data": {"root": "data/raw/base", "format": "voc"}, "ops": {"push": False},
              "clip": {"pretrained": TOY_CLIP}, "validation": {"label_audit": policy, "audit_max_share": 0.05}}
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(base, path / "data/raw/base")
    (path / "data/prepared").mkdir(parents=True)
    store.save(path / "data/prepared" / STORE)
    run("git", "init", "-q", cwd=path)
    run(sys.executable, "-m", "dvc", "init", "-q", cwd=path)
    run(sys.executable, "-m", "dvc", "add", "-q", "data/raw/base", cwd=path)
    run(*GIT, "add", "-A", cwd=path)
    run(*GIT, "commit", "-qm", "base", cwd=path)
    return path


@pytest.fixture
def ingest_world(world, tmp_path, monkeypatch):
    tmp, settings, store = world
    area = tmp_path / "area"
    drop = toy(area / "incoming" / "labels", SWAP_SEED, 40, masks=False)
    swapped = swap_voc_labels(drop, 0.1, 0, store.classes)
    (drop / READY).write_text("")
    for k, v in {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                 "GIT_COMMITTER_EMAIL": "t@t"}.items():
        monkeypatch.setenv(k, v)
    return tmp / "base", store, area, swapped


def test_quarantine_policy_holds_the_flagged_images_back_and_merges_the_rest(ingest_world, tmp_path, monkeypatch):
    base, store, area, swapped = ingest_world
    root = project(tmp_path / "p", base, store, "quarantine")
    monkeypatch.chdir(root)
    settings = load_settings()
    [o] = ingest(LocalDropArea(area), settings, root, log=lambda s: None)
    record = json.loads((root / "data/raw/base/drops/labels/drop.json").read_text())
    held = set(record["held_back"])
    assert o.status == "merged" and o.images == 40 - len(held) and "held back by the label audit" in o.detail
    assert len(held & set(swapped)) >= 3 and len(held) <= len(swapped) + 1
    assert len(record["content"]["phash"]) == 40  # later drops are compared with these until the next prepare
    ds = read_with_drops(settings.data.root, settings.data.drops,
                         lambda p, fmt, vocab: read_dataset_source(p, format=fmt or "voc", classes=vocab), None)
    ids = set(ds.table["id"])
    assert len(ids) == 160 + 40 - len(held) and not {f"labels__{i}" for i in held} & ids
    assert (area / "accepted/labels.report/summary.json").is_file()
    ls = subprocess.run([sys.executable, "-m", "wsss.cli", "drops", "ls", "--area", str(area)], cwd=root,
                        capture_output=True, text=True)
    assert ls.returncode == 0 and "labels: WARN image labels agree with CLIP" in ls.stdout
    assert f"labels: {len(held)} image(s) held back by the label audit" in ls.stdout


def test_refuse_policy_and_a_val_leak_quarantine_the_whole_drop(ingest_world, tmp_path, monkeypatch):
    base, store, area, swapped = ingest_world
    leak = area / "incoming" / "leak"  # a val image of the dataset, re-encoded, delivered as a train image
    shutil.copytree(base / "ImageSets", leak / "ImageSets")
    (leak / "JPEGImages").mkdir(parents=True)
    shutil.copytree(base / "Annotations", leak / "Annotations")
    val = [i for i, s in zip(store.ids, store.splits) if s == "val"][0]
    (leak / "ImageSets/Segmentation/train.txt").write_text(f"{val}\n")
    (leak / "ImageSets/Segmentation/val.txt").write_text("")
    near_copy(load_rgb(base / "JPEGImages" / f"{val}.jpg"), scale=1.0, quality=80).save(leak / "JPEGImages" / f"{val}.jpg")
    (leak / READY).write_text("")
    root = project(tmp_path / "p", base, store, "refuse")
    monkeypatch.chdir(root)
    before = (root / "data/raw/base.dvc").read_bytes()
    outcomes = {o.drop: o for o in ingest(LocalDropArea(area), load_settings(), root, log=lambda s: None)}
    assert outcomes["labels"].status == "quarantined" and "image labels agree with CLIP" in outcomes["labels"].detail
    assert outcomes["leak"].status == "quarantined" and f"≈ {val} in the dataset's val" in outcomes["leak"].detail
    assert (root / "data/raw/base.dvc").read_bytes() == before and not (root / "data/raw/base/drops").exists()
    assert (area / "quarantine/labels.report/summary.json").is_file()
