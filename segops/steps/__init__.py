"""The retrain flow's steps, one small module per step or group; `flows/retrain.py` runs each
function as one Prefect task. They take the frozen `Config` and return frozen records
(`segops.steps.records`); `segops.steps.outcome` builds the flow's result from them."""
