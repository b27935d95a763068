"""The toy world generator: simple objects on textured backgrounds, written as a VOC-format dataset.

Layout under the root (what the VOC reader expects):
  JPEGImages/<id>.jpg                 RGB image
  Annotations/<id>.xml                VOC XML: <size>, one <object> per visible object (<name>, <bndbox>),
                                      plus two toy-world fields the VOC reader ignores: the image's
                                      <background> texture and each object's <color> word (for captions)
  SegmentationClass/<id>.png          palette PNG (VOC palette): 0 = background, 1..C = classes, 255 = the
                                      one-pixel anti-aliased outline of every object (like VOC's void border;
                                      `ignore_border=0` disables it)
  ImageSets/Segmentation/{train,val}.txt
  classes.txt                         one class name per line (class id = line number)
  backgrounds.txt                     the background texture names, i.e. the world's "background words"
  stats.json                          what was generated, including the measured co-occurrence rates

Objects are shapes (the class) with a per-object colour drawn from a palette of named colours, shading
and noise, so colour alone never tells the class. Planted co-occurrence: each class in `cooccurrence`
sits on its "home" background with probability `cooccurrence_rate` (boats on water), so a CLIP trained
on the world's captions ties the class to that background and the background leaks into its CAM.
Everything is a function of (seed, image index): the same seed gives the same bytes, with any number
of worker processes.
"""

from __future__ import annotations

import inspect
import json
import math
import multiprocessing
import os
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from wsss import interrupt
from wsss.errors import ConfigError
from wsss.io import atomic_dir, write_json, write_text
from wsss.data.palette import save_palette_png
from wsss.toyworld.shapes import CLASS_PATTERNS, MAX_ROTATION, PATTERNS, SHAPES
from wsss.settings import ToyworldSettings
from wsss.toyworld.textures import TEXTURES, draw_background

CLASSES: tuple[str, ...] = tuple(SHAPES)
BACKGROUNDS: tuple[str, ...] = tuple(TEXTURES)
# class -> its home background: arrows on roads, rings (buoys) on water, stars in the sky
COOCCURRENCE: dict[str, str] = {"arrow": "road", "ring": "water", "star": "sky"}

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.16, 0.16),
    "orange": (0.96, 0.55, 0.12),
    "yellow": (0.94, 0.86, 0.16),
    "green": (0.16, 0.67, 0.24),
    "blue": (0.16, 0.31, 0.86),
    "purple": (0.55, 0.24, 0.75),
    "pink": (0.94, 0.47, 0.7),
    "white": (0.95, 0.95, 0.95),
    "black": (0.1, 0.1, 0.1),
    "brown": (0.5, 0.31, 0.16),
}

# each class's usual colour (with probability `colour_prior`; any palette colour otherwise)
CLASS_COLOURS: dict[str, str] = {
    "triangle": "red", "circle": "green", "square": "blue", "star": "yellow", "cross": "purple",
    "ring": "orange", "heart": "pink", "moon": "white", "arrow": "black",
}

# bumped whenever the same parameters draw different images (recorded in stats.json)
GENERATOR_VERSION = 2

N_OBJECTS_P = (0.45, 0.35, 0.2)  # probability of 1, 2, 3 objects
# Objects lean by at most ±20° by default, as photographed things mostly stand upright. Turned to any
# angle, the toy CLIP reached at most 93.3 % zero-shot mAP in the schedules tried; leaning, 95–96 %
# (docs/toy-clip.md). `max_rotation=math.pi` turns them freely.
MAX_LEAN = 0.35  # radians
REPEAT_P = 0.15  # chance that a further object repeats a class already in the image ("two circles")


@dataclass
class ToyObject:
    cls: str
    colour: str
    cx: float
    cy: float
    radius: float
    angle: float


@dataclass
class Scene:
    background: str
    objects: list[ToyObject] = field(default_factory=list)


@dataclass(frozen=True)
class WorldSpec:
    image_size: int
    classes: tuple[str, ...]
    backgrounds: tuple[str, ...]
    cooccurrence: tuple[tuple[str, str], ...]
    cooccurrence_rate: float
    ignore_border: float
    jpeg_quality: int
    seed: int
    empty_fraction: float  # share of background-only images
    size_range: tuple[float, float]  # object radius as a fraction of the image side
    objects_p: tuple[float, ...]  # probability of 1, 2, 3 ... objects
    max_rotation: float  # objects turn by at most this many radians either way
    patterns: bool  # each class carries its own surface pattern (CLASS_PATTERNS)
    colour_prior: float  # probability that an object has its class's usual colour (CLASS_COLOURS)


