"""Prefect flows: thin wiring over `segops.steps` (each task calls one segops function)."""
