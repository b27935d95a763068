"""`wsss predict`: label maps (VOC-palette PNG) and overlays for new images, from the registered champion
(`models:/<name>@champion`), any MLflow model URI, or a segmenter file. Each output is written atomically.
A file that is not a usable image (undecodable, a decompression bomb, an unconvertible mode) is refused
with its reason and the others are still predicted: one bad file in a folder does not cost the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from wsss.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def resolve_segmenter(spec: str, tracking_uri: str | None = None) -> Path:
    """A local segmenter file for `spec`: a file, a folder holding `segmenter.pt`, or an MLflow model URI
    (`models:/name@alias`, `models:/name/3`, `runs:/<id>/model`) whose artifacts are downloaded."""
    if "://" not in spec and ":/" not in spec:
        path = Path(spec)
        path = path / "segmenter.pt" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"{spec}: no segmenter file there")
        return path
    import mlflow
    from mlflow.exceptions import MlflowException

    from wsss.tracking.runs import tracking_uri as default_uri

    mlflow.set_tracking_uri(tracking_uri or default_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec))
    except MlflowException as e:
        raise ConfigError(f"{spec}: cannot load the model ({str(e).splitlines()[0]})") from None
    found = sorted((local / "artifacts").rglob("*.pt")) if (local / "artifacts").is_dir() else []
    if len(found) != 1:
        raise ConfigError(f"{spec}: the model holds no segmenter file (not a wsss segmenter)")
    return found[0]


def image_files(inputs: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such image or folder")
    if not files:
        raise DataError("no images to predict (folders are searched for " + ", ".join(IMAGE_SUFFIXES) + ")")
    return files


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    from wsss.data.palette import colorize

    colour = colorize(labels).astype(np.float32)
    mixed = np.where((labels > 0)[..., None], (1 - alpha) * image + alpha * colour, image)
    return mixed.round().astype(np.uint8)


def predict_files(model, info: dict, files: Sequence[Path], out_dir: str | Path, scales: Sequence[float] = (1.0,),
                  flip: bool = False, progress: bool = True) -> tuple[list[Path], list[str]]:
    """Write `<out>/<stem>.png` (label ids, VOC palette) and `<out>/<stem>_overlay.png` per image; returns
    (the label maps written, one line per refused file naming it and the reason)."""
    from PIL import Image
    from tqdm.auto import tqdm

    from wsss.data.images import load_rgb_array
    from wsss.data.palette import save_palette_png
    from wsss.io import atomic_path
    from wsss.seg.infer import predict_labels

    out_dir = Path(out_dir)
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise DataError(f"two input images are named {dup}: their predictions would overwrite each other")
    written, refused = [], []
    exif = (info.get("meta") or {}).get("exif", "ignore")  # read as the training images were
    for f in tqdm(files, desc="predict", unit="img", disable=not progress):
        try:
            image = load_rgb_array(f, exif=exif)
        except DataError as e:
            refused.append(str(e))
            continue
        labels = predict_labels(model, image, info, scales, flip)
        save_palette_png(out_dir / f"{f.stem}.png", labels)
        with atomic_path(out_dir / f"{f.stem}_overlay.png") as tmp:
            Image.fromarray(overlay(image, labels)).save(tmp, format="PNG")
        written.append(out_dir / f"{f.stem}.png")
    return written, refused