def sample_scene(rng: np.random.Generator, spec: WorldSpec) -> Scene:
    """Classes first, then the background (planted classes pull their home background), then geometry."""
    home = dict(spec.cooccurrence)
    n = int(rng.choice(len(spec.objects_p), p=spec.objects_p)) + 1
    if spec.empty_fraction > 0 and rng.random() < spec.empty_fraction:
        n = 0  # background only (used for the CLIP corpus: it teaches the background words)
    classes: list[str] = []
    for _ in range(n):
        if classes and rng.random() < REPEAT_P:
            classes.append(classes[int(rng.integers(len(classes)))])
            continue
        # at most one planted class per image, so each keeps its home-background rate
        allowed = [c for c in spec.classes if not (c in home and any(p in home for p in classes))]
        classes.append(allowed[int(rng.integers(len(allowed)))])
    planted = [c for c in classes if c in home]
    if planted and rng.random() < spec.cooccurrence_rate:
        background = home[planted[0]]
    elif planted:
        others = [b for b in spec.backgrounds if b != home[planted[0]]]
        background = others[int(rng.integers(len(others)))]
    else:
        background = spec.backgrounds[int(rng.integers(len(spec.backgrounds)))]

    s = spec.image_size
    shrink = max(0.5, 1.0 - 0.15 * max(n - 1, 0))  # crowded images hold smaller objects
    objects: list[ToyObject] = []
    for cls in classes:
        radius = rng.uniform(*spec.size_range) * s * shrink
        for _ in range(60):
            cx, cy = rng.uniform(0.5 * radius, s - 0.5 * radius, 2)
            if all(math.hypot(cx - o.cx, cy - o.cy) >= 0.8 * (radius + o.radius) for o in objects):
                break
            radius *= 0.97
        lim = min(MAX_ROTATION.get(cls, math.pi), spec.max_rotation)
        objects.append(ToyObject(cls, "", float(cx), float(cy), float(radius), float(rng.uniform(-lim, lim))))
    return Scene(background, objects)


def _object_sdf(obj: ToyObject, s: int):
    """Signed distance (pixels) of one object on its bounding window; returns (y0, y1, x0, x1, sdf)."""
    m = obj.radius * 1.25 + 2
    x0, x1 = max(int(obj.cx - m), 0), min(int(math.ceil(obj.cx + m)), s)
    y0, y1 = max(int(obj.cy - m), 0), min(int(math.ceil(obj.cy + m)), s)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx + 0.5 - obj.cx, yy + 0.5 - obj.cy
    c, si = math.cos(obj.angle), math.sin(obj.angle)
    u, v = c * dx + si * dy, -si * dx + c * dy  # pixels, in the object's frame
    sdf = SHAPES[obj.cls](u / obj.radius, v / obj.radius).astype(np.float32) * obj.radius
    return y0, y1, x0, x1, sdf, u, v


