"""Procedural background textures (grass, water, wall, sky, road, sand), vectorised numpy.

Each texture is an H×W×3 float32 image in [0, 1] drawn from a random generator. Textures carry
structure (blades, waves, bricks, clouds, lane marks, ripples) and per-image colour jitter, so a
background is recognised by its pattern as much as by its colour, and object colours can collide
with background colours.
"""

from __future__ import annotations

import numpy as np


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a small 2D grid to h×w (separable gathers, no BLAS: cheap in many processes)."""
    gh, gw = grid.shape

    def coords(n_out: int, n_in: int):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(np.intp)
        return lo, np.minimum(lo + 1, n_in - 1), (pos - lo).astype(np.float32)

    grid = grid.astype(np.float32)
    lo, hi, f = coords(h, gh)
    rows = grid[lo] * (1 - f[:, None]) + grid[hi] * f[:, None]
    lo, hi, f = coords(w, gw)
    return rows[:, lo] * (1 - f) + rows[:, hi] * f


def noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int], octaves: int = 3) -> np.ndarray:
    """Fractal value noise in roughly [-1, 1]: random grids of growing resolution, upsampled and summed."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    ch, cw = cells
    for _ in range(octaves):
        out += amp * _upsample(rng.uniform(-1, 1, (max(ch, 1) + 1, max(cw, 1) + 1)), h, w)
        total += amp
        amp *= 0.5
        ch, cw = ch * 2, cw * 2
    return out / total


def _mix(base: np.ndarray, other: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0, 1)[..., None]
    return base * (1 - t) + other * t


def _jitter(rng: np.random.Generator, rgb, amount: float = 0.06) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32), 0, 1)


def grass(rng, h, w):
    base = _jitter(rng, (0.25, 0.55, 0.18), 0.08)
    dark = base * 0.55
    light = np.clip(base * 1.35 + 0.05, 0, 1)
    blades = _upsample(rng.uniform(-1, 1, (max(h // 6, 2), w)), h, w)  # stretched vertically: blades
    patches = noise(rng, h, w, (3, 3), 2)
    img = _mix(base * np.ones((h, w, 3), np.float32), dark, 0.5 - 0.6 * blades)
    img = _mix(img, light, 0.8 * blades - 0.2 + 0.3 * patches)
    return img


def water(rng, h, w):
    base = _jitter(rng, (0.12, 0.35, 0.62), 0.07)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(5, 9) * h / 96
    warp = noise(rng, h, w, (2, 3), 2)
    waves = np.sin(2 * np.pi * (yy / period + 0.15 * np.sin(2 * np.pi * xx / (w * rng.uniform(0.4, 0.9))) + warp))
    img = base * (0.85 + 0.15 * noise(rng, h, w, (2, 2), 2))[..., None]
    img = _mix(img, np.clip(base * 0.6, 0, 1), -waves * 0.8)
    img = _mix(img, np.clip(base + 0.45, 0, 1), (waves - 0.75) * 3)
    return img


def wall(rng, h, w):
    brick = _jitter(rng, (0.62, 0.28, 0.2), 0.08)
    mortar = _jitter(rng, (0.78, 0.76, 0.7), 0.05)
    bh = int(rng.integers(max(h // 10, 4), max(h // 6, 5) + 1))
    bw = 2 * bh + int(rng.integers(0, bh + 1))
    yy, xx = np.mgrid[0:h, 0:w]
    row = yy // bh
    shift = (row % 2) * (bw // 2)
    col = (xx + shift) // bw
    in_mortar = ((yy % bh) < 1) | (((xx + shift) % bw) < 1)
    per_brick = rng.uniform(-0.1, 0.1, (h // bh + 2, w // bw + 3)).astype(np.float32)
    tone = per_brick[row, col][..., None]
    img = np.clip(brick + tone + 0.05 * noise(rng, h, w, (6, 6), 2)[..., None], 0, 1)
    img = np.where(in_mortar[..., None], mortar, img)
    return img


def sky(rng, h, w):
    top = _jitter(rng, (0.25, 0.5, 0.88), 0.06)
    bottom = _jitter(rng, (0.62, 0.8, 0.96), 0.05)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None].repeat(w, 1)
    img = _mix(top * np.ones((h, w, 3), np.float32), bottom, t)
    clouds = noise(rng, h, w, (2, 3), 4)
    cover = rng.uniform(-0.05, 0.25)
    img = _mix(img, np.array([0.97, 0.97, 0.98], np.float32), (clouds + cover) * 3)
    return img


def road(rng, h, w):
    base = _jitter(rng, (0.3, 0.3, 0.32), 0.06)
    grain = rng.uniform(-1, 1, (h, w)).astype(np.float32)
    img = base * (1 + 0.12 * grain + 0.1 * noise(rng, h, w, (3, 3), 2))[..., None]
    line = np.array([0.92, 0.92, 0.9] if rng.random() < 0.6 else [0.92, 0.78, 0.2], np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    vertical = rng.random() < 0.5
    along, across = (yy, xx) if vertical else (xx, yy)
    n = w if vertical else h
    pos = rng.uniform(0.2, 0.8) * n
    half = max(n / 64, 1.0)
    dash = max(n // 6, 4)
    on = (np.abs(across - pos) < half) & ((along // dash) % 2 == 0)
    img = np.where(on[..., None], line, img)
    return img


def sand(rng, h, w):
    base = _jitter(rng, (0.85, 0.74, 0.52), 0.05)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, np.pi)
    u = xx * np.cos(ang) + yy * np.sin(ang)
    ripples = np.sin(2 * np.pi * u / (rng.uniform(6, 11) * h / 96) + 2.5 * noise(rng, h, w, (2, 2), 2))
    grain = rng.uniform(-1, 1, (h, w)).astype(np.float32)
    img = base * (1 + 0.08 * ripples + 0.06 * grain)[..., None]
    return img


TEXTURES = {"grass": grass, "water": water, "wall": wall, "sky": sky, "road": road, "sand": sand}


def draw_background(name: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return np.clip(TEXTURES[name](rng, h, w), 0, 1).astype(np.float32)
