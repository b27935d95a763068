"""Learnable per-class prompts fed through a frozen open_clip text tower (docs/method.md §6).

Class k's prompt is a template sentence whose slot holds L learnable token embeddings P_k ∈ R^{L×d}
instead of words ("a photo of [P_k]."). The sentence is tokenized once with L placeholder words; the
placeholders' embeddings are replaced by P_k and the rest of `encode_text` runs unchanged, so with P_k set
to real words' token embeddings the prompt embedding equals `model.encode_text` of that sentence. Only P
trains: the CLIP model stays frozen.
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
                 init: torch.Tensor | None = None, seed: int = 0):
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
        self.register_buffer("tokens", tokens, persistent=False)
        width = model.token_embedding.weight.shape[1]
        if init is None:  # as published: uniform in [0, 1)
            init = torch.rand(num_classes, length, width, generator=torch.Generator().manual_seed(seed))
        if init.shape != (num_classes, length, width):
            raise ConfigError(f"prompt initialisation must be {num_classes}×{length}×{width}, got {tuple(init.shape)}")
        self.ctx = nn.Parameter(init.clone().float())

    def forward(self) -> torch.Tensor:
        m = self.model
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(self.tokens).to(cast).expand(self.ctx.shape[0], -1, -1)
        x = torch.cat([x[:, :self.start], self.ctx.to(cast), x[:, self.start + self.length:]], dim=1)
        x = x + m.positional_embedding.to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask)
        x = m.ln_final(x)
        from open_clip.transformer import text_global_pool

        text = self.tokens.expand(self.ctx.shape[0], -1)
        x = text_global_pool(x, text, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection
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


def _slot_start(tokenizer, template: str, length: int) -> int:
    """Position of the first placeholder token: the template's tokens before the slot, after start-of-text."""
    before = template.split("{}")[0].strip()
    if not before:
        return 1
    t = tokenizer([before])[0]
    return int(t.argmax())  # start-of-text + the prefix's tokens = index of the end-of-text token