def render_scene(scene: Scene, rng: np.random.Generator, spec: WorldSpec):
    """Draw the scene; returns (uint8 RGB image, uint8 label mask, (visible, full) pixel counts per object, boxes)."""
    s = spec.image_size
    ids = {c: i + 1 for i, c in enumerate(spec.classes)}
    img = draw_background(scene.background, rng, s, s)
    bg_mean = img.reshape(-1, 3).mean(0)
    mask = np.zeros((s, s), np.uint8)
    inst = np.full((s, s), -1, np.int16)
    areas = []
    half = spec.ignore_border / 2
    names = list(COLOURS)
    for k, obj in enumerate(scene.objects):
        # a colour that stands out from the background's mean colour (camouflage would be unfair at 96 px)
        usual = spec.colour_prior > 0 and obj.cls in CLASS_COLOURS and rng.random() < spec.colour_prior
        for attempt in range(20):
            name = CLASS_COLOURS[obj.cls] if usual and attempt == 0 else names[int(rng.integers(len(names)))]
            rgb = np.clip(np.array(COLOURS[name], np.float32) + rng.uniform(-0.07, 0.07, 3), 0, 1)
            if np.linalg.norm(rgb - bg_mean) > 0.3:
                break
        obj.colour = name
        y0, y1, x0, x1, sdf, u, v = _object_sdf(obj, s)
        h, w = sdf.shape
        g = rng.normal(size=2)
        g /= np.linalg.norm(g) + 1e-6
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        shade = 1 + 0.25 * ((xx - w / 2) * g[0] + (yy - h / 2) * g[1]) / max(obj.radius, 1)
        fill = rgb * shade[..., None]
        if spec.patterns:  # the class's pattern in a darker tone (a lighter one on dark objects)
            period = s / 96 * rng.uniform(5.0, 7.0)
            ink = PATTERNS[CLASS_PATTERNS[obj.cls]](u, v, period).astype(np.float32)[..., None]
            fill = fill * (1 - 0.5 * ink) + (0.35 * ink if rgb.mean() < 0.25 else 0)
        fill = np.clip(fill + rng.normal(0, 0.03, (h, w, 1)).astype(np.float32), 0, 1)
        alpha = np.clip(0.5 - sdf, 0, 1)[..., None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - alpha) + fill * alpha
        inside = sdf < -half if half > 0 else sdf < 0
        band = np.abs(sdf) <= half if half > 0 else np.zeros_like(inside)
        mwin, iwin = mask[y0:y1, x0:x1], inst[y0:y1, x0:x1]
        mwin[band] = 255
        iwin[band] = -1
        mwin[inside] = ids[obj.cls]
        iwin[inside] = k
        areas.append(int(inside.sum()))
    img = img * rng.uniform(0.9, 1.1) + rng.normal(0, 0.01, img.shape).astype(np.float32)
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    visible = np.bincount(inst[inst >= 0].ravel(), minlength=len(scene.objects))
    boxes = []
    for k in range(len(scene.objects)):
        ys, xs = np.nonzero(inst == k)
        boxes.append((int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else None)
    return image, mask, (visible, np.array(areas)), boxes


def make_image(index: int, spec: WorldSpec):
    """One image from (seed, index): resample until every object is clearly visible."""
    rng = np.random.default_rng([spec.seed, index])
    for _ in range(50):
        scene = sample_scene(rng, spec)
        image, mask, (visible, areas), boxes = render_scene(scene, rng, spec)
        if all(v >= max(20, 0.5 * a) for v, a in zip(visible, areas)):
            return scene, image, mask, boxes
    raise RuntimeError(f"could not place objects for image {index}")  # a bug in the generator's parameters


def annotation_xml(image_id: str, scene: Scene, boxes, spec: WorldSpec) -> str:
    s = spec.image_size
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "toyworld"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, val in (("width", s), ("height", s), ("depth", 3)):
        ET.SubElement(size, tag).text = str(val)
    ET.SubElement(root, "segmented").text = "1"
    ET.SubElement(root, "background").text = scene.background
    for obj, box in zip(scene.objects, boxes):
        o = ET.SubElement(root, "object")
        ET.SubElement(o, "name").text = obj.cls
        ET.SubElement(o, "color").text = obj.colour
        ET.SubElement(o, "pose").text = "Unspecified"
        ET.SubElement(o, "truncated").text = str(int(box[0] == 1 or box[1] == 1 or box[2] == s or box[3] == s))
        ET.SubElement(o, "difficult").text = "0"
        bb = ET.SubElement(o, "bndbox")
        for tag, val in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bb, tag).text = str(val)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _write_chunk(args) -> list[dict]:
    """Worker: draw and write a contiguous range of images; returns their summaries for the stats."""
    tmp_root, spec, items = args
    tmp_root = Path(tmp_root)
    out = []
    for index, image_id, split in items:
        scene, image, mask, boxes = make_image(index, spec)
        Image.fromarray(image).save(tmp_root / "JPEGImages" / f"{image_id}.jpg", quality=spec.jpeg_quality)
        save_palette_png(tmp_root / "SegmentationClass" / f"{image_id}.png", mask)
        (tmp_root / "Annotations" / f"{image_id}.xml").write_text(annotation_xml(image_id, scene, boxes, spec))
        fg = float(((mask > 0) & (mask < 255)).mean())
        out.append({"id": image_id, "split": split, "background": scene.background,
                    "classes": sorted({o.cls for o in scene.objects}), "objects": len(scene.objects), "fg": fg})
    return out


