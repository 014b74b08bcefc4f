"""Train the trip-completion model on Ray; register it in MLflow as the challenger.

A Ray job entrypoint (runs unchanged on a local Ray head and on KubeRay)::

    python train.py --model-name trip_completion

The training set comes from ``$MLPLAT_TRAINING_SET``: the JSON summary the training-set step
returns (``uri``, ``features``, ``label``, ``content_hash``, ``feature_service``); flags override
it. Ray runs the cross-validation of every candidate model (folds x candidates) in parallel; the
best candidate by mean ROC AUC is refitted on the training part, scored on a time-ordered holdout,
logged to MLflow (params, metrics, model with signature and input example, feature service,
training-set hash), registered as a new version and aliased ``challenger``. The last line of
output is the result JSON after ``MLPLAT_RESULT_JSON=``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
import pandas as pd
import ray

RESULT_MARKER = "MLPLAT_RESULT_JSON="  # the RayJobOperator reads this line (no provider import here)
ID_COLUMNS = ("driver_id", "event_timestamp")
#: candidate models: (family, hyperparameters); every one is cross-validated
CANDIDATES: list[tuple[str, dict[str, Any]]] = [
    ("logistic_regression", {"C": 0.1}),
    ("logistic_regression", {"C": 1.0}),
    ("hist_gradient_boosting", {"learning_rate": 0.05, "max_leaf_nodes": 15}),
    ("hist_gradient_boosting", {"learning_rate": 0.1, "max_leaf_nodes": 15}),
    ("hist_gradient_boosting", {"learning_rate": 0.1, "max_leaf_nodes": 31}),
]
#: types skops must trust to load each family (saved with the model; sklearn's own are trusted)
SKOPS_TRUSTED_TYPES = {
    "logistic_regression": [],
    "hist_gradient_boosting": ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"],
}


def build_model(family: str, params: dict[str, Any], seed: int):
    """A fresh, unfitted estimator of one candidate."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if family == "logistic_regression":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, **params))
    return HistGradientBoostingClassifier(max_iter=150, random_state=seed, **params)


def score(model, features: pd.DataFrame, labels: pd.Series) -> dict[str, float]:
    """ROC AUC (the primary metric), accuracy and log loss of a fitted model."""
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    proba = model.predict_proba(features)[:, 1]
    return {
        "roc_auc": float(roc_auc_score(labels, proba)),
        "accuracy": float(accuracy_score(labels, (proba >= 0.5).astype(int))),
        "log_loss": float(log_loss(labels, proba, labels=[0, 1])),
    }


@ray.remote(num_cpus=1)
def cross_validate_fold(
    family: str, params: dict[str, Any], x: pd.DataFrame, y: pd.Series, train_idx, test_idx, seed: int
) -> float:
    """Fit one candidate on one fold; its ROC AUC on the held-out part of the fold."""
    model = build_model(family, params, seed)
    model.fit(x.iloc[train_idx], y.iloc[train_idx])
    return score(model, x.iloc[test_idx], y.iloc[test_idx])["roc_auc"]


