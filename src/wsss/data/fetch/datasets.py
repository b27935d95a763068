"""The steps of `wsss data fetch voc|coco ROOT`: archives into ROOT, then what the readers need.

Both are reruns-safe: finished downloads, extractions and built masks are skipped, an interrupted step
is finished (downloads resume from their `.part`). Archives go to `downloads` (default `ROOT/downloads`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from wsss.data.fetch.archives import ARCHIVES, Archive, obtain
from wsss.data.fetch.coco_masks import write_labels, write_split
from wsss.data.fetch.sbd import build_train_aug, is_built
from wsss.errors import ConfigError

VOC_SPLITS = ("train", "val", "train_aug")
VOC_ARCHIVES = ("voc", "sbd")
COCO_SPLITS = {"train": "train2014", "val": "val2014"}
COCO_ARCHIVES = ("train2014", "val2014", "annotations2014")


def _check_splits(splits, allowed) -> list[str]:
    bad = [s for s in splits if s not in allowed]
    if bad:
        raise ConfigError(f"--split {bad[0]!r}: not a split of this dataset (use {', '.join(allowed)})")
    return list(dict.fromkeys(splits))


def fetch_voc(root: str | Path, splits=VOC_SPLITS, mirrors: Mapping[str, str] | None = None,
              downloads: str | Path | None = None, archives: Mapping[str, Archive] = ARCHIVES) -> Path:
    """VOC 2012 trainval into `ROOT/VOCdevkit/VOC2012` (returned: the dataset root); with `train_aug`
    among the splits also SBD into `ROOT/benchmark_RELEASE` and `train_aug` built from it (`sbd`)."""
    root = Path(root)
    splits = _check_splits(splits, VOC_SPLITS)
    downloads = Path(downloads) if downloads else root / "downloads"
    obtain(archives["voc"], root, downloads, mirrors)
    voc_root = root / "VOCdevkit" / "VOC2012"
    if "train_aug" in splits:
        obtain(archives["sbd"], root, downloads, mirrors)
        if not is_built(voc_root):
            n = build_train_aug(voc_root, root / "benchmark_RELEASE" / "dataset")
            print(f"train_aug: {n} images ({voc_root / 'ImageSets/Segmentation/train_aug.txt'})")
    return voc_root


def fetch_coco(root: str | Path, splits=tuple(COCO_SPLITS), mirrors: Mapping[str, str] | None = None,
               downloads: str | Path | None = None, archives: Mapping[str, Archive] = ARCHIVES) -> Path:
    """COCO 2014 images of `splits` and the instance annotations into `ROOT` (returned: the dataset
    root), then class masks, `classes.txt` and `image_labels.json` (`coco_masks`)."""
    root = Path(root)
    splits = _check_splits(splits, tuple(COCO_SPLITS))
    downloads = Path(downloads) if downloads else root / "downloads"
    notes = archives["annotations2014"]
    obtain(notes, root, downloads, mirrors)
    for split in splits:
        folder = COCO_SPLITS[split]
        obtain(archives[folder], root, downloads, mirrors)
        labels = write_split(root, folder, root / "annotations" / f"instances_{folder}.json", notes.checksum)
        write_labels(root, labels)
    return root