def _stats(records: list[dict], spec: WorldSpec) -> dict:
    stats: dict = {}
    for split in ("train", "val", "all"):
        recs = [r for r in records if split == "all" or r["split"] == split]
        n = len(recs)
        per_class = {c: sum(c in r["classes"] for r in recs) for c in spec.classes}
        per_bg = {b: sum(r["background"] == b for r in recs) for b in spec.backgrounds}
        rates = {}
        for c, b in spec.cooccurrence:
            with_c = [r for r in recs if c in r["classes"]]
            rates[c] = {"background": b, "images": len(with_c),
                        "rate": round(sum(r["background"] == b for r in with_c) / max(len(with_c), 1), 4)}
        stats[split] = {
            "images": n,
            "images_per_class": per_class,
            "images_per_background": per_bg,
            "cooccurrence": rates,
            "empty_images": sum(r["objects"] == 0 for r in recs),
            "mean_objects": round(sum(r["objects"] for r in recs) / max(n, 1), 3),
            "mean_foreground_fraction": round(sum(r["fg"] for r in recs) / max(n, 1), 4),
        }
    return stats


def drawn_otherwise(root: str | os.PathLike, **settings) -> dict:
    """The drawing settings in which the world at `root` differs from `generate_toyworld(**settings)` with
    its other parameters at their defaults, as `{name: recorded value}` (`{}` when it would be redrawn
    the same). The split sizes are not compared: they choose how many images, not how each is drawn."""
    stats_file = Path(root) / "stats.json"
    if not stats_file.exists():
        return {"stats.json": "missing"}
    stats = json.loads(stats_file.read_text())
    params = inspect.signature(generate_toyworld).parameters
    want = {k: settings.get(k, params[k].default)
            for k in ("seed", "image_size", "empty_fraction", "size_range", "max_rotation", "colour_prior")}
    want = {**want, "size_range": list(want["size_range"]), "generator": f"wsss.toyworld/{GENERATOR_VERSION}"}
    return {k: stats.get(k) for k, v in want.items() if stats.get(k) != v}


def generate_from_settings(root: str | os.PathLike, settings: ToyworldSettings, **kw) -> dict:
    """`generate_toyworld` with the `toyworld` section of the settings (its `root` is not used: the
    caller chooses where, e.g. a temporary folder swapped in whole)."""
    s = settings
    return generate_toyworld(root, num_train=s.num_train, num_val=s.num_val, image_size=s.image_size, seed=s.seed,
                             size_range=s.size_range, max_rotation=s.max_rotation, patterns=s.patterns,
                             colour_prior=s.colour_prior, **kw)


