"""SBD's class masks → VOC's augmented training set `train_aug`, built the standard way.

Split: SBD train ∪ SBD val ∪ VOC train − VOC val (10,582 images on the real sets); VOC val stays out so
that evaluation never sees a training image. Masks in `SegmentationClassAug/`, one per `train_aug` image:
VOC's own `SegmentationClass` PNG where it exists (finer, with its 255 border), else SBD's `cls/<id>.mat`
(`GTcls.Segmentation`, 0..20, no border) as a VOC-palette PNG. The VOC reader (`wsss.data.voc`) takes
`SegmentationClassAug/` first, so VOC val images get no file there: they keep their own masks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss.data.palette import save_palette_png
from wsss.data.voc import read_split_ids
from wsss.errors import DataError
from wsss.io import atomic_dir, write_text

SPLIT_FILE = "ImageSets/Segmentation/train_aug.txt"
MASK_DIR = "SegmentationClassAug"


def train_aug_ids(sbd_train, sbd_val, voc_train, voc_val) -> list[str]:
    """The `train_aug` rule, sorted."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def read_sbd_mask(path: Path) -> np.ndarray:
    """SBD `cls/<id>.mat` → H×W uint8 class ids; an unreadable file is one DataError line."""
    from scipy.io import loadmat

    try:
        seg = loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise DataError(f"{path}: not an SBD class mask ({type(e).__name__}: {e})") from None
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.size == 0 or seg.min() < 0 or seg.max() > 255:
        raise DataError(f"{path}: not an SBD class mask (shape {seg.shape}, values outside 0..255)")
    return seg.astype(np.uint8)


def _list(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: split list not found")
    return read_split_ids(path)


def build_train_aug(voc_root: Path, sbd_root: Path) -> int:
    """Write `SegmentationClassAug/` (as a whole) then the split list (last: it says the build is done).
    `sbd_root` is SBD's `benchmark_RELEASE/dataset`. Returns the number of images."""
    splits = voc_root / "ImageSets/Segmentation"
    ids = train_aug_ids(_list(sbd_root / "train.txt"), _list(sbd_root / "val.txt"),
                        _list(splits / "train.txt"), _list(splits / "val.txt"))
    missing = [i for i in ids if not (voc_root / "JPEGImages" / f"{i}.jpg").is_file()]
    if missing:
        raise DataError(f"{voc_root / 'JPEGImages'}: {len(missing)} train_aug image(s) missing, e.g. {missing[0]}.jpg")
    with atomic_dir(voc_root / MASK_DIR) as tmp:
        for i in tqdm(ids, desc="train_aug masks", unit="img"):
            own = voc_root / "SegmentationClass" / f"{i}.png"
            if own.is_file():
                shutil.copyfile(own, tmp / f"{i}.png")
            else:
                save_palette_png(tmp / f"{i}.png", read_sbd_mask(sbd_root / "cls" / f"{i}.mat"))
    write_text(voc_root / SPLIT_FILE, "".join(f"{i}\n" for i in ids))
    return len(ids)


def is_built(voc_root: Path) -> bool:
    return (voc_root / SPLIT_FILE).is_file() and (voc_root / MASK_DIR).is_dir()
