"""Safe image I/O: refuse decompression bombs, decode fully (so corruption shows up here, not mid-training),
convert any colour mode to RGB without silently mangling it, and read label masks as uint8 indices.

EXIF orientation (`exif`, the `data.exif` setting): `ignore` reads the pixels as stored (what COCO's and
VOC's annotations refer to); `apply` turns them as a viewer displays them (what a phone photo's mask was
drawn on). Every reader of image pixels takes the same policy, so a mask, a CAM and a prediction always
agree with the image they belong to. Masks are never turned: they are drawn on the picture as meant.

Every failure is a `DataError` whose one-line message names the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from wsss.errors import DataError
from wsss.settings import ValidationSettings

DEFAULT_MAX_PIXELS = ValidationSettings().max_pixels  # well above any real photo, far below a bomb's claim

# Alpha is composited on this colour. Black = premultiplied alpha: a fully transparent pixel carries no
# colour at all, instead of whatever RGB values happen to be stored under it (what a plain convert shows).
ALPHA_BACKGROUND = (0, 0, 0)

EXIF_POLICIES = ("ignore", "apply")
ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 = as stored; 5-8 swap width and height
TRANSPOSED = (5, 6, 7, 8)


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag of an opened image, 1 when it has none (or an unreadable one)."""
    try:
        value = int(img.getexif().get(ORIENTATION_TAG, 1))
    except (ValueError, TypeError, OSError, SyntaxError):
        return 1
    return value if 1 <= value <= 8 else 1


def displayed_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(width, height) as a viewer shows an image of stored `size` with this EXIF orientation."""
    return (size[1], size[0]) if orientation in TRANSPOSED else tuple(size)


def _check_exif(exif: str) -> None:
    if exif not in EXIF_POLICIES:
        raise ValueError(f"exif must be one of {EXIF_POLICIES}, got {exif!r}")


def orient(img: Image.Image, exif: str) -> Image.Image:
    """The image as the `exif` policy reads it: unchanged (`ignore`, or no tag), else turned as displayed."""
    _check_exif(exif)
    if exif == "ignore" or exif_orientation(img) == 1:
        return img
    turned = ImageOps.exif_transpose(img)
    return img if turned is None else turned


class DecompressionBomb(DataError):
    """The header claims more pixels than allowed; the image was refused before decoding."""


def _check_pixels(img: Image.Image, path, max_pixels: int | None) -> None:
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise DecompressionBomb(f"{path}: refused as a decompression bomb ({w}x{h} = {w * h} pixels "
                                f"> limit {max_pixels})")


def _open_lazy(path, max_pixels: int | None, what: str = "image") -> Image.Image:
    """Image.open (header only) under our own pixel limit instead of PIL's global one.

    PIL's own check warns above Image.MAX_IMAGE_PIXELS and raises above twice that; the warning is
    silenced (our limit decides), the error is still turned into a DecompressionBomb.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as e:
        raise DecompressionBomb(f"{path}: refused as a decompression bomb ({e})") from None
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode {what} ({_reason(e)})") from None
    try:
        _check_pixels(img, path, max_pixels)
    except DataError:
        img.close()
        raise
    return img


def _reason(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def peek_size(path: str | Path, max_pixels: int | None = None, exif: str = "ignore") -> tuple[int, int]:
    """(width, height) from the header only, without decoding the pixels (cheap, for readers); with
    `exif="apply"` the displayed size."""
    _check_exif(exif)
    with _open_lazy(path, max_pixels) as img:
        return img.size if exif == "ignore" else displayed_size(img.size, exif_orientation(img))


def open_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS, what: str = "image",
               exif: str = "ignore") -> Image.Image:
    """Open and fully decode an image in its original mode, oriented by the `exif` policy; a
    truncated/corrupt file fails here."""
    _check_exif(exif)
    img = _open_lazy(path, max_pixels, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        img.close()
        raise DataError(f"{path}: cannot decode {what} ({_reason(e)})") from None
    turned = orient(img, exif)
    if turned is not img:
        img.close()
    return turned


def _to_8bit(img: Image.Image, path) -> Image.Image:
    """16/32-bit integer and float grey images → 8-bit L, scaling 16-bit by its range; refuse to clip."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        return Image.fromarray((a.astype(np.uint32) // 257).astype(np.uint8), "L")
    if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 255 or not np.isfinite(a).all()):
        raise DataError(f"{path}: cannot convert mode {img.mode} to RGB without clipping "
                        f"(values {np.nanmin(a)}..{np.nanmax(a)})")
    return Image.fromarray(np.rint(a).astype(np.uint8), "L")


def to_rgb(img: Image.Image, path: str | Path = "<image>", background=ALPHA_BACKGROUND) -> Image.Image:
    """Any PIL mode → RGB. Alpha (RGBA/LA/PA, palette transparency) is composited on `background`
    (black by default, see ALPHA_BACKGROUND); CMYK uses PIL's conversion; high-bit-depth grey is scaled,
    never clipped. Raises DataError when a mode cannot be converted faithfully."""
    mode = img.mode
    if mode == "RGB":
        return img
    try:
        if mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        elif mode.startswith("I") or mode == "F":
            img = _to_8bit(img, path)
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            rgba = img.convert("RGBA")
            base = Image.new("RGB", rgba.size, tuple(background))
            base.paste(rgba, mask=rgba.getchannel("A"))
            return base
        return img.convert("RGB")
    except DataError:
        raise
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: cannot convert image mode {mode} to RGB ({_reason(e)})") from None


def load_rgb(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS, exif: str = "ignore") -> Image.Image:
    """open_image + to_rgb: what every stage that needs pixels should call (with its dataset's `exif`)."""
    with open_image(path, max_pixels, exif=exif) as img:
        return to_rgb(img, path).copy()


def load_rgb_array(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS, exif: str = "ignore") -> np.ndarray:
    """`load_rgb` as a writable, C-contiguous H×W×3 uint8 array (what pydensecrf and numpy code want)."""
    return np.array(load_rgb(path, max_pixels, exif), dtype=np.uint8)


def bytes_orientation(data: bytes) -> int:
    """The EXIF orientation of an encoded image held in memory (1 when none or unreadable): cheap, the
    header only, for keys that must change when `exif: apply` turns an image."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as img:
            return exif_orientation(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return 1


def decode_rgb_array(data: bytes, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                     exif: str = "ignore") -> np.ndarray:
    """`load_rgb_array` of an encoded image held in memory (a served request), with the same checks; its
    errors name it `name`."""
    import io

    buffer = io.BytesIO(data)
    try:
        return load_rgb_array(buffer, max_pixels, exif)
    except DataError as e:
        raise type(e)(str(e).replace(str(buffer), name)) from None


MASK_MODES = ("P", "L", "1", "I;16", "I;16L", "I;16B", "I")


def read_mask(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A label mask as an H×W uint8 array of class indices (palette indices or grey levels, not colours).

    RGB masks are refused: their colours would need a palette lookup to become indices."""
    with open_image(path, max_pixels, what="mask") as img:
        if img.mode not in MASK_MODES:
            raise DataError(f"{path}: mask must be a palette or grayscale PNG of class indices, got mode {img.mode}")
        a = np.asarray(img)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype != np.uint8:
        if a.size and (a.min() < 0 or a.max() > 255):
            raise DataError(f"{path}: mask values {a.min()}..{a.max()} do not fit 0..255")
        a = a.astype(np.uint8)
    return np.ascontiguousarray(a)
