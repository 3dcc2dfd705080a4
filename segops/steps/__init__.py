"""Groups of pipeline steps, re-exported by `segops.pipeline` (the flow calls them there)."""
