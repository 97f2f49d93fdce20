"""OONI's own models read every line of a probe report.

:func:`assert_ooni_loadable` is for every test that produces a report (a
``probe run`` on loopback servers, a replay of the trace corpus, a run in the
netns lab): each line must be an OONI measurement that ``oonidata``'s model for
its ``test_name`` loads (``BaseMeasurement`` for a test OONI does not define),
with the exact field types the model declares (:func:`check_fields`:
mashumaro would silently coerce "yes" to True). There is no other kind of line:
the end of a run is sealed inside the last measurement's signature.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing

try:  # OONI's own data models: the point of these checks, so never skipped
    from oonidata.models.nettests import NETTEST_MODELS, BaseMeasurement
except ImportError as error:  # pragma: no cover - a missing test dependency
    raise ImportError(
        "OONI's data models are needed: "
        "pip install --no-deps oonidata==0.3.0 && pip install mashumaro pyopenssl"
    ) from error


def assert_ooni_loadable(path: str | os.PathLike[str]) -> int:
    """Every line of the report at ``path`` loads with OONI's models; returns how many.

    Fails naming the first line (1-based) that is not an OONI measurement.
    """
    with open(path, "rb") as stream:
        data = stream.read()
    assert data.endswith(b"\n"), f"{path}: empty, or its last line is cut off"
    lines = data[:-1].split(b"\n")
    for number, raw in enumerate(lines, start=1):
        where = f"{path}:{number}"
        record = json.loads(raw)
        assert isinstance(record, dict), f"{where}: not a JSON object"
        for member in ("test_name", "test_keys", "measurement_uid", "report_id"):
            assert member in record, f"{where}: no {member}: not an OONI measurement"
        model = NETTEST_MODELS.get(record["test_name"], BaseMeasurement)
        check_fields(model, record, where)
        try:
            loaded = model.from_dict(record)
        except Exception as error:  # noqa: BLE001 - any failure to load is the finding
            raise AssertionError(f"{where}: oonidata cannot load it: {error}") from error
        assert loaded.measurement_uid == record["measurement_uid"], where
        assert loaded.report_id == record["report_id"], where
    return len(lines)


def _matches(value, hint, path: str) -> None:
    origin = typing.get_origin(hint)
    if hint is typing.Any:
        return
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(hint):
            try:
                _matches(value, arg, path)
                return
            except AssertionError as error:
                errors.append(str(error))
        raise AssertionError(f"{path}: {value!r:.60} fits none of {hint}: {errors}")
    if hint is type(None):
        assert value is None, f"{path}: expected null, got {value!r:.60}"
        return
    if origin is list or hint is list:
        assert isinstance(value, list), f"{path}: expected a list, got {value!r:.60}"
        (arg,) = typing.get_args(hint) or (typing.Any,)
        for index, item in enumerate(value):
            _matches(item, arg, f"{path}[{index}]")
        return
    if origin is dict or hint is dict:
        assert isinstance(value, dict), f"{path}: expected an object, got {value!r:.60}"
        args = typing.get_args(hint)
        for key, item in value.items():
            assert isinstance(key, str), f"{path}: key {key!r} is not a string"
            if args:
                _matches(item, args[1], f"{path}.{key}")
        return
    if dataclasses.is_dataclass(hint):
        check_fields(hint, value, path)
        return
    if hint is bool:
        assert isinstance(value, bool), f"{path}: expected a bool, got {value!r:.60}"
    elif hint is int:
        assert isinstance(value, int) and not isinstance(value, bool), f"{path}: not an int"
    elif hint is float:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (
            f"{path}: not a number"
        )
    elif hint is str:
        assert isinstance(value, str), f"{path}: expected a string, got {value!r:.60}"
    else:
        raise AssertionError(f"{path}: no rule for {hint}")


def check_fields(model: type, data, path: str = "") -> None:
    """``data`` has every required field of ``model``, each of its declared type
    (mashumaro would silently coerce "yes" to True: this does not)."""
    assert isinstance(data, dict), f"{path}: expected an object for {model.__name__}"
    hints = typing.get_type_hints(model)
    for field in dataclasses.fields(model):
        if field.name.startswith("_"):
            continue
        required = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        if field.name not in data:
            assert not required, f"{path}.{field.name}: required by {model.__name__}, missing"
            continue
        _matches(data[field.name], hints[field.name], f"{path}.{field.name}")
