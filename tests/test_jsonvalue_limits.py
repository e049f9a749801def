"""jsonvalue at its edges: ints too long for JSON text, keys whose repr fails, and
``dumps`` of values that were never checked."""

from __future__ import annotations

import enum
import json
import math
import sys

import pytest

from agentbook import jsonvalue
from agentbook.errors import JSONValueError


@pytest.mark.parametrize("value", [10**5000, -(10**4300), [1, {"a": 10**4300}]],
                         ids=["huge", "negative", "nested"])
def test_an_int_too_long_for_json_text_is_refused(value: object) -> None:
    with pytest.raises(JSONValueError, match="digits, too long for JSON text"):
        jsonvalue.freeze(value)


def test_the_longest_int_json_can_write_is_accepted() -> None:
    n = 10**sys.get_int_max_str_digits() - 1
    assert json.loads(jsonvalue.dumps(jsonvalue.freeze([n, -n]))) == [n, -n]


def test_the_int_limit_follows_the_interpreter() -> None:
    old = sys.get_int_max_str_digits()
    try:
        sys.set_int_max_str_digits(1000)
        with pytest.raises(JSONValueError):
            jsonvalue.freeze(10**1000)
        sys.set_int_max_str_digits(0)  # no limit: any int is JSON text
        assert jsonvalue.freeze(10**5000) == 10**5000
    finally:
        sys.set_int_max_str_digits(old)


def test_an_int_subclass_is_checked_and_becomes_a_plain_int() -> None:
    class Big(enum.IntEnum):
        ONE = 1

    frozen = jsonvalue.freeze({"k": Big.ONE})
    assert type(frozen["k"]) is int


class _EvilKey:
    def __repr__(self) -> str:
        raise RuntimeError("repr of a key")

    def __hash__(self) -> int:
        return 1


def test_a_key_whose_repr_raises_is_named_by_its_type() -> None:
    with pytest.raises(JSONValueError, match=r"state\[<_EvilKey>\]"):
        jsonvalue.freeze({_EvilKey(): 1}, "state")


def test_a_long_key_repr_is_cut_short() -> None:
    with pytest.raises(JSONValueError) as info:
        jsonvalue.freeze({(1,) * 1000: 1})
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("value", [[math.inf], [math.nan], 10**5000], ids=["inf", "nan", "huge"])
def test_dumps_of_an_unchecked_bad_value_is_a_json_value_error(value: object) -> None:
    for write in (jsonvalue.dumps, jsonvalue.canonical):
        with pytest.raises(JSONValueError, match="is not a JSON value"):
            write(value)
