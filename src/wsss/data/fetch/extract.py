"""Safe, all-or-nothing archive extraction.

No member may leave the root: tar and zip members with an absolute name or a `..` component are refused,
and tar's `data` filter (Python ≥ 3.11.4) also refuses links pointing outside, devices and the like.
Everything is unpacked into a temporary folder inside the root, then moved into place (renames; folders
that already exist are merged), and a marker (`.<archive>.extracted`, holding the checksum) is written
last: a failure or a Ctrl-C leaves nothing half-extracted, and a rerun skips an archive whose marker matches.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from wsss.errors import DataError
from wsss.io import write_text


def marker(filename: str, root: Path) -> Path:
    return root / f".{filename}.extracted"


def is_extracted(filename: str, root: Path, checksum: str) -> bool:
    m = marker(filename, root)
    return m.is_file() and m.read_text().strip() == checksum


def extract(archive: Path, root: Path, checksum: str) -> None:
    """Unpack `archive` (tar, tar.gz, zip) into `root`; files of the same name are replaced."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".{archive.name}.*.tmp"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".tmp", dir=root))
    try:
        (_unzip if zipfile.is_zipfile(archive) else _untar)(archive, tmp)
        for entry in sorted(tmp.iterdir()):
            _merge(entry, root / entry.name)
        write_text(marker(archive.name, root), checksum + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def unsafe_name(name: str) -> str | None:
    """Why a member name could land outside the destination, or None when it cannot."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or (p.parts and p.parts[0].endswith(":")):
        return "absolute path"
    if ".." in p.parts:
        return "'..' in its path"
    return None


def _refuse(archive: Path, name: str, why: str):
    return DataError(f"{archive}: refused member {name!r} ({why}); nothing extracted")


def _untar(archive: Path, dest: Path) -> None:
    def safe(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        why = unsafe_name(member.name)
        if why:
            raise _refuse(archive, member.name, why)
        return tarfile.data_filter(member, path)

    try:
        with tarfile.open(archive) as tf:
            tf.extractall(dest, members=tqdm(tf, desc=f"extract {archive.name}", unit="file"), filter=safe)
    except tarfile.FilterError as e:
        raise _refuse(archive, e.tarinfo.name, str(e)) from None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive}: cannot extract ({e}); nothing extracted") from None


def _unzip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:  # all checked before the first is written
                why = unsafe_name(info.filename)
                if why:
                    raise _refuse(archive, info.filename, why)
            for info in tqdm(infos, desc=f"extract {archive.name}", unit="file"):
                zf.extract(info, dest)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{archive}: cannot extract ({e}); nothing extracted") from None


def _merge(new: Path, target: Path) -> None:
    """Move `new` onto `target`: files are replaced (renames, atomic), folders present on both sides are
    merged, so what else the target holds (another VOC year, masks built from it) stays."""
    if new.is_dir() and target.is_dir() and not target.is_symlink():
        for child in sorted(new.iterdir()):
            _merge(child, target / child.name)
        return
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    os.replace(new, target)
