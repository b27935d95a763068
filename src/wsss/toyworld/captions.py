"""Captions of toy-world images, generated from their VOC annotations, and which captions fit which image.

A caption always lists every object (with counts: "two circles"), sometimes with colour words and
sometimes naming the background ("... on the grass"); a background-only image gets a caption that names
only its background. Because captions are generated from few facts, a batch often holds several captions
that are equally true of several images (two images of "a circle" on different backgrounds). The
contrastive loss must not call those negatives, so every caption carries a key of the facts it asserts:
caption j fits image i exactly when image i's facts, restricted to what caption j mentions, give the
same key.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsss.errors import DataError

NUMBERS = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five"}
PLURALS = {"cross": "crosses"}
# how the background is named in captions; the bare word (backgrounds.txt) is always among the variants
BACKGROUND_PHRASES = {
    "grass": ("grass", "the grass", "green grass"),
    "water": ("water", "the water", "blue water"),
    "wall": ("wall", "a wall", "a brick wall"),
    "sky": ("sky", "the sky", "a blue sky"),
    "road": ("road", "a road", "the road"),
    "sand": ("sand", "the sand", "sand"),
}
OBJECT_TEMPLATES = ("a photo of {o}.", "{o}.", "a picture of {o}.", "an image of {o}.", "there is {o}.",
                    "a photo of {o}.")
SCENE_TEMPLATES = ("a photo of {o} on {b}.", "{o} on {b}.", "{o} in front of {b}.", "a picture of {o} and {b}.",
                   "{b} with {o}.", "a photo of {o} and {b}.")
EMPTY_TEMPLATES = ("a photo of {b}.", "{b}.", "a picture of {b}.", "a photo of a {b}.", "just {b}.")
# the fields a caption can leave unsaid
MASKS = ((False, False), (True, False), (False, True), (True, True))  # (mentions colours, mentions background)


@dataclass(frozen=True)
class Facts:
    """What is true of one image: its objects (class, colour) and its background."""

    objects: tuple[tuple[str, str], ...]  # sorted (class, colour), one per object
    background: str

    @property
    def class_counts(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(Counter(c for c, _ in self.objects).items()))

    def key(self, colours: bool, background: bool) -> str:
        """Canonical form of the facts a caption with these mentions asserts."""
        objs = ",".join(f"{c}:{k}" for c, k in self.objects) if colours else \
            ",".join(f"{c}x{n}" for c, n in self.class_counts)
        return f"{objs}|{self.background if background or not self.objects else '*'}"


def read_facts(xml_path: str | Path) -> tuple[Facts, list[tuple[int, int, int, int]]]:
    """Facts and 1-based VOC boxes (xmin, ymin, xmax, ymax) of one toy-world annotation."""
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as e:
        raise DataError(f"{xml_path}: cannot read annotation ({e})") from None
    objects, boxes = [], []
    for o in root.iter("object"):
        objects.append((o.findtext("name", "").strip(), (o.findtext("color") or "").strip()))
        bb = o.find("bndbox")
        if bb is not None:
            boxes.append(tuple(int(float(bb.findtext(t, "0"))) for t in ("xmin", "ymin", "xmax", "ymax")))
    background = (root.findtext("background") or "").strip()
    if not background:
        raise DataError(f"{xml_path}: no <background> (not a toy-world annotation)")
    return Facts(tuple(sorted(objects)), background), boxes


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(word: str) -> str:
    return PLURALS.get(word, word + "s")


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def object_phrase(facts: Facts, rng: np.random.Generator, colours: bool) -> str:
    if colours:
        groups = Counter(facts.objects)
        parts = [f"{_article(col) if n == 1 else NUMBERS[n]} {col} {cls if n == 1 else _plural(cls)}"
                 for (cls, col), n in groups.items()]
    else:
        parts = [f"{_article(cls)} {cls}" if n == 1 else f"{NUMBERS.get(n, str(n))} {_plural(cls)}"
                 for cls, n in facts.class_counts]
    order = rng.permutation(len(parts))
    return _join([parts[i] for i in order])


def make_caption(facts: Facts, rng: np.random.Generator, p_background: float = 0.4,
                 p_colour: float = 0.3) -> tuple[str, str, int]:
    """One random caption of an image: (text, key of what it asserts, index into MASKS)."""
    bg = BACKGROUND_PHRASES.get(facts.background, (facts.background,))
    bg_phrase = bg[int(rng.integers(len(bg)))]
    if not facts.objects:
        template = EMPTY_TEMPLATES[int(rng.integers(len(EMPTY_TEMPLATES)))]
        text = template.format(b=facts.background if "a {b}" in template else bg_phrase)
        return text, facts.key(False, True), MASKS.index((False, True))
    colours = bool(rng.random() < p_colour) and all(col for _, col in facts.objects)
    with_bg = bool(rng.random() < p_background)
    objs = object_phrase(facts, rng, colours)
    templates = SCENE_TEMPLATES if with_bg else OBJECT_TEMPLATES
    text = templates[int(rng.integers(len(templates)))].format(o=objs, b=bg_phrase)
    return text, facts.key(colours, with_bg), MASKS.index((colours, with_bg))


def image_keys(facts: Facts) -> tuple[str, ...]:
    """The image's key under every mention mask (MASKS order)."""
    return tuple(facts.key(c, b) for c, b in MASKS)
