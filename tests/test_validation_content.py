"""Drops wrong in meaning, not in their files: each kind is caught on small fabricated drops (label/mask
disagreement, blank frames, near-duplicates within a drop and against the dataset, EXIF orientation, drift),
and the label audit's confident learning is checked on probabilities with known label errors. The audit
with the real toy CLIP, ingest's policies and the clean toy drop: tests/test_drop_meaning.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.content import near_copy, photo, save_with_orientation
from helpers.data import VOC_IDS, make_custom, make_voc, palette_mask, voc_id, write_xml
from wsss.cam.runner import input_key
from wsss.data.custom import read_custom
from wsss.data.images import load_rgb, peek_size
from wsss.data.voc import read_voc
from wsss.settings import ValidationSettings
from wsss.validation import validate_dataset
from wsss.validation.audit import audit_labels, multi_hot
from wsss.validation.content import HASH_BYTES, hash_bits, near_pairs
from wsss.validation.store import ContentStore, load_store

SIZE = (96, 72)


def lines(res, word: str, key: str) -> str:
    title = res.summary["checks"][key]["title"]
    found = [ln for ln in res.verdicts + res.warnings if ln.startswith(f"{word} {title}")]
    assert len(found) == 1, (res.verdicts, res.warnings)
    return found[0]


def photo_drop(root, rows, split="train"):
    """A custom drop of photo-like images: rows = [(file name, image, labels)]; no masks."""
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("cat\ndog\ntraffic light\n")
    for name, image, _ in rows:
        image.save(root / "images" / name)
    (root / "labels.csv").write_text("image,labels,split\n" + "".join(
        f'{name},"{labels}",{split if isinstance(split, str) else split[k]}\n' for k, (name, _, labels) in enumerate(rows)))
    return read_custom(root)


# ---- label / mask agreement ------------------------------------------------------------------------------
def test_a_mask_painting_a_class_the_labels_do_not_name_is_refused_naming_both_sets(tmp_path):
    voc = make_voc(tmp_path / "voc")
    write_xml(voc / "Annotations" / f"{VOC_IDS[0]}.xml", VOC_IDS[0], ["cat"])  # the XML says cat ...
    palette_mask([voc_id("dog")]).save(voc / "SegmentationClassAug" / f"{VOC_IDS[0]}.png")  # ... the mask dog
    res = validate_dataset(read_voc(voc), tmp_path / "r")
    assert not res.success and res.summary["failed_checks"] == ["mask_classes_labelled"]
    assert f"{VOC_IDS[0]} (mask paints {{dog}}, labels {{cat}}: dog not labelled)" in lines(res, "FAIL",
                                                                                          "mask_classes_labelled")
    # a custom drop, two classes painted, one labelled
    custom = make_custom(tmp_path / "custom", rows=[{"image": "a.png", "labels": "cat;dog"},
                                                    {"image": "b.png", "labels": "dog"}])
    palette_mask([2, 3]).save(custom / "masks" / "b.png")
    res = validate_dataset(read_custom(custom), tmp_path / "r2")
    line = lines(res, "FAIL", "mask_classes_labelled")
    assert "b (mask paints {dog, traffic light}, labels {dog}: traffic light not labelled)" in line


def test_a_label_with_no_pixel_is_a_warning_naming_the_image(tmp_path):
    voc = make_voc(tmp_path / "voc")
    write_xml(voc / "Annotations" / f"{VOC_IDS[2]}.xml", VOC_IDS[2], ["bird", "horse"])  # horse: not painted
    res = validate_dataset(read_voc(voc), tmp_path / "r")
    assert res.success and res.verdicts == []
    line = lines(res, "WARN", "labels_painted")
    assert f"{VOC_IDS[2]} (horse labelled but not painted in SegmentationClassAug/{VOC_IDS[2]}.png)" in line
    assert len(res.warnings) == 1 and res.summary["warned_checks"] == ["labels_painted"]


# ---- blank frames ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["refuse", "warn"])
def test_blank_frames_are_refused_or_warned_per_the_setting(tmp_path, policy):
    flat = Image.new("RGB", SIZE, (90, 120, 200))
    almost = Image.new("RGB", SIZE, (250, 250, 250))
    almost.putpixel((3, 3), (0, 0, 0))  # one speck: nearly no entropy
    ds = photo_drop(tmp_path / "d", [("flat.png", flat, "cat"), ("almost.png", almost, "dog"),
                                     ("ok.png", photo(1, SIZE), "cat")])
    res = validate_dataset(ds, tmp_path / "r", rules=ValidationSettings(blank=policy))
    word = "FAIL" if policy == "refuse" else "WARN"
    assert res.success is (policy == "warn")
    line = lines(res, word, "not_blank")
    assert "2 images" in line and "flat (images/flat.png: one flat colour)" in line
    assert "almost (images/almost.png: grey-level entropy 0.00 bits < 1)" in line
    assert res.table.set_index("id").loc["ok", "entropy"] > 5


# ---- near-duplicates -------------------------------------------------------------------------------------
def test_near_duplicates_within_a_drop_are_warned(tmp_path):
    a = photo(3, SIZE)
    ds = photo_drop(tmp_path / "d", [("a.png", a, "cat"), ("a-again.jpg", near_copy(a), "cat"),
                                     ("b.png", photo(4, SIZE), "dog")])
    res = validate_dataset(ds, tmp_path / "r")
    assert res.success
    line = lines(res, "WARN", "no_near_duplicate")
    assert line.startswith("WARN no near-duplicate image: 2 images") and "a-again in this drop's train" in line
    assert "b" not in res.table.loc[res.table["near_duplicates"] != "", "id"].tolist()


def test_a_near_copy_of_a_val_image_is_refused_and_of_a_train_image_warned(tmp_path):
    base_images = [photo(k, SIZE) for k in range(4)]
    base = photo_drop(tmp_path / "base", [(f"b{k}.png", im, "cat") for k, im in enumerate(base_images)],
                      split=["train", "train", "val", "val"])
    store = validate_dataset(base, tmp_path / "rb", mode="dataset").store(base.vocab.names)
    store.save(tmp_path / "content.npz")
    store = load_store(tmp_path / "content.npz")  # compared through the stored hashes, not the images
    drop = photo_drop(tmp_path / "drop", [("leak.jpg", near_copy(base_images[2]), "cat"),
                                          ("again.jpg", near_copy(base_images[0]), "cat"),
                                          ("new.png", photo(9, SIZE), "cat")])
    res = validate_dataset(drop, tmp_path / "r", reference=store)
    assert not res.success and res.summary["failed_checks"] == ["no_held_out_duplicate"]
    assert "leak (images/leak.jpg ≈ b2 in the dataset's val" in lines(res, "FAIL", "no_held_out_duplicate")
    assert "again (images/again.jpg ≈ b0 in the dataset's train" in lines(res, "WARN", "no_near_duplicate")
    # within a whole dataset (prepare) a near-copy across splits is reported, never refused
    both = photo_drop(tmp_path / "both", [("t.png", base_images[1], "cat"), ("v.jpg", near_copy(base_images[1]), "cat")],
                      split=["train", "val"])
    assert validate_dataset(both, tmp_path / "r3", mode="dataset").success
    assert not validate_dataset(both, tmp_path / "r4", mode="drop").success


def test_near_pairs_equal_brute_force():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (37, HASH_BYTES), dtype=np.uint8)
    a[5] = a[9]
    a[7] = a[3] ^ np.eye(HASH_BYTES, dtype=np.uint8)[0]  # one bit apart
    dist = np.array([[int(np.unpackbits(x ^ y).sum()) for y in a] for x in a])
    want = {(i, j, int(dist[i, j])) for i in range(37) for j in range(i + 1, 37) if dist[i, j] <= 100}
    assert set(near_pairs(a, a, 100, same=True)) == want and (3, 7, 1) in want and (5, 9, 0) in want
    assert hash_bits(["zz", None]).sum() == 0


# ---- EXIF orientation ------------------------------------------------------------------------------------
def phone_drop(root):
    """A phone photo stored 96x72 with orientation 6 (displayed 72x96), its mask drawn on the displayed
    picture, plus a tagged photo without a mask and an ordinary one."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("cat\ndog\n")
    save_with_orientation(photo(1, SIZE), root / "images" / "phone.jpg", 6)
    palette_mask([1], size=(72, 96)).save(root / "masks" / "phone.png")
    save_with_orientation(photo(2, SIZE), root / "images" / "tagged.jpg", 8)
    photo(3, SIZE).save(root / "images" / "plain.png")
    palette_mask([2], size=SIZE).save(root / "masks" / "plain.png")
    (root / "labels.csv").write_text('image,labels\nphone.jpg,cat\ntagged.jpg,dog\nplain.png,dog\n')
    return root


