"""Entry file for MLflow's "models from code": defines the pyfunc model without pickling it."""

import mlflow

from segops.serving.pyfunc import SegmentationModel

mlflow.models.set_model(SegmentationModel())
