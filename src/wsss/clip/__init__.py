"""Frozen CLIP: dense native-aspect forward of an open_clip ViT (`dense`) and the text side (`text`)."""
