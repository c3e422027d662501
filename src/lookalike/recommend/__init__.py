"""Recommenders on the learned space: which products are new, catalogue ingest, top10_to_new and customer_input."""
