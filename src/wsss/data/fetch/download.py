"""Resumable, checksummed HTTP downloads.

The bytes go to `<file>.part`; only a file whose checksum matches is renamed to its final name, so a
file under the final name is always a complete archive. A rerun asks the server for the rest (HTTP Range
from the .part's size): a 206 answer is appended, any other success starts again from zero. A checksum
mismatch deletes the .part (its bytes cannot be trusted to resume from).
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from wsss.errors import DataError

CHUNK = 1 << 20
USER_AGENT = "wsss-data-fetch"


def download(url: str, dest: Path, checksum: str, timeout: float = 60) -> Path:
    """`dest`, downloaded from `url` unless already there; DataError (one line) when the server fails,
    the transfer is cut (the .part is kept for the next run) or the checksum does not match."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch(url, part, timeout)
    verify(url, part, checksum)
    os.replace(part, dest)
    return dest


def verify(url: str, path: Path, checksum: str) -> None:
    """Compare `path` with `checksum` ("md5:<hex>"); on a mismatch delete it and raise."""
    import pooch

    alg, _, want = checksum.partition(":")
    got = pooch.file_hash(str(path), alg=alg)
    if got != want.lower():
        path.unlink()
        raise DataError(f"{url}: checksum mismatch (expected {alg}:{want}, got {alg}:{got})")


def _fetch(url: str, part: Path, timeout: float) -> None:
    """Bring `part` to the whole file: resume from its size where the server allows it."""
    have = part.stat().st_size if part.is_file() else 0
    resp = _open(url, have, timeout)
    if resp is None:  # 416: nothing beyond what we have; the checksum decides whether it is whole
        return
    if have and not (resp.status == 206 and _range_start(resp) == have):
        if resp.status == 206:  # not the range asked for: ask for the whole file instead
            resp.close()
            resp = _open(url, 0, timeout)
        have = 0  # a 200 answer is the whole file: start again from zero
    with resp:
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        with open(part, "ab" if have else "wb") as f, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=part.name[:-len(".part")]) as bar:
            _copy(url, resp, f, bar)
    size = part.stat().st_size
    if total is not None and size < total:
        raise DataError(f"{url}: download cut at {size} of {total} bytes; {part} kept, run again to resume")


def _open(url: str, start: int, timeout: float):
    """The server's response, asking for bytes from `start` on; None when it has nothing past `start`."""
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={start}-"} if start else {})}
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:
            return None
        raise DataError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        raise DataError(f"{url}: cannot download ({getattr(e, 'reason', e)})") from None


def _range_start(resp) -> int | None:
    """First byte of a 206 answer (`Content-Range: bytes START-END/TOTAL`)."""
    value = resp.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _copy(url: str, resp, f, bar) -> None:
    """Response body → file, chunk by chunk (a Ctrl-C between chunks leaves a valid prefix)."""
    try:
        while chunk := resp.read1(CHUNK):  # what has arrived, so progress and a Ctrl-C keep it
            f.write(chunk)
            bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as e:
        raise DataError(f"{url}: download cut ({e}); {f.name} kept, run again to resume") from None
