"""Training losses, each a plain nn.Module in its own file."""

from lookalike.losses.infonce import InfoNCELoss
from lookalike.losses.multi_similarity import MultiSimilarityLoss
from lookalike.losses.triplet import TripletLoss

__all__ = ["InfoNCELoss", "MultiSimilarityLoss", "TripletLoss"]
