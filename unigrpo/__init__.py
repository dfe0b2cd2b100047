"""unigrpo: UniGRPO post-training for unified (reason-then-draw) models."""

__version__ = "0.1.0"
