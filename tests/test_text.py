"""Text side: the VOC/COCO defaults, class embeddings, synonym fusion, sharpness template selection."""

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from helpers.clip_es import one_thread  # noqa: F401  (autouse fixture for this module)
from helpers.clip_es import random_image, tiny_clip

from wsss.clip.text import (BACKGROUND_WORDS, COCO_BACKGROUND, DEFAULT_TEMPLATE, SYNONYMS, VOC_BACKGROUND,
                            candidate_templates, encode_class_texts, encode_texts, fuse_synonyms, select_template,
                            sharpness)
from wsss.data.vocab import COCO_CLASSES, VOC_CLASSES
from wsss.errors import DataError


@pytest.fixture(scope="module")
def clip():
    return tiny_clip(layers=2), open_clip.get_tokenizer("ViT-B-16")


def test_method_defaults():
    assert DEFAULT_TEMPLATE == "a clean origami {}."
    assert len(VOC_BACKGROUND) == 25 and len(COCO_BACKGROUND) == 23
    assert set(VOC_BACKGROUND) - set(COCO_BACKGROUND) == {"keyboard", "sign"}
    assert BACKGROUND_WORDS["voc"] == VOC_BACKGROUND
    voc = fuse_synonyms(VOC_CLASSES, "voc")
    assert voc[VOC_CLASSES.index("person")] == "person with clothes,people,human"
    assert voc[VOC_CLASSES.index("bird")] == "bird avian"
    assert voc[VOC_CLASSES.index("tvmonitor")] == "tvmonitor screen"
    assert voc[VOC_CLASSES.index("dog")] == "dog"
    coco = dict(zip(COCO_CLASSES, fuse_synonyms(COCO_CLASSES, "coco")))
    assert coco["tie"] == "necktie" and coco["umbrella"] == "umbrella,parasol" and coco["chair"] == "chair seat"
    assert set(SYNONYMS["coco"]) <= set(COCO_CLASSES) | set(VOC_CLASSES)
    assert fuse_synonyms(["a", "b"], {"a": "a,x"}) == ["a,x", "b"]
    templates = candidate_templates()
    assert templates[0] == DEFAULT_TEMPLATE and len(templates) == 81 and all("{}" in t for t in templates)


def test_encode_class_texts_multi_template_average(clip):
    model, tok = clip
    names = ["cat", "person with clothes,people,human"]
    templates = ["a clean origami {}.", "a photo of a {}."]
    emb = encode_class_texts(model, tok, names, templates)
    assert emb.shape == (2, 32)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    per = [encode_texts(model, tok, [t.format(n) for t in templates]) for n in names]
    expected = F.normalize(torch.stack([p.mean(0) for p in per]), dim=-1)
    torch.testing.assert_close(emb, expected)
    # synonym fusion: the fused string goes into the template's slot as one text
    with torch.no_grad():
        raw = model.encode_text(tok(["a clean origami person with clothes,people,human."]))
    torch.testing.assert_close(encode_class_texts(model, tok, names[1:])[0], F.normalize(raw, dim=-1)[0])
    assert encode_texts(model, tok, []).shape == (0, 32)


def test_sharpness_is_sum_of_variance_over_mean():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    labels = [[0, 1], [0, 1, 2]]
    expected = np.var([0.5, 0.3]) / 0.4 + np.var([0.1, 0.1, 0.8]) / np.mean([0.1, 0.1, 0.8])
    assert sharpness(probs, labels) == pytest.approx(expected)


def test_select_template_ranks_by_sharpness(clip):
    model, tok = clip
    classes = ["cat", "dog", "boat"]
    samples = [(random_image(40, 30, seed=s), labels) for s, labels in enumerate([[0, 1], [1, 2], [0], [0, 2, 1]])]
    candidates = ["a clean origami {}.", "a photo of a {}.", "itap of a {}."]
    ranking = select_template(model, tok, samples, classes, candidates, progress=False)
    assert sorted(r.template for r in ranking) == sorted(candidates)
    assert [r.sharpness for r in ranking] == sorted(r.sharpness for r in ranking)
    assert all(r.images == 3 for r in ranking)  # the single-label image is skipped
    # the score of one template recomputed by hand
    from wsss.clip.text import clip_image_features

    feats = clip_image_features(model, [s[0] for s in samples if len(s[1]) > 1])
    text = encode_class_texts(model, tok, classes, ["itap of a {}."])
    probs = (model.logit_scale.exp() * feats @ text.T).softmax(-1).detach()
    expected = sharpness(probs, [[0, 1], [1, 2], [0, 1, 2]])
    assert next(r for r in ranking if r.template == "itap of a {}.").sharpness == pytest.approx(expected, rel=1e-5)
    dense = select_template(model, tok, samples, classes, candidates, image_features="dense", progress=False)
    assert len(dense) == 3


def test_select_template_needs_multilabel_images(clip):
    model, tok = clip
    with pytest.raises(DataError):
        select_template(model, tok, [(random_image(20, 20), [0])], ["cat", "dog"], ["{}"], progress=False)
    with pytest.raises(DataError):
        select_template(model, tok, [(random_image(20, 20), [0, 5])], ["cat", "dog"], ["{}"], progress=False)
