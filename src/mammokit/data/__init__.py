"""Tables and tensors: dataset adapters, the manifest, splits, patches and PyTorch datasets."""
