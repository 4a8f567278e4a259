"""Training: the one training loop (wmcore.train.loop), its setup, steps, schedule, checkpoints and DDP."""
