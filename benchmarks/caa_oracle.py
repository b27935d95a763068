"""How far can a better CAM seed carry CAA? Per (class, background) group of the toy world's training
split: the class's IoU from GradCAM, from CAA on GradCAM, and from CAA on an *oracle* seed (the ground
truth's share of each patch) — the best any background prompt could make the seed.

    python benchmarks/caa_oracle.py arrow road home       # arrows on their home background (road)
    python benchmarks/caa_oracle.py ring water home
    python benchmarks/caa_oracle.py arrow road away       # arrows elsewhere

When CAA on the oracle seed is no better than CAA on GradCAM, the loss is in the attention affinity,
not in the seed, and learned background prompts (which only change the seed) cannot recover it.
A diagnostic: it reads ground truth on purpose; nothing in the pipeline does this.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from wsss.cam.caa import attention_affinity, box_masks, caa_refine  # noqa: E402
from wsss.cam.engine import upsample  # noqa: E402
from wsss.data.images import load_rgb  # noqa: E402
from wsss.data.manifest import read_dataset  # noqa: E402
from wsss.data.palette import load_mask  # noqa: E402
from wsss.prompts.background import cam_engine  # noqa: E402
from wsss.settings import load_settings  # noqa: E402
from wsss.toyworld.captions import read_facts  # noqa: E402


def class_iou(maps: np.ndarray, labels, gt: np.ndarray, target: int) -> np.ndarray:
    pred = np.array([0, *labels])[np.concatenate([(1 - maps.max(0))[None], maps]).argmax(0)]
    p, g = pred == target, gt == target
    return np.array([(p & g).sum(), (p & ~g).sum(), (~p & g).sum()])


def main() -> None:
    name, home, where = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(2)
    settings = load_settings(REPO / "params.yaml")
    settings = replace(settings, text=replace(settings.text, background_prompts="words"))
    ds = read_dataset(REPO / settings.data.prepared).split("train")
    engine = cam_engine(settings, ds.vocab)
    target = ds.vocab.names.index(name) + 1
    counts = {k: np.zeros(3) for k in ("GradCAM", "CAA", "oracle seed", "CAA on the oracle seed")}
    images = 0
    for _, row in ds.table.iterrows():
        facts, _ = read_facts(Path(ds.root) / "Annotations" / f"{row['id']}.xml")
        if target not in row["labels"] or (facts.background == home) != (where == "home"):
            continue
        images += 1
        image, gt, labels = load_rgb(ds.image_path(row)), load_mask(ds.mask_path(row)), list(row["labels"])
        pixels = engine.preprocess(image)[None]
        grid = engine.dense.grid(*pixels.shape[-2:])
        attn = torch.zeros(1, grid[0] * grid[1], grid[0] * grid[1])
        x = engine.dense.trunk(pixels, attn_out=attn)
        affinity = attention_affinity(attn[0] / engine.dense.attn_layers, engine.config.sinkhorn_rounds, square=False)
        out = engine._finish(image, [c - 1 for c in labels], x, grid, attn[0].clone())
        share = torch.from_numpy(np.stack([(gt == c).astype(np.float32) for c in labels]))
        seed = F.adaptive_avg_pool2d(share[None], grid)[0]
        seed = seed / seed.flatten(1).amax(1).clamp(min=1e-6)[:, None, None]
        oracle = caa_refine(affinity, seed, box_masks(seed, engine.config.box_threshold,
                                                      engine.config.box_reference_quirk), power=2)
        maps = {"GradCAM": out.cam, "CAA": out.refined, "oracle seed": upsample(seed, gt.shape).numpy(),
                "CAA on the oracle seed": upsample(oracle, gt.shape).numpy()}
        for k, m in maps.items():
            counts[k] += class_iou(m, labels, gt, target)
    print(f"{name} {'on' if where == 'home' else 'off'} {home}: {images} training images")
    print("| seed → maps | IoU | precision | recall |\n|---|---:|---:|---:|")
    for k, (tp, fp, fn) in counts.items():
        print(f"| {k} | {100 * tp / (tp + fp + fn):.1f} | {100 * tp / (tp + fp):.1f} | {100 * tp / (tp + fn):.1f} |")


if __name__ == "__main__":
    main()
