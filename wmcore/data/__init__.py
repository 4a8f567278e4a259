"""Data: the synthetic watermark generator, the real-photo corpus, `wm prepare` and the training datasets."""
