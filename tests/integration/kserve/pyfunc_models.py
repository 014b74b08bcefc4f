"""MLflow model-from-code for the serving tests: a trip model that can be slow, flaky or broken."""

import time

import mlflow
from mlflow.models import set_model


class TripModel(mlflow.pyfunc.PythonModel):
    """Predicts completion from conv_rate; ``model_config["behaviour"]`` makes it misbehave."""

    def load_context(self, context):
        self.behaviour = context.model_config["behaviour"]

    def predict(self, context, model_input, params=None):
        if self.behaviour == "broken":
            raise RuntimeError("this model version is broken")
        if self.behaviour == "slow":
            time.sleep(0.2)  # twice the lowest p99 bound of the deployment test (2 x its 50 ms floor)
        if self.behaviour == "flaky" and (model_input["trip_distance_km"] > 8).any():
            raise ValueError("this model version fails on long trips")
        return (model_input["conv_rate"] > 0.5).astype("int64")


set_model(TripModel())
