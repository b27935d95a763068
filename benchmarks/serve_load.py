"""Load and bad requests against the served segmenter: a real `mlflow models serve` on 127.0.0.1 (nothing
leaves the machine), N concurrent clients each sending VOC-size JPEGs (500×375) as base64, bounded (a fixed
number of requests, a timeout each).

    python benchmarks/serve_load.py                              # 4 clients × 25 requests, 1 server worker
    python benchmarks/serve_load.py --clients 8 --requests 25 --workers 2

The model is the pipeline's segmenter (`data/train/segmenter.pt` after `dvc repro`), else one built from
params.yaml's `train` settings with untrained head weights (the same network, so the same cost), registered
in a temporary MLflow store as `serve-load@champion` and served from it, as docs/operations.md serves the
champion. Prints one Markdown row (throughput, latency p50/p99, errors), then the answer to each kind of
bad request, each followed by a good request that must still succeed.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VOC_SIZE = (500, 375)  # width, height of a typical VOC photo
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def voc_jpegs(count: int, seed: int = 0) -> list[str]:
    """`count` 500×375 JPEGs (smooth colour fields plus texture, ~VOC's file size) as base64 text."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = VOC_SIZE
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    out = []
    for _ in range(count):
        base = np.stack([np.sin(xx * rng.uniform(2, 9) + rng.uniform(0, 6)) * np.cos(yy * rng.uniform(2, 9))
                         for _ in range(3)], -1)
        pixels = np.clip((base * 0.5 + 0.5) * 200 + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


def post(url: str, body: bytes, content_type: str = "application/json", timeout: float = 120) -> tuple[int, str]:
    """(HTTP status, response text)."""
    request = urllib.request.Request(url, body, {"Content-Type": content_type})
    try:
        with _OPENER.open(request, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def image_request(images: list[str]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]}}).encode()


def run_load(url: str, images: list[str], clients: int, requests: int, timeout: float = 120) -> dict:
    """`clients` threads, each sending `requests` one-image requests in turn; latencies of the answers and
    the failures (any status but 200, or no answer)."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for r in range(requests):
            body = image_request([images[(k + r) % len(images)]])
            start = time.perf_counter()
            try:
                status, text = post(url, body, timeout=timeout)
            except OSError as e:
                status, text = 0, str(e)
            elapsed = time.perf_counter() - start
            with lock:
                if status == 200 and len(json.loads(text)["predictions"]) == 1:
                    latencies.append(elapsed)
                else:
                    failures.append(f"{status}: {text[:200]}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": clients * requests, "errors": len(failures), "seconds": seconds,
            "images_per_second": len(latencies) / seconds,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None, "failures": failures[:5]}


def bad_requests(tmp: Path) -> dict[str, tuple[bytes, str]]:
    """(body, content type) of each kind of bad request the server must refuse with a 4xx and one line."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))  # claims 10^10 pixels
    big = base64.b64encode(os.urandom(38 * 2**20)).decode()  # a ~50 MB body
    good = voc_jpegs(1, seed=99)[0]
    return {
        "garbage base64": (image_request(["@@ not base64 at all @@"]), "application/json"),
        "not an image": (image_request([base64.b64encode(b"just some text").decode()]), "application/json"),
        "decompression bomb": (image_request([base64.b64encode(bomb).decode()]), "application/json"),
        "50 MB body": (image_request([big]), "application/json"),
        "wrong content type": (image_request([good]), "text/plain"),
    }


def message(text: str) -> str:
    """The one line a client sees: MLflow's JSON error `message`, else the plain text."""
    try:
        return json.loads(text)["message"].strip().splitlines()[-1]
    except (ValueError, KeyError, TypeError, IndexError):
        return text.strip().splitlines()[-1] if text.strip() else ""


def segmenter_file(tmp: Path) -> Path:
    """The pipeline's segmenter, else one built from params.yaml's `train` settings (untrained head)."""
    trained = REPO / "data/train/segmenter.pt"
    if trained.is_file():
        return trained
    import torch

    from wsss.seg.infer import save_segmenter
    from wsss.seg.model import build_segmenter
    from wsss.settings import load_settings

    settings = load_settings(REPO / "params.yaml")
    t, clip = settings.train, settings.clip
    classes = [f"class{k}" for k in range(1, 6)]  # the toy world's 5 classes
    weights = str(REPO / clip.pretrained) if t.arch == "clip" else None
    torch.manual_seed(0)
    model = build_segmenter(t.arch, len(classes) + 1, weights=weights, width=t.width, clip_model=clip.model,
                            head=t.head).eval()
    path = tmp / "segmenter.pt"
    save_segmenter(path, model, t.arch, t.width, classes, clip_model=clip.model, head=t.head)
    return path


def serve(tmp: Path, segmenter: Path, workers: int) -> tuple[subprocess.Popen, str, dict]:
    """Register `segmenter` in a store of its own and start `mlflow models serve` of its champion."""
    from wsss.seg.registry import log_and_gate
    from wsss.settings import TrackingSettings
    from wsss.tracking import start_stage_run

    store = f"sqlite:///{tmp / 'mlflow.db'}"
    (tmp / "dvc.yaml").write_text("stages: {}\n")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        with start_stage_run("serve-load", {}, tracking=TrackingSettings(uri=store, experiment="serve-load")) as run:
            log_and_gate(run, segmenter, _classes(segmenter), 0.5, "serve-load")
    finally:
        os.chdir(cwd)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/serve-load@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode()[-2000:])
        try:
            with _OPENER.open(f"{base}/ping", timeout=2) as r:
                if r.status == 200:
                    return proc, f"{base}/invocations", env
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError("mlflow models serve did not answer /ping") from None
            time.sleep(0.5)


def _classes(segmenter: Path) -> list[str]:
    from wsss.seg.infer import load_segmenter

    return load_segmenter(segmenter)[1]["classes"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=25, help="requests per client")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    from wsss.prefect_env import stop_process

    with tempfile.TemporaryDirectory(prefix="wsss-serve-load-") as tmp_name:
        tmp = Path(tmp_name)
        proc, url, _ = serve(tmp, segmenter_file(tmp), args.workers)
        try:
            images = voc_jpegs(8)
            run_load(url, images, 1, 2)  # warm-up: the first predictions load and compile
            load = run_load(url, images, args.clients, args.requests)
            refusals = {}
            for kind, (body, content_type) in bad_requests(tmp).items():
                status, text = post(url, body, content_type)
                after, _ = post(url, image_request(images[:1]))  # the server still answers
                refusals[kind] = {"status": status, "message": message(text), "then_good_request": after}
        finally:
            stop_process(proc)
    row = (f"| {load['clients']} | {args.workers} | {load['requests']} | {load['errors']} | "
           f"{load['images_per_second']:.1f} | {load['p50_ms']:.0f} | {load['p99_ms']:.0f} |")
    print("| clients | server workers | requests | errors | images/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    print(row)
    for kind, r in refusals.items():
        print(f"{kind}: HTTP {r['status']} {r['message']!r}; next good request: HTTP {r['then_good_request']}")
    if args.out:
        args.out.write_text(json.dumps({"load": load, "refusals": refusals}, indent=2) + "\n")
    bad = load["errors"] or any(not 400 <= r["status"] < 500 or r["then_good_request"] != 200 for r in refusals.values())
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
