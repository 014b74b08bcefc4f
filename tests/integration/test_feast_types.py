"""Every Feast type through FeastMaterializeOperator and ``feast materialize``: the same online values, or a rejection where Feast fails or writes wrongly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_mlplat.assets import feast_feature_view_asset
from airflow_provider_mlplat.exceptions import MLPlatValidationFailed
from airflow_provider_mlplat.operators.feast import FeastMaterializeOperator
from airflow_provider_mlplat.testing.airflow import set_connection
from tests.feast_support import task_context

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)
START, END = T0 - timedelta(days=1), T0 + timedelta(days=1)
IDS = [1, 2, 3]
UUID = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"


def at(minute: int) -> datetime:
    return datetime(2025, 6, 1, 12, minute, 7, tzinfo=UTC)


def naive(minute: int) -> datetime:
    return at(minute).replace(tzinfo=None)


def event_times(arrow_type: pa.DataType = pa.timestamp("us", tz="UTC")) -> pa.Array:
    times = [T0 + timedelta(minutes=i) for i in range(len(IDS))]
    return pa.array([t.replace(tzinfo=None) for t in times] if arrow_type.tz is None else times, arrow_type)


@dataclass(frozen=True)
class Case:
    """A feature ``name`` of type ``dtype`` (feast.types) read from ``column``; a view of its own with ``event_time``."""

    name: str
    dtype: str
    column: pa.Array
    event_time: pa.Array | None = None


STRUCT = pa.struct([("a", pa.string()), ("n", pa.int64())])
STRUCTS = pa.array([{"a": "x", "n": 1}, {"a": "y", "n": 2}, {"a": None, "n": 3}], STRUCT)
JSON_TEXT = ['{"a": "x", "n": 1}', '{"a": "y"}', "{}"]
STRING_MAP = pa.map_(pa.string(), pa.string())


def lists(values, item: pa.DataType, kind=pa.list_) -> pa.Array:
    return pa.array(values, kind(item))


# Columns Feast 0.67 materializes with the right values: the operator accepts them and writes what
# `feast materialize` writes.
ACCEPTED = [
    Case("int32_from_int32", "Int32", pa.array([1, -2, 3], pa.int32())),
    Case("int32_from_int8", "Int32", pa.array([1, -2, 3], pa.int8())),
    Case("int32_from_uint16", "Int32", pa.array([1, 2, 65535], pa.uint16())),
    Case("int64_from_int64", "Int64", pa.array([1, -2, 2**40])),
    Case("int64_from_int32", "Int64", pa.array([1, -2, 3], pa.int32())),
    Case("int64_with_nulls", "Int64", pa.array([1, None, 3])),
    Case("int64_all_null", "Int64", pa.nulls(3)),
    Case("float32_from_float32", "Float32", pa.array([1.5, -2.25, 3.0], pa.float32())),
    Case("float32_from_float64", "Float32", pa.array([1.1, -2.25, 3.0])),
    Case("float32_from_int64", "Float32", pa.array([1, -2, 3])),
    Case("float32_from_int32", "Float32", pa.array([1, -2, 3], pa.int32())),
    Case("float64_from_float64", "Float64", pa.array([1.1, None, 3.0])),
    Case("float64_from_int64", "Float64", pa.array([1, -2, 3])),
    Case(
        "float64_from_decimal",
        "Float64",
        pa.array([Decimal("1.10"), Decimal("2"), None], pa.decimal128(5, 2)),
    ),
    Case("string_from_string", "String", pa.array(["a", None, "c"])),
    Case("string_from_large_string", "String", pa.array(["a", "b", "c"], pa.large_string())),
    Case("string_from_category", "String", pa.array(["a", "b", "a"]).dictionary_encode()),
    Case("bytes_from_binary", "Bytes", pa.array([b"a\x00", b"", b"c"])),
    Case("bytes_from_large_binary", "Bytes", pa.array([b"a", b"b", b"c"], pa.large_binary())),
    Case("pdf_bytes_from_binary", "PdfBytes", pa.array([b"%PDF-1.7", b"b", b"c"])),
    Case("image_bytes_from_binary", "ImageBytes", pa.array([b"\x89PNG", b"b", b"c"])),
    Case("bool_from_bool", "Bool", pa.array([True, False, None])),
    Case("bool_from_int64", "Bool", pa.array([1, 0, 1])),
    Case("timestamp_from_utc", "UnixTimestamp", pa.array([at(1), at(2), None], pa.timestamp("us", tz="UTC"))),
    Case(
        "timestamp_from_naive", "UnixTimestamp", pa.array([naive(1), naive(2), naive(3)], pa.timestamp("us"))
    ),
    Case(
        "timestamp_from_paris_ns",
        "UnixTimestamp",
        pa.array([at(1), at(2), at(3)], pa.timestamp("ns", tz="Europe/Paris")),
    ),
    Case(
        "timestamp_from_seconds",
        "UnixTimestamp",
        pa.array([at(1), at(2), at(3)], pa.timestamp("s", tz="UTC")),
    ),
    Case("timestamp_from_date", "UnixTimestamp", pa.array([at(1).date()] * 3, pa.date32())),
    Case("uuid_from_string", "Uuid", pa.array([UUID, None, UUID])),
    Case("uuid_from_large_string", "Uuid", pa.array([UUID] * 3, pa.large_string())),
    Case("time_uuid_from_string", "TimeUuid", pa.array([UUID] * 3)),
    Case("decimal_from_string", "Decimal", pa.array(["1.10", "2", "-3"])),
    Case("decimal_from_large_string", "Decimal", pa.array(["1.10", "2", "-3"], pa.large_string())),
    Case(
        "decimal_from_decimal",
        "Decimal",
        pa.array([Decimal("1.10"), Decimal("2"), None], pa.decimal128(5, 2)),
    ),
    Case("json_from_large_string", "Json", pa.array(['{"a": 1}', "[1, 2]", None], pa.large_string())),
    Case("json_from_string", "Json", pa.array(['{"a": 1}', "[1, 2]", '"s"'])),
    Case("json_from_struct", "Json", STRUCTS),
    Case("map_from_struct", "Map", STRUCTS),  # the case: Feast writes the struct as a map
    Case("map_from_json", "Map", pa.array(JSON_TEXT)),
    Case("struct_from_struct", 'Struct({"a": String, "n": Int64})', STRUCTS),
    Case("struct_from_json", 'Struct({"a": String, "n": Int64})', pa.array(JSON_TEXT)),
    Case("array_int32", "Array(Int32)", lists([[1, 2], [3], []], pa.int32())),
    Case("array_int64", "Array(Int64)", lists([[1, 2], None, []], pa.int64())),
    Case("array_int64_from_int32", "Array(Int64)", lists([[1, 2], [3], []], pa.int32())),
    Case("array_int64_from_large_list", "Array(Int64)", lists([[1, 2], [3], []], pa.int64(), pa.large_list)),
    Case(
        "array_int64_from_fixed_size",
        "Array(Int64)",
        pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.int64(), 2)),
    ),
    Case("array_float32", "Array(Float32)", lists([[1.5, 2.0], [3.0], []], pa.float32())),
    Case("array_float32_from_float64", "Array(Float32)", lists([[1.5, 2.0], [3.0], []], pa.float64())),
    Case("array_float64", "Array(Float64)", lists([[1.1, 2.0], [3.0], []], pa.float64())),
    Case("array_float64_from_float32", "Array(Float64)", lists([[1.5, 2.0], [3.0], []], pa.float32())),
    Case("array_string", "Array(String)", lists([["a", "b"], ["c"], []], pa.string())),
    Case("array_string_from_large_string", "Array(String)", lists([["a"], ["c"], []], pa.large_string())),
    Case("array_decimal", "Array(Decimal)", lists([["1.10"], ["2", "3"], []], pa.string())),
    Case("array_time_uuid", "Array(TimeUuid)", lists([[UUID], [], [UUID]], pa.large_string())),
    Case("array_bytes", "Array(Bytes)", lists([[b"a", b"b"], [b"c"], []], pa.binary())),
    Case("array_bool", "Array(Bool)", lists([[True, False], [True], []], pa.bool_())),
    Case(
        "array_timestamp_utc",
        "Array(UnixTimestamp)",
        lists([[at(1), at(2)], [at(3)], []], pa.timestamp("us", "UTC")),
    ),
    Case(
        "array_timestamp_naive",
        "Array(UnixTimestamp)",
        lists([[naive(1)], [naive(3)], []], pa.timestamp("us")),
    ),
    Case("array_json", "Array(Json)", lists([['{"a": 1}'], ["[1]"], []], pa.large_string())),
    Case("array_json_from_string", "Array(Json)", lists([['{"a": 1}'], ["[1]"], []], pa.string())),
    Case("array_uuid", "Array(Uuid)", lists([[UUID], [], [UUID, UUID]], pa.string())),
    Case("array_map_from_json", "Array(Map)", pa.array(['[{"a": "x"}]', "[]", '[{"b": "y"}, {}]'])),
    Case("array_struct_from_json", 'Array(Struct({"a": String}))', pa.array(['[{"a": "x"}]', "[]", "[]"])),
    Case(
        "array_struct",
        'Array(Struct({"a": String}))',
        lists([[{"a": "x"}], [{"a": "y"}, {"a": None}], []], pa.struct([("a", pa.string())])),
    ),
    Case("array_array_int64", "Array(Array(Int64))", lists([[[1, 2], [3]], [[4]], []], pa.list_(pa.int64()))),
    Case("set_int64", "Set(Int64)", lists([[1, 2, 2], [3], []], pa.int64())),
    Case("set_string", "Set(String)", lists([["a", "b", "a"], ["c"], []], pa.string())),
    Case("set_float64", "Set(Float64)", lists([[1.5, 2.0], [3.0], []], pa.float64())),
    Case(
        "set_timestamp", "Set(UnixTimestamp)", lists([[at(1), at(1)], [at(2)], []], pa.timestamp("us", "UTC"))
    ),
    Case("set_of_arrays", "Set(Array(Int64))", lists([[[1, 2], [3]], [[4]], []], pa.list_(pa.int64()))),
    Case("event_time_naive", "Int64", pa.array([1, 2, 3]), event_times(pa.timestamp("us"))),
    Case(
        "event_time_paris_ns", "Int64", pa.array([1, 2, 3]), event_times(pa.timestamp("ns", "Europe/Paris"))
    ),
]


@dataclass(frozen=True)
class Rejected:
    """A column the operator rejects; Feast either ``fails`` (with that error) or writes ``wrote`` (the first entity's value)."""

    case: Case
    fails: str | None = None
    wrote: dict | None = None


# Columns the operator rejects before writing. Each says what Feast 0.67 does with it: fails (the
# error it raises) or writes a wrong value (what it stores for the first entity).
REJECTED = [
    # floats into an integer: Feast truncates 1.5 and 1.9 to 1
    Rejected(Case("int64_from_float64", "Int64", pa.array([1.5, 2.0, 3.0])), wrote={"int64_val": 1}),
    Rejected(Case("int32_from_float64", "Int32", pa.array([1.9, 2.0, 3.0])), wrote={"int32_val": 1}),
    # Feast writes int64 values that fit an int32, and fails on the others
    Rejected(Case("int32_from_int64", "Int32", pa.array([2**40, 2, 3])), fails="Value out of range"),
    # Feast parses numeric text, and fails on the rest
    Rejected(Case("int64_from_string", "Int64", pa.array(["1", "2", "x"])), fails="invalid literal for int"),
    Rejected(
        Case("float64_from_float32", "Float64", pa.array([1.5, 2.0, 3.0], pa.float32())),
        fails="Type `<class 'numpy.float32'>` not in",
    ),
    Rejected(
        Case("float64_from_int32", "Float64", pa.array([1, 2, 3], pa.int32())),
        fails="Type `<class 'numpy.int32'>` not in",
    ),
    Rejected(
        Case("float64_from_string", "Float64", pa.array(["1.5", "2", "3"])),
        fails="Type `<class 'str'>` not in",
    ),
    Rejected(
        Case("string_from_binary", "String", pa.array([b"a", b"b", b"c"])), wrote={"string_val": "b'a'"}
    ),
    Rejected(
        Case("bytes_from_string", "Bytes", pa.array(["a", "b", "c"])), fails="Type `<class 'str'>` not in"
    ),
    Rejected(
        Case("bool_from_string", "Bool", pa.array(["true", "false", "true"])),
        fails="Type `<class 'str'>` not in",
    ),
    # an int64 column of epoch milliseconds: Feast stores them as seconds, some 55,000 years ahead
    Rejected(
        Case("timestamp_from_int64", "UnixTimestamp", pa.array([1748779267123, 2, 3])),
        wrote={"unix_timestamp_val": 1748779267123},
    ),
    Rejected(
        Case("timestamp_from_string", "UnixTimestamp", pa.array(["2025-06-01T12:01:07Z"] * 3)),
        fails="invalid literal for int",
    ),
    Rejected(
        Case("zoned_timestamp_from_utc", "ZonedTimestamp", pa.array([at(1)] * 3, pa.timestamp("us", "UTC"))),
        fails="ZONED_TIMESTAMP expects datetime values",
    ),
    Rejected(
        Case("zoned_timestamp_from_naive", "ZonedTimestamp", pa.array([naive(1)] * 3, pa.timestamp("us"))),
        fails="ZONED_TIMESTAMP expects datetime values",
    ),
    Rejected(
        Case("map_from_map", "Map", pa.array([[("a", "x")], [("b", "y")], []], STRING_MAP)),
        fails="Expected dict for MAP type",
    ),
    Rejected(
        Case(
            "map_from_int_valued_map",
            "Map",
            pa.array([[("a", 1)], [("b", 2)], []], pa.map_(pa.string(), pa.int64())),
        ),
        fails="Expected bytes",
    ),
    Rejected(
        Case(
            "scalar_map_from_map",
            "ScalarMap",
            pa.array([[(1, "x")], [(2, "y")], []], pa.map_(pa.int64(), pa.string())),
        ),
        fails="Could not convert",
    ),
    Rejected(Case("json_from_int64", "Json", pa.array([1, 2, 3])), fails="not JSON serializable"),
    # the map's entries become the text of numpy arrays under a made-up field
    Rejected(
        Case(
            "struct_from_map", 'Struct({"a": String})', pa.array([[("a", "x")], [("a", "y")], []], STRING_MAP)
        ),
        wrote={"struct_val": {"_value": "[array(['a', 'x'], dtype=object)]"}},
    ),
    # Feast writes the column's fields, not the declared ones
    Rejected(
        Case(
            "struct_other_fields",
            'Struct({"a": String, "n": Int64})',
            pa.array([{"z": 1.5}] * 3, pa.struct([("z", pa.float64())])),
        ),
        wrote={"struct_val": {"z": 1.5}},
    ),
    Rejected(
        Case("uuid_from_binary", "Uuid", pa.array([b"0123456789abcdef"] * 3, pa.binary(16))),
        fails="Type `<class 'bytes'>` not in",
    ),
    Rejected(
        Case("decimal_from_float64", "Decimal", pa.array([1.1, 2.0, 3.0])),
        fails="Type `<class 'numpy.float64'>` not in",
    ),
    Rejected(
        Case("array_int64_from_float64", "Array(Int64)", lists([[1.5], [2.0], []], pa.float64())),
        fails="is of type <class 'float'> not of type",
    ),
    Rejected(
        Case("array_int32_from_int64", "Array(Int32)", lists([[2**40], [2], []], pa.int64())),
        fails="Value out of range",
    ),
    Rejected(
        Case("array_float64_from_int64", "Array(Float64)", lists([[1], [2], []], pa.int64())),
        fails="is of type <class 'int'> not of type",
    ),
    Rejected(
        Case("array_bytes_from_string", "Array(Bytes)", lists([["a"], ["b"], []], pa.string())),
        fails="is of type <class 'str'> not of type",
    ),
    Rejected(
        Case("array_bool_from_int64", "Array(Bool)", lists([[1], [0], []], pa.int64())),
        fails="is of type <class 'int'> not of type",
    ),
    Rejected(
        Case("array_map_from_maps", "Array(Map)", lists([[[("a", "x")]], [[("b", "y")]], []], STRING_MAP)),
        fails="Expected list for MAP_LIST type",
    ),
    Rejected(
        Case(
            "array_map_from_structs",
            "Array(Map)",
            lists([[{"a": "x"}], [{"a": "y"}], []], pa.struct([("a", pa.string())])),
        ),
        fails="Expected list for MAP_LIST type",
    ),
    Rejected(
        Case(
            "array_timestamp_from_int64",
            "Array(UnixTimestamp)",
            lists([[1748779267123], [2], []], pa.int64()),
        ),
        wrote={"unix_timestamp_list_val": [1748779267123]},
    ),
]
CASES = ACCEPTED + [r.case for r in REJECTED]
#: the accepted columns that share the default event time: one view and one parquet file
SHARED = "accepted"


def view_of(case: Case) -> str:
    """The feature view holding a case's feature (named after the case)."""
    return SHARED if case in ACCEPTED and case.event_time is None else case.name


def write_data(data: Path) -> None:
    """One parquet file per feature view: entity ``id``, ``event_timestamp`` and its features."""
    views: dict[str, dict[str, pa.Array]] = {}
    for case in CASES:
        columns = views.setdefault(view_of(case), {"id": pa.array(IDS, pa.int64())})
        columns.setdefault(
            "event_timestamp", case.event_time if case.event_time is not None else event_times()
        )
        columns[case.name] = case.column
    for view, columns in views.items():
        pq.write_table(pa.table(columns), data / f"{view}.parquet")


def write_repo(root: Path, data: Path) -> None:
    """A feature repo of the cases' views over ``data``, with its own registry and SQLite online store."""
    root.mkdir()
    (root / "feature_store.yaml").write_text(
        f"project: types\nprovider: local\nregistry: {root}/registry.db\n"
        f"online_store:\n  type: sqlite\n  path: {root}/online.db\n"
        "offline_store:\n  type: file\nentity_key_serialization_version: 3\n"
    )
    fields: dict[str, list[str]] = {}
    for case in CASES:
        fields.setdefault(view_of(case), []).append(f'Field(name="{case.name}", dtype={case.dtype})')
    code = [
        "from datetime import timedelta",
        "from feast import Entity, FeatureView, Field, FileSource, ValueType",
        "from feast.types import *",
        'item = Entity(name="item", join_keys=["id"], value_type=ValueType.INT64)',
    ] + [
        f'{view} = FeatureView(name="{view}", entities=[item], ttl=timedelta(days=3650), '
        f"schema=[{', '.join(schema)}], "
        f'source=FileSource(name="{view}", path="{data}/{view}.parquet", timestamp_field="event_timestamp"))'
        for view, schema in fields.items()
    ]
    (root / "definitions.py").write_text("\n".join(code) + "\n")


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """
    The same views applied twice over the same data: the Feast CLI materializes the accepted ones
    in repo ``feast``, the operator in repo ``op`` (connection ``feast_types``).
    """
    from airflow_provider_mlplat.hooks.feast import FeastHook

    tmp = tmp_path_factory.mktemp("feast-types")
    data, feast, op = tmp / "data", tmp / "feast", tmp / "op"
    data.mkdir()
    write_data(data)
    write_repo(feast, data)
    write_repo(op, data)
    accepted = list(dict.fromkeys(view_of(c) for c in ACCEPTED))
    cli = Path(sys.executable).parent / "feast"
    views = [arg for view in accepted for arg in ("--views", view)]
    for command in (["apply"], ["materialize", START.isoformat(), END.isoformat(), *views]):
        done = subprocess.run([cli, *command], cwd=feast, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"feast {command[0]}: {done.stderr[-3000:]}"
    set_connection("feast_types", conn_type="feast", extra={"repo_path": str(op)})
    FeastHook("feast_types").apply()
    assert materialize(accepted)["rows"] == len(IDS) * len(accepted)
    return {"feast": feast, "op": op, "data": data}


def materialize(views: list[str]) -> dict:
    """FeastMaterializeOperator on repo ``op``."""
    op = FeastMaterializeOperator(
        task_id="materialize",
        feature_views=views,
        start=START,
        end=END,
        feast_conn_id="feast_types",
        outlets=[feast_feature_view_asset("types", v) for v in views],
    )
    return op.execute(task_context("materialize"))


def online(repo: Path, case: Case) -> list:
    """A case's online values of every entity, as Feast's online read returns them."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    features = [f"{view_of(case)}:{case.name}"]
    return store.get_online_features(features=features, entity_rows=[{"id": i} for i in IDS]).to_dict()[
        case.name
    ]


def first_proto(repo: Path, case: Case) -> dict:
    """The first entity's stored value: ``{proto field: plain value}``."""
    from feast import FeatureStore
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    store = FeatureStore(repo_path=str(repo))
    key = EntityKey(join_keys=["id"], entity_values=[Value(int64_val=IDS[0])])
    _, values = store._get_provider().online_read(store.config, store.get_feature_view(view_of(case)), [key])[
        0
    ]
    return {values[case.name].WhichOneof("val"): plain(values[case.name])}


def plain(value):
    """A Value proto's content as plain Python (maps as dicts, lists as lists)."""
    content = getattr(value, value.WhichOneof("val"))
    if not hasattr(content, "val"):
        return content
    if hasattr(content.val, "items"):
        return {k: plain(v) for k, v in content.val.items()}
    return list(content.val)


def expected(value, dtype: str):
    """A source value as Feast's online read should return it for a feature of type ``dtype``."""
    if value is None:
        return None
    kind, _, inner = dtype.partition("(")
    if kind in ("Array", "Set") and not isinstance(value, str):
        items = [expected(v, inner[:-1]) for v in value]
        return set(items) if kind == "Set" and not inner.startswith("Array") else items
    if kind in ("Json", "Map", "Struct", "Array") and isinstance(value, str):  # JSON text
        return json.loads(value)
    if kind == "UnixTimestamp":
        if not isinstance(value, datetime):  # a date: midnight UTC
            value = datetime(value.year, value.month, value.day)
        return (value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)).replace(microsecond=0)
    convert = {
        "Int32": int,
        "Int64": int,
        "Float32": lambda v: float(np.float32(v)),
        "Float64": float,
        "Bool": bool,
        "Uuid": uuid.UUID,
        "TimeUuid": uuid.UUID,
        "Decimal": lambda v: Decimal(str(v)),
    }
    return convert.get(kind, lambda v: v)(value)


@pytest.mark.parametrize("case", ACCEPTED, ids=[c.name for c in ACCEPTED])
def test_the_operator_writes_what_feast_materialize_writes(repos, case):
    written = online(repos["op"], case)
    assert written == online(repos["feast"], case)
    assert written == [expected(v, case.dtype) for v in case.column.to_pylist()]


@pytest.mark.parametrize("rejected", REJECTED, ids=[r.case.name for r in REJECTED])
def test_the_operator_rejects_what_feast_fails_on_or_writes_wrongly(repos, rejected):
    from feast import FeatureStore

    case = rejected.case
    found = pq.read_schema(repos["data"] / f"{case.name}.parquet").field(case.name).type
    declared = FeatureStore(repo_path=str(repos["op"])).get_feature_view(case.name).features[0].dtype
    with pytest.raises(MLPlatValidationFailed) as err:
        materialize([case.name])
    message = str(err.value)
    assert f"column '{case.name}' is {found} (" in message, message
    assert f"the feature view declares {declared.to_value_type().name} ({declared})" in message, message
    assert online(repos["op"], case) == [None] * len(IDS)  # nothing written
    # what Feast does with the same view (FeatureStore.materialize, the code behind `feast materialize`)
    store = FeatureStore(repo_path=str(repos["feast"]))
    if rejected.fails:
        with pytest.raises(Exception, match=re.escape(rejected.fails)):
            store.materialize(START, END, feature_views=[case.name])
    else:
        store.materialize(START, END, feature_views=[case.name])
        assert first_proto(repos["feast"], case) == rejected.wrote
