"""The class vocabulary: class id 0 is background, ids 1..C are the dataset's classes, 255 is "ignore"."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from wsss.errors import DataError
from wsss.io import write_json

BACKGROUND = 0
IGNORE = 255


@dataclass(frozen=True)
class Vocabulary:
    names: tuple[str, ...]  # names[i] is class id i + 1

    def __post_init__(self):
        if not self.names:
            raise DataError("class vocabulary is empty")
        if len(set(self.names)) != len(self.names):
            raise DataError(f"class vocabulary has duplicate names: {list(self.names)}")
        if len(self.names) >= IGNORE:
            raise DataError(f"at most {IGNORE - 1} classes fit in 8-bit masks, got {len(self.names)}")

    @property
    def num_classes(self) -> int:
        """C, background excluded."""
        return len(self.names)

    def name(self, class_id: int) -> str:
        return "background" if class_id == BACKGROUND else self.names[class_id - 1]

    def id(self, name: str) -> int:
        try:
            return self.names.index(name) + 1
        except ValueError:
            raise DataError(f"unknown class name {name!r}; known: {', '.join(self.names)}") from None

    def save(self, path: str | Path) -> None:
        write_json(path, {"background": "background", "ignore_index": IGNORE, "classes": list(self.names)})

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        path = Path(path)
        try:
            obj = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: class vocabulary file not found") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        names = obj["classes"] if isinstance(obj, dict) else obj
        return cls(tuple(str(n) for n in names))

    @classmethod
    def from_file(cls, path: str | Path) -> "Vocabulary":
        """A class list given by the user: JSON (list, or {"classes": [...]}) or a text file, one name a line."""
        path = Path(path)
        if path.suffix.lower() == ".json":
            return cls.load(path)
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            raise DataError(f"{path}: class list file not found") from None
        names = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
        if names and names[0] == "background":
            names = names[1:]
        return cls(tuple(names))


VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
