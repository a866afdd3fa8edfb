"""ltray: long-tailed image classification at cluster scale."""

__version__ = "0.1.0"
