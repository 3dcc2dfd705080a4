"""Deployable models: the MLflow pyfunc wrapper with its own pre- and post-processing."""
