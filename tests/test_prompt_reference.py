"""The published prompt-learning mode computes what SemPLeS's official code computes, on identical tensors.

The `official_*` functions transcribe SemPLeS's formulas (its `SimMaxLoss`/`SimMinLoss`, `encode_btp`, the
masked crops of `engine2.train_one_epoch` through `encode_image`, AdamW + timm's per-epoch cosine) onto an
open_clip model's modules; the project's pure functions must give the same numbers.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.clip_es import tiny_clip

from wsss.prompts.learner import PromptLearner
from wsss.prompts.loss import PromptLossWeights, prompt_loss
from wsss.prompts.train import CropFeatures, epoch_order, masked_crop_embeddings, train_prompts
from wsss.settings import PromptsSettings

PUBLISHED = dict(length=5, init="uniform", mask_threshold=None, period_quirk=True, image_embedding="cls",
                 class_push=0.02, foreground_repel=0.0, softmax_match=0.0, lr_schedule="cosine",
                 weight_decay=0.03, lr=0.025, epochs=3, batch_size=4)


# ---- transcriptions of the official formulas ----------------------------------------------------------------
def official_sim_max(x):  # SimMaxLoss(x, weights=1)
    return -torch.log(x.clamp(0.0001, 0.9999)).mean()


def official_objective(img_similarity, label_similarity, lam):  # engine2: L_Max + hypers[0] · L_Min
    return official_sim_max(img_similarity) + lam * torch.log(label_similarity.clamp(0.0001, 0.9999)).mean()


def official_encode_btp(model, tokenizer, btp):
    """[SOT] encode('a photo of ') btp encoder['.'] [EOT] 0…, pooled at position 5 + L (the EOT)."""
    emb, dev = model.token_embedding, btp.device
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id  # open_clip keeps them out of .encoder
    ids = lambda t: torch.tensor([t], dtype=torch.long, device=dev)  # noqa: E731
    n, length = btp.shape[:2]
    context = model.positional_embedding.shape[0]
    x = torch.cat([emb(ids([sot])).expand(n, -1, -1), emb(ids(tokenizer.encode("a photo of "))).expand(n, -1, -1),
                   btp, emb(ids([tokenizer.encoder["."]])).expand(n, -1, -1), emb(ids([eot])).expand(n, -1, -1),
                   emb(ids([0])).expand(n, context - 6 - length, -1)], dim=1)
    x = x + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)  # open_clip's transformer is batch-first
    x = model.ln_final(x)
    return x[:, 5 + length, :] @ model.text_projection


def official_crops(model, samples, cam):  # engine2: cam · samples and (1 − cam) · samples through encode_image
    fg = model.encode_image(cam * samples)
    bg = model.encode_image((1 - cam) * samples)
    return F.normalize(bg, dim=-1), F.normalize(fg, dim=-1)


# ---- the comparisons --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip():
    from open_clip.tokenizer import SimpleTokenizer

    return tiny_clip(), SimpleTokenizer(context_length=77)


def test_the_published_loss_is_l_max_plus_lambda_l_min():
    g = torch.Generator().manual_seed(0)
    b, t, p = (F.normalize(torch.randn(64, 16, generator=g) + 1.5, dim=-1) for _ in range(3))
    b[0] = -p[0]  # a clamped cosine on each side
    t[1] = p[1]
    ours, _ = prompt_loss(b, None, t, p, PromptLossWeights(class_push=0.02))
    img_similarity = torch.matmul(b[:, None], p[:, :, None])  # [N, 1, 1] as clip_forward_global
    label_similarity = torch.matmul(t[:, None], p[:, :, None])
    torch.testing.assert_close(ours, official_objective(img_similarity, label_similarity, 0.02), atol=1e-7, rtol=0)


def test_the_prompt_encoder_is_encode_btp_with_the_period_quirk(clip):
    model, tok = clip
    g = torch.Generator().manual_seed(1)
    btp = torch.rand(3, 5, model.token_embedding.weight.shape[1], generator=g)
    learner = PromptLearner(model, tok, 3, 5, "a photo of {}.", init=btp, period_quirk=True)
    assert int(learner.tokens[0, learner.start + 5]) == tok.encoder["."] != int(tok(["."])[0][1])
    with torch.no_grad():
        expected = F.normalize(official_encode_btp(model, tok, btp), dim=-1)
        torch.testing.assert_close(learner(), expected, atol=1e-6, rtol=0)
        plain = PromptLearner(model, tok, 3, 5, "a photo of {}.", init=btp)()
    assert (plain - expected).abs().max() > 1e-3  # the quirk is a different token, not a no-op


def test_the_masked_crops_are_encode_image_of_the_cut_images(clip):
    model, _ = clip
    g = torch.Generator().manual_seed(2)
    samples = torch.randn(4, 3, 32, 32, generator=g)
    cam = torch.rand(4, 1, 32, 32, generator=g)
    with torch.no_grad():
        ours = masked_crop_embeddings(model.visual, samples, cam, "cls")
        for a, b in zip(ours, official_crops(model, samples, cam)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        avg = tiny_clip(pool_type="avg")  # patch_mean is encode_image of a mean-pooling tower
        for a, b in zip(masked_crop_embeddings(avg.visual, samples, cam, "patch_mean"), official_crops(avg, samples, cam)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_published_training_is_adamw_with_weight_decay_and_per_epoch_cosine(clip):
    """Three epochs of `train_prompts` with the published settings end on the same prompt tokens as a
    transcribed loop: AdamW(wd 0.03) on the tokens, the loss above, and main2.py's schedule: timm's cosine
    (no warm-up, minimum 0) stepped with `step(epoch)` after each epoch, so epoch e ≥ 1 trains at the rate of
    epoch e − 1 and the first two epochs at lr₀."""
    model, tok = clip
    cfg = PromptsSettings(**PUBLISHED)
    g = torch.Generator().manual_seed(3)
    n, width, embed = 10, model.token_embedding.weight.shape[1], model.text_projection.shape[1]
    feats = CropFeatures(F.normalize(torch.randn(n, embed, generator=g), dim=-1),
                         F.normalize(torch.randn(n, embed, generator=g), dim=-1), torch.arange(n) % 3)
    class_text = F.normalize(torch.randn(3, embed, generator=g), dim=-1)
    init = torch.rand(3, cfg.length, width, generator=g)
    learner = PromptLearner(model, tok, 3, cfg.length, cfg.template, init, period_quirk=True)
    history = train_prompts(learner, feats, class_text, cfg, 100.0, progress=False)
    cosine = [0.025 * 0.5 * (1 + math.cos(math.pi * e / 3)) for e in range(3)]
    assert [round(h["lr"], 8) for h in history] == [round(x, 8) for x in (0.025, cosine[0], cosine[1])]

    def timm_cosine_step(optimizer, epoch):  # CosineLRScheduler(t_initial=E, lr_min=0, warmup_t=0).step(epoch)
        for group in optimizer.param_groups:
            group["lr"] = 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs))

    btp = torch.nn.Parameter(init.clone())
    opt = torch.optim.AdamW([btp], lr=cfg.lr, weight_decay=0.03)
    for epoch in range(cfg.epochs):
        order = epoch_order(n, cfg.seed, epoch)  # the batch order is the data loader's business, shared
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            prompts = F.normalize(official_encode_btp(model, tok, btp), dim=-1)[feats.classes[idx]]
            img_sim = (feats.background[idx] * prompts).sum(-1)
            label_sim = (class_text[feats.classes[idx]] * prompts).sum(-1)
            loss = official_objective(img_sim, label_sim, 0.02)
            opt.zero_grad()
            loss.backward()
            opt.step()
        timm_cosine_step(opt, epoch)  # main2.py: after the epoch
    torch.testing.assert_close(learner.ctx.detach(), btp.detach(), atol=1e-5, rtol=0)
    assert (btp.detach() - init).abs().max() > 1e-3  # it trained


def official_preprocess(labels):  # engine2.train_one_epoch's preprocess: one one-hot row per (image, class)
    rows = []
    for n in range(labels.size(0)):
        for idx in range(labels.size(1)):
            temp = torch.zeros(1, labels.size(1)).long()
            if labels[n, idx] == 1:
                temp[0, idx] = 1
            rows.append(temp)
    return torch.cat(rows, dim=0)


def test_a_published_step_takes_a_batch_of_images_with_all_their_classes(clip):
    """`batch_unit: images`: two epochs end on the tokens of the transcribed loop, whose data loader hands
    out `batch_size` images and whose step scores every present class of each (`preprocess`, `fg_indices`,
    `temp_idx`), an image without a class adding nothing; the images' order is the loader's, shared."""
    model, tok = clip
    cfg = PromptsSettings(**{**PUBLISHED, "epochs": 2, "batch_size": 3, "batch_unit": "images"})
    g = torch.Generator().manual_seed(4)
    n_images, classes, embed = 7, 3, model.text_projection.shape[1]
    targets = (torch.rand(n_images, classes, generator=g) < 0.5).long()
    targets[2] = 0  # an image that carries no class
    per_image = [torch.randn(classes, embed, generator=g) for _ in range(n_images)]  # its crop of each class
    image_of, class_of = targets.nonzero(as_tuple=True)  # image-major, as crop_features writes rows
    background = F.normalize(torch.stack([per_image[i][k] for i, k in zip(image_of, class_of)]), dim=-1)
    feats = CropFeatures(background, background.clone(), class_of, images=image_of, num_images=n_images)
    class_text = F.normalize(torch.randn(classes, embed, generator=g), dim=-1)
    init = torch.rand(classes, cfg.length, model.token_embedding.weight.shape[1], generator=g)
    learner = PromptLearner(model, tok, classes, cfg.length, cfg.template, init, period_quirk=True)
    history = train_prompts(learner, feats, class_text, cfg, 100.0, progress=False)
    assert len(history) == 2

    btp = torch.nn.Parameter(init.clone())
    opt = torch.optim.AdamW([btp], lr=cfg.lr, weight_decay=0.03)
    steps = 0
    for epoch in range(cfg.epochs):
        for group in opt.param_groups:
            group["lr"] = 0.5 * cfg.lr * (1 + math.cos(math.pi * max(epoch - 1, 0) / cfg.epochs))
        for batch in epoch_order(n_images, cfg.seed, epoch).split(cfg.batch_size):
            batch_targets = targets[batch]
            fg_label = official_preprocess(batch_targets)
            fg_indices = torch.nonzero(batch_targets.reshape(-1) == 1, as_tuple=False).squeeze(-1)
            temp_idx = torch.nonzero(batch_targets == 1, as_tuple=False)
            if len(temp_idx) == 0:
                continue
            bg = F.normalize(torch.stack([per_image[int(batch[i])][int(k)] for i, k in temp_idx]), dim=-1)
            labels = fg_label[fg_indices]
            prompts = F.normalize(official_encode_btp(model, tok, btp), dim=-1)[labels.argmax(dim=1)]
            loss = official_objective((bg * prompts).sum(-1), (class_text[labels.argmax(dim=1)] * prompts).sum(-1),
                                      0.02)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    assert steps >= 4
    torch.testing.assert_close(learner.ctx.detach(), btp.detach(), atol=1e-5, rtol=0)


def test_the_published_class_text_is_to_text(clip):
    """`class_text: semples`: t_k = encode_text("a photo of {class name}.") (to_text of a one-hot row), not
    the CLIP-ES templates and synonyms the CAMs score against."""
    from types import SimpleNamespace

    from wsss.prompts.run import class_texts
    from wsss.settings import TextSettings

    model, tok = clip
    names = ["circle", "traffic light"]
    text = TextSettings(templates=("a clean origami {}.",), synonyms={"circle": "round thing,disc"})
    semples = class_texts(SimpleNamespace(prompts=PromptsSettings(class_text="semples"), text=text), model, tok, names)
    with torch.no_grad():
        expected = F.normalize(model.encode_text(tok([f"a photo of {n}." for n in names])), dim=-1)
    torch.testing.assert_close(semples, expected, atol=1e-6, rtol=0)
    clip_es = class_texts(SimpleNamespace(prompts=PromptsSettings(), text=text), model, tok, names)
    assert (clip_es - semples).abs().max() > 1e-3


def test_published_crops_are_redrawn_views_with_normalised_soft_maps():
    """`crops: augmented`: each epoch draws torchvision's RandomResizedCrop box (8-100 % area, aspect
    3/4-4/3) and a flip from (seed, epoch, image), the maps cut and resized with the pixels; the soft maps are
    then min-max normalised as engine2 normalises `cam_224`."""
    from torchvision.transforms import RandomResizedCrop

    from wsss.prompts.train import augmented_view, min_max, view_seed

    x = torch.arange(3 * 40 * 60, dtype=torch.float32).view(3, 40, 60)
    maps = torch.zeros(2, 40, 60)
    maps[0, 10:30, 20:40] = 1
    maps[1] = x[0] / x[0].max()
    seed = view_seed(0, 3, 5)
    a_x, a_m = augmented_view(x, maps, (32, 32), seed)
    b_x, b_m = augmented_view(x, maps, (32, 32), seed)
    assert a_x.shape == (3, 32, 32) and a_m.shape == (2, 32, 32)
    assert torch.equal(a_x, b_x) and torch.equal(a_m, b_m)  # a resumed run draws the same view
    torch.manual_seed(seed)
    top, left, h, w = RandomResizedCrop.get_params(x, [0.08, 1.0], [3 / 4, 4 / 3])
    flip = float(torch.rand(())) < 0.5
    box = x[:, top:top + h, left:left + w]
    box = box.flip(-1) if flip else box
    assert 0.08 * 40 * 60 * 0.8 <= h * w <= 40 * 60 and 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25
    # the pixel ramp tells where the view was cut from: its corners come from the box's corners
    expected = F.interpolate(box[None], size=(32, 32), mode="bicubic", align_corners=False)[0]
    torch.testing.assert_close(a_x, expected)
    views = {tuple(augmented_view(x, maps, (32, 32), view_seed(0, e, 5))[0][0, 0, :2].tolist()) for e in range(6)}
    assert len(views) > 1  # re-drawn every epoch
    cam_224 = a_m[:, None]  # engine2: min and max over the view, eps 1e-4
    low = cam_224.min(dim=2, keepdim=True)[0].min(dim=3, keepdim=True)[0]
    high = cam_224.max(dim=2, keepdim=True)[0].max(dim=3, keepdim=True)[0]
    torch.testing.assert_close(min_max(a_m), ((cam_224 - low) / (high - low + 1e-4))[:, 0])