def test_exif_orientation_is_reported_for_what_it_is(tmp_path):
    root = phone_drop(tmp_path / "d")
    res = validate_dataset(read_custom(root), tmp_path / "r")  # data.exif: ignore (the default)
    assert res.summary["failed_checks"] == ["mask_size"]
    assert ("phone (mask 72x96, image 96x72 as stored; its EXIF orientation 6 displays it 72x96, as the mask was "
            "drawn: set data.exif: apply)") in lines(res, "FAIL", "mask_size")
    warn = lines(res, "WARN", "exif_orientation")  # the unmasked tagged photo: told, not refused
    assert "1 image" in warn and "EXIF orientation 8 (width and height swap); read as stored 96x72, displayed 72x96" in warn
    assert res.summary["exif"] == {"policy": "ignore", "tagged": 2}


def test_exif_apply_reads_every_image_as_displayed(tmp_path):
    root = phone_drop(tmp_path / "d")
    ds = read_custom(root, exif="apply")
    assert dict(zip(ds.table["id"], zip(ds.table["width"], ds.table["height"]))) == {
        "phone": (72, 96), "tagged": (72, 96), "plain": (96, 72)}
    res = validate_dataset(ds, tmp_path / "r")
    assert res.success and res.warnings == [] and res.verdicts == []
    phone = root / "images" / "phone.jpg"
    assert load_rgb(phone).size == (96, 72) and load_rgb(phone, exif="apply").size == (72, 96)
    assert peek_size(phone, exif="apply") == (72, 96)
    row = ds.table.set_index("id").loc["phone"]
    assert ds.load_rgb(row).size == (72, 96)
    # outputs made from these pixels (CAMs, and through their keys masks and the segmenter) go stale when the
    # policy turns an image, and only then
    plain = root / "images" / "plain.png"
    assert input_key(phone, (1,), "k", "apply") != input_key(phone, (1,), "k", "ignore")
    assert input_key(plain, (2,), "k", "apply") == input_key(plain, (2,), "k", "ignore")


