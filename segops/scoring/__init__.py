"""Scoring archives: `segops predict` on the local or the Ray engine, and the `score` flow's
steps (pin the champion, identify the input, score it, record the run).

Engines: `local` predicts chunks of `predict.batch_size` images on this process
(`segops.predict`); `ray` sends the same chunks through Ray Data `map_batches` to an actor pool
whose actors load the pinned model once each (`segops.scoring.ray_engine`). Both write the
same files. Bad input (an empty folder, an unreachable Ray address, a model with no champion)
is refused in seconds, before any model is loaded (`segops.scoring.checks`).
"""
