"""Training engine: train/eval loops, DDP, checkpoints, metrics, plots."""
