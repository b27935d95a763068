"""Dense native-aspect forward: preprocessing, positional embedding, embeddings, attention capture."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.clip_es import one_thread  # noqa: F401  (autouse fixture for this module)
from helpers.clip_es import (ReferenceClipEs, random_image, ref_block, ref_preprocess,
                             tiny_clip, upsample_pos_emb)

from wsss.clip.dense import (OPENAI_MEAN, OPENAI_STD, DenseViT, accumulate_attention, image_mean_std,
                             interpolate_pos_embed, padded_size, preprocess)
from wsss.errors import ConfigError


@pytest.mark.parametrize("size", [(61, 45), (32, 32), (17, 40)])
def test_preprocess_matches_torchvision_resize_up(size):
    image = random_image(*size)
    x = preprocess(image, 8, OPENAI_MEAN, OPENAI_STD)
    w, h = padded_size(*size, 8)
    assert x.shape == (3, h, w) and h % 8 == 0 and w % 8 == 0 and h >= size[1] and w >= size[0]
    torch.testing.assert_close(x, ref_preprocess(image, 8, OPENAI_MEAN, OPENAI_STD), atol=1e-6, rtol=0)


def test_mean_std_from_preprocess_cfg():
    model = tiny_clip(layers=1)
    assert image_mean_std(model.visual) == (OPENAI_MEAN, OPENAI_STD)


def test_interpolate_pos_embed_matches_reference_and_keeps_cls():
    pos = torch.randn(1 + 4 * 4, 8)
    out = interpolate_pos_embed(pos, (4, 4), (3, 7))
    assert out.shape == (1 + 21, 8)
    torch.testing.assert_close(out, upsample_pos_emb(pos, (3, 7)))
    torch.testing.assert_close(out[0], pos[0])
    assert torch.equal(interpolate_pos_embed(pos, (4, 4), (4, 4)), pos)
    quirk = interpolate_pos_embed(pos, (4, 4), (3, 7), fp16_quirk=True)
    assert torch.equal(quirk, out.half().float())


def test_dense_embedding_equals_encode_image_at_native_square_size():
    """A mean-pooling open_clip ViT: our dense path (CLS + patch mean) equals model.encode_image."""
    model = tiny_clip(pool_type="avg")
    image = random_image(32, 32)
    x = preprocess(image, 8)[None]
    dense = DenseViT(model.visual)
    with torch.no_grad():
        expected = F.normalize(model.encode_image(x), dim=-1)
    torch.testing.assert_close(dense.encode(x), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("ls_init_value", [None, 0.3])
def test_dense_tokens_equal_open_clip_at_native_size(ls_init_value):
    """Blocks run through their own forward (LayerScale included), so tokens equal open_clip's."""
    model = tiny_clip(ls_init_value=ls_init_value)
    x = preprocess(random_image(32, 32), 8)[None]
    dense = DenseViT(model.visual)
    with torch.no_grad():
        tokens = dense.forward_tokens(x)
        expected = model.visual.forward_intermediates(x, indices=1, output_fmt="NLC")["image_intermediates"][-1]
    torch.testing.assert_close(tokens[:, 1:], expected, atol=1e-5, rtol=1e-5)


def test_dense_embedding_at_native_aspect_matches_reference_trunk():
    model = tiny_clip()
    image = random_image(61, 45)
    ref = ReferenceClipEs(model, torch.zeros(1, 32), torch.zeros(1, 32))
    x_ref, _, grid = ref.trunk(image)
    dense = DenseViT(model.visual)
    x = dense.trunk(preprocess(image, 8)[None])
    assert dense.grid(48, 64) == grid == (6, 8)
    torch.testing.assert_close(x, x_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_elems", [None, 4 * 49 * 3, 4 * 49 * 48 * 2])  # all / 3 rows / 2 images
def test_attention_capture_equals_multihead_attention_weights(chunk_elems):
    model = tiny_clip(layers=1)
    blk = model.visual.transformer.resblocks[0]
    x = torch.randn(3, 1 + 48, 64)
    with torch.no_grad():
        _, weights, z = ref_block(blk, x)  # need_weights=True, average_attn_weights=True
        out = torch.zeros(3, 48, 48)
        accumulate_attention(blk.attn, z, out, chunk_elems=chunk_elems)
    torch.testing.assert_close(out, weights[:, 1:, 1:], atol=1e-6, rtol=1e-5)


def test_trunk_accumulates_last_blocks_attention_sum():
    model = tiny_clip(layers=4)
    dense = DenseViT(model.visual, attn_layers=2)
    image = random_image(40, 24)
    ref = ReferenceClipEs(model, torch.zeros(1, 32), torch.zeros(1, 32))
    _, maps, _ = ref.trunk(image)
    attn = torch.zeros(1, 15, 15)
    x = dense.trunk(preprocess(image, 8)[None], attn_out=attn)
    torch.testing.assert_close(attn[0], maps[-1][0, 1:, 1:], atol=1e-6, rtol=1e-5)  # only block 3 of 1..3
    with torch.no_grad():
        _, w_last, _ = ref_block(model.visual.transformer.resblocks[-1], x)
    dense.attention_half(dense.last, x, attn_out=attn)
    torch.testing.assert_close(attn[0], maps[-1][0, 1:, 1:] + w_last[0, 1:, 1:], atol=1e-6, rtol=1e-5)


def test_token_chunks_and_seq_first_layout_give_the_same_results():
    image = random_image(40, 24)
    x = preprocess(image, 8)[None]
    outs = []
    for batch_first, token_chunk in ((True, None), (False, None), (True, 4)):
        dense = DenseViT(tiny_clip(batch_first=batch_first).visual, token_chunk=token_chunk)
        attn = torch.zeros(1, 15, 15)
        y = dense.attention_half(dense.last, dense.trunk(x, attn_out=attn), attn_out=attn)
        outs.append((dense.embedding_from_mid(y), attn, y))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_model_is_left_untouched():
    model = tiny_clip()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks_before = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    dense = DenseViT(model.visual)
    x_last = dense.trunk(preprocess(random_image(40, 24), 8)[None], attn_out=torch.zeros(1, 15, 15))
    z = dense.last.ln_1(x_last).detach().requires_grad_(True)
    y = dense.attention_half(dense.last, x_last, z=z)
    torch.autograd.grad(y.sum(), z)
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()) == hooks_before
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_blocks_avoid_the_quadratic_memory_fast_path(monkeypatch):
    """nn.MultiheadAttention's inference fast path materialises all heads' N×N attention on CPU; the dense
    forward must take the scaled_dot_product_attention path instead."""
    def fail(*args, **kwargs):
        raise AssertionError("nn.MultiheadAttention fast path used")

    monkeypatch.setattr(torch, "_native_multi_head_attention", fail)
    model = tiny_clip()
    with pytest.raises(AssertionError):  # the guard works: open_clip's own forward takes the fast path
        with torch.no_grad():
            model.encode_image(preprocess(random_image(32, 32), 8)[None])
    dense = DenseViT(model.visual)
    dense.encode(preprocess(random_image(40, 24), 8)[None])


def test_unsupported_tower_is_a_config_error():
    with pytest.raises(ConfigError):
        DenseViT(torch.nn.Linear(2, 2))


def test_attn_layers_clipped_to_depth():
    assert DenseViT(tiny_clip(layers=3).visual, attn_layers=8).attn_layers == 3
    assert np.array_equal(padded_size(500, 375, 16), (512, 384))
