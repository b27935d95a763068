"""What the served segmenter (`mlflow models serve`, `mlflow.pyfunc.load_model`) takes and returns.

Two input forms, told apart by their shape:
- pixels: uint8 images [N, H, W, 3] (JSON `{"inputs": [[[[r, g, b], ...], ...]]}`) → label maps [N, H, W];
- encoded: a column `image` of image files (PNG, JPEG, ...), base64 in JSON as MLflow advises for binary
  data (`{"dataframe_split": {"columns": ["image"], "data": [["iVBOR..."]]}}`, or `{"inputs": {"image":
  [...]}}`) → one row per image: `labels` (H×W class ids) and, with the parameter `palette`, `palette_png`
  (the label map as a base64 VOC-palette PNG). Images of any size can share a request.
0 = background, 1..C = the model's classes. Encoded images get the checks of files on disk (decompression
bombs refused, any colour mode converted) and a size limit (`MAX_ENCODED_MB`, checked before decoding);
a bad request is one `DataError` line naming the image, which the server answers with HTTP 400. What
MLflow's scoring server checks itself: the content type (415 unless JSON, CSV or Parquet) and the JSON.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np

from wsss.errors import DataError

ENCODED = "image"  # the column of encoded images
PALETTE = "palette"  # request parameter: also return each label map as a palette PNG
MAX_ENCODED_MB = 20  # one encoded image (a 24-megapixel JPEG is ~10 MB; a VOC photo ~0.1 MB)


def encoded_images(model_input) -> list | None:
    """The encoded images of a request (bytes, or base64 text), or None when it is a pixel tensor."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame) and ENCODED in model_input.columns:
        return list(model_input[ENCODED])
    if isinstance(model_input, dict) and ENCODED in model_input:
        return list(np.atleast_1d(model_input[ENCODED]))
    return None


def decode(values: list) -> list[np.ndarray]:
    """H×W×3 uint8 images from bytes or base64 text."""
    from wsss.data.images import decode_rgb_array

    images = []
    for i, value in enumerate(values):
        name = f"{ENCODED} {i}"
        size = len(value) if isinstance(value, (str, bytes, bytearray)) else 0
        if size > MAX_ENCODED_MB * 2**20:
            raise DataError(f"{name}: {size / 2**20:.1f} MB encoded, over the {MAX_ENCODED_MB} MB limit for one image")
        if isinstance(value, str):
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as e:
                raise DataError(f"{name}: not base64 ({e})") from None
        if not isinstance(value, (bytes, bytearray)):
            raise DataError(f"{name}: expected an encoded image (base64 text or bytes), got {type(value).__name__}")
        images.append(decode_rgb_array(bytes(value), name))
    return images


def pixel_images(model_input) -> np.ndarray:
    """The pixel form as uint8 [N, H, W, 3]; anything else is a one-line error."""
    if isinstance(model_input, dict) and len(model_input) == 1:
        model_input = next(iter(model_input.values()))
    array = np.asarray(model_input)
    if array.ndim != 4 or array.shape[-1] != 3 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"expected uint8 images [N, H, W, 3] or a column {ENCODED!r} of encoded images; got an "
                        f"array of shape {array.shape} and type {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise DataError(f"pixel values must be 0..255, got {array.min()}..{array.max()}")
    return array.astype(np.uint8, copy=False)


def palette_png(labels: np.ndarray) -> str:
    """A label map as a base64 VOC-palette PNG (pixel values = class ids)."""
    from wsss.data.palette import palette_image

    buffer = io.BytesIO()
    palette_image(labels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encoded_rows(label_maps: list[np.ndarray], with_palette: bool):
    """The answer to an encoded request: one row per image."""
    import pandas as pd

    rows = {"labels": label_maps}
    if with_palette:
        rows["palette_png"] = [palette_png(m) for m in label_maps]
    return pd.DataFrame(rows)
