"""Lineage: audit and reproduce any registered version, its history, the code version."""
