"""The toy CLIP training script in a shortened run, and its pieces (targets, loss, crops)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wsss.clip.model import load_clip
from wsss.clip.dense import DenseViT, accumulate_attention
from wsss.toyclip.settings import ToyClipTraining
from wsss.toyclip.train import (TokenRows, _param_groups, affinity_loss, block_forward, caption_tokens, crop_params,
                                image_tokens, mosaic, multi_positive_loss, paste, paste_consistency, text_embeddings,
                                tile_embeddings, tile_means, train_toy_clip)
from wsss.errors import ConfigError
from wsss.toyworld import generate_toyworld
from wsss.toyworld.generate import drawn_otherwise


def test_multi_positive_loss_prefers_all_true_pairs():
    fits = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # two identical captions of two identical images
    tied = multi_positive_loss(torch.zeros(2, 2), fits)
    diagonal = multi_positive_loss(torch.tensor([[10.0, -10.0], [-10.0, 10.0]]), fits)
    assert tied < diagonal  # with repeated captions, separating the pair is not rewarded
    eye = torch.eye(2)
    assert multi_positive_loss(torch.tensor([[10.0, -10.0], [-10.0, 10.0]]), eye) < 1e-6


def test_training_embedding_is_the_cam_scoring_path():
    model, _ = load_clip("wsss-toy-vit", None)
    size = model.visual.image_size[0]
    x = torch.randn(4, 3, size, size)
    tokens, values, attn = image_tokens(model.visual, x)
    assert attn is None
    alone = tile_embeddings(model.visual, tokens, 1)
    torch.testing.assert_close(alone, model.encode_image(x), rtol=1e-4, atol=1e-5)
    assert values.shape == tokens.shape
    tiles = tile_embeddings(model.visual, image_tokens(model.visual, mosaic(x, 2))[0], 2)
    assert tiles.shape == alone.shape and not torch.allclose(tiles, alone, atol=1e-3)


def test_value_path_is_the_last_blocks_attention_read_out():
    """With uniform attention (zero queries), the last block adds the mean of the value path to every token."""
    model, _ = load_clip("wsss-toy-vit", None)
    visual = model.visual
    last = visual.transformer.resblocks[-1]
    dim = last.attn.embed_dim
    with torch.no_grad():
        last.attn.in_proj_weight[:dim].zero_()
        last.attn.in_proj_bias[:dim].zero_()
    captured = {}
    last.attn.register_forward_hook(lambda mod, inp, out: captured.setdefault("attn", out[0]))
    x = torch.randn(2, 3, 64, 64)
    visual(x)  # open_clip's own forward runs the block's nn.MultiheadAttention
    _, values, _ = image_tokens(visual, x)
    torch.testing.assert_close(captured["attn"], values.mean(1, keepdim=True).expand_as(values), rtol=1e-4, atol=1e-5)


def test_written_out_attention_equals_the_blocks():
    """block_forward / text_embeddings are the open_clip forwards, values and gradients (text: causal mask)."""
    model, tokenizer = load_clip("wsss-toy-vit", None)
    model.requires_grad_(True)
    block = model.visual.transformer.resblocks[0]
    z = torch.randn(3, 65, block.attn.embed_dim, requires_grad=True)
    ours = block_forward(block, z)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), z)
    theirs = block(z)
    (grad_theirs,) = torch.autograd.grad(theirs.square().sum(), z)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-4, atol=1e-4)
    tokens = tokenizer(["a photo of a red triangle.", "a circle and a star on the grass."])
    torch.testing.assert_close(text_embeddings(model, tokens), model.encode_text(tokens), rtol=1e-5, atol=1e-5)


def test_caption_tokens_are_the_tokenizers():
    _, tokenizer = load_clip("wsss-toy-vit", None)
    tokens = caption_tokens(tokenizer)
    for captions in (["a circle.", "two stars on the sky.", "a circle."], ["a heart.", "a circle.", "a circle."]):
        assert torch.equal(tokens(captions), tokenizer(captions))


def test_token_rows_train_the_embedding_like_the_whole_table():
    """A text-side training step as `train_toy_clip` takes it (its AdamW groups, fused AdamW, clipping),
    with the whole embedding trainable or with `TokenRows`: the same model after write-back, every row no
    caption used untouched; a caption with a new token takes a new slot."""
    dense, tokenizer = load_clip("wsss-toy-vit", None)
    compact, _ = load_clip("wsss-toy-vit", None)
    compact.load_state_dict(dense.state_dict())
    before = dense.token_embedding.weight.detach().clone()
    dense.requires_grad_(True)
    compact.requires_grad_(True)
    compact.token_embedding.requires_grad_(False)
    rows = TokenRows(compact.token_embedding, capacity=64)
    runs = []
    for model, embed in ((dense, None), (compact, rows)):
        groups = _param_groups(model, 0.1, embed)
        opt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.98), eps=1e-6, fused=True)
        runs.append((model, embed, opt, [p for g in groups for p in g["params"]]))
    batches = [["a photo of a circle.", "two stars on the sky."], ["a heart.", "a red arrow on the road."]] * 2
    for captions in batches:  # the second batch brings tokens the first did not use
        tokens = tokenizer(captions)
        for model, embed, opt, params in runs:
            opt.zero_grad()
            (text_embeddings(model, tokens, embed).square().sum() * 10).backward()
            assert torch.nn.utils.clip_grad_norm_(params, 1.0) > 1  # the clipping is exercised
            opt.step()
    rows.write_back()
    for name, p in dense.named_parameters():
        if not name.startswith("visual."):
            torch.testing.assert_close(compact.get_parameter(name), p, rtol=1e-4, atol=1e-5, msg=name)
    used = torch.unique(torch.cat([tokenizer(b) for b in batches]))
    after = compact.token_embedding.weight
    assert torch.equal(torch.sort(rows.ids).values, used)
    unused = torch.ones(len(after), dtype=torch.bool)
    unused[used] = False
    assert torch.equal(after[unused], before[unused])
    assert not torch.allclose(after[rows.ids], before[rows.ids])  # the used rows did train
    with pytest.raises(ConfigError, match="more than 64 distinct tokens"):
        TokenRows(compact.token_embedding, capacity=64)(torch.arange(65)[None])


def test_trained_attention_is_the_matrix_caa_reads():
    """image_tokens' averaged attention = the CAM engine's buffer (sum over blocks) / depth, at any grid."""
    model, _ = load_clip("wsss-toy-vit", None)
    model.requires_grad_(True)  # as in training (load_clip freezes)
    x = torch.randn(3, 3, 128, 96)  # 16×12 grid: the positional embedding is interpolated
    tokens, _, attn = image_tokens(model.visual, x, attn_images=2)
    dense = DenseViT(model.visual, attn_layers=len(model.visual.transformer.resblocks))
    buf = torch.zeros(2, 16 * 12, 16 * 12)
    with torch.no_grad():  # the engine: blocks 1..L-1 in the trunk, the last one beside the GradCAM pass
        z = dense.trunk(x[:2], attn_out=buf)
        accumulate_attention(dense.last.attn, dense.last.ln_1(z), buf)
    torch.testing.assert_close(attn, buf / dense.attn_layers, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 16 * 12), atol=0.05, rtol=0)  # CLS takes the rest
    assert attn.requires_grad  # the loss reaches the q/k weights


def test_affinity_loss_is_zero_at_its_target_and_prefers_grouping():
    # two groups of patch tokens: 0-1 alike, 2-3 alike
    f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    tokens = torch.cat([torch.zeros(1, 2), f])[None]
    sim = torch.nn.functional.normalize(f, dim=-1)
    target = torch.softmax(sim @ sim.T / 0.1, -1)[None]
    assert affinity_loss(target * 0.9, tokens) < 1e-6  # rows are renormalised (the CLS share dropped)
    grouped = torch.tensor([[.5, .5, 0, 0], [.5, .5, 0, 0], [0, 0, .5, .5], [0, 0, .5, .5]])[None] + 1e-3
    uniform = torch.full((1, 4, 4), 0.25)
    assert affinity_loss(grouped, tokens) < affinity_loss(uniform, tokens)


def test_paste_and_its_consistency_target():
    rng = np.random.default_rng(0)
    x, src = torch.zeros(3, 3, 64, 64), torch.ones(3, 3, 64, 64)
    pasted, where = paste(x, src, 8, rng)
    assert where.shape == (3, 64)
    for i in range(3):
        got = pasted[i, 0].reshape(8, 8, 8, 8).mean((1, 3)).flatten()  # per patch: 1 where pasted
        assert torch.equal(got.bool(), where[i]) and 4 <= int(where[i].sum()) <= 25
    # tokens of the pasted image that equal their clean sources' score 0; anything else scores more
    clean = torch.randn(6, 65, 5)
    target = torch.where(where[..., None], clean[3:, 1:], clean[:3, 1:])
    exact = torch.cat([torch.randn(3, 1, 5), target], 1)
    assert paste_consistency(clean, exact, where) < 1e-6
    assert paste_consistency(clean, torch.cat([exact[:, :1], clean[:3, 1:]], 1), where) > 0.1


def test_mosaic_tiles_row_major():
    x = torch.arange(4).float().view(4, 1, 1, 1).expand(4, 3, 2, 2)
    m = mosaic(x, 2)
    assert m.shape == (1, 3, 4, 4)
    assert m[0, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    tokens = torch.cat([torch.full((1, 1, 3), -9.0), m[:, :1].flatten(2).transpose(1, 2).expand(-1, -1, 3)], 1)
    assert tile_means(tokens, 2)[:, 0].tolist() == [0, 1, 2, 3]  # class token left out, tiles in order


def test_crops_keep_every_object():
    rng = np.random.default_rng(0)
    boxes = np.array([[10, 20, 40, 50], [0, 0, 96, 96], [70, 5, 95, 30], [48, 48, 48, 48]], np.float32)
    for _ in range(50):
        x0, y0, side = crop_params(boxes, 96, rng, min_scale=0.5, p_crop=1.0)
        assert np.all(x0 >= 0) and np.all(y0 >= 0) and np.all(x0 + side <= 96 + 1e-4)
        assert np.all(x0 <= boxes[:, 0] + 1e-4) and np.all(y0 <= boxes[:, 1] + 1e-4)
        assert np.all(x0 + side >= boxes[:, 2] - 1e-4) and np.all(y0 + side >= boxes[:, 3] - 1e-4)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "world"
    generate_toyworld(root, num_train=48, num_val=16, image_size=64, seed=5, empty_fraction=0.1, workers=1,
                      progress=False)
    return root


def test_short_training_run(tmp_path, tiny_corpus):
    out = tmp_path / "assets" / "toy.pt"
    settings = ToyClipTraining(epochs=30, batch_size=16, lr=2e-3, max_steps=24, seed=0, log_every=4)
    metrics = train_toy_clip(tiny_corpus, out, settings, eval_root=tiny_corpus, progress=False)
    assert metrics["steps"] == 24
    assert metrics["final_loss"] < metrics["first_loss"]
    assert 0 <= metrics["val_zero_shot_map"] <= 100
    state = torch.load(out, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["model"] == "wsss-toy-vit" and sidecar["params"] == settings.as_dict()  # the sidecar is its asdict
    assert sidecar["metrics"]["steps"] == 24 and sidecar["history"]
    model, _ = load_clip("wsss-toy-vit", str(out))
    assert model.encode_image(torch.zeros(1, 3, 64, 64)).shape == (1, model.visual.output_dim)
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy.json", "toy.pt"]  # nothing half-written left


def test_generates_the_corpus_when_missing(tmp_path, monkeypatch):
    from wsss.toyclip import train as train_toy

    monkeypatch.setattr(train_toy, "CORPUS", dict(num_train=20, num_val=0, image_size=64, seed=1, empty_fraction=0.1))
    metrics = train_toy_clip(tmp_path / "corpus", tmp_path / "m.pt", ToyClipTraining(batch_size=8, max_steps=2),
                             progress=False)
    assert (tmp_path / "corpus" / "classes.txt").exists() and metrics["steps"] == 2
    assert drawn_otherwise(tmp_path / "corpus", **train_toy.CORPUS) == {}


def test_a_corpus_drawn_otherwise_is_named(tiny_corpus, caplog):
    from wsss.toyclip.train import CORPUS

    assert drawn_otherwise(tiny_corpus, **CORPUS) == {"seed": 5, "empty_fraction": 0.1}
    with caplog.at_level("WARNING"):
        train_toy_clip(tiny_corpus, tiny_corpus.parent / "m.pt", ToyClipTraining(batch_size=8, max_steps=1),
                       progress=False)
    assert "'seed': 5" in caplog.text and "not as the default corpus" in caplog.text


@pytest.mark.parametrize("bad", [dict(batch_size=1), dict(paste_fraction=0.6)])
def test_bad_settings_fail_before_any_work(tmp_path, bad):
    from wsss.errors import ConfigError

    with pytest.raises(ConfigError, match=f"train-toy-clip.{next(iter(bad))}: expected"):
        train_toy_clip(tmp_path / "corpus", tmp_path / "m.pt", ToyClipTraining(**bad), progress=False)
    assert not (tmp_path / "corpus").exists()  # no corpus generated for a run that cannot start
