"""Learnable per-class prompts fed through a frozen open_clip text tower (docs/method.md §6).

Class k's prompt is a template sentence whose slot holds L learnable token embeddings P_k ∈ R^{L×d}
instead of words ("a photo of [P_k]."). The sentence is tokenized once with L placeholder words; the
placeholders' embeddings are replaced by P_k and the rest of `encode_text` runs unchanged, so with P_k set
to real words' token embeddings the prompt embedding equals `model.encode_text` of that sentence. Only P
trains: the CLIP model stays frozen.

`period_quirk` reproduces SemPLeS's token sequence exactly: its prompt is [SOT] "a photo of" P_k "." [EOT]
with "." as the BPE piece *without* the end-of-word marker (the vocabulary entry "." rather than ".</w>",
which is what the tokenizer produces for a sentence-final full stop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsss.errors import ConfigError

PLACEHOLDER = "X"


class PromptLearner(nn.Module):
    """`forward()` → [C, E] L2-normalised prompt embeddings, one per class, differentiable in `ctx` only."""

    def __init__(self, model, tokenizer, num_classes: int, length: int = 30, template: str = "a photo of {}.",
                 init: torch.Tensor | None = None, seed: int = 0, period_quirk: bool = False):
        super().__init__()
        if "{}" not in template:
            raise ConfigError(f"prompts.template must contain {{}} for the learned tokens, got {template!r}")
        self.model = model
        for p in model.parameters():
            p.requires_grad_(False)
        tokens = tokenizer([template.format(" ".join([PLACEHOLDER] * length))])  # [1, context]
        self.start = _slot_start(tokenizer, template, length)
        placeholder = tokenizer([PLACEHOLDER])[0][1]
        fits = int((tokens[0] == placeholder).sum()) == length and int(tokens[0].argmax()) < tokens.shape[1] - 1
        if not fits:
            raise ConfigError(f"prompts.length: {length} learned tokens in {template!r} do not fit the text "
                              f"encoder's {tokens.shape[1]}-token context")
        self.length = length
        if period_quirk:
            tokens = _period_without_word_end(tokenizer, tokens, self.start + length, template)
        self.register_buffer("tokens", tokens, persistent=False)
        width = model.token_embedding.weight.shape[1]
        if init is None:  # as published: uniform in [0, 1)
            init = torch.rand(num_classes, length, width, generator=torch.Generator().manual_seed(seed))
        if init.shape != (num_classes, length, width):
            raise ConfigError(f"prompt initialisation must be {num_classes}×{length}×{width}, got {tuple(init.shape)}")
        self.ctx = nn.Parameter(init.clone().float())

    def forward(self) -> torch.Tensor:
        return prompt_embeddings(self.model, self.tokens, self.ctx, self.start)


def prompt_embeddings(model, tokens: torch.Tensor, ctx: torch.Tensor, start: int) -> torch.Tensor:
    """The prompt encoder: token sequence `tokens` [1, T] whose positions start..start+L hold the learned
    embeddings `ctx` [C, L, d] instead of words, through the frozen text tower (causal mask, final LayerNorm,
    pooled at the end-of-text token, projected) → [C, E] L2-normalised."""
    from open_clip.transformer import text_global_pool

    cast = model.transformer.get_cast_dtype()
    length = ctx.shape[1]
    x = model.token_embedding(tokens).to(cast).expand(ctx.shape[0], -1, -1)
    x = torch.cat([x[:, :start], ctx.to(cast), x[:, start + length:]], dim=1)
    x = x + model.positional_embedding.to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    text = tokens.expand(ctx.shape[0], -1)
    x = text_global_pool(x, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    proj = model.text_projection
    x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return F.normalize(x.float(), dim=-1)


def word_init(model, tokenizer, words: list[str], num_classes: int, length: int) -> torch.Tensor:
    """Initialise every class's L tokens from the token embeddings of the background words, cycled to
    length L (the alternative to the published uniform start)."""
    ids: list[int] = []
    for w in words:
        t = tokenizer([w])[0]
        ids += [int(i) for i in t[1:int(t.argmax())]]  # between start- and end-of-text
    if not ids:
        raise ConfigError("no background words to initialise the prompts from")
    ids = (ids * (length // len(ids) + 1))[:length]
    with torch.no_grad():
        emb = model.token_embedding.weight[torch.tensor(ids)].float()
    return emb.expand(num_classes, -1, -1).clone()


def _period_without_word_end(tokenizer, tokens: torch.Tensor, after_slot: int, template: str) -> torch.Tensor:
    """`tokens` with the sentence-final ".</w>" right after the slot replaced by the piece "." (SemPLeS)."""
    encoder = getattr(tokenizer, "encoder", None)
    if not template.split("{}")[1].startswith(".") or encoder is None or "." not in encoder:
        raise ConfigError(f"prompts.period_quirk needs a template with '.' right after {{}} and CLIP's BPE "
                          f"tokenizer, got {template!r}")
    period = tokenizer(["."])[0][1]
    if int(tokens[0, after_slot]) != int(period):
        raise ConfigError(f"prompts.period_quirk: no full stop after the learned tokens in {template!r}")
    tokens = tokens.clone()
    tokens[0, after_slot] = encoder["."]
    return tokens


def _slot_start(tokenizer, template: str, length: int) -> int:
    """Position of the first placeholder token: the template's tokens before the slot, after start-of-text."""
    before = template.split("{}")[0].strip()
    if not before:
        return 1
    t = tokenizer([before])[0]
    return int(t.argmax())  # start-of-text + the prefix's tokens = index of the end-of-text token
