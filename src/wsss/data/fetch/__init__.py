"""Getting the public datasets as users get them: PASCAL VOC 2012 + SBD (`train_aug`) and COCO 2014 with
VOC-style class masks. `wsss data fetch voc|coco ROOT` calls `fetch_voc` / `fetch_coco`.

Modules: `archives` (the table of archives, mirrors, one archive put in place), `download` (resumable,
checksummed HTTP), `extract` (safe tar/zip extraction), `sbd` (SBD masks → `train_aug`), `coco_masks`
(instance annotations → class masks and image labels), `datasets` (the two commands' steps)."""

from wsss.data.fetch.datasets import fetch_coco, fetch_voc

__all__ = ["fetch_coco", "fetch_voc"]
