"""The built-in words of the text side (CLIP-ES's): template, synonyms, background words, and
`background_words` resolving `text.background` to its list. No torch, so that settings checks and output
keys (the CAM key, the prompts' word initialisation) can name them cheaply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsss.errors import ConfigError

DEFAULT_TEMPLATE = "a clean origami {}."

# Synonym fusion: the class slot holds several synonyms in one comma-joined string (CLIP-ES's names).
VOC_SYNONYMS = {
    "bird": "bird avian",
    "chair": "chair seat",
    "person": "person with clothes,people,human",
    "tvmonitor": "tvmonitor screen",
}
COCO_SYNONYMS = {
    **VOC_SYNONYMS,
    "tv": "tvmonitor screen",
    "backpack": "backpack,bag",
    "umbrella": "umbrella,parasol",
    "handbag": "handbag,purse",
    "tie": "necktie",
    "remote": "remote control",
}
SYNONYMS = {"voc": VOC_SYNONYMS, "coco": COCO_SYNONYMS}

VOC_BACKGROUND = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street",
    "valley", "bridge", "sign",
)
COCO_BACKGROUND = tuple(w for w in VOC_BACKGROUND if w not in ("keyboard", "sign"))
BACKGROUND_WORDS = {"voc": VOC_BACKGROUND, "coco": COCO_BACKGROUND}


def background_words(spec: Any) -> list[str]:
    """`voc` / `coco` (the built-in lists), a list of words, or a file with one word per line."""
    if isinstance(spec, (list, tuple)):
        return [str(w) for w in spec]
    if isinstance(spec, str) and spec.lower() in BACKGROUND_WORDS:
        return list(BACKGROUND_WORDS[spec.lower()])
    path = Path(str(spec))
    if not path.is_file():
        raise ConfigError(f"text.background: {spec!r} is neither voc/coco, a list of words, nor an existing file")
    words = [w.strip() for w in path.read_text().splitlines() if w.strip() and not w.startswith("#")]
    if not words:
        raise ConfigError(f"{path}: background word file is empty")
    return words