# ---- drift -----------------------------------------------------------------------------------------------
def reference_store(n: int, cat_share: float, size=(500, 375)) -> ContentStore:
    labels = np.zeros((n, 3), np.uint8)
    labels[: round(n * cat_share), 0] = 1
    labels[round(n * cat_share):, 1] = 1
    return ContentStore(np.array([f"r{i}" for i in range(n)]), np.array(["train"] * n), np.array([""] * n),
                        np.random.default_rng(1).integers(0, 256, (n, HASH_BYTES), dtype=np.uint8),
                        np.tile(np.array(size, np.int32), (n, 1)), labels, ("cat", "dog", "traffic light"))


def test_drift_is_a_warning_with_numbers(tmp_path):
    drop = photo_drop(tmp_path / "d", [(f"{k}.png", photo(20 + k, SIZE), "cat") for k in range(12)])
    res = validate_dataset(drop, tmp_path / "r", reference=reference_store(200, 0.1))
    assert res.success and res.verdicts == []
    assert "WARN cat: 100% of the drop's images, 10% of the dataset's" in res.warnings
    assert "WARN dog: 0% of the drop's images, 90% of the dataset's" in res.warnings
    assert "WARN image size: median area 83² px in the drop, 433² px in the dataset" in res.warnings


def test_no_drift_warning_when_the_drop_is_like_the_dataset_or_too_small_to_tell(tmp_path):
    rows = [(f"{k}.png", photo(40 + k, SIZE), "cat" if k % 2 else "dog") for k in range(12)]
    res = validate_dataset(photo_drop(tmp_path / "d", rows), tmp_path / "r", reference=reference_store(200, 0.5, SIZE))
    assert res.success and res.warnings == []
    # 3 of 4 images with cat where the dataset has 40 %: more than drift_share, but within chance at 4 images
    few = photo_drop(tmp_path / "f", [(f"{k}.png", photo(60 + k, SIZE), "cat" if k else "dog") for k in range(4)])
    assert validate_dataset(few, tmp_path / "r2", reference=reference_store(200, 0.4, SIZE)).warnings == []


