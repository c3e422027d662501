"""lookalike: learn product attributes and text into a frozen image space, search it, measure it."""

__version__ = "0.1.0"
