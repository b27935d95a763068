"""Signed distance functions of the toy world's object classes, vectorised over numpy grids.

Every shape lives in a unit frame (it roughly fills the disc of radius 1) and returns the signed
distance to its outline in that frame (negative inside). Scaling the frame by r pixels scales the
distance by r, so one SDF gives both the hard mask (sdf < 0) and a one-pixel anti-aliased edge.
Formulas follow Inigo Quilez's 2D distance functions; unions/intersections use min/max, which is
exact inside and close enough outside for anti-aliasing.
"""

from __future__ import annotations

import math

import numpy as np


def _length(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.sqrt(x * x + y * y)


def _box(x: np.ndarray, y: np.ndarray, bx: float, by: float) -> np.ndarray:
    dx, dy = np.abs(x) - bx, np.abs(y) - by
    return _length(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0)


def circle(x, y):
    return _length(x, y) - 0.85


def ring(x, y):
    return np.abs(_length(x, y) - 0.7) - 0.28


def square(x, y):
    return _box(x, y, 0.72, 0.72)


def triangle(x, y, scale: float = 1.2):
    """Equilateral triangle with circumradius `scale`: 1.2 gives it about the square's area (at 1 it has
    60 % of the circle's, too few 8×8 patches at 64 px)."""
    return _unit_triangle(x / scale, y / scale) * scale


def _unit_triangle(x, y):
    k = math.sqrt(3.0)
    r = k / 2  # half the side length
    y = -y  # image rows grow downwards; the triangle points up
    x = np.abs(x) - r
    y = y + r / k
    fold = x + k * y > 0
    x, y = np.where(fold, (x - k * y) / 2, x), np.where(fold, (-k * x - y) / 2, y)
    x = x - np.clip(x, -2 * r, 0)
    return -_length(x, y) * np.sign(y)


def star(x, y, n: int = 5, m: float = 2.6):
    """Five-pointed star, outer radius 1 (iq's sdStar)."""
    an, en = math.pi / n, math.pi / m
    acx, acy = math.cos(an), math.sin(an)
    ecx, ecy = math.cos(en), math.sin(en)
    x = np.abs(x)
    bn = np.mod(np.arctan2(x, -y), 2 * an) - an
    ln = _length(x, y)
    px, py = ln * np.cos(bn) - acx, ln * np.abs(np.sin(bn)) - acy
    t = np.clip(-(px * ecx + py * ecy), 0, acy / ecy)
    px, py = px + ecx * t, py + ecy * t
    return _length(px, py) * np.sign(px)


def cross(x, y):
    return np.minimum(_box(x, y, 0.95, 0.3), _box(x, y, 0.3, 0.95))


def heart(x, y):
    """iq's heart, rescaled and shifted so that it is centred and about 2 units wide."""
    s = 1.5
    x = np.abs(x) / s
    y = (-y) / s + 0.55
    d_top = _length(x - 0.25, y - 0.75) - math.sqrt(2) / 4
    t = np.maximum(x + y, 0) * 0.5
    d_bot = np.sqrt(np.minimum((x ** 2 + (y - 1) ** 2), (x - t) ** 2 + (y - t) ** 2)) * np.sign(x - y)
    return np.where(x + y > 1, d_top, d_bot) * s


def moon(x, y, d: float = 0.55, ra: float = 0.95, rb: float = 0.8):
    """Crescent: a disc minus a shifted disc (iq's sdMoon)."""
    y = np.abs(y)
    a = (ra * ra - rb * rb + d * d) / (2 * d)
    b = math.sqrt(max(ra * ra - a * a, 0.0))
    tip = d * (x * b - y * a) > d * d * np.maximum(b - y, 0)
    body = np.maximum(_length(x, y) - ra, -(_length(x - d, y) - rb))
    return np.where(tip, _length(x - a, y - b), body)


def arrow(x, y):
    shaft = _box(x + 0.3, y, 0.65, 0.24)
    # head: triangle with tip at (1, 0) and base x = 0.1, half-height 0.75, as the max of three half-planes
    nx, ny = 0.7, 0.85
    nrm = math.hypot(nx, ny)
    e1 = (nx * (x - 1.0) + ny * y) / nrm
    e2 = (nx * (x - 1.0) - ny * y) / nrm
    e3 = 0.1 - x
    head = np.maximum(np.maximum(e1, e2), e3)
    return np.minimum(shaft, head)


SHAPES = {
    "triangle": triangle,
    "circle": circle,
    "square": square,
    "star": star,
    "cross": cross,
    "ring": ring,
    "heart": heart,
    "moon": moon,
    "arrow": arrow,
}

# Shapes that read upside down look wrong (a heart, not an arrow or a star), so their rotation is limited.
MAX_ROTATION = {"heart": 0.5}


# ---- surface patterns ---------------------------------------------------------------------------------------
# Each class may carry its own surface pattern, drawn in the object's frame (it turns with the object) in a
# darker tone of the object's colour; `u`, `v` are pixel offsets from the object's centre. Returns the ink
# coverage in [0, 1]. Colour stays random per object, so neither colour nor pattern alone is a threshold:
# a pattern is a local cue (every patch of the object carries it), like a zebra's stripes.


def _soft(d: np.ndarray, width: float = 0.8) -> np.ndarray:
    """Coverage of a stroke from its signed distance (pixels), with a one-pixel soft edge."""
    return np.clip(0.5 - d / width, 0, 1)


def _tri_wave(t: np.ndarray) -> np.ndarray:
    """Distance to the nearest integer, in [0, 0.5]."""
    return np.abs(t - np.round(t))


def pattern_solid(u, v, period):
    return np.zeros_like(u)


def pattern_stripes(u, v, period):
    return _soft(_tri_wave(u / period) * period - period * 0.25)


def pattern_bands(u, v, period):
    """Wide bands: stripes at twice the scale, a third inked."""
    return _soft(_tri_wave(u / (2.2 * period)) * 2.2 * period - period * 0.75)


def pattern_checker(u, v, period):
    return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)


