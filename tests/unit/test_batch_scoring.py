"""The scoring entrypoint's contract with the RayJobOperator, without Ray or MLflow."""

from __future__ import annotations

import importlib.util
import json

import pytest

from airflow_provider_mlplat.operators.ray import RESULT_MARKER, parse_result
from tests.conftest import REPO


@pytest.fixture(scope="module")
def score():
    spec = importlib.util.spec_from_file_location("mlplat_score", REPO / "include" / "scoring" / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_result_line_is_what_the_operator_returns(score, capsys):
    result = {"uri": "file:///a/predictions", "rows": 20, "model_name": "trip_completion", "version": "3"}
    print("scored 20 row(s)")
    score.print_result(result)
    print("(ray shutdown chatter)")
    assert score.RESULT_MARKER == RESULT_MARKER
    assert parse_result(capsys.readouterr().out.splitlines()) == result


def test_the_inputs_come_from_the_dag(score, monkeypatch):
    monkeypatch.setenv("MLPLAT_FEATURES", json.dumps({"uri": "file:///f.parquet", "rows": 2}))
    monkeypatch.setenv("MLPLAT_PREDICTIONS_URI", "file:///out/predictions")
    summary = score.features_summary(score.parse_args([]))
    assert (summary["uri"], summary["output_uri"]) == ("file:///f.parquet", "file:///out/predictions")
    monkeypatch.delenv("MLPLAT_PREDICTIONS_URI")
    with pytest.raises(SystemExit, match="no predictions folder"):
        score.features_summary(score.parse_args([]))
