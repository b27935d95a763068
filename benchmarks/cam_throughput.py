"""CAM engine throughput and peak memory against a straightforward per-class CLIP-ES reference.

Both run side by side in one process on identical random ViT-B-16 weights (no checkpoint needed):

- the engine (`wsss.cam.engine.CamEngine`): blocks 1..L-1 once without gradients, the last 8 blocks'
  attention averaged in place into one N×N buffer, all present classes' gradients from one last-block
  forward (batched backward), CAA once per image with A·(A·X);
- the reference (`benchmarks/cam_reference.py::ReferenceClipEs`, the paper code's structure): every
  block's N×N attention kept, one forward + full backward of the last block per class, Sinkhorn/A²/refine
  per class.

    PYTHONPATH=src python benchmarks/cam_throughput.py --images 4 --threads 2

Prints three Markdown tables: throughput at VOC size (500×375, 2 classes per image, interleaved per image,
with the largest output difference), peak memory against the number of classes, and peak memory against
the image side (as a multiple of one N×N fp32 matrix, N = number of patches). Peak memory: GPU
`max_memory_allocated`; CPU the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) above the
RSS before the call, with glibc's dynamic mmap threshold pinned so freed tensors leave the RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # the reference the tests prove the engine equal to

from cam_reference import ReferenceClipEs, random_image  # noqa: E402

from wsss.settings import CamsSettings
from wsss.cam.engine import CamEngine  # noqa: E402

MiB = 2**20


# ---- peak memory --------------------------------------------------------------------------------------------
def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD fixed: large frees go back to the OS at once
        return libc
    except OSError:
        return None


LIBC = _libc()


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


@contextlib.contextmanager
def peak_memory(device: torch.device, result: dict):
    """result["peak"] = peak bytes above the level at entry, while the block ran."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield
        torch.cuda.synchronize(device)
        result["peak"] = torch.cuda.max_memory_allocated(device) - base
    else:
        if LIBC is not None:
            LIBC.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _status("VmRSS")
        yield
        result["peak"] = _status("VmHWM") - base


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def max_diff(out, ref) -> tuple[float, float]:
    cam = float(np.abs(out.cam - ref["cam"]).max())
    refined = float(np.abs(out.refined - ref["refined"]).max())
    return cam, refined


# ---- the three measurements -------------------------------------------------------------------------------
def throughput(engine, reference, args, device, rng):
    images = [random_image(args.width, args.height, seed=i) for i in range(args.images)]
    classes = [sorted(rng.choice(args.num_classes, args.classes, replace=False).tolist()) for _ in images]
    engine(images[0], classes[0])  # warm-up
    reference(images[0], classes[0])
    t_engine, t_ref, diffs = [], [], []
    for rep in range(args.repeats):
        for i, (image, cls) in enumerate(zip(images, classes)):  # interleaved, order alternating: load hits both
            first_engine = (i + rep) % 2 == 0
            if not first_engine:
                ref, dt_ref = timed(lambda: reference(image, cls), device)
            out, dt = timed(lambda: engine(image, cls), device)
            if first_engine:
                ref, dt_ref = timed(lambda: reference(image, cls), device)
            t_engine.append(dt)
            t_ref.append(dt_ref)
            diffs.append(max_diff(out, ref))
    mem_engine, mem_ref = {}, {}
    with peak_memory(device, mem_engine):
        engine(images[0], classes[0])
    with peak_memory(device, mem_ref):
        reference(images[0], classes[0])
    batch = None
    if device.type == "cuda" and args.batch > 1:
        groups = [images[i:i + args.batch] for i in range(0, len(images), args.batch)]
        cls_groups = [classes[i:i + args.batch] for i in range(0, len(classes), args.batch)]
        engine.run_batch(groups[0], cls_groups[0])
        _, dt = timed(lambda: [engine.run_batch(g, c) for g, c in zip(groups, cls_groups)], device)
        batch = len(images) / dt
    return {
        "engine_s": statistics.median(t_engine), "reference_s": statistics.median(t_ref),
        "engine_best_s": min(t_engine), "reference_best_s": min(t_ref),
        "engine_total_s": sum(t_engine), "reference_total_s": sum(t_ref),
        "max_diff_cam": max(d[0] for d in diffs), "max_diff_refined": max(d[1] for d in diffs),
        "engine_peak": mem_engine["peak"], "reference_peak": mem_ref["peak"], "batched_img_per_s": batch,
    }


def memory_vs_classes(engine, args, device):
    image = random_image(args.class_side, args.class_side, seed=7)
    rows = []
    for k in args.class_counts:
        mem = {}
        with peak_memory(device, mem):
            engine(image, list(range(k)))
        rows.append((k, mem["peak"]))
    return rows


