"""Which device a job runs on: one rule for CAMs, prompts, the segmenter and `wsss predict`."""

from __future__ import annotations


def pick_device(spec: str | None, shard: int = 0) -> str:
    """`auto`: GPU when present (shard i on GPU i mod count, so one worker per GPU), else CPU."""
    import torch

    if spec in (None, "auto"):
        count = torch.cuda.device_count()
        return f"cuda:{shard % count}" if count else "cpu"
    return spec
