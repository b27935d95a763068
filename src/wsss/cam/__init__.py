"""CAM engine: CLIP-ES softmax-GradCAM and class-aware attention affinity (CAA) refinement."""
