"""Trainable query towers that map attributes or text into the frozen image space."""

from lookalike.towers.attribute import AttributeTower
from lookalike.towers.text import TextTower
from lookalike.towers.vocab import AttributeVocab

__all__ = ["AttributeTower", "AttributeVocab", "TextTower"]
