"""Evaluation against the whole gallery: metrics, relevance definitions, TREC export, centrality."""
