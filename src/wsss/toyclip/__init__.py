"""Training the toy world's small CLIP (`wsss train-toy-clip`): kept apart from `wsss.clip`, which only
loads and runs frozen CLIP models."""
