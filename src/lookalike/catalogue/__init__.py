"""Catalogue loading: products (image + attributes + text) from tables, K-Fashion labels or synthesis."""

from lookalike.catalogue.loading import load_catalogue
from lookalike.catalogue.schema import Catalogue, CatalogueSchema, ImageRef, LoadReport, Product

__all__ = ["Catalogue", "CatalogueSchema", "ImageRef", "LoadReport", "Product", "load_catalogue"]
