"""Segmenter training throughput, and whether the data loader keeps up (docs/method.md §5).

    python benchmarks/train_throughput.py                  # params.yaml's train settings, 60 iterations
    python benchmarks/train_throughput.py --workers 0 2    # compare loader processes
    python benchmarks/train_throughput.py --device cuda    # on a GPU machine

Measures, on the pipeline's prepared training split and pseudo masks (run `dvc repro masks` first):
(a) the loader alone (decode + joint transforms + batching), images/s;
(b) the training step alone on one batch already in memory (forward, loss, backward, SGD), images/s;
(c) the full loop (`wsss.seg.train.train_segmenter`), images/s, and the share of its time spent waiting
    for data. The loader is not the bottleneck when (a) ≫ (b) and (c) ≈ (b).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from wsss.seg.data import SegmentationPairs  # noqa: E402
from wsss.seg.loss import confidence_guided_loss  # noqa: E402
from wsss.seg.run import _transform, label_dir, new_segmenter, training_split  # noqa: E402
from wsss.seg.train import EpochSampler, train_segmenter  # noqa: E402
from wsss.seg.transforms import train_transform  # noqa: E402
from wsss.settings import load_settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--workers", type=int, nargs="+", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = load_settings(REPO / "params.yaml")
    cfg = replace(settings.train, device=args.device, iterations=args.iterations, checkpoint_every=10 ** 9)
    ds = training_split(settings)
    pairs = SegmentationPairs(ds, label_dir(settings), partial(_transform, crop=cfg.crop, scale=tuple(cfg.scale),
                                                               fn=train_transform), cfg.seed)
    device = torch.device(args.device)
    print(f"{len(ds)} images, batch {cfg.batch_size}, crop {cfg.crop}, arch {cfg.arch} (width {cfg.width}), "
          f"{args.device}, {args.threads} threads\n")
    print("| measurement | workers | images/s | s/iteration |\n|---|---:|---:|---:|")
    for workers in args.workers or [cfg.workers]:
        loader = torch.utils.data.DataLoader(pairs, batch_size=cfg.batch_size, num_workers=workers, drop_last=True,
                                             sampler=EpochSampler(len(pairs), cfg.batch_size, 0))
        t0, n = time.perf_counter(), 0
        while n < args.iterations:
            for x, *_ in loader:  # (image, pseudo mask, image labels)
                n += 1
                if n == args.iterations:
                    break
        loader_s = (time.perf_counter() - t0) / n
        print(f"| (a) loader alone | {workers} | {cfg.batch_size / loader_s:.0f} | {loader_s:.4f} |")
    model = new_segmenter(settings, ds.vocab.num_classes).to(device).train()
    x, y, _ = next(iter(torch.utils.data.DataLoader(pairs, batch_size=cfg.batch_size)))
    x, y = x.to(device), y.to(device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, momentum=cfg.momentum)
    for i in range(args.iterations + 5):
        if i == 5:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss = confidence_guided_loss(model(x)["out"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) / args.iterations
    print(f"| (b) training step alone | – | {cfg.batch_size / step_s:.0f} | {step_s:.4f} |")
    for workers in args.workers or [cfg.workers]:
        with tempfile.TemporaryDirectory() as tmp:
            model = new_segmenter(settings, ds.vocab.num_classes)
            stats = train_segmenter(model, pairs, replace(cfg, workers=workers), tmp, progress=False)
        per_it = stats["seconds"] / stats["iterations"]
        print(f"| (c) full loop | {workers} | {stats['images_per_second']:.0f} | {per_it:.4f} "
              f"(waiting for data: {100 * stats['data_seconds'] / stats['seconds']:.0f} %) |")


if __name__ == "__main__":
    main()
