"""SemPLeS's prompt-guided refinement on the segmenter: the numbers of the term, where its gradient goes,
and that a predicted region lying on the class's own background costs more than one on the object."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.clip_es import tiny_clip

from wsss.clip.dense import OPENAI_MEAN, OPENAI_STD
from wsss.clip.embed import image_embedding
from wsss.seg.infer import IMAGENET_MEAN, IMAGENET_STD
from wsss.seg.refine import PromptRefinement


def _term(visual, prompts, weight=1.0, read_out="cls"):
    return PromptRefinement(visual, prompts, weight, read_out, IMAGENET_MEAN, IMAGENET_STD, OPENAI_MEAN,
                            OPENAI_STD, patch_size=8)


@pytest.fixture(scope="module")
def visual():
    return tiny_clip().visual


def _to_clip(x):
    """Segmenter-normalised pixels → CLIP-normalised, written out."""
    m, s = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    cm, cs = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return ((x * s + m) - cm) / cs


def test_the_term_is_minus_log_one_minus_cosine_of_the_masked_crop(visual):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    logits = torch.randn(2, 4, 32, 32, generator=g)
    labels = torch.tensor([[True, False, True], [False, True, False]])
    prompts = F.normalize(torch.randn(3, 32, generator=g), dim=-1)
    got = _term(visual, prompts, weight=0.05)(x, logits, labels)
    probs = logits.softmax(1)
    pairs = [(0, 0), (0, 2), (1, 1)]
    crops = torch.stack([_to_clip(x[b:b + 1])[0] * probs[b, k + 1] for b, k in pairs])
    with torch.no_grad():
        f = image_embedding(visual, crops, "cls")
    s = (f * prompts[[k for _, k in pairs]]).sum(-1).clamp(1e-4, 0.9999)
    torch.testing.assert_close(got, 0.05 * -torch.log(1 - s).mean(), atol=1e-6, rtol=0)


def test_gradients_reach_the_segmenter_not_clip(visual):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 28, 28, generator=g)  # not whole patches: resized up inside
    head = torch.nn.Conv2d(3, 3, 1)
    term = _term(visual, F.normalize(torch.randn(2, 32, generator=g), dim=-1))
    term.train()
    assert not term.visual.training  # the tower stays in eval mode
    loss = term(x, head(x), torch.tensor([[True, True], [False, True]]))
    loss.backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in visual.parameters())
    assert float(term(x, head(x), torch.zeros(2, 2, dtype=torch.bool)).detach()) == 0.0  # no labels, no term


def test_a_region_on_the_class_background_costs_more_than_one_on_the_object(visual):
    """Image: object on the left half, background on the right; the class's prompt is the embedding of
    that background. A prediction spilling onto the background pays more than one on the object."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 32, 32, generator=g)
    right = torch.zeros(1, 1, 32, 32)
    right[..., 16:] = 1
    with torch.no_grad():
        prompt = image_embedding(visual, _to_clip(x) * right, "cls")
    term = _term(visual, prompt)

    def logits_for(region):  # class 1 certain inside the region, background elsewhere
        return torch.cat([(1 - region) * 20, region * 20], dim=1)

    on_object = term(x, logits_for(1 - right), torch.tensor([[True]]))
    on_background = term(x, logits_for(right), torch.tensor([[True]]))
    assert float(on_background) > float(on_object) + 1.0


class _Pairs(torch.utils.data.Dataset):
    """Two fixed (image, label map, image labels) samples, as `SegmentationPairs` yields them."""

    def __init__(self):
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(2, 3, 16, 16, generator=g)
        self.y = torch.randint(0, 3, (2, 16, 16), generator=g)
        self.y[0, :4] = 255
        self.labels = torch.tensor([[True, False], [True, True]])

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return self.x[i], self.y[i], self.labels[i]


class _Segmenter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return {"out": self.head(x)}


def test_train_segmenter_steps_on_the_cgl_loss_plus_the_term(visual, tmp_path):
    """`train.prompt_refine` > 0 inside `train_segmenter`: its one SGD step equals a step on
    CGL + λ₃ · L_refine computed by hand, and the term is logged as `loss_refine`."""
    from wsss.seg.loss import confidence_guided_loss
    from wsss.seg.train import train_segmenter
    from wsss.settings import TrainSettings

    data = _Pairs()
    prompts = F.normalize(torch.randn(2, 32, generator=torch.Generator().manual_seed(4)), dim=-1)
    term = _term(visual, prompts, weight=0.5)
    cfg = TrainSettings(arch="toy", head="deeplabv3", iterations=1, batch_size=2, lr=0.1, momentum=0.0,
                        weight_decay=0.0, log_every=1, checkpoint_every=1, device="cpu", prompt_refine=0.5)
    model, expected = _Segmenter(), _Segmenter()
    logged = []
    train_segmenter(model, data, cfg, tmp_path, "k", on_log=lambda it, m: logged.append(m), progress=False,
                    refine=term)
    logits = expected(data.x)["out"]
    refine = term(data.x, logits, data.labels)
    (confidence_guided_loss(logits, data.y) + refine).backward()
    with torch.no_grad():
        for p in expected.parameters():
            p -= 0.1 * p.grad
    for got, want in zip(model.parameters(), expected.parameters()):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    refine = float(refine.detach())
    assert logged[0]["loss_refine"] == pytest.approx(refine, abs=1e-6) and refine > 0
    without = _Segmenter()
    train_segmenter(without, data, cfg, tmp_path / "plain", "k", progress=False)
    assert (without.head.weight - model.head.weight).abs().max() > 1e-6  # the term changed the step
