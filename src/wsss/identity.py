"""What a model file or tag is, for output keys: a tag (`openai`) stays itself, a local file is its content
hash. Keys must change when the weights change, not when a checkpoint is moved or touched."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


def weights_id(pretrained: str | None) -> str:
    """A tag stays a tag; a local file is identified by its content hash (computed once per process
    for an unchanged file: the stage's work check and its body both need it)."""
    if pretrained and Path(pretrained).is_file():
        stat = Path(pretrained).stat()
        return _file_digest(str(Path(pretrained).resolve()), stat.st_size, stat.st_mtime_ns)
    return str(pretrained)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]
