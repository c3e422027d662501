"""Training losses, each a plain nn.Module in its own file."""

from lookalike.losses.infonce import InfoNCELoss

__all__ = ["InfoNCELoss"]
