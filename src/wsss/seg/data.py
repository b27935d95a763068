"""Image + label-map pairs for training and evaluation, read from the prepared manifest.

Training reads the pseudo masks (`masks.out/<id>.png`); evaluation reads ground truth. Every image and
mask is checked on load (a mask of another size than its image is a one-line error naming both files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from wsss.data.images import load_rgb_array
from wsss.data.palette import load_mask
from wsss.errors import DataError


def check_pair(image: np.ndarray, mask: np.ndarray, image_path, mask_path) -> None:
    if image.shape[:2] != mask.shape:
        raise DataError(f"{mask_path}: mask is {mask.shape[0]}×{mask.shape[1]} but image {image_path} is "
                        f"{image.shape[0]}×{image.shape[1]}")


class SegmentationPairs(TorchDataset):
    """(uint8 image [3, H, W], int64 labels [H, W], image labels [C] multi-hot) for each row of `ds`; label
    maps from `mask_dir/<id>.png` or, with mask_dir None, the manifest's ground truth; the image labels are
    the manifest's (what the refinement term uses). `transform(image, mask, g)` runs on the pair with a
    per-sample generator seeded from (seed, epoch, index), so a resumed run sees the same crops."""

    def __init__(self, ds, mask_dir: str | Path | None, transform=None, seed: int = 0):
        self.ds, self.mask_dir, self.transform, self.seed = ds, mask_dir, transform, seed
        self.rows = list(ds.table.itertuples(index=False))
        self.epoch = 0
        if mask_dir is None and any(r.mask == "" for r in self.rows):
            raise DataError(f"dataset {ds.name}: some images have no ground-truth mask")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def mask_path(self, i: int) -> Path:
        row = self.rows[i]
        return Path(self.mask_dir) / f"{row.id}.png" if self.mask_dir is not None else self.ds.root / row.mask

    def __getitem__(self, i: int):
        row = self.rows[i]
        image_path, mask_path = self.ds.root / row.image, self.mask_path(i)
        image, mask = load_rgb_array(image_path, exif=self.ds.exif), load_mask(mask_path)
        check_pair(image, mask, image_path, mask_path)
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        y = torch.from_numpy(mask.astype(np.int64))
        if self.transform is not None:
            g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFFFFFF)
            x, y = self.transform(x, y, g)
        present = torch.zeros(self.ds.vocab.num_classes, dtype=torch.bool)
        present[[int(c) - 1 for c in row.labels]] = True
        return x, y, present
