"""The archives `wsss data fetch` downloads, their checksums, mirrors, and putting one in place.

Checksums: VOC 2012 and SBD as torchvision's `VOCSegmentation` / `SBDataset` pin them; COCO 2014 the
md5s widely published for the official zips (the annotations' one is also its S3 ETag). A mirror
(`--mirror NAME=URL`) replaces the URL only; the checksum still decides what is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

from wsss.data.fetch.download import download
from wsss.data.fetch.extract import extract, is_extracted
from wsss.errors import ConfigError


@dataclass(frozen=True)
class Archive:
    name: str  # what --mirror calls it
    url: str
    checksum: str  # "<alg>:<hex>", alg as hashlib names it

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_COCO = "http://images.cocodataset.org"
ARCHIVES: dict[str, Archive] = {a.name: a for a in (
    Archive("voc", "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            "md5:6cd6e144f989b92b3379bac3b3de84fd"),
    Archive("sbd", "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
                   "benchmark.tgz", "md5:82b4d87ceb2ed10f6038a1cba92111cb"),
    Archive("train2014", f"{_COCO}/zips/train2014.zip", "md5:0da8c0bd3d6becc4dcb32757491aca88"),
    Archive("val2014", f"{_COCO}/zips/val2014.zip", "md5:a3d79f5ed8d289b7a7554ce06a5782b3"),
    Archive("annotations2014", f"{_COCO}/annotations/annotations_trainval2014.zip",
            "md5:0a379cfc70b0e71301e0f377548639bd"),
)}


def parse_mirrors(specs: list[str] | None, allowed) -> dict[str, str]:
    """`NAME=URL` options → {name: url}; an unknown name or a spec without `=` is one ConfigError line."""
    out = {}
    for spec in specs or ():
        name, sep, url = spec.partition("=")
        if not sep or not url:
            raise ConfigError(f"--mirror {spec!r}: expected NAME=URL (names: {', '.join(allowed)})")
        if name not in allowed:
            raise ConfigError(f"--mirror {spec!r}: unknown archive {name!r} (names: {', '.join(allowed)})")
        out[name] = url
    return out


def mirrored(archive: Archive, url: str | None) -> Archive:
    """The archive fetched from `url` instead; a URL ending in `/` is a folder holding the same file name."""
    if not url:
        return archive
    return replace(archive, url=url + archive.filename if url.endswith("/") else url)


def obtain(archive: Archive, root: Path, downloads: Path, mirrors: Mapping[str, str] | None = None) -> None:
    """Put `archive`'s contents into `root`: download (resumed, verified) then extract, each step skipped
    when already done; an archive extracted with the same checksum is not even downloaded again."""
    if is_extracted(archive.filename, root, archive.checksum):
        return
    source = mirrored(archive, (mirrors or {}).get(archive.name))
    # the file name is the table's, so a mirror serving it under another name is the same archive
    path = download(source.url, downloads / archive.filename, archive.checksum)
    extract(path, root, archive.checksum)
