"""wmdetect core library: data preparation, UNet, training, evaluation and inference of text watermarks."""

__version__ = "0.1.0"
