"""Exam item bank: "find questions like this one" — loading, ground truth, retrieval study, commands."""
