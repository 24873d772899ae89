"""Specs: create -> (JSON | ConfigDict) -> resolve/instantiate, string targets, and one-line errors."""

import datetime
import fractions
import functools
import json

import ml_collections
import pytest

from octo_like.utils import spec
from octo_like.utils.errors import InputError


def _through_json(s):
    return json.loads(json.dumps(s))


def _through_config_dict(s):
    return ml_collections.ConfigDict({"component": s}).component


def _through_frozen_config_dict(s):  # turns lists into tuples
    return ml_collections.FrozenConfigDict({"component": s}).component


ROUND_TRIPS = [lambda s: s, _through_json, _through_config_dict, _through_frozen_config_dict]


def test_create_records_import_path_and_arguments():
    s = spec.create(fractions.Fraction, 3, denominator=4)
    assert s == {"module": "fractions", "name": "Fraction", "args": [3], "kwargs": {"denominator": 4}}
    assert spec.is_spec(s)


@pytest.mark.parametrize("round_trip", ROUND_TRIPS, ids=["dict", "json", "config_dict", "frozen_config_dict"])
def test_round_trip_instantiates_the_same_object(round_trip):
    s = round_trip(spec.create(fractions.Fraction, 3, denominator=4))
    assert spec.is_spec(s)
    assert spec.instantiate(s) == fractions.Fraction(3, 4)
    assert spec.to_string(s) == "fractions:Fraction(3, denominator=4)"


@pytest.mark.parametrize("round_trip", ROUND_TRIPS, ids=["dict", "json", "config_dict", "frozen_config_dict"])
def test_nested_spec_is_passed_to_the_target_as_a_plain_dict(round_trip):
    inner = spec.create(fractions.Fraction, 1, 2)
    s = round_trip(spec.create(dict, b=[1, 2], a=inner))
    built = spec.instantiate(s)
    assert type(built["a"]) is dict and built["a"]["module"] == "fractions"
    assert spec.instantiate(built["a"]) == fractions.Fraction(1, 2)
    assert spec.to_string(s) == "builtins:dict(a=fractions:Fraction(1, 2), b=[1, 2])"


def test_resolve_returns_bare_target_or_partial():
    assert spec.resolve(spec.create(fractions.Fraction)) is fractions.Fraction
    parse_binary = spec.resolve(spec.create(int, base=2))
    assert isinstance(parse_binary, functools.partial)
    assert parse_binary("101") == 5


def test_string_targets_including_dotted_attributes():
    assert spec.instantiate(spec.create("fractions:Fraction", 1, 3)) == fractions.Fraction(1, 3)
    s = spec.create("datetime:datetime.fromisoformat", "2024-01-02")
    assert spec.instantiate(_through_json(s)) == datetime.datetime(2024, 1, 2)
    # A method given as an object records the same "Outer.inner" path as its string form.
    from_float = spec.create(fractions.Fraction.from_float, 0.5)
    assert from_float == spec.create("fractions:Fraction.from_float", 0.5)
    assert spec.instantiate(from_float) == fractions.Fraction(1, 2)


def test_string_target_is_imported_only_when_resolved():
    s = spec.create("no_such_package_xyz.models:Thing", width=3)
    with pytest.raises(InputError, match="no_such_package_xyz.models") as err:
        spec.resolve(s)
    assert "\n" not in str(err.value)


def test_is_spec():
    assert spec.is_spec({"module": "fractions", "name": "Fraction"})
    assert spec.is_spec(ml_collections.ConfigDict({"module": "fractions", "name": "Fraction"}))
    assert not spec.is_spec({"module": "fractions"})
    assert not spec.is_spec({"module": 1, "name": "Fraction"})
    assert not spec.is_spec("fractions:Fraction")
    assert not spec.is_spec(None)


def _local_function():
    def local(x):
        return x

    return local


@pytest.mark.parametrize(
    "make_spec, expected",
    [
        (lambda: spec.create(lambda x: x), "<lambda>"),
        (lambda: spec.create(_local_function()), "<locals>"),
        (lambda: spec.create(functools.partial(int, base=2)), "no import path"),
        (lambda: spec.create("fractions.Fraction"), "'fractions.Fraction'; expected 'pkg.module:Attr'"),
        (lambda: spec.create("fractions:"), "'fractions:'"),
        (lambda: spec.create(fractions.Fraction, object()), "'fractions:Fraction' are not JSON-serializable"),
    ],
    ids=["lambda", "local_function", "partial", "no_colon", "empty_attr", "not_json"],
)
def test_create_errors_are_one_line(make_spec, expected):
    with pytest.raises(InputError) as err:
        make_spec()
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


IMPORT_ERRORS = [
    ({"module": "no_such_module_xyz", "name": "Thing"}, "cannot import module 'no_such_module_xyz'"),
    ({"module": "fractions", "name": "Fractionn"}, "module 'fractions' has no attribute 'Fractionn'"),
    ({"module": "datetime", "name": "datetime.nope"}, "module 'datetime' has no attribute 'datetime.nope'"),
]
MALFORMED = [
    ({"module": "fractions"}, "malformed spec with keys [module]; expected string 'module' and 'name'"),
    ({"target": "fractions:Fraction"}, "malformed spec with keys [target]"),
    ({"module": "fractions", "name": "Fraction", "kwarg": {}}, "keys [module, name, kwarg]"),
    ({"module": "fractions", "name": "Fraction", "args": 3}, "'args' of type int; expected a list"),
    ({"module": "fractions", "name": "Fraction", "kwargs": [1]}, "'kwargs' of type list; expected a dict"),
    ("fractions:Fraction", "expected a spec"),
]


@pytest.mark.parametrize("bad_spec, expected", IMPORT_ERRORS + MALFORMED)
def test_resolve_errors_are_one_line(bad_spec, expected):
    for function in (spec.resolve, spec.instantiate):
        with pytest.raises(InputError) as err:
            function(bad_spec)
        assert expected in str(err.value)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad_spec, expected", MALFORMED)
def test_to_string_rejects_malformed_specs(bad_spec, expected):
    with pytest.raises(InputError) as err:
        spec.to_string(bad_spec)
    assert expected in str(err.value)
