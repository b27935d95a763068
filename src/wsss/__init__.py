"""Weakly-supervised semantic segmentation with CLIP: CLIP-ES pseudo masks + SemPLeS background prompts."""

__version__ = "0.1.0"