def pattern_dots(u, v, period):
    du, dv = _tri_wave(u / period) * period, _tri_wave(v / period) * period
    return _soft(np.sqrt(du * du + dv * dv) - period * 0.28)


def pattern_grid(u, v, period):
    d = np.minimum(_tri_wave(u / period), _tri_wave(v / period)) * period
    return _soft(d - 0.7)


def pattern_rings(u, v, period):
    return _soft(_tri_wave(np.sqrt(u * u + v * v) / period) * period - period * 0.25)


def pattern_speckle(u, v, period):
    """Coarse random speckle: a fixed hash of the (object-frame) cell, so it is the same for the same cell."""
    cu, cv = np.floor(u / (period * 0.5)), np.floor(v / (period * 0.5))
    h = np.sin(cu * 12.9898 + cv * 78.233) * 43758.5453
    return ((h - np.floor(h)) > 0.55).astype(np.float32)


def pattern_zigzag(u, v, period):
    w = v + period * 0.5 * (2 * _tri_wave(u / period))
    return _soft(_tri_wave(w / period) * period - period * 0.22)


PATTERNS = {
    "solid": pattern_solid, "stripes": pattern_stripes, "checker": pattern_checker, "dots": pattern_dots,
    "bands": pattern_bands, "grid": pattern_grid, "rings": pattern_rings, "speckle": pattern_speckle, "zigzag": pattern_zigzag,
}
# the class → pattern map used when a world is generated with `patterns=True`
CLASS_PATTERNS = {
    "triangle": "stripes", "circle": "solid", "square": "checker", "star": "dots", "cross": "grid",
    "ring": "zigzag", "heart": "speckle", "moon": "rings", "arrow": "bands",
}
