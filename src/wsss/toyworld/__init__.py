"""The embedded toy world: a generated VOC-format dataset (shapes on textured backgrounds, with planted
class/background co-occurrence) that the default configuration runs on, with no downloads."""

from wsss.toyworld.generate import (BACKGROUNDS, CLASSES, COLOURS, COOCCURRENCE, generate_from_settings,
                                    generate_toyworld)

__all__ = ["BACKGROUNDS", "CLASSES", "COLOURS", "COOCCURRENCE", "generate_from_settings", "generate_toyworld"]
