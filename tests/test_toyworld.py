"""The toy world generator: deterministic, VOC layout, masks agree with the annotations, planted co-occurrence."""

from __future__ import annotations

import hashlib
import inspect
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.errors import ConfigError
from wsss.toyworld import BACKGROUNDS, CLASSES, COOCCURRENCE, generate_toyworld
from wsss.toyworld import generate as gen
from wsss.toyworld.captions import Claim, Facts, fit_matrix, make_caption, read_facts


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("toy") / "world"
    stats = generate_toyworld(root, num_train=24, num_val=8, image_size=64, seed=3, workers=1, progress=False)
    return root, stats


def test_layout(world):
    root, stats = world
    train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(train) == 24 and len(val) == 8 and not set(train) & set(val)
    assert (root / "classes.txt").read_text().split() == list(CLASSES)
    assert (root / "backgrounds.txt").read_text().split() == list(BACKGROUNDS)
    assert 6 <= len(CLASSES) <= 10
    for image_id in train + val:
        assert Image.open(root / "JPEGImages" / f"{image_id}.jpg").size == (64, 64)
    assert json.loads((root / "stats.json").read_text())["splits"]["train"]["images"] == 24
    assert stats["splits"]["all"]["images"] == 32
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_masks_match_annotations(world):
    root, _ = world
    ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    for image_id in ids:
        ann = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot()
        names = {o.findtext("name") for o in ann.iter("object")}
        assert names and names <= set(CLASSES)
        assert ann.findtext("background") in BACKGROUNDS
        assert (int(ann.findtext("size/width")), int(ann.findtext("size/height"))) == (64, 64)
        png = Image.open(root / "SegmentationClass" / f"{image_id}.png")
        assert png.mode == "P" and png.size == (64, 64)
        values = set(np.unique(np.array(png)).tolist())
        assert values <= set(range(len(CLASSES) + 1)) | {255}
        assert {CLASSES[v - 1] for v in values - {0, 255}} == names
        for o in ann.iter("object"):  # boxes are 1-based and inside the image
            x0, y0, x1, y1 = (int(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= x0 <= x1 <= 64 and 1 <= y0 <= y1 <= 64


def test_deterministic_and_independent_of_workers(tmp_path, world):
    root, _ = world
    again = tmp_path / "again"
    generate_toyworld(again, num_train=24, num_val=8, image_size=64, seed=3, workers=2, progress=False)
    assert tree_digest(again) == tree_digest(root)
    other = tmp_path / "other"
    generate_toyworld(other, num_train=24, num_val=8, image_size=64, seed=4, workers=1, progress=False)
    assert tree_digest(other) != tree_digest(root)


def test_cooccurrence_rate(tmp_path):
    stats = generate_toyworld(tmp_path / "w", num_train=400, num_val=0, image_size=48, seed=0, workers=1,
                              progress=False)
    rates = stats["splits"]["train"]["cooccurrence"]
    assert set(rates) == set(COOCCURRENCE)
    for cls, rec in rates.items():
        assert rec["background"] == COOCCURRENCE[cls]
        assert rec["images"] >= 40
        assert rec["rate"] >= 0.8, (cls, rec)
    # the home backgrounds also appear without their planted class (the model must see them alone)
    assert min(stats["splits"]["train"]["images_per_background"].values()) > 0


def test_no_cooccurrence_and_empty_images(tmp_path):
    stats = generate_toyworld(tmp_path / "w", num_train=60, num_val=0, image_size=48, seed=1, workers=1,
                              cooccurrence={}, empty_fraction=0.3, progress=False)
    assert stats["splits"]["train"]["cooccurrence"] == {}
    assert stats["splits"]["train"]["empty_images"] > 5
    root = tmp_path / "w"
    empty = [p for p in (root / "Annotations").glob("*.xml") if not list(ET.parse(p).getroot().iter("object"))]
    for p in empty:
        assert set(np.unique(np.array(Image.open(root / "SegmentationClass" / f"{p.stem}.png")))) == {0}


def test_colour_prior_and_patterns(tmp_path):
    """Objects usually wear their class's colour, never always: colour alone is not a class threshold."""
    from wsss.toyworld.generate import CLASS_COLOURS

    stats = generate_toyworld(tmp_path / "w", num_train=120, num_val=0, image_size=64, seed=2, workers=1,
                              colour_prior=0.8, patterns=True, progress=False)
    assert stats["patterns"] and set(stats["patterns"]) == set(CLASSES)
    objects = [o for p in (tmp_path / "w" / "Annotations").glob("*.xml") for o in ET.parse(p).getroot().iter("object")]
    usual = np.mean([o.findtext("color") == CLASS_COLOURS[o.findtext("name")] for o in objects])
    assert 0.65 < usual < 0.95
    assert stats["max_rotation"] == gen.MAX_LEAN  # the default reaches the generator
    stats = generate_toyworld(tmp_path / "u", num_train=120, num_val=0, image_size=64, seed=2, workers=1,
                              colour_prior=0.0, progress=False)
    objects = [o for p in (tmp_path / "u" / "Annotations").glob("*.xml") for o in ET.parse(p).getroot().iter("object")]
    assert np.mean([o.findtext("color") == CLASS_COLOURS[o.findtext("name")] for o in objects]) < 0.3


def test_objects_lean_at_most_max_rotation():
    """The default world's objects stand near upright (±0.35 rad); `max_rotation=pi` turns them freely."""
    def angles(max_rotation):
        spec = gen.WorldSpec(64, CLASSES, BACKGROUNDS, tuple(COOCCURRENCE.items()), 0.88, 1.0, 92, 0, 0.0,
                             (0.16, 0.32), gen.N_OBJECTS_P, max_rotation, True, 0.9)
        rng = np.random.default_rng(0)
        return np.array([o.angle for _ in range(300) for o in gen.sample_scene(rng, spec).objects
                         if o.cls != "heart"])  # the heart is limited on its own (shapes.MAX_ROTATION)

    lean = angles(gen.MAX_LEAN)
    assert np.abs(lean).max() <= gen.MAX_LEAN and np.abs(lean).max() > 0.3
    assert np.abs(angles(np.pi)).max() > 2.5
    assert inspect.signature(generate_toyworld).parameters["max_rotation"].default == gen.MAX_LEAN


def test_failed_generation_keeps_previous_output(tmp_path, monkeypatch, world):
    root = tmp_path / "w"
    generate_toyworld(root, num_train=4, num_val=2, image_size=48, seed=0, workers=1, progress=False)
    before = tree_digest(root)

    def boom(args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gen, "_write_chunk", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_toyworld(root, num_train=8, num_val=2, image_size=48, seed=1, workers=1, progress=False)
    assert tree_digest(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["w"]


@pytest.mark.parametrize("kwargs, match", [
    ({"classes": ("triangle", "dragon")}, "dragon"),
    ({"cooccurrence": {"star": "lava"}}, "lava"),
    ({"num_train": 0, "num_val": 0}, "need some images"),
    ({"image_size": 8}, "image_size"),
])
def test_bad_parameters(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        generate_toyworld(tmp_path / "w", **{"num_train": 2, "num_val": 1, "progress": False, **kwargs})
    assert not (tmp_path / "w").exists()


def test_one_bound_per_setting_in_settings_and_generator(tmp_path):
    """The `toyworld` settings and the generator refuse the same values with the same line."""
    from wsss.settings import ToyworldSettings

    for bad, line in ((dict(image_size=31), "toyworld.image_size: expected a value ≥ 32, got 31"),
                      (dict(size_range=(0.2, 0.6)), "toyworld.size_range: expected [low, high] with 0 < low ≤ high")):
        with pytest.raises(ConfigError) as by_settings:
            ToyworldSettings(**bad)
        with pytest.raises(ConfigError) as by_generator:
            generate_toyworld(tmp_path / "w", num_train=1, num_val=0, progress=False, **bad)
        assert str(by_settings.value) == str(by_generator.value) and str(by_settings.value).startswith(line)
    stats = generate_toyworld(tmp_path / "w", num_train=1, num_val=0, image_size=32, workers=1, progress=False)
    assert stats["image_size"] == 32


def test_captions_fit_their_image(world):
    root, _ = world
    rng = np.random.default_rng(0)
    facts = [read_facts(p)[0] for p in sorted((root / "Annotations").glob("*.xml"))]
    for f in facts:
        for _ in range(10):
            text, claim = make_caption(f, rng, p_background=0.5, p_colour=0.5, p_partial=0.5)
            assert claim.fits(f) and text.endswith(".")
            named = {c for c, _ in claim.counts}
            assert named and named <= f.classes
            for cls in named:
                assert cls in text or cls.replace("cross", "crosses") in text


def test_claims_say_only_what_they_name():
    a = Facts((("circle", "red"),), "grass")
    b = Facts((("circle", "blue"), ("star", "yellow")), "water")
    c = Facts((("circle", "red"), ("circle", "red")), "grass")
    empty = Facts((), "grass")
    a_circle = Claim((("circle", 1),), (), None)
    a_circle_on_grass = Claim((("circle", 1),), (), "grass")
    two_circles = Claim((("circle", 2),), (), None)
    a_red_circle = Claim((("circle", 1),), (("circle", "red", 1),), None)
    grass = Claim((), (), "grass")
    claims = [a_circle, a_circle_on_grass, two_circles, a_red_circle, grass]
    expected = [[1, 1, 0, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]
    facts = [a, b, c, empty]
    assert [[int(cl.fits(f)) for cl in claims] for f in facts] == expected
    assert fit_matrix(facts, claims).int().tolist() == expected
    text, claim = make_caption(empty, np.random.default_rng(0))
    assert "grass" in text and claim == grass
