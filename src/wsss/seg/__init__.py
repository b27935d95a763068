"""The final segmenter: DeepLab-V3(+) trained on the pseudo masks with the confidence-guided loss
(docs/method.md §5), its evaluation, the model registry and prediction."""
