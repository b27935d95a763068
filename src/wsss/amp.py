"""Mixed precision on the GPU, one rule for every stage: `amp` is null | fp16 | bf16, and a CPU always
runs fp32 (CPU autocast would change results for no gain here)."""

from __future__ import annotations

import contextlib

import torch

AMP_DTYPES = {None: None, "fp16": torch.float16, "bf16": torch.bfloat16}


def amp_dtype(device: torch.device, amp: str | None) -> torch.dtype | None:
    return AMP_DTYPES[amp] if device.type == "cuda" else None


def autocast(device: torch.device, amp: str | None):
    """Autocast on a GPU with the setting's dtype; a no-op otherwise."""
    dtype = amp_dtype(device, amp)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
