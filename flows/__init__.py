"""Prefect flows: thin wiring over `segops.pipeline` (each task calls one segops function)."""