def load_training_set(summary: dict[str, Any]) -> tuple[pd.DataFrame, list[str], str]:
    """The training set, its feature columns and its label column, checked against the contract."""
    frame = pd.read_parquet(summary["uri"])
    label = summary.get("label") or "completed"
    missing = [c for c in (*ID_COLUMNS, label) if c not in frame.columns]
    if missing:
        sys.exit(f"training set {summary['uri']} lacks column(s) {missing}; it has {list(frame.columns)}")
    features = summary.get("features") or [
        c for c in frame.columns if c not in (*ID_COLUMNS, label) and pd.api.types.is_numeric_dtype(frame[c])
    ]
    unknown = [c for c in features if c not in frame.columns]
    if unknown:
        sys.exit(f"feature column(s) {unknown} are not in the training set {summary['uri']}")
    if frame[label].nunique() < 2 or len(frame) < 50:
        sys.exit(
            f"training set {summary['uri']}: {len(frame)} rows, label values {sorted(frame[label].unique())}"
        )
    frame = frame.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    frame[features] = frame[features].astype("float64")
    return frame, list(features), label


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--training-set-uri", help="parquet URI (default: $MLPLAT_TRAINING_SET uri)")
    parser.add_argument("--content-hash", help="training-set hash (default: from $MLPLAT_TRAINING_SET)")
    parser.add_argument(
        "--feature-service", help="Feast feature service (default: from $MLPLAT_TRAINING_SET)"
    )
    parser.add_argument("--features", help="comma-separated feature columns (default: from the summary)")
    parser.add_argument("--label", help="label column (default: from the summary, else completed)")
    parser.add_argument("--model-name", default="trip_completion", help="MLflow registered model")
    parser.add_argument("--experiment", default="trip_completion", help="MLflow experiment")
    parser.add_argument("--alias", default="challenger", help="alias set on the new version")
    parser.add_argument("--folds", type=int, default=3, help="cross-validation folds")
    parser.add_argument("--holdout", type=float, default=0.2, help="latest share of rows held out")
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def training_set_summary(args: argparse.Namespace) -> dict[str, Any]:
    """The training-set summary from $MLPLAT_TRAINING_SET, overridden by flags."""
    summary = json.loads(os.environ.get("MLPLAT_TRAINING_SET") or "{}")
    overrides = {
        "uri": args.training_set_uri,
        "content_hash": args.content_hash,
        "feature_service": args.feature_service,
        "label": args.label,
        "features": args.features.split(",") if args.features else None,
    }
    summary.update({k: v for k, v in overrides.items() if v})
    if not summary.get("uri"):
        sys.exit("no training set: set $MLPLAT_TRAINING_SET (the training-set summary) or --training-set-uri")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    summary = training_set_summary(args)
    started = time.monotonic()
    frame, features, label = load_training_set(summary)
    cut = int(len(frame) * (1 - args.holdout))
    train, holdout = frame.iloc[:cut], frame.iloc[cut:]
    x, y = train[features], train[label].astype(int)
    print(
        f"training set {summary['uri']}: {len(frame)} rows, {len(features)} features, holdout {len(holdout)}"
    )

    from sklearn.model_selection import StratifiedKFold

    ray.init()
    x_ref, y_ref = ray.put(x), ray.put(y)
    folds = list(StratifiedKFold(args.folds, shuffle=True, random_state=args.seed).split(x, y))
    futures = {
        (i, f): cross_validate_fold.remote(family, params, x_ref, y_ref, tr, te, args.seed)
        for i, (family, params) in enumerate(CANDIDATES)
        for f, (tr, te) in enumerate(folds)
    }
    aucs = dict(zip(futures, ray.get(list(futures.values())), strict=True))
    trials = [
        {
            "family": family,
            "params": params,
            "cv_roc_auc": float(np.mean([aucs[i, f] for f in range(len(folds))])),
            "cv_roc_auc_std": float(np.std([aucs[i, f] for f in range(len(folds))])),
        }
        for i, (family, params) in enumerate(CANDIDATES)
    ]
    best = max(trials, key=lambda t: t["cv_roc_auc"])
    print(f"{len(futures)} cross-validation fits on Ray; best: {best}")

    model = build_model(best["family"], best["params"], args.seed).fit(x, y)
    metrics = score(model, holdout[features], holdout[label].astype(int))
    metrics["cv_roc_auc"] = best["cv_roc_auc"]
    result = log_to_mlflow(args, summary, model, best, trials, metrics, x, features)
    print(f"trained in {time.monotonic() - started:.1f} s: {metrics}")
    print(RESULT_MARKER + json.dumps(result, sort_keys=True), flush=True)
    return result


def log_to_mlflow(args, summary, model, best, trials, metrics, x, features) -> dict[str, Any]:
    """Log the run and the model, register a version, alias it; return the result JSON."""
    import mlflow
    import sklearn
    import skops
    from mlflow.models import infer_signature

    client = mlflow.MlflowClient()
    mlflow.set_experiment(args.experiment)
    job_id = os.environ.get("MLPLAT_RAY_JOB_ID", "")
    tags = {
        "mlplat.feature_service": summary.get("feature_service") or "",
        "mlplat.training_set.uri": summary["uri"],
        "mlplat.training_set.content_hash": summary.get("content_hash") or "",
        "mlplat.training_set.source_uri": summary.get("source_uri") or "",
        "mlplat.ray_job_id": job_id,
    }
    with mlflow.start_run(run_name=job_id or None, tags=tags) as run:
        mlflow.log_params({"model_family": best["family"], **best["params"], "features": ",".join(features)})
        mlflow.log_params({"cv_folds": args.folds, "holdout_share": args.holdout, "candidates": len(trials)})
        mlflow.log_metrics(metrics)
        mlflow.log_dict({"trials": trials}, "cv_trials.json")
        example = x.head(5)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(example, model.predict(example)),
            input_example=example,
            pip_requirements=[
                f"scikit-learn=={sklearn.__version__}",
                f"pandas=={pd.__version__}",
                f"numpy=={np.__version__}",
                f"skops=={skops.__version__}",
            ],
            skops_trusted_types=SKOPS_TRUSTED_TYPES[best["family"]],
            registered_model_name=args.model_name,
        )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(args.model_name, args.alias, version)
    for key, value in tags.items():
        client.set_model_version_tag(args.model_name, version, key, value)
    return {
        "run_id": run.info.run_id,
        "model_uri": f"models:/{args.model_name}/{version}",
        "model_name": args.model_name,
        "version": version,
        "metrics": metrics,
        "training_set": {"uri": summary["uri"], "content_hash": summary.get("content_hash") or ""},
        "feature_service": summary.get("feature_service") or "",
    }


if __name__ == "__main__":
    main()