def memory_vs_side(engine, reference, args, device, patch):
    rows = []
    for side in args.sides:
        image = random_image(side, side, seed=side)
        n = (-(-side // patch)) ** 2
        mem, ref_mem = {}, {}
        with peak_memory(device, mem):
            _, dt = timed(lambda: engine(image, [0, 1]), device)
        ref_peak = None
        if side <= args.ref_max_side:
            with peak_memory(device, ref_mem):
                reference(image, [0, 1])
            ref_peak = ref_mem["peak"]
        rows.append((side, n, mem["peak"], ref_peak, dt))
        print(f"  side {side}: N={n}, engine peak {mem['peak'] / MiB:.0f} MiB, {dt:.1f} s", file=sys.stderr)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default=None, choices=[None, "fp16", "bf16"], help="GPU autocast for both")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--sharpen", type=float, default=4.0,
                    help="scale the random q/k projections so attention is peaked as in a trained CLIP (random "
                         "init gives near-uniform attention, where CAA's min-max amplifies fp32 rounding); 1 = off")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="passes over the images (timings: median and best)")
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--classes", type=int, default=2, help="present classes per image")
    ap.add_argument("--num-classes", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="GPU: also time run_batch with this many images")
    ap.add_argument("--class-side", type=int, default=512)
    ap.add_argument("--class-counts", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--sides", type=int, nargs="+", default=[224, 448, 672, 896, 1024])
    ap.add_argument("--ref-max-side", type=int, default=672, help="largest side the reference is measured at")
    ap.add_argument("--skip", nargs="*", default=[], choices=["throughput", "classes", "sides"])
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)

    import open_clip

    torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, pretrained=None).eval().to(device)
    with torch.no_grad():
        for blk in model.visual.transformer.resblocks:
            blk.attn.in_proj_weight[: 2 * blk.attn.embed_dim].mul_(args.sharpen)
    dim = model.visual.output_dim
    g = torch.Generator().manual_seed(0)
    class_text = F.normalize(torch.randn(args.num_classes, dim, generator=g), dim=-1)
    bg_text = F.normalize(torch.randn(25, dim, generator=g), dim=-1)
    engine = CamEngine(model, class_text, bg_text, CamsSettings(amp=args.amp), device)
    reference = ReferenceClipEs(model, class_text, bg_text)
    if args.amp and device.type == "cuda":
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.amp]
        call = reference.__call__

        def reference(image, cls):  # noqa: F811  (same autocast for the reference)
            with torch.autocast("cuda", dtype=dtype):
                return call(image, cls)
    rng = np.random.default_rng(0)
    patch = engine.patch_size[0]
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}"
    print(f"{args.model} random weights (q/k ×{args.sharpen:g}), {device} ({hw}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, amp {args.amp or 'fp32'}\n")
    results = {"device": str(device), "model": args.model, "amp": args.amp}

    if "throughput" not in args.skip:
        r = throughput(engine, reference, args, device, rng)
        results["throughput"] = r
        print(f"### Throughput, {args.images} images {args.width}×{args.height}, {args.classes} classes each\n")
        print("| implementation | s / image (median) | s / image (best) | images / s (median) | peak memory (MiB) |")
        print("|---|---:|---:|---:|---:|")
        print(f"| reference (per class) | {r['reference_s']:.3f} | {r['reference_best_s']:.3f} | "
              f"{1 / r['reference_s']:.3f} | {r['reference_peak'] / MiB:.0f} |")
        print(f"| engine (one pass) | {r['engine_s']:.3f} | {r['engine_best_s']:.3f} | {1 / r['engine_s']:.3f} | "
              f"{r['engine_peak'] / MiB:.0f} |")
        if r["batched_img_per_s"]:
            print(f"| engine, run_batch {args.batch} | | | {r['batched_img_per_s']:.3f} | |")
        print(f"\nspeed-up: median {r['reference_s'] / r['engine_s']:.2f}×, "
              f"best {r['reference_best_s'] / r['engine_best_s']:.2f}×, "
              f"total {r['reference_total_s'] / r['engine_total_s']:.2f}×; max |engine − reference|: "
              f"cam {r['max_diff_cam']:.2e}, refined {r['max_diff_refined']:.2e}\n")

    if "classes" not in args.skip:
        rows = memory_vs_classes(engine, args, device)
        results["classes"] = rows
        n = (-(-args.class_side // patch)) ** 2
        print(f"### Engine peak memory vs classes, {args.class_side}² image (N = {n})\n")
        print("| classes | peak (MiB) |\n|---:|---:|")
        for k, peak in rows:
            print(f"| {k} | {peak / MiB:.0f} |")
        print()

    if "sides" not in args.skip:
        rows = memory_vs_side(engine, reference, args, device, patch)
        results["sides"] = rows
        print("### Peak memory vs image side (2 classes)\n")
        print("| side | N | one N×N fp32 (MiB) | engine peak (MiB) | engine / N×N | reference peak (MiB) "
              "| engine s |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for side, n, peak, ref_peak, dt in rows:
            nn = 4 * n * n
            ref = f"{ref_peak / MiB:.0f}" if ref_peak is not None else "—"
            print(f"| {side} | {n} | {nn / MiB:.0f} | {peak / MiB:.0f} | {peak / nn:.2f} | {ref} | {dt:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
