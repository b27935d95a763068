"""Toy CLIP training step: open_clip's own forwards against the written-out attention `train_toy` uses.

    PYTHONPATH=src python benchmarks/train_step.py --threads 2

Times forward + backward (bf16 autocast on the CPU, as in `train_toy_clip`) of
(a) the image tower on a batch of 64-px images: `model.encode_image` (open_clip's forward, `block(z)` per
    block, i.e. PyTorch's fused attention kernel) against the training path `image_tokens` +
    `tile_embeddings` (`block_forward`: softmax(q·kᵀ/√d)·v written out; it also computes the last block's
    value path), the same weights and inputs;
(b) the text tower on a batch of toy captions: `model.encode_text` against `text_embeddings` (written-out
    attention, context cut after the longest caption);
(c) one AdamW step over all parameters, `foreach` against `fused`;
(d) a whole text-side step (forward, backward, gradient clipping, fused AdamW) with the token embedding
    trained in place (its dense 49,408-row gradient) against `TokenRows` (only the rows captions use).
Both sides of each pair run interleaved in one process; the script checks that the two forwards of (a)
and (b) compute the same thing (the optimiser variants are the same algorithm; `TokenRows` is tested to
train the embedding as the whole table would, `tests/test_train_toy.py`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from wsss.clip.model import load_clip  # noqa: E402
from wsss.toyclip.train import (TokenRows, _param_groups, image_tokens, keep_freed_memory,  # noqa: E402
                                 text_embeddings, tile_embeddings)

CAPTIONS = ["a photo of a triangle and two circles.", "a red star in the sky.", "an arrow on the road.",
            "a photo of a ring, a heart and a moon on the water.", "there is a square."]


def image_embeddings(visual, x: torch.Tensor) -> torch.Tensor:
    """The training path: `image_tokens` (which also returns the last block's value path) pooled by
    `tile_embeddings`, i.e. `encode_image` through `block_forward`."""
    return tile_embeddings(visual, image_tokens(visual, x)[0])


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def text_step(model, tokens: torch.Tensor, rows: TokenRows | None):
    """One optimisation step of the text tower as `train_toy_clip` takes it (its AdamW groups and settings,
    clipping), with the token embedding trained in place (`rows` None) or as `TokenRows`."""
    model.token_embedding.requires_grad_(rows is None)
    groups = _param_groups(model, 0.1, rows)
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=1e-6, betas=(0.9, 0.98), eps=1e-6, fused=True)
    model.token_embedding.requires_grad_(True)

    def run():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = text_embeddings(model, tokens, rows).float().square().sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    torch.manual_seed(0)
    model, tokenizer = load_clip("wsss-toy-vit", None)
    model.requires_grad_(True)
    size = model.visual.image_size[0]
    x = torch.randn(args.batch, 3, size, size)
    tokens = tokenizer([CAPTIONS[i % len(CAPTIONS)] for i in range(args.batch)])

    def step(loss_fn):
        def run():
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_fn()
            loss.backward()
        return run

    pairs = {
        "image tower, fwd + bwd": (step(lambda: model.encode_image(x).float().square().sum()),
                                   step(lambda: image_embeddings(model.visual, x).float().square().sum())),
        "text tower, fwd + bwd": (step(lambda: model.encode_text(tokens).float().square().sum()),
                                  step(lambda: text_embeddings(model, tokens).float().square().sum())),
    }
    with torch.no_grad():
        diff_img = (model.encode_image(x) - image_embeddings(model.visual, x)).abs().max().item()
        diff_txt = (model.encode_text(tokens) - text_embeddings(model, tokens)).abs().max().item()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimisers = {kind: torch.optim.AdamW(_param_groups(model, 0.1), lr=1e-5, **{kind: True})
                  for kind in ("foreach", "fused")}
    pairs["AdamW step"] = (optimisers["foreach"].step, optimisers["fused"].step)
    pairs["text step, embedding: dense / TokenRows"] = (text_step(model, tokens, None),
                                                        text_step(model, tokens, TokenRows(model.token_embedding)))

    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, median of {args.repeats}\n")
    print("| part | open_clip / foreach / dense (ms) | train_toy (ms) | speed-up |\n|---|---:|---:|---:|")
    for name, (ref, ours) in pairs.items():
        ref(), ours()  # warm-up
        t_ref, t_ours = [], []
        for _ in range(args.repeats):  # interleaved, so both sides see the same machine
            t_ref.append(seconds(ref))
            t_ours.append(seconds(ours))
        a, b = statistics.median(t_ref), statistics.median(t_ours)
        print(f"| {name} | {a * 1e3:.1f} | {b * 1e3:.1f} | {a / b:.2f}× |")
    print(f"\nmax |difference| (fp32, no autocast): image embeddings {diff_img:.1e}, text embeddings {diff_txt:.1e}")


if __name__ == "__main__":
    main()
