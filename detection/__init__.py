"""Detection: the R-CNN family on the shared backbones of ``common``."""
import warnings

# pycocotools (built against numpy 1) warns on every mask decode under numpy 2; the results are right.
warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword",
                        category=DeprecationWarning)
