"""HTTP service: the recommenders, catalogue management, KPIs and the dashboard (FastAPI)."""
