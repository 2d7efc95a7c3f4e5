"""What detection and segmentation share: backbones, config, engine, drawing, the synthetic data,
and the skeleton of every tool (``common.tooling``). Importing it changes nothing in the process."""
