"""Captions of toy-world images, generated from their VOC annotations, and which captions fit which image.

A caption names some or all of the image's objects (with counts: "two circles"), sometimes with colour
words and sometimes the background ("... on the grass"), in varied templates; a background-only image
gets a caption that names its background. Like a web caption, a caption claims what it names and says
nothing about the rest: "a photo of a triangle." is true of every image that holds a triangle. That is
exactly what zero-shot multi-label recognition and the per-class CAM ask of the text embedding of a
single class prompt.

Captions repeat within a batch and are true of several images at once (two images with a circle, or
"a photo of grass." and any image on grass), so the contrastive loss must not call those pairs
negatives: every caption carries its `Claim`, and `fit_matrix` says which claims each image satisfies.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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
# background-only captions; "a photo of a {}." is how CAM scoring phrases background words
BACKGROUND_TEMPLATES = ("a photo of {b}.", "{b}.", "a picture of {b}.", "a photo of a {w}.", "just {b}.")


@dataclass(frozen=True)
class Facts:
    """What is true of one image: its objects (class, colour) and its background."""

    objects: tuple[tuple[str, str], ...]  # sorted (class, colour), one per object
    background: str

    @property
    def classes(self) -> set[str]:
        return {c for c, _ in self.objects}


@dataclass(frozen=True)
class Claim:
    """What a caption asserts: at least these many objects of these classes (and colours), on this
    background (None: the caption does not say)."""

    counts: tuple[tuple[str, int], ...]  # (class, at least n)
    coloured: tuple[tuple[str, str, int], ...]  # (class, colour, at least n); empty if no colour words
    background: str | None

    def fits(self, facts: Facts) -> bool:
        return bool(fit_matrix([facts], [self])[0, 0])


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


def _phrase(cls: str, n: int, colour: str | None = None) -> str:
    words = f"{colour} " if colour else ""
    if n == 1:
        return f"{_article(words or cls)} {words}{cls}"
    return f"{NUMBERS.get(n, str(n))} {words}{_plural(cls)}"


def make_caption(facts: Facts, rng: np.random.Generator, p_background: float = 0.4, p_colour: float = 0.3,
                 p_partial: float = 0.5) -> tuple[str, Claim]:
    """One random caption of an image and its claim.

    With probability `p_partial` the caption names a random non-empty subset of the objects, else all of
    them; colour words with probability `p_colour`, the background with `p_background` (always for an
    image without objects).
    """
    bg_variants = BACKGROUND_PHRASES.get(facts.background, (facts.background,))
    bg_phrase = bg_variants[int(rng.integers(len(bg_variants)))]
    if not facts.objects:
        template = BACKGROUND_TEMPLATES[int(rng.integers(len(BACKGROUND_TEMPLATES)))]
        return template.format(b=bg_phrase, w=facts.background), Claim((), (), facts.background)
    objects = list(facts.objects)
    if len(objects) > 1 and rng.random() < p_partial:
        keep = rng.permutation(len(objects))[: int(rng.integers(1, len(objects)))]
        objects = [objects[i] for i in sorted(keep)]
    colours = bool(rng.random() < p_colour) and all(col for _, col in objects)
    with_bg = bool(rng.random() < p_background)
    counts = Counter(c for c, _ in objects)
    coloured = Counter(objects) if colours else Counter()
    if colours:
        parts = [_phrase(c, n, col) for (c, col), n in coloured.items()]
    else:
        parts = [_phrase(c, n) for c, n in counts.items()]
    parts = [parts[i] for i in rng.permutation(len(parts))]
    templates = SCENE_TEMPLATES if with_bg else OBJECT_TEMPLATES
    text = templates[int(rng.integers(len(templates)))].format(o=_join(parts), b=bg_phrase)
    claim = Claim(tuple(sorted(counts.items())), tuple(sorted((c, col, n) for (c, col), n in coloured.items())),
                  facts.background if with_bg else None)
    return text, claim


def fit_matrix(facts: list[Facts], claims: list[Claim]) -> torch.Tensor:
    """[images, captions] float matrix: 1 where the caption's claim is true of the image (vectorised)."""
    index: dict = {}
    n_img, n_cap = len(facts), len(claims)

    def col(key) -> int:
        return index.setdefault(key, len(index))

    img_entries = [[(col(("c", c)), n) for c, n in Counter(c for c, _ in f.objects).items()]
                   + [(col(("cc", c, k)), n) for (c, k), n in Counter(f.objects).items()] for f in facts]
    cap_entries = [[(col(("c", c)), n) for c, n in cl.counts] + [(col(("cc", c, k)), n) for c, k, n in cl.coloured]
                   for cl in claims]
    have = torch.zeros(n_img, max(len(index), 1))
    need = torch.zeros(n_cap, max(len(index), 1))
    for i, entries in enumerate(img_entries):
        for j, n in entries:
            have[i, j] = n
    for i, entries in enumerate(cap_entries):
        for j, n in entries:
            need[i, j] = n
    bgs: dict[str, int] = {}
    img_bg = torch.tensor([bgs.setdefault(f.background, len(bgs)) for f in facts])
    cap_bg = torch.tensor([-1 if cl.background is None else bgs.setdefault(cl.background, len(bgs)) for cl in claims])
    ok = (have[:, None, :] >= need[None, :, :]).all(-1)
    ok &= (cap_bg[None, :] < 0) | (img_bg[:, None] == cap_bg[None, :])
    return ok.float()
