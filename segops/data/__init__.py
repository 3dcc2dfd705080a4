"""Datasets: the built-in `shapes` generator, folder and VOC layouts, manifests, transforms."""
