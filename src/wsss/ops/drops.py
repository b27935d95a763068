"""Where dataset drops arrive: an S3 prefix or a local folder, laid out as

    incoming/<drop>/...      new drops (images + labels, masks optional; VOC, COCO or custom)
    accepted/<drop>/...      merged into the dataset (kept as they arrived), beside accepted/<drop>.report/
    quarantine/<drop>/...    refused by validation, beside quarantine/<drop>.report/ (summary + Data Docs)

A drop is taken only when complete: its uploader writes `incoming/<drop>/_READY` (any content) after its
last file (`deliver` does). Until then the drop is "uploading" and left alone: never fetched, validated or
quarantined half-uploaded. The marker is not part of the drop; it is deleted after the drop's files.
A drop is read once into a `Snapshot` (every file's relative path, size and ETag or hash): the fingerprint,
the download and the move all use that one listing, so files still arriving are never half-taken. A drop
leaves `incoming/` only after it is merged or quarantined, copy first, delete after: an interruption
leaves it in two places, never in none, and the next run sees the copy complete and finishes the move.
Drop names and file paths are checked: nothing in a drop can write outside its folder.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wsss.errors import WsssError
from wsss.io import atomic_dir
from wsss.ops import s3 as s3lib
from wsss.validation.table import file_sha256

INCOMING, ACCEPTED, QUARANTINE = "incoming", "accepted", "quarantine"
READY = "_READY"  # written last into incoming/<drop>/: the drop is complete
REPORT_SUFFIX = ".report"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def valid_name(name: str) -> bool:
    """A drop name is a plain folder name (no `.`/`..`, no separators), not a quarantine report's."""
    return bool(_NAME.fullmatch(name)) and not name.endswith(REPORT_SUFFIX)