# ---- the label audit (confident learning) on known label errors ------------------------------------------
def noisy_world(n=300, c=6, swaps=30, seed=0):
    """Probabilities a good classifier gives, labels with `swaps` images having one label swapped."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((n, c), np.uint8)
    for i in range(n):
        truth[i, rng.choice(c, rng.integers(1, 3), replace=False)] = 1
    probs = np.where(truth, rng.uniform(0.35, 0.95, (n, c)), rng.uniform(0.0, 0.25, (n, c))).astype(np.float32)
    given = truth.copy()
    swapped = {}
    for i in rng.choice(n, swaps, replace=False):
        true = rng.choice(np.flatnonzero(truth[i]))
        wrong = rng.choice(np.flatnonzero(truth[i] == 0))
        given[i, true], given[i, wrong] = 0, 1
        swapped[int(i)] = (int(true) + 1, int(wrong) + 1)
    return given, probs, swapped


def test_audit_flags_swapped_labels_with_their_suggestion():
    given, probs, swapped = noisy_world()
    result = audit_labels(given, probs, min_images=50)
    rows = result.by_row()
    assert sum(i in rows for i in swapped) >= 0.8 * len(swapped)
    clean = [i for i in range(len(given)) if i not in swapped]
    assert sum(i in rows for i in clean) <= 0.05 * len(clean)
    right = 0  # the finding points at the fix: the wrong label with the true one suggested, or the true one missing
    for i, (true, wrong) in swapped.items():
        right += any((f.kind == "absent" and f.label == wrong and f.suggestion == true)
                     or (f.kind == "missing" and f.label == true) for f in rows.get(i, []))
    assert right >= 0.8 * len(swapped)
    f = rows[next(i for i in swapped if i in rows)][0]
    assert f.text(["c1", "c2", "c3", "c4", "c5", "c6"]).count("CLIP") + f.text(list("abcdef")).count("add") >= 1


def test_audit_needs_enough_images_and_examples_per_class():
    given, probs, _ = noisy_world(n=40, swaps=4)
    assert audit_labels(given, probs, min_images=50).skipped.startswith("40 images, fewer than")
    given[:, 5] = 0  # a class nobody labels: no threshold to learn for it
    assert "[6] not audited" in audit_labels(given, probs, min_images=10).skipped
    assert multi_hot([(1, 3), (), (2,)], 3).tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]


def test_a_clean_drop_has_no_content_warning(tmp_path):
    rows = [(f"{k}.png", photo(80 + k, SIZE), ["cat", "dog", "cat;dog"][k % 3]) for k in range(9)]
    res = validate_dataset(photo_drop(tmp_path / "d", rows), tmp_path / "r")
    assert res.success and res.verdicts == [] and res.warnings == []
    table = pd.read_csv(tmp_path / "r" / "images.csv")
    assert table["phash"].str.len().eq(2 * HASH_BYTES).all() and (table["entropy"] > 4).all()


def test_wsss_validate_prints_one_line_per_finding_and_exits_by_severity(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from wsss.cli import app

    monkeypatch.chdir(tmp_path)  # no project here: the shipped defaults
    a = photo(5, SIZE)
    photo_drop(tmp_path / "warned", [("a.png", a, "cat"), ("a2.jpg", near_copy(a), "cat")])
    out = CliRunner().invoke(app, ["validate", str(tmp_path / "warned")])
    assert out.exit_code == 0, out.output
    assert [ln.split(":")[0] for ln in out.stdout.splitlines()] == ["WARN no near-duplicate image", "PASSED"]
    photo_drop(tmp_path / "blank", [("flat.png", Image.new("RGB", SIZE), "cat"), ("ok.png", photo(6, SIZE), "dog")])
    out = CliRunner().invoke(app, ["validate", str(tmp_path / "blank")])
    assert out.exit_code == 1 and out.stdout.splitlines()[0].startswith("FAIL image is not blank: 1 image — flat")
    phone_drop(tmp_path / "phone")
    out = CliRunner().invoke(app, ["validate", str(tmp_path / "phone"), "--exif", "apply"])
    assert out.exit_code == 0 and out.stdout.splitlines() == [out.stdout.splitlines()[-1]]  # no finding at all
