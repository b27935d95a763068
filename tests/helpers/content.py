"""Drops that are wrong in meaning rather than in their files: photo-like images and their near-copies,
phone photos with an EXIF orientation tag, and toy-world drops with some image labels swapped."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ORIENTATION = 0x0112


def photo(seed: int, size=(64, 48)) -> Image.Image:
    """A smooth, photo-like picture (a coarse colour field and an ellipse), distinct per seed: unlike noise,
    it survives re-encoding, so a near-copy stays near."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8), "RGB").resize(size, Image.BICUBIC)
    draw = ImageDraw.Draw(field)
    x0, y0 = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
    draw.ellipse([x0, y0, x0 + size[0] // 3, y0 + size[1] // 3], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return field


def near_copy(image: Image.Image, scale: float = 0.9, quality: int = 70) -> Image.Image:
    """The same picture re-encoded as JPEG and slightly resized (what a re-upload does)."""
    small = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def save_with_orientation(image: Image.Image, path: Path, orientation: int) -> None:
    """Store `image` as a phone does: pixels as the sensor saw them, plus an EXIF orientation tag."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    image.save(path, "JPEG", quality=95, exif=exif.tobytes())


def swap_voc_labels(root: Path, share: float, seed: int, classes) -> dict[str, tuple[str, str]]:
    """Swap one object's class name for an absent class in `share` of the VOC annotations of `root` (all
    objects of that class, so the image's label set loses it). Returns {id: (true class, wrong class)}."""
    rng = np.random.default_rng(seed)
    files = sorted((root / "Annotations").glob("*.xml"))
    chosen = rng.choice(len(files), max(1, round(share * len(files))), replace=False)
    swapped = {}
    for k in sorted(chosen):
        tree = ET.parse(files[k])
        names = [o.find("name") for o in tree.getroot().iter("object")]
        present = sorted({n.text for n in names})
        true = present[rng.integers(len(present))]
        wrong = str(rng.choice([c for c in classes if c not in present]))
        for n in names:
            if n.text == true:
                n.text = wrong
        tree.write(files[k])
        swapped[files[k].stem] = (true, wrong)
    return swapped
