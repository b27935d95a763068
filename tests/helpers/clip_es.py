"""The CLIP-ES reference (the paper code's structure, transcribed for open_clip) and the tiny random CLIP
models the CAM tests share, with the fixture that runs them on one thread. The code lives in
`benchmarks/cam_reference.py`, free of pytest, so that `benchmarks/gpu_check.py` runs it on a bare GPU
machine; `tests/test_cam_reference.py` checks its pieces."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from cam_reference import (ReferenceClipEs, _to_seq_first, random_image, ref_block, ref_box_mask,  # noqa: E402,F401
                           ref_preprocess, scale_cam_image, scoremap2bbox, tiny_clip, upsample_pos_emb)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP barriers make them ~20×
    slower; a CAM test module imports this fixture (autouse: every test of that module)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
