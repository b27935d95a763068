"""Pseudo masks (docs/method.md §4): CAMs → background score → dense CRF → confidence → VOC-palette PNGs."""
