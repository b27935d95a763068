"""Where dataset drops arrive: an S3 prefix or a local folder, laid out as

    incoming/<drop>/...      new drops (images + labels, masks optional; VOC, COCO or custom)
    accepted/<drop>/...      merged into the dataset (kept as they arrived)
    quarantine/<drop>/...    refused by validation, beside quarantine/<drop>.report/ (summary + Data Docs)

A drop leaves `incoming/` only after it is merged or quarantined, by copy-then-delete: an interruption
leaves it in two places, never in none, and the next run finishes the move. Its fingerprint (every
file's relative path, size and ETag or hash) tells a re-delivered drop from one already merged.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from wsss.errors import WsssError
from wsss.io import atomic_dir
from wsss.ops import s3 as s3lib

INCOMING, ACCEPTED, QUARANTINE = "incoming", "accepted", "quarantine"


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class LocalDropArea:
    """Drops in a folder (a mounted share, or a laptop trying the flow)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise WsssError(f"{self.path}: drop folder not found (ops.drops)")

    def __str__(self) -> str:
        return str(self.path)

    def _files(self, name: str) -> list[Path]:
        return sorted(p for p in (self.path / INCOMING / name).rglob("*") if p.is_file())

    def incoming(self) -> list[str]:
        return self.names(INCOMING)

    def names(self, place: str) -> list[str]:
        folder = self.path / place
        return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")) \
            if folder.is_dir() else []

    def deliver(self, folder: Path, name: str) -> int:
        """Put a drop into incoming/ (whole or not at all)."""
        with atomic_dir(self.path / INCOMING / name) as tmp:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
        return len(self._files(name))

    def fingerprint(self, name: str) -> str:
        src = self.path / INCOMING / name
        return _digest([f"{p.relative_to(src).as_posix()} {p.stat().st_size} {_file_sha(p)}" for p in self._files(name)])

    def fetch(self, name: str, dest: Path) -> int:
        with atomic_dir(dest) as tmp:
            shutil.copytree(self.path / INCOMING / name, tmp, dirs_exist_ok=True)
        return len(self._files(name))

    def _move(self, name: str, to: str) -> None:
        src, dst = self.path / INCOMING / name, self.path / to / name
        with atomic_dir(dst) as tmp:  # copy, then delete: never in neither place
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        shutil.rmtree(src)

    def quarantine(self, name: str, report: Path) -> str:
        with atomic_dir(self.path / QUARANTINE / f"{name}.report") as tmp:
            shutil.copytree(report, tmp, dirs_exist_ok=True)
        self._move(name, QUARANTINE)
        return str(self.path / QUARANTINE / name)

    def accept(self, name: str) -> str:
        self._move(name, ACCEPTED)
        return str(self.path / ACCEPTED / name)


class S3DropArea:
    """Drops under an S3 prefix (any S3-compatible store)."""

    def __init__(self, uri: str, s3=None, endpoint_url: str | None = None, attempts: int = 4):
        self.uri = s3lib.S3Uri.parse(uri)
        self.s3 = s3 or s3lib.client(endpoint_url)
        self.attempts = attempts

    def __str__(self) -> str:
        return str(self.uri).rstrip("/")

    def _objects(self, name: str) -> list[dict]:
        return s3lib.list_objects(self.s3, self.uri.join(INCOMING, name))

    def incoming(self) -> list[str]:
        return self.names(INCOMING)

    def names(self, place: str) -> list[str]:
        return s3lib.list_children(self.s3, self.uri.join(place))

    def deliver(self, folder: Path, name: str) -> int:
        """Upload a drop into incoming/ (an ingestion running meanwhile could see part of it: it would
        quarantine that part, nothing is lost; upload between scheduled runs)."""
        return s3lib.upload_dir(self.s3, Path(folder), self.uri.join(INCOMING, name), self.attempts)

    def fingerprint(self, name: str) -> str:
        base = self.uri.join(INCOMING, name).prefix
        return _digest([f"{o['key'][len(base):]} {o['size']} {o['etag']}" for o in self._objects(name)])

    def fetch(self, name: str, dest: Path) -> int:
        """Download into `dest` (whole or not at all); each file retried on its own."""
        base = self.uri.join(INCOMING, name).prefix
        objects = [o for o in self._objects(name) if not o["key"].endswith("/")]
        with atomic_dir(dest) as tmp:
            for o in objects:
                rel = o["key"][len(base):]
                if ".." in rel.split("/"):
                    raise WsssError(f"s3://{self.uri.bucket}/{o['key']}: key escapes its drop")
                s3lib.download(self.s3, self.uri.bucket, o["key"], tmp / rel, o["size"], self.attempts)
        return len(objects)

    def quarantine(self, name: str, report: Path) -> str:
        s3lib.upload_dir(self.s3, report, self.uri.join(QUARANTINE, f"{name}.report"), self.attempts)
        dst = self.uri.join(QUARANTINE, name)
        s3lib.move_prefix(self.s3, self.uri.join(INCOMING, name), dst, self.attempts)
        return str(dst)

    def accept(self, name: str) -> str:
        dst = self.uri.join(ACCEPTED, name)
        s3lib.move_prefix(self.s3, self.uri.join(INCOMING, name), dst, self.attempts)
        return str(dst)


def open_area(spec: str, endpoint_url: str | None = None, attempts: int = 4, s3=None):
    """`s3://bucket/prefix` → S3DropArea, anything else → LocalDropArea."""
    if spec.startswith("s3://"):
        return S3DropArea(spec, s3=s3, endpoint_url=endpoint_url, attempts=attempts)
    return LocalDropArea(spec)
