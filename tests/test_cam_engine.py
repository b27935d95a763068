"""The engine against the per-class CLIP-ES reference (tests/test_cam_reference.py): all present classes in
one gradient pass must give the reference's maps (≤ 1e-5 in fp32)."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.clip_es import one_thread  # noqa: F401  (autouse fixture for this module)
from helpers.clip_es import ReferenceClipEs, random_image, tiny_clip

from wsss.settings import CamsSettings
from wsss.cam.engine import CamEngine, size_groups, upsample
from wsss.cam.gradcam import softmax_gradcam
from wsss.clip.dense import DenseViT, preprocess
from wsss.errors import ConfigError

TOL = 1e-5


@pytest.fixture(scope="module")
def setup():
    model = tiny_clip()
    g = torch.Generator().manual_seed(1)
    class_text = F.normalize(torch.randn(5, 32, generator=g), dim=-1)
    bg_text = F.normalize(torch.randn(7, 32, generator=g), dim=-1)
    return model, class_text, bg_text


CASES = [((61, 45), [1, 3, 4]), ((32, 32), [2]), ((70, 30), [0, 4]), ((23, 50), [4, 0, 2, 1])]


@pytest.mark.parametrize("class_chunk", [None, 1])  # all classes in one batched backward / one per backward
@pytest.mark.parametrize("size,classes", CASES)
def test_one_pass_equals_per_class_reference(setup, class_chunk, size, classes):
    model, class_text, bg_text = setup
    image = random_image(*size, seed=sum(size))
    ref = ReferenceClipEs(model, class_text, bg_text)(image, classes)
    out = CamEngine(model, class_text, bg_text, CamsSettings(class_chunk=class_chunk or 8))(image, classes)
    assert out.cam.shape == out.refined.shape == (len(classes), size[1], size[0])
    assert out.cam.dtype == np.float32
    for key in ("cam_grid", "cam", "refined_grid", "refined"):
        np.testing.assert_allclose(getattr(out, key), ref[key], atol=TOL, rtol=0, err_msg=key)
    assert all(getattr(out, k).max() > 0.99 for k in ("cam_grid", "refined_grid"))  # non-trivial maps


def test_weak_maps_are_normalised_twice_as_the_reference(setup):
    """CLIP-ES min-max normalises each map per target layer and again after averaging the layers; with
    eps = 1e-7 the second pass matters when a raw map's maximum is small. A near-flat softmax (tiny
    logit scale) gives raw maxima of ~1e-7 here: a single pass would be off by far more than the tolerance."""
    model, class_text, bg_text = setup
    weak = tiny_clip()
    with torch.no_grad():
        weak.logit_scale.fill_(float(np.log(1e-3)))
    image, classes = random_image(40, 32, seed=3), [0, 2, 3]
    ref = ReferenceClipEs(weak, class_text, bg_text)(image, classes)
    engine = CamEngine(weak, class_text, bg_text, CamsSettings())
    out = engine(image, classes)
    for key in ("cam_grid", "cam", "refined_grid", "refined"):
        np.testing.assert_allclose(getattr(out, key), ref[key], atol=TOL, rtol=0, err_msg=key)
    once = out.cam_grid / out.cam_grid.max(axis=(1, 2), keepdims=True) * (1 - 1e-7 / ref["raw_max"][:, None, None])
    assert np.abs(once - ref["cam_grid"]).max() > 0.05  # what the single pass gave: the test can tell them apart


def test_class_and_token_chunks_give_the_same_maps(setup):
    """Large images back-propagate a few classes at a time and run the MLP over token chunks (bounded
    memory); the maps do not change."""
    model, class_text, bg_text = setup
    image = random_image(23, 50, seed=5)
    classes = [4, 0, 2, 1, 3]
    ref = ReferenceClipEs(model, class_text, bg_text)(image, classes)
    for chunk, tokens in ((2, None), (3, 5), (None, 7)):
        out = CamEngine(model, class_text, bg_text, CamsSettings(class_chunk=chunk, token_chunk=tokens))(image, classes)
        for key in ("cam_grid", "refined"):
            np.testing.assert_allclose(getattr(out, key), ref[key], atol=TOL, rtol=0, err_msg=f"{key} {chunk}")


def test_gradients_equal_per_class_autograd(setup):
    """The maps from the split one-pass backward equal one plain autograd backward per class through the
    whole last block (open_clip's own forward), before and after ReLU/normalisation."""
    model, class_text, bg_text = setup
    dense = DenseViT(model.visual)
    x = dense.trunk(preprocess(random_image(40, 24), 8)[None])
    texts = torch.cat([class_text[[0, 3]], bg_text])
    scale = float(model.logit_scale.detach().exp())
    blk = model.visual.transformer.resblocks[-1]
    per_class = []
    for k in range(2):
        xg = x.detach().requires_grad_(True)
        z = blk.ln_1(xg)
        a = blk.attn(z, z, z, need_weights=False)[0]
        y = xg + a
        out = y + blk.mlp(blk.ln_2(y))
        e = model.visual.ln_post(out)[:, 1:].mean(1) @ model.visual.proj
        probs = (scale * F.normalize(e, dim=-1) @ texts.T).softmax(-1)
        per_class.append(torch.autograd.grad(probs[0, k], z)[0][0, 1:].mean(0))
    expected = torch.relu(torch.stack(per_class) @ z.detach()[0, 1:].T).view(2, 3, 5)
    for _ in range(2):  # per target layer, then after the layer mean, as CLIP-ES
        expected = expected - expected.flatten(1).amin(1)[:, None, None]
        expected = expected / (expected.flatten(1).amax(1)[:, None, None] + 1e-7)
    for chunk in (1, 2):
        res = softmax_gradcam(dense, x, (3, 5), class_text[[0, 3]], bg_text, scale, class_chunk=chunk)
        torch.testing.assert_close(res.cam_grid, expected, atol=TOL, rtol=0)
    assert all(p.grad is None for p in model.parameters())


def test_batch_equals_single_images(setup):
    model, class_text, bg_text = setup
    engine = CamEngine(model, class_text, bg_text)
    images = [random_image(61, 45, seed=s) for s in range(3)]
    classes = [[0], [1, 2], [4, 3, 0]]
    batch = engine.run_batch(images, classes)
    for image, cls, out in zip(images, classes, batch):
        single = engine(image, cls)
        for key in ("cam", "refined", "cam_grid", "refined_grid", "probs"):
            np.testing.assert_allclose(getattr(out, key), getattr(single, key), atol=TOL, rtol=0)


def test_seq_first_model_same_maps(setup):
    _, class_text, bg_text = setup
    image = random_image(45, 37)
    outs = [CamEngine(tiny_clip(batch_first=bf), class_text, bg_text)(image, [1, 2]) for bf in (True, False)]
    for key in ("cam", "refined"):
        np.testing.assert_allclose(getattr(outs[0], key), getattr(outs[1], key), atol=TOL, rtol=0)


def test_no_classes_refine_off_and_bad_index(setup):
    model, class_text, bg_text = setup
    engine = CamEngine(model, class_text, bg_text)
    out = engine(random_image(30, 20), [])
    assert out.cam.shape == out.refined.shape == (0, 20, 30)
    plain = CamEngine(model, class_text, bg_text, CamsSettings(refine=False))(random_image(30, 20), [1])
    assert plain.refined is None and plain.cam.shape == (1, 20, 30)
    full = engine(random_image(30, 20), [1])
    np.testing.assert_allclose(plain.cam, full.cam, atol=1e-6)
    with pytest.raises(ValueError):
        engine(random_image(30, 20), [5])
    with pytest.raises(ConfigError):
        CamsSettings(amp="int8")
    with pytest.raises(ConfigError):
        CamsSettings(grad_mode="replicate")
    loop = CamEngine(model, class_text, bg_text, CamsSettings(grad_mode="loop"))(random_image(30, 20), [1, 3])
    np.testing.assert_allclose(loop.cam, engine(random_image(30, 20), [1, 3]).cam, atol=1e-6)


def test_engine_leaves_model_untouched(setup):
    model, class_text, bg_text = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    CamEngine(model, class_text, bg_text)(random_image(30, 20), [0, 1])
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_frozen_model_as_load_clip_returns_it():
    """`load_clip` freezes the parameters; the gradient leaf does not need them to require grad."""
    model = tiny_clip(seed=3).requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    class_text = F.normalize(torch.randn(3, 32, generator=g), dim=-1)
    bg_text = F.normalize(torch.randn(4, 32, generator=g), dim=-1)
    image = random_image(40, 33, seed=9)
    ref = ReferenceClipEs(model, class_text, bg_text)(image, [0, 2])
    out = CamEngine(model, class_text, bg_text)(image, [0, 2])
    for key in ("cam", "refined"):
        np.testing.assert_allclose(getattr(out, key), ref[key], atol=TOL, rtol=0)


def test_auto_class_chunk_bounds_backward_memory():
    from wsss.cam.gradcam import auto_class_chunk

    assert auto_class_chunk(769, 768, "cpu") == 1  # CPU: nothing to gain, memory flat in classes
    assert auto_class_chunk(769, 768, "cuda") >= 8  # GPU, VOC size: every class in one batched backward
    for n in (4097, 16385, 65537):  # large: the batch's gradient buffers stay within max(256 MiB, N²·4)
        assert auto_class_chunk(n, 768, "cuda") * 8 * 4 * n * 768 <= max(256 << 20, 4 * n * n)


def test_upsample_is_cv2_inter_linear():
    maps = torch.rand(2, 6, 8)
    got = upsample(maps, (45, 61)).numpy()
    expected = np.stack([cv2.resize(m, (61, 45)) for m in maps.numpy()])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_size_groups_batches_equal_padded_sizes():
    sizes = [(500, 375), (512, 384), (375, 500), (497, 370), (500, 375)]
    assert size_groups(sizes, 16, max_batch=2) == [[0, 1], [3, 4], [2]]
