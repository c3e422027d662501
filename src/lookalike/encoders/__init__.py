"""Frozen encoders (image and text) behind one interface, a registry of named models, and the embedding cache."""

from lookalike.encoders.base import ImageEncoder, TextEncoder
from lookalike.encoders.registry import create_image_encoder, create_text_encoder, list_models

__all__ = ["ImageEncoder", "TextEncoder", "create_image_encoder", "create_text_encoder", "list_models"]
