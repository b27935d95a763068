"""Prompt training: the loss falls, CLIP stays frozen, an interrupted run resumes to the same prompts; the
prompts file refuses another CLIP or class list; the CAM engine puts the present classes' prompts in the
softmax's background set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from helpers.clip_es import tiny_clip

from wsss.cam.engine import CamEngine
from wsss.errors import ConfigError
from wsss.prompts.learner import PromptLearner
from wsss.prompts.store import load_prompts, save_prompts
from wsss.prompts.train import CropFeatures, train_prompts
from wsss.settings import CamsSettings, PromptsSettings

C, E = 3, 32


@pytest.fixture(scope="module")
def clip():
    from open_clip.tokenizer import SimpleTokenizer

    return tiny_clip(), SimpleTokenizer(context_length=77)


def crops(n_per_class: int = 8, seed: int = 0) -> tuple[CropFeatures, torch.Tensor]:
    """Per class a background direction and an object direction, with noise; the class text near its object."""
    g = torch.Generator().manual_seed(seed)
    bg_axis, obj_axis = torch.randn(C, E, generator=g), torch.randn(C, E, generator=g)
    classes = torch.arange(C).repeat_interleave(n_per_class)
    noise = lambda: 0.3 * torch.randn(len(classes), E, generator=g)  # noqa: E731
    feats = CropFeatures(F.normalize(bg_axis[classes] + noise(), dim=-1),
                         F.normalize(obj_axis[classes] + noise(), dim=-1), classes)
    return feats, F.normalize(obj_axis, dim=-1)


def settings(**kw) -> PromptsSettings:
    return PromptsSettings(**{"epochs": 12, "batch_size": 8, "lr": 0.05, "length": 4, **kw})


def test_the_loss_falls_and_clip_gets_no_gradient(clip):
    model, tok = clip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    feats, class_text = crops()
    learner = PromptLearner(model, tok, C, length=4)
    start = learner.ctx.detach().clone()
    history = train_prompts(learner, feats, class_text, settings(), logit_scale=10.0, progress=False)
    assert [h["epoch"] for h in history] == list(range(1, 13))
    assert history[-1]["loss"] < 0.7 * history[0]["loss"], history
    assert history[-1]["background_pull"] < history[0]["background_pull"]
    assert not torch.equal(learner.ctx.detach(), start)  # the prompt tokens moved ...
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())  # ... CLIP did not
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_interrupted_run_resumes_and_ends_where_an_uninterrupted_one_does(clip, tmp_path):
    model, tok = clip
    feats, class_text = crops()
    full = PromptLearner(model, tok, C, length=4)
    full_history = train_prompts(full, feats, class_text, settings(epochs=4), 10.0, progress=False)

    def stop_after_two(epoch, record):
        if epoch == 2:
            raise KeyboardInterrupt

    first = PromptLearner(model, tok, C, length=4)
    with pytest.raises(KeyboardInterrupt):
        train_prompts(first, feats, class_text, settings(epochs=4), 10.0, tmp_path / "ckpt.pt", key="k",
                      on_epoch=stop_after_two, progress=False)
    seen = []
    resumed = PromptLearner(model, tok, C, length=4)
    history = train_prompts(resumed, feats, class_text, settings(epochs=4), 10.0, tmp_path / "ckpt.pt", key="k",
                            on_epoch=lambda e, r: seen.append(e), progress=False)
    assert seen == [3, 4]  # epochs 1-2 came from the checkpoint
    torch.testing.assert_close(resumed.ctx.detach(), full.ctx.detach(), atol=1e-6, rtol=0)
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in full_history], abs=1e-6)
    other = []  # a checkpoint of other inputs (another key) is not resumed
    train_prompts(PromptLearner(model, tok, C, length=4), feats, class_text, settings(epochs=4), 10.0,
                  tmp_path / "ckpt.pt", key="other", on_epoch=lambda e, r: other.append(e), progress=False)
    assert other == [1, 2, 3, 4]


def test_prompts_file_belongs_to_one_clip_and_class_list(tmp_path):
    emb, ctx = F.normalize(torch.randn(2, E), dim=-1), torch.randn(2, 4, 16)
    me = {"model": "wsss-toy-vit", "weights": "sha256:abc"}
    path = tmp_path / "prompts.pt"
    save_prompts(path, emb, ctx, ["cat", "dog"], me, "a photo of {}.", {"key": "k"})
    torch.testing.assert_close(load_prompts(path, me, ["cat", "dog"]), emb)
    with pytest.raises(ConfigError, match="learned with CLIP wsss-toy-vit .*not ViT-B-16"):
        load_prompts(path, {"model": "ViT-B-16", "weights": "openai"}, ["cat", "dog"])
    with pytest.raises(ConfigError, match="learned with CLIP"):
        load_prompts(path, {**me, "weights": "sha256:def"}, ["cat", "dog"])  # same name, other weights
    with pytest.raises(ConfigError, match="classes"):
        load_prompts(path, me, ["cat", "bird"])
    with pytest.raises(ConfigError, match="not found"):
        load_prompts(tmp_path / "missing.pt", me, ["cat", "dog"])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="unreadable"):
        load_prompts(tmp_path / "bad.pt", me, ["cat", "dog"])


def test_engine_puts_the_present_classes_prompts_in_the_background_set():
    model = tiny_clip()
    g = torch.Generator().manual_seed(1)
    class_text = F.normalize(torch.randn(5, 32, generator=g), dim=-1)
    words = F.normalize(torch.randn(3, 32, generator=g), dim=-1)
    prompts = F.normalize(torch.randn(5, 32, generator=g), dim=-1)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    present = [1, 3]
    both = CamEngine(model, class_text, words, CamsSettings(), class_bg=prompts)(image, present)
    explicit = CamEngine(model, class_text, torch.cat([words, prompts[present]]), CamsSettings())(image, present)
    np.testing.assert_allclose(both.cam, explicit.cam, atol=1e-5)
    np.testing.assert_allclose(both.refined, explicit.refined, atol=1e-5)
    assert both.probs.shape == (2 + 3 + 2,)
    learned = CamEngine(model, class_text, words[:0], CamsSettings(), class_bg=prompts)(image, present)
    assert learned.probs.shape == (4,)
    words_only = CamEngine(model, class_text, words, CamsSettings())(image, present)
    assert not np.allclose(words_only.cam, both.cam, atol=1e-3)  # the prompts change the maps
    with pytest.raises(ValueError, match="one embedding per class"):
        CamEngine(model, class_text, words, CamsSettings(), class_bg=prompts[:2])


def test_cams_copy_the_teachers_files_instead_of_recomputing(tmp_path):
    """With the words-only background set, `cams` and `teacher` compute the same maps: files of the same
    key are copied, and only a file of another key would need the engine."""
    from wsss.cam.runner import compute_shard, input_key
    from wsss.cam.store import cam_path, save_cam
    from wsss.data.manifest import Dataset, make_table
    from wsss.data.vocab import Vocabulary

    rows = []
    for i, labels in enumerate([(1,), (1, 2)]):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "width": 8, "height": 8, "split": "train",
                     "labels": labels, "mask": ""})
    ds = Dataset(make_table(rows), Vocabulary(("a", "b")), tmp_path, "t")
    teacher = tmp_path / "teacher"
    for row in rows:
        maps = np.random.default_rng(0).random((len(row["labels"]), 8, 8))
        save_cam(cam_path(teacher, row["id"]), row["labels"], maps, maps,
                 key=input_key(tmp_path / row["image"], row["labels"], "K"))

    def no_engine():
        raise AssertionError("nothing should be computed")

    stats = compute_shard(ds, tmp_path / "cams", no_engine, "K", progress=False, reuse_dir=teacher)
    assert (stats.reused, stats.computed) == (2, 0)
    for row in rows:
        assert cam_path(tmp_path / "cams", row["id"]).read_bytes() == cam_path(teacher, row["id"]).read_bytes()
    with pytest.raises(AssertionError, match="nothing should be computed"):  # another key: not the same maps
        compute_shard(ds, tmp_path / "other", no_engine, "K2", progress=False, reuse_dir=teacher)
