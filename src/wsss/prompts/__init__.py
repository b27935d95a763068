"""Learned per-class background prompts (SemPLeS, adapted to the CLIP-ES softmax; docs/method.md §6)."""
