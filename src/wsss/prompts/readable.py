"""What did each class's prompt learn? Two readings a person can check at a glance:
- its tokens' nearest vocabulary entries (cosine in the token-embedding table, as CoOp reads its contexts);
- the hand-written background words (and class names) whose text embeddings its prompt embedding is
  closest to: what the class learned to push out of its maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nearest_tokens(model, tokenizer, ctx: torch.Tensor, skip: set[int] = frozenset()) -> list[list[str]]:
    """[C, L, d] prompt tokens → per class, the decoded nearest vocabulary token of each position."""
    table = F.normalize(model.token_embedding.weight.detach().float(), dim=-1)
    sims = F.normalize(ctx.detach().float().to(table.device), dim=-1) @ table.T  # [C, L, V]
    if skip:
        sims[..., sorted(skip)] = -2
    ids = sims.argmax(dim=-1).cpu()
    return [[_decode(tokenizer, int(i)) for i in row] for row in ids]


def _decode(tokenizer, token_id: int) -> str:
    decode = getattr(tokenizer, "decode", None)
    if decode is None:  # Hugging Face tokenizers inside open_clip's wrapper
        decode = tokenizer.tokenizer.decode
    return decode([token_id]).strip()


def special_token_ids(tokenizer) -> set[int]:
    """Start- and end-of-text (and padding): never a reading of a learned token."""
    t = tokenizer([""])[0]
    return {int(t[0]), int(t.argmax()), 0}


def describe_prompts(model, tokenizer, ctx: torch.Tensor, prompts: torch.Tensor, class_names: list[str],
                     class_text: torch.Tensor, words: list[str], word_text: torch.Tensor, top: int = 3) -> dict:
    """Per class: the nearest tokens, the `top` most similar background words with cosines, the cosine to
    its own class text and the most similar class name. Embeddings are L2-normalised [N, E]."""
    tokens = nearest_tokens(model, tokenizer, ctx, special_token_ids(tokenizer))
    word_sim = (prompts @ word_text.T).cpu()
    class_sim = (prompts @ class_text.T).cpu()
    out = {}
    for k, name in enumerate(class_names):
        order = word_sim[k].argsort(descending=True)[:top]
        nearest_class = int(class_sim[k].argmax())
        out[name] = {"tokens": tokens[k], "background_words": {words[i]: round(float(word_sim[k, i]), 4) for i in order},
                     "own_class_cosine": round(float(class_sim[k, k]), 4),
                     "nearest_class": class_names[nearest_class]}
    return out


def prompts_markdown(described: dict) -> str:
    lines = ["# What each class's background prompt learned", "",
             "Per class: the background words its prompt is most similar to (cosine of text embeddings), its "
             "cosine to its own class name, and the nearest vocabulary token of each learned token.", "",
             "| Class | Most similar background words | cos(own class) | Nearest tokens |", "|---|---|---:|---|"]
    for name, d in described.items():
        words = ", ".join(f"{w} ({c:.2f})" for w, c in d["background_words"].items())
        lines.append(f"| {name} | {words} | {d['own_class_cosine']:.2f} | {' '.join(d['tokens'])} |")
    return "\n".join(lines) + "\n"