def safe_rel(rel: str, where: str) -> str:
    """A file path inside a drop: relative, no empty, `.` or `..` parts (else one error naming it)."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise WsssError(f"{where}: file path {rel!r} would leave its drop folder; drop refused")
    return str(PurePosixPath(*parts))


@dataclass(frozen=True)
class Snapshot:
    """A drop as listed once: (relative path, size, ETag or SHA-256) per file."""

    name: str
    files: tuple[tuple[str, int, str], ...]

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(f"{r} {s} {h}" for r, s, h in sorted(self.files)).encode()).hexdigest()[:16]


@contextmanager
def _os_errors(what: str):
    try:
        yield
    except OSError as e:
        raise WsssError(f"{what}: {e.strerror or e}") from None


class LocalDropArea:
    """Drops in a folder (a mounted share, or a laptop trying the flow)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise WsssError(f"{self.path}: drop folder not found (ops.drops)")

    def __str__(self) -> str:
        return str(self.path)

    def names(self, place: str) -> list[str]:
        folder = self.path / place
        return sorted(d.name for d in folder.iterdir() if d.is_dir() and valid_name(d.name)) if folder.is_dir() else []

    def incoming(self) -> list[str]:
        """The complete drops (marker written)."""
        return [n for n in self.names(INCOMING) if (self.path / INCOMING / n / READY).is_file()]

    def uploading(self) -> list[str]:
        """Drops still arriving (no marker yet): left alone."""
        return sorted(set(self.names(INCOMING)) - set(self.incoming()))

    def _listing(self, place: str, name: str, hashes: bool = True) -> dict[str, tuple[int, str]]:
        root = self.path / place / name
        if not root.is_dir():
            return {}
        with _os_errors(f"reading {root}"):
            return {p.relative_to(root).as_posix(): (p.stat().st_size, file_sha256(p) if hashes else "")
                    for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}

    def snapshot(self, name: str) -> Snapshot:
        return Snapshot(name, tuple((r, s, h) for r, (s, h) in self._listing(INCOMING, name).items() if r != READY))

    def fetch(self, snap: Snapshot, dest: Path) -> int:
        src = self.path / INCOMING / snap.name
        with _os_errors(f"copying {src}"), atomic_dir(dest) as tmp:
            for rel, _, _ in snap.files:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / rel, tmp / rel)
        return len(snap.files)

    def moved_to(self, snap: Snapshot, place: str) -> bool:
        """The drop is at `place` with every file of the snapshot (none left: only its marker was)."""
        there = self._listing(place, snap.name)
        return bool(there) and all(there.get(r) == (s, h) for r, s, h in snap.files)

    def _move(self, snap: Snapshot, place: str) -> str:
        dst = self.path / place / snap.name
        with _os_errors(f"moving {snap.name} to {dst}"):
            self.fetch(snap, dst)  # the destination holds exactly the snapshot, whole
            self.finish_move(snap)
        return str(dst)

    def finish_move(self, snap: Snapshot) -> None:
        """Delete the snapshot's files from incoming/, then its marker (and the folders left empty)."""
        src = self.path / INCOMING / snap.name
        with _os_errors(f"removing {src}"):
            for rel in [r for r, _, _ in snap.files] + [READY]:
                (src / rel).unlink(missing_ok=True)
            for d in sorted((p for p in src.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [src]:
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()

    def quarantine(self, snap: Snapshot, report: Path) -> str:
        with _os_errors(f"writing {self.path / QUARANTINE}"), \
                atomic_dir(self.path / QUARANTINE / f"{snap.name}{REPORT_SUFFIX}") as tmp:
            shutil.copytree(report, tmp, dirs_exist_ok=True)
        return self._move(snap, QUARANTINE)

    def accept(self, snap: Snapshot, report: Path | None = None) -> str:
        """Archive a merged drop to accepted/, its validation report (findings, Data Docs) beside it."""
        if report is not None and report.is_dir():
            with _os_errors(f"writing {self.path / ACCEPTED}"), \
                    atomic_dir(self.path / ACCEPTED / f"{snap.name}{REPORT_SUFFIX}") as tmp:
                shutil.copytree(report, tmp, dirs_exist_ok=True)
        return self._move(snap, ACCEPTED)

    def report(self, place: str, name: str) -> dict | None:
        """The summary of a drop's validation report at `place` (accepted/ or quarantine/), None if none."""
        import json

        path = self.path / place / f"{name}{REPORT_SUFFIX}" / "summary.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def deliver(self, folder: Path, name: str) -> int:
        """Put a drop into incoming/ (whole or not at all), its marker last; never over a waiting drop of
        that name."""
        target = self.path / INCOMING / name
        if target.exists():
            raise WsssError(f"{target}: a drop of that name is waiting; pick another name")
        with _os_errors(f"copying {folder}"), atomic_dir(target) as tmp:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
            (tmp / READY).unlink(missing_ok=True)
            files = sum(1 for p in tmp.rglob("*") if p.is_file())
            (tmp / READY).write_text(_marker(files))
        return files


class S3DropArea:
    """Drops under an S3 prefix (any S3-compatible store)."""

    def __init__(self, uri: str, s3=None, endpoint_url: str | None = None, attempts: int = 4):
        self.uri = s3lib.S3Uri.parse(uri)
        self.s3 = s3 or s3lib.client(endpoint_url)
        self.attempts = attempts

    def __str__(self) -> str:
        return str(self.uri).rstrip("/")

    def names(self, place: str) -> list[str]:
        return [n for n in s3lib.list_children(self.s3, self.uri.join(place)) if valid_name(n)]

    def incoming(self) -> list[str]:
        """The complete drops (marker written)."""
        return [n for n in self.names(INCOMING) if self._has(self._key(INCOMING, n, READY))]

    def uploading(self) -> list[str]:
        """Drops still arriving (no marker yet): left alone."""
        return sorted(set(self.names(INCOMING)) - set(self.incoming()))

    def _has(self, key: str) -> bool:
        return any(o["key"] == key for o in s3lib.list_objects(self.s3, s3lib.S3Uri(self.uri.bucket, key)))

    def _listing(self, place: str, name: str) -> dict[str, tuple[int, str]]:
        base = self.uri.join(place, name)
        return {o["key"][len(base.prefix):]: (o["size"], o["etag"]) for o in s3lib.list_objects(self.s3, base)
                if not o["key"].endswith("/")}

    def snapshot(self, name: str) -> Snapshot:
        where = f"{self}/{INCOMING}/{name}"
        return Snapshot(name, tuple((safe_rel(r, where), s, e) for r, (s, e) in self._listing(INCOMING, name).items()
                                    if r != READY))

    def _key(self, place: str, name: str, rel: str) -> str:
        return self.uri.join(place, name).prefix + rel

    def fetch(self, snap: Snapshot, dest: Path) -> int:
        """Download into `dest` (whole or not at all); each file retried on its own."""
        with atomic_dir(dest) as tmp:
            for rel, size, _ in snap.files:
                s3lib.download(self.s3, self.uri.bucket, self._key(INCOMING, snap.name, rel), tmp / rel, size,
                               self.attempts)
        return len(snap.files)

    def moved_to(self, snap: Snapshot, place: str) -> bool:
        """Every file of the snapshot is at `place` (same size; same ETag unless a multipart one)."""
        there = self._listing(place, snap.name)

        def same(rel: str, size: int, etag: str) -> bool:
            s, e = there.get(rel, (None, ""))
            return s == size and (e == etag or "-" in e + etag)

        return bool(there) and all(same(*f) for f in snap.files)

    def _move(self, snap: Snapshot, place: str) -> str:
        dst = self.uri.join(place, snap.name)
        s3lib.delete_keys(self.s3, self.uri.bucket, [o["key"] for o in s3lib.list_objects(self.s3, dst)])
        s3lib.copy_keys(self.s3, self.uri.bucket, [(self._key(INCOMING, snap.name, r), dst.prefix + r)
                                                   for r, _, _ in snap.files], self.attempts)
        self.finish_move(snap)
        return str(dst).rstrip("/")

    def finish_move(self, snap: Snapshot) -> None:
        """Delete the snapshot's files from incoming/, then its marker."""
        s3lib.delete_keys(self.s3, self.uri.bucket, [self._key(INCOMING, snap.name, r) for r, _, _ in snap.files])
        s3lib.delete_keys(self.s3, self.uri.bucket, [self._key(INCOMING, snap.name, READY)])

    def quarantine(self, snap: Snapshot, report: Path) -> str:
        s3lib.upload_dir(self.s3, report, self.uri.join(QUARANTINE, f"{snap.name}{REPORT_SUFFIX}"), self.attempts)
        return self._move(snap, QUARANTINE)

    def accept(self, snap: Snapshot, report: Path | None = None) -> str:
        """Archive a merged drop to accepted/, its validation report (findings, Data Docs) beside it."""
        if report is not None and report.is_dir():
            s3lib.upload_dir(self.s3, report, self.uri.join(ACCEPTED, f"{snap.name}{REPORT_SUFFIX}"), self.attempts)
        return self._move(snap, ACCEPTED)

    def report(self, place: str, name: str) -> dict | None:
        """The summary of a drop's validation report at `place` (accepted/ or quarantine/), None if none."""
        import json

        key = self._key(place, f"{name}{REPORT_SUFFIX}", "summary.json")
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.s3.get_object(Bucket=self.uri.bucket, Key=key)["Body"].read()
            return json.loads(body)
        except (BotoCoreError, ClientError, ValueError):  # absent or unreadable: listed without findings
            return None

    def deliver(self, folder: Path, name: str) -> int:
        """Upload a drop into incoming/, its marker last (a run meanwhile sees it uploading and leaves it
        alone); never over a waiting drop of that name."""
        if self._listing(INCOMING, name):
            raise WsssError(f"{self}/{INCOMING}/{name}: a drop of that name is waiting; pick another name")
        files = s3lib.upload_dir(self.s3, Path(folder), self.uri.join(INCOMING, name), self.attempts, skip=(READY,))
        key = self._key(INCOMING, name, READY)
        s3lib.retrying(lambda: self.s3.put_object(Bucket=self.uri.bucket, Key=key, Body=_marker(files).encode()),
                       f"uploading s3://{self.uri.bucket}/{key}", self.attempts)
        return files


def _marker(files: int) -> str:
    """The marker's content, for people (readers only check that it exists)."""
    import json
    from datetime import datetime, timezone

    return json.dumps({"files": files, "delivered_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def open_area(spec: str, endpoint_url: str | None = None, attempts: int = 4, s3=None):
    """`s3://bucket/prefix` → S3DropArea, anything else → LocalDropArea."""
    if spec.startswith("s3://"):
        return S3DropArea(spec, s3=s3, endpoint_url=endpoint_url, attempts=attempts)
    return LocalDropArea(spec)


def area_from(settings, spec: str | None = None):
    """The drop area to use: `spec`, else `ops.drops`, else $WSSS_DROPS; None when none is set."""
    import os

    spec = spec or settings.ops.drops or os.environ.get("WSSS_DROPS")
    return open_area(spec, settings.ops.endpoint_url, settings.ops.retries) if spec else None
