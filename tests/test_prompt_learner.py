"""Learned prompts go through the frozen text tower exactly as words would, and only they train."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.clip_es import tiny_clip

from wsss.errors import ConfigError
from wsss.prompts.learner import PLACEHOLDER, PromptLearner, word_init


@pytest.fixture(scope="module")
def clip():
    from open_clip.tokenizer import SimpleTokenizer

    model = tiny_clip()
    return model, SimpleTokenizer(context_length=77)


def test_words_as_prompt_tokens_give_encode_text(clip):
    """With P_k set to real words' token embeddings, the prompt embedding is encode_text of the sentence."""
    model, tok = clip
    template, phrases = "a photo of {}.", ["green grass field", "blue water here"]
    ids = [tok([p])[0][1:4] for p in phrases]  # three one-token words each
    assert all(int(tok([p])[0].argmax()) == 4 for p in phrases)
    init = torch.stack([model.token_embedding.weight[i] for i in ids]).detach()
    learner = PromptLearner(model, tok, num_classes=2, length=3, template=template, init=init)
    assert (learner.tokens[0, learner.start:learner.start + 3] == tok([PLACEHOLDER])[0][1]).all()
    with torch.no_grad():
        expected = F.normalize(model.encode_text(tok([template.format(p) for p in phrases])), dim=-1)
        torch.testing.assert_close(learner(), expected, atol=1e-5, rtol=0)


def test_only_the_prompt_tokens_get_gradients(clip):
    model, tok = clip
    learner = PromptLearner(model, tok, num_classes=3, length=4)
    learner().sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_word_initialisation_and_bad_settings(clip):
    model, tok = clip
    init = word_init(model, tok, ["sky", "road"], num_classes=2, length=5)
    sky, road = tok(["sky"])[0][1], tok(["road"])[0][1]
    expected = model.token_embedding.weight[torch.tensor([sky, road, sky, road, sky])]
    torch.testing.assert_close(init[1], expected.detach())
    assert init.shape == (2, 5, model.token_embedding.weight.shape[1])
    with pytest.raises(ConfigError, match="must contain"):
        PromptLearner(model, tok, num_classes=2, template="no slot")
    with pytest.raises(ConfigError, match="2×5×"):
        PromptLearner(model, tok, num_classes=2, length=5, init=init[:, :3])


def test_a_prompt_longer_than_the_context_is_refused(clip):
    model, tok = clip
    with pytest.raises(ConfigError, match="do not fit"):
        PromptLearner(model, tok, num_classes=2, length=80)
