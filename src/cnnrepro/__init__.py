"""cnnrepro: reproduce and re-benchmark published comparisons of convolutional networks."""

__version__ = "0.1.0"
