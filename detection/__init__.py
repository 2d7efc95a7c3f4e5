"""Detection: the R-CNN family on the shared backbones of ``common``."""
