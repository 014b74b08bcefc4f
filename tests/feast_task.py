"""Run FeastMaterializeOperator in a process of its own, as an Airflow worker does.

``python -m tests.feast_task '{"start": ISO, "end": ISO, "kwargs": {...operator kwargs}}'`` prints
one JSON line: ``{"result": <XCom>, "events": {uri: extra}}`` or ``{"error": "<type>: <message>"}``.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime


def main() -> int:
    from airflow_provider_mlplat.assets import feast_feature_view_asset
    from airflow_provider_mlplat.operators.feast import FeastMaterializeOperator
    from tests.feast_support import VIEWS, outlet_extras, task_context

    args = json.loads(sys.argv[1])
    kwargs = args.get("kwargs", {})
    views = kwargs.get("feature_views") or VIEWS
    op = FeastMaterializeOperator(
        task_id="materialize", outlets=[feast_feature_view_asset("rides", v) for v in views], **kwargs
    )
    context = task_context(
        "materialize", datetime.fromisoformat(args["start"]), datetime.fromisoformat(args["end"])
    )
    try:
        result = op.execute(context)
    except Exception as err:
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
        return 1
    print(json.dumps({"result": result, "events": outlet_extras(context)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
