"""segops: image segmentation as a repeatable, auditable production process.

Kept import-light on purpose: `segops --help` must not pay for torch.
"""

__version__ = "0.1.0"
