"""FlexIP training: data (manifest, builders, dataset) and the training loop (plain PyTorch + accelerate)."""
