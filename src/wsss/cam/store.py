"""One compressed file per image: the present class ids, the high-res CAM and the CAA-refined CAM.

`labels` are dataset class ids (1..C), `cam` and `refined` are K×H×W fp16 maps in [0, 1] at the image's
original size, in the order of `labels`. `key` fingerprints the inputs (image bytes + labels), so a rerun
recomputes exactly the images whose inputs changed. Written atomically: a file that exists is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsss.errors import DataError
from wsss.io import save_npz

OVERLAYS = "reports/cams/overlays.png"  # the cams stage's overlay figure (a DVC output beside the CAM files)


@dataclass
class CamRecord:
    labels: np.ndarray  # (K,) int16 dataset class ids
    cam: np.ndarray  # (K, H, W) float16
    refined: np.ndarray  # (K, H, W) float16
    key: str = ""


def cam_path(cam_dir: str | Path, image_id: str) -> Path:
    return Path(cam_dir) / f"{image_id}.npz"


def save_cam(path: str | Path, labels, cam, refined, key: str = "") -> None:
    labels = np.asarray(labels, dtype=np.int16)
    cam = np.asarray(cam, dtype=np.float16)
    refined = np.asarray(refined, dtype=np.float16)
    if cam.shape != refined.shape or cam.shape[0] != len(labels):
        raise ValueError(f"CAM shapes disagree: labels {labels.shape}, cam {cam.shape}, refined {refined.shape}")
    save_npz(path, labels=labels, cam=cam, refined=refined, key=np.array(key))


def load_cam(path: str | Path) -> CamRecord:
    path = Path(path)
    try:
        with np.load(path) as f:
            return CamRecord(f["labels"], f["cam"], f["refined"], str(f["key"]) if "key" in f else "")
    except FileNotFoundError:
        raise DataError(f"{path}: CAM file not found (run the cams stage first)") from None
    except (KeyError, ValueError, OSError) as e:
        raise DataError(f"{path}: unreadable CAM file ({e})") from None


def stored_key(path: str | Path) -> str | None:
    """The input key of an existing CAM file (reads only that member), None if absent or unreadable."""
    try:
        with np.load(path) as f:
            return str(f["key"])
    except (FileNotFoundError, KeyError, ValueError, OSError, EOFError):
        return None