def generate_toyworld(
    root: str | os.PathLike,
    *,
    num_train: int = 3000,
    num_val: int = 600,
    image_size: int = 64,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
    backgrounds: tuple[str, ...] = BACKGROUNDS,
    cooccurrence: dict[str, str] | None = None,
    cooccurrence_rate: float = 0.88,
    ignore_border: float = 1.0,
    empty_fraction: float = 0.0,
    size_range: tuple[float, float] = (0.16, 0.32),
    objects_p: tuple[float, ...] = N_OBJECTS_P,
    max_rotation: float = MAX_LEAN,
    patterns: bool = True,
    colour_prior: float = 0.9,
    jpeg_quality: int = 92,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Generate the toy world under `root` (replaced as a whole, atomically) and return its stats.

    `cooccurrence` maps a class to its home background (default `COOCCURRENCE`); `{}` plants nothing.
    `empty_fraction` of the images show only a background (0 for a WSSS dataset, whose images all carry
    labels; the CLIP training corpus uses some). `workers` processes draw the images (default: all CPUs); the output does not depend on it.
    """
    spec = world_spec(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed, classes=classes,
                      backgrounds=backgrounds, cooccurrence=cooccurrence, cooccurrence_rate=cooccurrence_rate,
                      ignore_border=ignore_border, empty_fraction=empty_fraction, size_range=size_range,
                      objects_p=objects_p, max_rotation=max_rotation, patterns=patterns, colour_prior=colour_prior,
                      jpeg_quality=jpeg_quality)
    items = [(i, f"toy_{i:06d}", "train" if i < num_train else "val") for i in range(num_train + num_val)]
    workers = max(1, min(workers or os.cpu_count() or 1, 32))
    t0 = time.perf_counter()
    with atomic_dir(root) as tmp:
        records = _draw(tmp, spec, items, workers, progress)
        _write_lists(tmp, spec, records)
        stats = world_stats(spec, records)
        write_json(tmp / "stats.json", stats)
    return {**stats, "seconds": round(time.perf_counter() - t0, 2), "workers": workers}


def world_spec(*, num_train: int, num_val: int, image_size: int, seed: int, classes: tuple[str, ...],
               backgrounds: tuple[str, ...], cooccurrence: dict[str, str] | None, cooccurrence_rate: float,
               ignore_border: float, empty_fraction: float, size_range: tuple[float, float],
               objects_p: tuple[float, ...], max_rotation: float, patterns: bool, colour_prior: float,
               jpeg_quality: int) -> WorldSpec:
    """The checked drawing parameters. Those the `toyworld` settings also take are checked by them (one
    bound each: `ToyworldSettings`), the generator's own ones here."""
    ToyworldSettings(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
                     size_range=tuple(size_range), max_rotation=max_rotation, patterns=patterns,
                     colour_prior=colour_prior)
    cooccurrence = dict(COOCCURRENCE if cooccurrence is None else cooccurrence)
    unknown = [c for c in classes if c not in SHAPES] + [b for b in backgrounds if b not in TEXTURES]
    if unknown:
        raise ConfigError(f"toy world: unknown class/background names {unknown}; known classes {list(SHAPES)}, "
                          f"backgrounds {list(TEXTURES)}")
    bad = {c: b for c, b in cooccurrence.items() if c not in classes or b not in backgrounds}
    if bad:
        raise ConfigError(f"toy world: co-occurrence {bad} names a class or background not in the world")
    if num_train + num_val == 0:
        raise ConfigError(f"toy world: need some images (num_train={num_train}, num_val={num_val})")
    if not objects_p or min(objects_p) < 0 or sum(objects_p) <= 0:
        raise ConfigError(f"toy world: objects_p must be non-negative with a positive sum, got {objects_p}")
    if not 0 <= empty_fraction < 1:
        raise ConfigError(f"toy world: empty_fraction must be in [0, 1), got {empty_fraction}")
    if not 0 <= cooccurrence_rate <= 1:
        raise ConfigError(f"toy world: cooccurrence_rate must be in [0, 1], got {cooccurrence_rate}")
    return WorldSpec(image_size, tuple(classes), tuple(backgrounds), tuple(sorted(cooccurrence.items())),
                     float(cooccurrence_rate), float(ignore_border), int(jpeg_quality), int(seed),
                     float(empty_fraction), tuple(float(v) for v in size_range),
                     tuple(float(p) / sum(objects_p) for p in objects_p), float(max_rotation), bool(patterns),
                     float(colour_prior))


def _draw(tmp: Path, spec: WorldSpec, items: list[tuple], workers: int, progress: bool) -> list[dict]:
    """Draw and write every image in chunks (in `workers` processes); returns their summaries in order."""
    chunk = max(1, min(100, math.ceil(len(items) / (workers * 4))))
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp / sub).mkdir(parents=True)
    records: list[dict] = []
    with tqdm(total=len(items), desc="toy world", unit="img", disable=not progress) as bar:
        if workers == 1:
            for c in chunks:
                interrupt.check()
                records += _write_chunk((str(tmp), spec, c))
                bar.update(len(c))
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=interrupt.ignore_in_worker) as pool:
                for recs in pool.map(_write_chunk, [(str(tmp), spec, c) for c in chunks]):
                    records += recs
                    bar.update(len(recs))
    return records


def _write_lists(tmp: Path, spec: WorldSpec, records: list[dict]) -> None:
    """The split files, the class list and the background words."""
    for split in ("train", "val"):
        ids = [r["id"] for r in records if r["split"] == split]
        write_text(tmp / "ImageSets/Segmentation" / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    write_text(tmp / "classes.txt", "".join(f"{c}\n" for c in spec.classes))
    write_text(tmp / "backgrounds.txt", "".join(f"{b}\n" for b in spec.backgrounds))


def world_stats(spec: WorldSpec, records: list[dict]) -> dict:
    """`stats.json`: what was drawn and how (`drawn_otherwise` compares it), with the measured rates."""
    return {
        "generator": f"wsss.toyworld/{GENERATOR_VERSION}",
        "seed": spec.seed,
        "image_size": spec.image_size,
        "classes": list(spec.classes),
        "backgrounds": list(spec.backgrounds),
        "cooccurrence": dict(spec.cooccurrence),
        "cooccurrence_rate": spec.cooccurrence_rate,
        "ignore_border": spec.ignore_border,
        "empty_fraction": spec.empty_fraction,
        "size_range": list(spec.size_range),
        "objects_p": list(spec.objects_p),
        "max_rotation": spec.max_rotation,
        "patterns": {c: CLASS_PATTERNS[c] for c in spec.classes} if spec.patterns else None,
        "colour_prior": spec.colour_prior,
        "splits": _stats(records, spec),
    }
