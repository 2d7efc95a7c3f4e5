"""What detection and segmentation share: backbones, config, engine, drawing, the synthetic data.

Importing this package (the tools do it before torch) makes idle OpenMP threads sleep instead of
spin-waiting, unless OMP_WAIT_POLICY is already set. On a small CPU shared with DataLoader
workers, spinning threads steal the cores the compute threads need: measured on 2 cores with one
other busy process, a Mask R-CNN training step took 7.2 s spinning and 0.73 s sleeping.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must happen before torch starts OpenMP
