"""Training: the per-worker loop (plain PyTorch), its schedule, checkpoints and launcher."""
