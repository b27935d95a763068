"""Loading CLIP: random init, local open_clip / OpenAI files, and one clear error when weights are missing."""

from __future__ import annotations

import json
import time
import warnings

import open_clip
import pytest
import torch

from wsss.clip import model as clip_model
from wsss.clip.model import HOW_TO, clip_config, is_torchscript_file, load_clip
from wsss.errors import ConfigError

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16, "pool_type": "avg"},
    "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Two tiny architectures registered with open_clip: plain GELU and an OpenAI-style QuickGELU one."""
    d = tmp_path_factory.mktemp("configs")
    (d / "wsss-test-tiny.json").write_text(json.dumps(TINY))
    (d / "wsss-test-tiny-quickgelu.json").write_text(json.dumps({**TINY, "quick_gelu": True}))
    open_clip.add_model_config(d)
    return "wsss-test-tiny"


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def test_toy_config_is_registered_and_pools_patch_tokens():
    cfg = clip_config("wsss-toy-vit")
    assert cfg["vision_cfg"]["pool_type"] == "avg"
    assert not cfg["vision_cfg"].get("final_ln_after_pool", False)  # ln_post on tokens, then the mean
    model, tokenizer = load_clip("wsss-toy-vit", None)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    grid = model.visual.grid_size
    assert grid == (8, 8)  # 64 px images, patch 8: the grid the toy world is scored on
    x = torch.randn(2, 3, *model.visual.image_size)
    emb = model.encode_image(x)
    # the image embedding is the mean of the ln_post'ed patch tokens, projected (docs/method.md §2)
    v = model.visual
    tokens = v.transformer(v._embeds(x))
    manual = v.ln_post(tokens)[:, 1:].mean(1) @ v.proj
    torch.testing.assert_close(emb, manual, rtol=1e-4, atol=1e-5)
    assert tokenizer(["a photo of a star."]).shape == (1, cfg["text_cfg"]["context_length"])


def test_local_open_clip_file_round_trip(tmp_path, tiny_models):
    model, _ = load_clip(tiny_models, None)
    path = tmp_path / "tiny.pt"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)  # fp16, like the toy checkpoint
    loaded, tokenizer = load_clip(tiny_models, str(path))
    assert same_weights(model.half().float(), loaded)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert tokenizer(["a circle"]).shape == (1, 8)


def test_openai_torchscript_file(tmp_path, tiny_models):
    """OpenAI releases TorchScript archives of QuickGELU models: read them and switch to QuickGELU."""
    ref = open_clip.create_model("wsss-test-tiny-quickgelu").eval()
    path = tmp_path / "ViT-tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings of torch.jit
        traced = torch.jit.trace(ref, (torch.randn(1, 3, 32, 32), torch.randint(0, 100, (1, 8))), check_trace=False)
        torch.jit.save(traced, path)
    assert is_torchscript_file(path) and not is_torchscript_file(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = load_clip(tiny_models, str(path))
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert same_weights(ref, model)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model.encode_image(x), ref.encode_image(x))


def test_openai_state_dict_file(tmp_path, tiny_models):
    """A plain state dict with OpenAI's keys (what `clip.load(...).state_dict()` saves) loads as well."""
    ref = open_clip.create_model("wsss-test-tiny-quickgelu").eval()
    path = tmp_path / "openai_state.pt"
    torch.save(ref.state_dict(), path)
    model, _ = load_clip("wsss-test-tiny-quickgelu", str(path))
    assert same_weights(ref, model)


def test_missing_file_says_how_to_provide_one(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_clip("wsss-toy-vit", str(tmp_path / "nope.pt"))
    msg = str(err.value)
    assert "nope.pt" in msg and "clip.pretrained" in msg and "\n" not in msg
    assert HOW_TO in msg


def test_wrong_architecture_and_corrupt_file(tmp_path, tiny_models):
    model, _ = load_clip(tiny_models, None)
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit model wsss-toy-vit"):
        load_clip("wsss-toy-vit", str(path))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="could not read CLIP checkpoint"):
        load_clip(tiny_models, str(bad))


def test_unknown_model_tag_and_precision():
    with pytest.raises(ConfigError, match="unknown CLIP model"):
        load_clip("ViT-Nope-99", None)
    with pytest.raises(ConfigError, match="neither a file nor a pretrained tag"):
        load_clip("ViT-B-16", "no_such_tag")
    with pytest.raises(ConfigError, match="precision"):
        load_clip("wsss-toy-vit", None, precision="fp8")


def test_tag_without_network_fails_fast(tmp_path, monkeypatch):
    """A real tag with no network and an empty cache: one ConfigError in seconds, no minute of retries."""
    from huggingface_hub import constants

    monkeypatch.setattr(clip_model, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_clip("ViT-B-16", "openai")
    assert time.perf_counter() - t0 < 20
    msg = str(err.value)
    assert "openai" in msg and "clip.pretrained" in msg and "\n" not in msg
    assert constants.HF_HUB_OFFLINE is False  # offline mode only for the duration of the call
