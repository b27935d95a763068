"""The segmenter: the confidence-guided loss, joint transforms, resume after an interruption, the
registry gate and `wsss predict`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.seg.loss import IGNORE, confidence_guided_loss
from wsss.seg.transforms import random_crop, random_flip, random_scale, train_transform


def test_ignored_pixels_contribute_nothing():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    target[0, :4] = IGNORE
    loss = confidence_guided_loss(logits, target)
    valid = target != IGNORE
    per_pixel = torch.nn.functional.cross_entropy(logits.detach(), target.clamp(max=3), reduction="none")
    assert loss.item() == pytest.approx(per_pixel[valid].mean().item(), rel=1e-6)  # averaged over valid pixels only
    loss.backward()
    assert logits.grad[0, :, :4].abs().sum() == 0 and logits.grad[0, :, 4:].abs().sum() > 0
    changed = logits.detach().clone()
    changed[0, :, :4] = 100 * torch.randn(4, 4, 8, generator=g)  # anything at ignored pixels
    assert confidence_guided_loss(changed, target).item() == pytest.approx(loss.item(), rel=1e-6)
    everything_ignored = confidence_guided_loss(logits, torch.full_like(target, IGNORE))
    assert everything_ignored.item() == 0 and everything_ignored.requires_grad  # not NaN


def _coded_pair(h=40, w=56):
    """Blocks of labels, and an image whose first channel encodes the label (10 per class)."""
    mask = torch.zeros(h, w, dtype=torch.long)
    mask[5:30, 8:30], mask[12:38, 34:52] = 1, 2
    mask[0:4, :] = IGNORE
    image = torch.zeros(3, h, w)
    image[0] = (mask % IGNORE) * 10.0
    image[1] = torch.arange(w).float()  # position along x: shows flips
    return image, mask


def test_crop_and_flip_move_image_and_labels_together():
    image, mask = _coded_pair()
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        x, y = random_flip(*random_crop(image, mask, 32, g), g)
        assert x.shape[-2:] == y.shape == (32, 32)
        assert torch.equal(x[0], (y % IGNORE) * 10.0)
    padded_x, padded_y = random_crop(image, mask, 64, g)  # larger than the image: padded, labels ignored
    assert padded_x.shape[-2:] == (64, 64) and (padded_y == IGNORE).sum() >= 64 * 64 - 40 * 56
    flipped_x, flipped_y = image.flip(-1), mask.flip(-1)
    assert torch.equal(flipped_x[1], image[1].flip(-1)) and torch.equal(flipped_y, mask.flip(-1))


def test_rescaled_labels_stay_under_their_pixels():
    image, mask = _coded_pair()
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        x, y = random_scale(image, mask, 0.5, 1.5, g)
        code = x[0] / 10
        spread = (torch.nn.functional.max_pool2d(code[None], 3, 1, 1) + torch.nn.functional.max_pool2d(-code[None], 3, 1, 1))[0]
        pure = (spread < 0.01) & (y != IGNORE)  # inside a block: no bilinear blend of two blocks around it
        assert pure.float().mean() > 0.4
        assert torch.equal(code.round().long()[pure], y[pure])
        assert not torch.equal(code.round().long()[pure], y.flip(-1)[pure])  # a misaligned pair would show
    x, y = train_transform((image * 0 + 128).to(torch.uint8), mask, crop=32, scale=(0.75, 1.25),
                           mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), g=g)
    assert x.shape == (3, 32, 32) and y.shape == (32, 32) and x.dtype == torch.float32


# ---- resume -----------------------------------------------------------------------------------------------
class _Squares(torch.utils.data.Dataset):
    """Tiny images with a bright square (class 1) on noise, half its border ignored."""

    def __init__(self, n=12, size=16):
        g = torch.Generator().manual_seed(0)
        self.items = []
        for _ in range(n):
            x = torch.randn(3, size, size, generator=g) * 0.2
            y = torch.zeros(size, size, dtype=torch.long)
            top, left = (int(v) for v in torch.randint(0, size - 6, (2,), generator=g))
            x[:, top:top + 6, left:left + 6] += 1.0
            y[top:top + 6, left:left + 6] = 1
            y[top, left:left + 6] = IGNORE
            self.items.append((x, y))
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _train_settings(**kw):
    from wsss.settings import TrainSettings

    return TrainSettings(**{"iterations": 12, "batch_size": 4, "checkpoint_every": 4, "log_every": 1, "lr": 0.05,
                            "device": "cpu", "workers": 0, **kw})


def _toy_model():
    from wsss.seg.model import build_segmenter

    torch.manual_seed(0)
    return build_segmenter("toy", 2, width=4)


def test_training_resumes_from_the_last_checkpoint_with_its_optimiser_and_schedule(tmp_path):
    from wsss.seg.train import train_segmenter

    data = _Squares()
    full = _toy_model()
    losses = {}
    train_segmenter(full, data, _train_settings(), tmp_path / "full", "k",
                    on_log=lambda i, m: losses.setdefault(i, m), progress=False)

    def crash_after_six(i, m):  # like kill -9 after iteration 6: the last checkpoint is iteration 4
        if i == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_segmenter(_toy_model(), data, _train_settings(), tmp_path / "cut", "k", on_log=crash_after_six,
                        progress=False)
    seen = {}
    resumed = _toy_model()
    stats = train_segmenter(resumed, data, _train_settings(), tmp_path / "cut", "k",
                            on_log=lambda i, m: seen.setdefault(i, m), progress=False)
    assert stats["resumed_from"] == 4 and min(seen) == 5  # continued, did not restart
    for i in seen:  # the same batches, learning rates and losses as the uninterrupted run
        assert seen[i]["lr"] == pytest.approx(losses[i]["lr"]) and seen[i]["loss"] == pytest.approx(losses[i]["loss"], rel=1e-4)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    other = {}  # a checkpoint of other inputs (another key) is not resumed
    train_segmenter(_toy_model(), data, _train_settings(), tmp_path / "cut", "other",
                    on_log=lambda i, m: other.setdefault(i, m), progress=False)
    assert min(other) == 1


def test_too_few_images_for_a_batch_is_one_clear_error(tmp_path):
    from wsss.errors import DataError
    from wsss.seg.train import train_segmenter

    with pytest.raises(DataError, match="fewer than one batch"):
        train_segmenter(_toy_model(), _Squares(n=3), _train_settings(), tmp_path, progress=False)


# ---- registry gate and predict ------------------------------------------------------------------------------
@pytest.fixture()
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _segmenter_file(path, seed=0):
    from wsss.seg.infer import save_segmenter

    torch.manual_seed(seed)
    from wsss.seg.model import build_segmenter

    save_segmenter(path, build_segmenter("toy", 3, width=4).eval(), "toy", 4, ["cat", "dog"])
    return path


def _gate(store, tmp_path, miou, seed):
    from wsss.seg.registry import log_and_gate
    from wsss.tracking import start_stage_run

    with start_stage_run("evaluate", {}, experiment="gate", uri=store) as run:
        return log_and_gate(run, _segmenter_file(tmp_path / f"s{seed}.pt", seed), ["cat", "dog"], miou, "seg"), run.run_id


def test_registry_gate_moves_champion_only_to_a_better_model(store, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    first, _ = _gate(store, tmp_path, 0.50, 0)
    assert first.promoted and first.champion_version is None
    worse, run_id = _gate(store, tmp_path, 0.40, 1)
    assert not worse.promoted and str(client.get_model_version_by_alias("seg", "champion").version) == first.version
    run = client.get_run(run_id)
    assert run.data.metrics["registry.candidate_miou"] == pytest.approx(0.40)
    assert run.data.metrics["registry.champion_miou"] == pytest.approx(0.50)
    assert "does not beat" in run.data.tags["registry.decision"]
    better, _ = _gate(store, tmp_path, 0.60, 2)
    assert better.promoted and str(client.get_model_version_by_alias("seg", "champion").version) == better.version
    assert len(client.search_model_versions("name='seg'")) == 3  # every evaluated model is registered
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model("models:/seg@champion")
    out = model.predict(np.zeros((2, 24, 32, 3), np.uint8))
    assert out.shape == (2, 24, 32) and out.dtype == np.uint8 and out.max() <= 2
    assert model.metadata.metadata["classes"] == ["cat", "dog"]


def test_predict_writes_palette_pngs_and_overlays_and_refuses_bad_files_without_stopping(store, tmp_path):
    from typer.testing import CliRunner

    from helpers.data import bomb_png
    from wsss.cli import app

    _gate(store, tmp_path, 0.5, 0)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(images / f"im{i}.jpg")
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(images), "--model", "models:/seg@champion", "--out",
                                 str(tmp_path / "pred"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for i in range(2):
        labels = Image.open(tmp_path / "pred" / f"im{i}.png")
        assert labels.mode == "P" and labels.size == (28, 20)
        assert Image.open(tmp_path / "pred" / f"im{i}_overlay.png").size == (28, 20)
    direct = runner.invoke(app, ["predict", str(images / "im0.jpg"), "--model", str(tmp_path / "s0.pt"),
                                 "--out", str(tmp_path / "direct"), "--scales", "0.75,1", "--flip"])
    assert direct.exit_code == 0, direct.output

    bomb_png(images / "a-bomb.png", 10_000, 10_000)  # first in the folder: the good images after it still count
    (images / "im2.jpg").write_bytes(b"not an image")  # a text file named .jpg
    bad = runner.invoke(app, ["predict", str(images), "--model", "models:/seg@champion", "--out",
                              str(tmp_path / "again"), "--device", "cpu"])
    assert bad.exit_code == 1
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["im0.png", "im0_overlay.png", "im1.png",
                                                                     "im1_overlay.png"]  # nothing half-written
    assert (tmp_path / "again/im1.png").read_bytes() == (tmp_path / "pred/im1.png").read_bytes()
    assert bad.stdout.startswith("wrote 2 prediction(s)")
    assert [ln for ln in bad.stderr.splitlines() if ln.startswith(("refused", "error"))] == [
        f"refused: {images / 'a-bomb.png'}: refused as a decompression bomb (10000x10000 = 100000000 pixels "
        "> limit 50000000)",
        f"refused: {images / 'im2.jpg'}: cannot decode image (cannot identify image file "
        f"'{images / 'im2.jpg'}')",
        "error: 2 of 4 file(s) refused"]
    missing = runner.invoke(app, ["predict", str(images / "im0.jpg"), "--model", "models:/nope@champion"])
    assert "cannot load the model" in str(missing.exception)


def test_evaluating_the_same_segmenter_again_registers_no_new_version(store, tmp_path):
    from mlflow.tracking import MlflowClient

    from wsss.seg.registry import DIGEST_TAG, segmenter_digest

    client = MlflowClient(store)
    first, _ = _gate(store, tmp_path, 0.50, 0)
    same_file = _segmenter_file(tmp_path / "resaved.pt", 0)  # the same weights saved again: other bytes
    assert same_file.read_bytes() != (tmp_path / "s0.pt").read_bytes()
    assert segmenter_digest(same_file) == segmenter_digest(tmp_path / "s0.pt")
    for miou in (0.55, 0.45):  # the pipeline reran (val data changed, say): same segmenter, same version
        again, run_id = _gate(store, tmp_path, miou, 0)
        assert again.version == first.version and again.reused and not again.promoted
        assert again.message() == f"version {first.version} (val mIoU {miou:.4f}) is champion already (the same " \
                                  "segmenter as before: no new version)"
        assert client.get_run(run_id).data.tags["registry.reused"] == "True"
    [version] = client.search_model_versions("name='seg'")
    assert version.tags[DIGEST_TAG] == segmenter_digest(same_file) and version.tags["val_miou"] == "0.45"
    other, _ = _gate(store, tmp_path, 0.60, 1)  # a different segmenter: a new version, gated as always
    assert other.version != first.version and not other.reused and other.promoted
    back, _ = _gate(store, tmp_path, 0.70, 0)  # the first one again, now better: its own version comes back
    assert back.version == first.version and back.reused and back.promoted
    assert back.message().endswith(": alias moved (the same segmenter as before: no new version)")
    assert len(client.search_model_versions("name='seg'")) == 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _serve(uri: str, port: int, env: dict):
    """`mlflow models serve` of `uri` on 127.0.0.1:port (local environment), ready; the caller stops it."""
    import subprocess
    import sys
    import time
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port), "-w", "1"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("mlflow models serve did not answer /ping")


@pytest.mark.slow
def test_mlflow_models_serve_answers_pixel_and_encoded_images(store, tmp_path):
    """The documented curl example (docs/operations.md) against a real `mlflow models serve` of the champion."""
    import base64
    import io
    import os
    import subprocess
    import sys

    from wsss.prefect_env import stop_process
    from wsss.seg.infer import load_segmenter, predict_labels

    _gate(store, tmp_path, 0.5, 0)
    model, info = load_segmenter(tmp_path / "s0.pt")
    rng = np.random.default_rng(0)
    png, jpeg = rng.integers(0, 255, (20, 28, 3), dtype=np.uint8), rng.integers(0, 255, (33, 17, 3), dtype=np.uint8)
    encoded = []
    for pixels, fmt in ((png, "PNG"), (jpeg, "JPEG")):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        encoded.append(buffer.getvalue())
    (tmp_path / "photo.jpg").write_bytes(encoded[1])
    jpeg = np.asarray(Image.open(tmp_path / "photo.jpg").convert("RGB"))  # what the server decodes
    port = _free_port()
    url = f"http://127.0.0.1:{port}/invocations"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # its uvicorn: the .venv activated
    proc = _serve("models:/seg@champion", port, {**os.environ, "MLFLOW_TRACKING_URI": store, "PATH": path})
    try:
        status, answer = _post(url, {"inputs": np.stack([png, png[::-1]]).tolist()})  # the pixel form, as before
        assert status == 200
        assert np.array_equal(answer["predictions"], [predict_labels(model, im, info) for im in (png, png[::-1])])

        images = [base64.b64encode(e).decode() for e in encoded]
        status, answer = _post(url, {"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]},
                                     "params": {"palette": True}})
        assert status == 200 and len(answer["predictions"]) == 2
        for row, pixels in zip(answer["predictions"], (png, jpeg)):
            labels = predict_labels(model, pixels, info)
            assert np.array_equal(row["labels"], labels)
            palette = Image.open(io.BytesIO(base64.b64decode(row["palette_png"])))
            assert palette.mode == "P" and np.array_equal(np.asarray(palette), labels)
        status, answer = _post(url, {"inputs": {"image": images[:1]}})  # no palette unless asked
        assert status == 200 and list(answer["predictions"][0]) == ["labels"]

        readme = (Path(__file__).parents[1] / "docs/operations.md").read_text()  # the documented example, as written
        curl = re.search(r"^curl -s http://127\.0\.0\.1:5001/invocations .*?[^\\]$", readme, re.M | re.S).group(0)
        out = subprocess.run(["bash", "-c", curl.replace(":5001/", f":{port}/")], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, check=True).stdout
        assert np.array_equal(json.loads(out)["predictions"][0]["labels"], predict_labels(model, jpeg, info))

        status, answer = _post(url, {"dataframe_split": {"columns": ["image"],
                                                         "data": [[images[0]], [base64.b64encode(b"text").decode()]]}})
        assert status == 400 and "Error: image 1: cannot decode image" in answer["message"]
        status, answer = _post(url, {"inputs": [[1, 2, 3]]})
        assert status == 400 and "expected uint8 images [N, H, W, 3]" in answer["message"]

        # bad requests: each a 4xx whose message ends in one line saying what is wrong; the server goes on
        from benchmarks.serve_load import bad_requests, image_request, message, post, run_load, voc_jpegs

        voc = voc_jpegs(2)
        expected = {"garbage base64": (400, "Error: image 0: not base64"),
                    "not an image": (400, "Error: image 0: cannot decode image"),
                    "decompression bomb": (400, "Error: image 0: refused as a decompression bomb"),
                    "50 MB body": (400, "MB encoded, over the 20 MB limit for one image"),
                    "wrong content type": (415, "only supports the following content types")}
        for kind, (body, content_type) in bad_requests(tmp_path).items():
            status, text = post(url, body, content_type)
            assert (status, expected[kind][1] in message(text)) == (expected[kind][0], True), (kind, status, text[:500])
            assert post(url, image_request(voc[:1]))[0] == 200, f"no answer after the {kind}"
        load = run_load(url, voc, clients=4, requests=2)  # a tiny bounded load: VOC-size images, 4 at once
        assert load["requests"] == 8 and load["errors"] == 0, load["failures"]
    finally:
        stop_process(proc)


def test_clip_backbone_segmenter_handles_any_size_and_stays_frozen():
    from helpers.clip_es import tiny_clip
    from torchvision.models.segmentation.deeplabv3 import DeepLabV3

    from wsss.seg.infer import predict_probs
    from wsss.seg.model import ClipBackbone, deeplab_head

    backbone = ClipBackbone(tiny_clip().visual)
    model = DeepLabV3(backbone, deeplab_head(backbone.out_channels, 3, (2, 4, 6), 16)).eval()
    assert model(torch.randn(2, 3, 32, 48))["out"].shape == (2, 3, 32, 48)
    probs = predict_probs(model, torch.randn(3, 29, 43), scales=(0.75, 1.0), flip=True)  # padded to whole patches
    assert probs.shape == (3, 29, 43) and torch.allclose(probs.sum(0), torch.ones(29, 43), atol=1e-5)
    model.train()
    confidence_guided_loss(model(torch.randn(2, 3, 32, 32))["out"], torch.zeros(2, 32, 32, dtype=torch.long)).backward()
    assert all(p.grad is None for p in backbone.parameters())  # the CLIP tower is frozen
    assert any(p.grad is not None for p in model.classifier.parameters())


@pytest.mark.parametrize("decoder_stride", [4, 2, 1])
def test_the_v3plus_decoder_reaches_the_stride_it_is_given(decoder_stride, tmp_path, monkeypatch):
    """`train.decoder_stride`: the V3+ decoder's last fused features (what the classifier sees) are at that
    stride, so the logits are drawn at it, not bilinearly upsampled from stride 4; the saved file rebuilds
    the same network."""
    from helpers.clip_es import tiny_clip

    import wsss.seg.model as seg_model
    from wsss.seg.infer import load_segmenter, save_segmenter

    monkeypatch.setattr(seg_model, "clip_tower", lambda name, weights: tiny_clip().visual.float())
    torch.manual_seed(0)
    model = seg_model.build_segmenter("clip", 3, width=4, clip_model="tiny", head="deeplabv3plus",
                                      decoder_stride=decoder_stride).eval()
    seen = {}
    model.classifier.register_forward_hook(lambda m, i, o: seen.update(shape=i[0].shape))
    x = torch.randn(1, 3, 32, 32)
    assert model(x)["out"].shape == (1, 3, 32, 32) and seen["shape"][-1] == 32 // decoder_stride
    save_segmenter(tmp_path / "s.pt", model, "clip", 4, ["a", "b"], clip_model="tiny", head="deeplabv3plus",
                   decoder_stride=decoder_stride)
    loaded, info = load_segmenter(tmp_path / "s.pt")
    assert info["decoder_stride"] == decoder_stride
    torch.testing.assert_close(loaded(x)["out"], model(x)["out"])


def test_whole_coco_deeplab_v3_initialises_the_v3plus_backbone_and_aspp(tmp_path):
    """A whole torchvision DeepLab-V3 state dict (COCO init for VOC) fills the V3+ model's backbone and its
    ASPP (stored there as classifier.0); the classifier of another class count stays at its initialisation."""
    from torchvision.models.segmentation import deeplabv3_resnet50

    from wsss.seg.model import build_segmenter

    torch.manual_seed(0)
    source = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False).state_dict()
    torch.save(source, tmp_path / "coco.pt")
    model = build_segmenter("resnet50", 11, weights=str(tmp_path / "coco.pt"), head="deeplabv3plus")
    own = model.state_dict()
    torch.testing.assert_close(own["aspp.convs.0.0.weight"], source["classifier.0.convs.0.0.weight"])
    torch.testing.assert_close(own["backbone.layer1.0.conv1.weight"], source["backbone.layer1.0.conv1.weight"])
    assert own["classifier.weight"].shape[0] == 11


def test_predict_reads_images_as_the_segmenter_was_trained(tmp_path):
    """`data.exif` reaches `wsss predict` through the segmenter file: a phone photo (stored 28x20, EXIF
    orientation 6) is predicted as displayed (20x28) by a segmenter trained with `apply`, as stored otherwise."""
    from helpers.content import save_with_orientation
    from wsss.seg.infer import load_segmenter
    from wsss.seg.predict import predict_files

    photo = tmp_path / "phone.jpg"
    save_with_orientation(Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 28, 3), dtype=np.uint8)),
                          photo, 6)
    model, info = load_segmenter(_segmenter_file(tmp_path / "s.pt"))
    for exif, size in (("ignore", (28, 20)), ("apply", (20, 28))):
        info = {**info, "meta": {**info["meta"], "exif": exif}}
        [written], refused = predict_files(model, info, [photo], tmp_path / exif, progress=False)
        assert not refused and Image.open(written).size == size
