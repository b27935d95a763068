"""The prompt-learning objective (docs/method.md §6): class k's learned prompt p_k should describe the
background its images show around it, and not the class itself.

All inputs are L2-normalised embeddings; cosines are clamped to [1e-4, 0.9999] before the logs, as
SemPLeS does, so that neither term explodes. Terms, for an image's background crop X_b = (1 − M)·X and
object crop X_f = M·X (M the class's CAM-derived mask), with b = E_img(X_b), f = E_img(X_f):
- `background_pull`:   −log s(b, p_k)            the prompt matches the class's background;
- `class_push`:        +λ₂ · log s(t_k, p_k)      and stays away from the class name (λ₂ small: 0.02 VOC);
- `foreground_repel`:  −λ₃ · log(1 − s(f, p_k))   the object itself does not look like the prompt;
- `softmax_match`:     −log softmax(τ·[s(b, t_k), s(b, p_k)])₁ − log softmax(τ·[s(f, t_k), s(f, p_k)])₀: in the
  kind of softmax CAM scoring uses next (τ = the CLIP logit scale), the prompt wins the background crop
  and the class text wins the object crop — the prompt must not take the object's own score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COS_MIN, COS_MAX = 1e-4, 0.9999


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of normalised embeddings [N, E] × [N, E] → [N], clamped for the logs."""
    return (a * b).sum(dim=-1).clamp(COS_MIN, COS_MAX)


def background_pull(background: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    return -torch.log(_cos(background, prompt)).mean()


def class_push(class_text: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    return torch.log(_cos(class_text, prompt)).mean()


def foreground_repel(foreground: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    return -torch.log(1 - _cos(foreground, prompt)).mean()


def softmax_match(background: torch.Tensor, foreground: torch.Tensor | None, class_text: torch.Tensor,
                  prompt: torch.Tensor, logit_scale: float) -> torch.Tensor:
    def log_p(crop, winner):
        logits = logit_scale * torch.stack([(crop * class_text).sum(-1), (crop * prompt).sum(-1)], dim=-1)
        return torch.log_softmax(logits, dim=-1)[:, winner].mean()

    return -log_p(background, 1) - (log_p(foreground, 0) if foreground is not None else 0.0)


@dataclass(frozen=True)
class PromptLossWeights:
    """λ's of the terms; SemPLeS's VOC values for the two published ones (COCO: class_push 0.01)."""

    class_push: float = 0.02
    foreground_repel: float = 0.0
    softmax_match: float = 0.0


def prompt_loss(background: torch.Tensor, foreground: torch.Tensor | None, class_text: torch.Tensor,
                prompt: torch.Tensor, weights: PromptLossWeights = PromptLossWeights(),
                logit_scale: float = 100.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum over a batch of (image, present class) pairs, each row one pair: background and
    foreground crop embeddings, the class's text embedding and its learned prompt's embedding, all [N, E].
    Returns (loss, {term: value}) for logging."""
    terms = {"background_pull": background_pull(background, prompt),
             "class_push": weights.class_push * class_push(class_text, prompt)}
    if weights.foreground_repel and foreground is not None:
        terms["foreground_repel"] = weights.foreground_repel * foreground_repel(foreground, prompt)
    if weights.softmax_match:
        terms["softmax_match"] = weights.softmax_match * softmax_match(background, foreground, class_text, prompt,
                                                                          logit_scale)
    loss = torch.stack(list(terms.values())).sum()
    return loss, {k: float(v.detach()) for k, v in terms.items()}
