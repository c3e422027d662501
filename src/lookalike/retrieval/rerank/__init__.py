"""Rerankers: reorder a candidate list from first-stage search (diversity, cross-encoders, learned list-wise)."""
