"""Batch-score a features parquet with the champion of a registered model, on Ray Data.

A Ray job entrypoint (runs unchanged on a local Ray head and on KubeRay)::

    python score.py --model-name trip_completion --alias champion

The features come from ``$MLPLAT_FEATURES``: the JSON summary the Feast historical-features step
returns (``uri``, ``features``, ``feature_service``, ``content_hash``); the predictions folder from
``$MLPLAT_PREDICTIONS_URI``; flags override both. The alias is resolved once, through MLflow, to a
concrete version (the job fails naming the model, the alias and the aliases that exist when there is
none); every Ray Data worker loads that version once (a callable class) and predicts its batches.
The predictions (``driver_id``, ``event_timestamp``, ``prediction``, ``model_version``) replace
whatever the folder held, so a retry does not duplicate rows. The last line of output is the result
JSON after ``MLPLAT_RESULT_JSON=``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

RESULT_MARKER = "MLPLAT_RESULT_JSON="  # the RayJobOperator reads this line (no provider import here)
#: columns of the features frame copied to every prediction row
ID_COLUMNS = ("driver_id", "event_timestamp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--features-uri", help="features parquet (default: $MLPLAT_FEATURES uri)")
    parser.add_argument(
        "--output-uri", help="predictions folder, replaced (default: $MLPLAT_PREDICTIONS_URI)"
    )
    parser.add_argument("--model-name", default="trip_completion", help="MLflow registered model")
    parser.add_argument("--alias", default="champion", help="alias of the version that scores")
    parser.add_argument("--max-workers", type=int, default=2, help="model-holding Ray Data workers")
    parser.add_argument("--batch-size", type=int, default=4096, help="rows per predict call")
    return parser.parse_args(argv)


def features_summary(args: argparse.Namespace) -> dict[str, Any]:
    """The features summary from $MLPLAT_FEATURES, overridden by flags; and the output folder."""
    summary = json.loads(os.environ.get("MLPLAT_FEATURES") or "{}")
    if args.features_uri:
        summary["uri"] = args.features_uri
    if not summary.get("uri"):
        sys.exit("no features: set $MLPLAT_FEATURES (the historical-features summary) or --features-uri")
    summary["output_uri"] = args.output_uri or os.environ.get("MLPLAT_PREDICTIONS_URI") or ""
    if not summary["output_uri"]:
        sys.exit("no predictions folder: set $MLPLAT_PREDICTIONS_URI or --output-uri")
    return summary


def resolve_alias(client, model_name: str, alias: str):
    """
    The model version an alias points at; exits naming the model, the alias and the aliases that
    exist when the alias (or the model) is missing.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as missing:
        try:
            aliases = dict(sorted(client.get_registered_model(model_name).aliases.items()))
        except MlflowException:
            sys.exit(
                f"cannot score: registered model {model_name!r} does not exist in MLflow "
                f"({client.tracking_uri}), so it has no {alias!r} alias ({missing.error_code})"
            )
        shown = ", ".join(f"{a} -> version {v}" for a, v in aliases.items()) or "none"
        sys.exit(
            f"cannot score: registered model {model_name!r} has no {alias!r} alias; "
            f"its aliases: {shown}. Promote a version to {alias!r} first."
        )


def input_types(schema) -> dict[str, Any]:
    """Column -> pandas dtype of a model's input schema (the columns it is fed, in order)."""
    if schema is None or not schema.has_input_names():
        sys.exit("the model has no input signature with column names: cannot pick its features")
    return {spec.name: spec.type.to_pandas() for spec in schema.inputs}


class Predictor:
    """A Ray Data worker: loads the model version once, then predicts batch after batch."""

    def __init__(self, model_uri: str, version: str) -> None:
        import mlflow.pyfunc

        self.model = mlflow.pyfunc.load_model(model_uri)
        self.types = input_types(self.model.metadata.get_input_schema())
        self.version = version

    def __call__(self, batch):
        import numpy as np
        import pandas as pd

        prediction = self.model.predict(batch[list(self.types)].astype(self.types))
        out = pd.DataFrame({c: batch[c].to_numpy() for c in ID_COLUMNS})
        out["prediction"] = np.asarray(prediction).reshape(len(batch), -1)[:, 0]
        out["model_version"] = self.version
        return out


def print_result(result: dict[str, Any]) -> None:
    """Print the result line the RayJobOperator returns as the task's value."""
    print(RESULT_MARKER + json.dumps(result, sort_keys=True), flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    summary = features_summary(args)
    started = time.monotonic()

    import mlflow
    import pyarrow.dataset as pds
    import ray
    from ray.data import ActorPoolStrategy, SaveMode

    client = mlflow.MlflowClient()
    version = resolve_alias(client, args.model_name, args.alias)
    model_uri = f"models:/{args.model_name}/{version.version}"
    print(f"{args.model_name}@{args.alias} is version {version.version} (run {version.run_id})")
    trained_on = (version.tags or {}).get("mlplat.feature_service")
    if trained_on and summary.get("feature_service") and trained_on != summary["feature_service"]:
        sys.exit(
            f"cannot score: {model_uri} was trained on feature service {trained_on!r}, the features "
            f"{summary['uri']} come from {summary['feature_service']!r}"
        )
    signature = mlflow.models.get_model_info(model_uri).signature
    needed = list(input_types(signature.inputs if signature else None))

    ray.init()
    features = ray.data.read_parquet(summary["uri"])
    columns = features.schema().names
    missing = [c for c in (*ID_COLUMNS, *needed) if c not in columns]
    if missing:
        sys.exit(
            f"cannot score with {model_uri}: {summary['uri']} lacks column(s) {missing}; it has {columns}"
        )
    rows_in = features.count()
    print(f"scoring {rows_in} row(s) of {summary['uri']} with {model_uri}")
    predictions = features.map_batches(
        Predictor,
        fn_constructor_kwargs={"model_uri": model_uri, "version": str(version.version)},
        batch_format="pandas",
        batch_size=args.batch_size,
        compute=ActorPoolStrategy(min_size=1, max_size=max(1, args.max_workers)),
        num_cpus=1,
    )
    output = summary["output_uri"].rstrip("/")
    predictions.write_parquet(output, mode=SaveMode.OVERWRITE)
    rows = pds.dataset(output, format="parquet").count_rows()  # what landed, from the files' metadata
    if rows != rows_in:
        sys.exit(f"wrote {rows} prediction row(s) to {output} for {rows_in} feature row(s)")
    result = {
        "uri": output,
        "rows": rows,
        "model_name": args.model_name,
        "alias": args.alias,
        "version": str(version.version),
        "model_uri": model_uri,
        "run_id": version.run_id,
        "features_uri": summary["uri"],
        "feature_service": summary.get("feature_service") or "",
    }
    print(f"scored {rows} row(s) in {time.monotonic() - started:.1f} s into {output}")
    print_result(result)
    return result


if __name__ == "__main__":
    main()
