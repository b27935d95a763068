"""The PASCAL VOC colour palette and palette-PNG mask I/O.

Masks are stored as mode-"P" PNGs: the pixel values are class ids (0 = background, 1..C, 255 = ignore)
and the palette only decides how they look, so any viewer shows them in the familiar VOC colours while
`load_mask` gives back the ids unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from wsss.data.images import read_mask
from wsss.io import atomic_path


def voc_palette(n: int = 256) -> np.ndarray:
    """n×3 uint8 VOC palette: the bits of the class id are interleaved into the high bits of R, G, B
    (id 1 → dark red, 15 → person pink, 255 → (224, 224, 192) the "ignore" colour)."""
    ids = np.arange(n)
    palette = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):  # 8 bit-planes, each feeding one bit of each channel
        for channel in range(3):
            bit = (ids >> (3 * shift + channel)) & 1
            palette[:, channel] |= bit << (7 - shift)
    return palette.astype(np.uint8)


VOC_PALETTE = voc_palette()


def colorize(mask: np.ndarray) -> np.ndarray:
    """H×W class-id mask → H×W×3 uint8 RGB in VOC colours (for figures)."""
    return VOC_PALETTE[np.asarray(mask, dtype=np.uint8)]


KEY_CHUNK = "wsss-key"  # PNG text chunk holding the key of the inputs a mask was made from


def palette_image(mask: np.ndarray) -> Image.Image:
    """An H×W uint8 mask as a mode-"P" image with the VOC palette (class ids kept as pixel values)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be an H×W uint8 array, got shape {mask.shape} dtype {mask.dtype}")
    height, width = mask.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(mask).tobytes())
    image.putpalette(VOC_PALETTE.tobytes())
    return image


def save_palette_png(path: str | Path, mask: np.ndarray, key: str | None = None) -> None:
    """Write an H×W uint8 mask as a VOC-palette PNG, atomically (an existing file is always complete);
    `key` is stored in a text chunk (`stored_png_key`) so a rerun can tell a current mask from a stale one."""
    image = palette_image(mask)
    info = None
    if key is not None:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text(KEY_CHUNK, key)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=False, pnginfo=info)


def stored_png_key(path: str | Path) -> str | None:
    """The key a mask PNG was written with (reads the header chunks only); None if absent or unreadable."""
    try:
        with Image.open(path) as image:
            return image.text.get(KEY_CHUNK)
    except (FileNotFoundError, OSError, SyntaxError, ValueError):
        return None


def load_mask(path: str | Path) -> np.ndarray:
    """A class-id mask (palette or greyscale PNG) as H×W uint8; colour masks are refused (colours are not ids)."""
    return read_mask(path)
