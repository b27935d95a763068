"""The prompt-learning loss terms on hand-made embeddings: values, signs, clamping, and that minimising
the loss moves a prompt towards the background and away from the class."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsss.prompts.loss import (COS_MAX, COS_MIN, PromptLossWeights, background_pull, class_push, foreground_repel,
                               prompt_loss, softmax_match)

E = torch.eye(4)  # orthonormal axes: cosines are exact
BG, CLS, FG = E[0:1], E[1:2], E[2:3]
MID = F.normalize(torch.tensor([[1.0, 1.0, 0.0, 0.0]]), dim=-1)  # 45° between background and class


def test_term_values_on_hand_made_embeddings():
    c = 1 / math.sqrt(2)
    assert background_pull(BG, MID).item() == pytest.approx(-math.log(c))
    assert class_push(CLS, MID).item() == pytest.approx(math.log(c))
    assert foreground_repel(FG, MID).item() == pytest.approx(-math.log(1 - COS_MIN), rel=1e-3)  # cos clamped
    assert background_pull(BG, BG).item() == pytest.approx(-math.log(COS_MAX), rel=1e-3)  # clamped, finite
    assert foreground_repel(FG, FG).item() == pytest.approx(-math.log(1 - COS_MAX), rel=1e-3)
    assert math.isfinite(class_push(CLS, BG).item())  # cos 0 → log(1e-4), not -inf
    # the background crop scores 0 against the class and c against the prompt: −log σ(10·c)
    assert softmax_match(BG, None, CLS, MID, logit_scale=10.0).item() == pytest.approx(
        math.log1p(math.exp(-10 * c)), rel=1e-4)
    assert softmax_match(BG, None, MID, MID, logit_scale=10.0).item() == pytest.approx(math.log(2), rel=1e-5)  # a tie
    # the object crop is orthogonal to both: a tie on that side adds log 2; an object crop on the class's
    # axis scores 1 against the class and c against the prompt: −log σ(10·(1 − c))
    assert softmax_match(BG, FG, CLS, MID, 10.0).item() == pytest.approx(math.log1p(math.exp(-10 * c)) + math.log(2),
                                                                         rel=1e-4)
    assert softmax_match(BG, CLS, CLS, MID, 10.0).item() == pytest.approx(
        math.log1p(math.exp(-10 * c)) + math.log1p(math.exp(-10 * (1 - c))), rel=1e-4)


def test_weighted_sum_and_logged_terms():
    w = PromptLossWeights(class_push=0.5, foreground_repel=0.25, softmax_match=2.0)
    loss, terms = prompt_loss(BG, FG, CLS, MID, w, logit_scale=10.0)
    expected = (background_pull(BG, MID) + 0.5 * class_push(CLS, MID) + 0.25 * foreground_repel(FG, MID)
                + 2.0 * softmax_match(BG, FG, CLS, MID, 10.0))
    assert loss.item() == pytest.approx(expected.item())
    assert set(terms) == {"background_pull", "class_push", "foreground_repel", "softmax_match"}
    _, plain = prompt_loss(BG, None, CLS, MID)
    assert set(plain) == {"background_pull", "class_push"}  # unweighted extras are left out


def test_minimising_moves_the_prompt_to_the_background_and_off_the_class():
    prompt = MID.clone().requires_grad_(True)
    opt = torch.optim.SGD([prompt], lr=0.1)
    for _ in range(100):
        loss, _ = prompt_loss(BG, FG, CLS, F.normalize(prompt, dim=-1),
                              PromptLossWeights(class_push=0.1, foreground_repel=0.1, softmax_match=0.1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    p = F.normalize(prompt.detach(), dim=-1)
    assert (p @ BG.T).item() > 0.95 and (p @ CLS.T).item() < 0.3
