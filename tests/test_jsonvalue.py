import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbook import JSONValueError, ReadOnlyError
from agentbook.jsonvalue import canonical, dumps, freeze, loads, thaw

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_freeze_accepts_every_json_value_and_round_trips(value):
    frozen = freeze(value)
    assert json.loads(dumps(frozen)) == value
    assert thaw(frozen) == value


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"a": [1, {1, 2}]}, "state['a'][1]"),
        ({"a": b"bytes"}, "state['a']"),
        ({"x": float("nan")}, "state['x']"),
        ({"x": math.inf}, "state['x']"),
        ({1: "int key"}, "state[1]"),
        ({"s": "\ud800"}, "state['s']"),
        (object(), "state"),
    ],
)
def test_non_json_values_raise_a_type_error_naming_their_path(value, path):
    with pytest.raises(JSONValueError) as info:
        freeze(value, "state")
    assert isinstance(info.value, TypeError)
    assert info.value.path == path
    assert path in str(info.value)


def test_cycles_are_named_not_recursed_forever():
    a: list = []
    a.append(a)
    with pytest.raises(JSONValueError, match="cycle"):
        freeze(a, "args")


def test_deep_nesting_is_refused_with_a_hint():
    value: list = []
    for _ in range(300):
        value = [value]
    with pytest.raises(JSONValueError, match="nested"):
        freeze(value)


def test_dumping_an_unchecked_cycle_or_deep_value_says_what_it_is():
    """dumps takes checked values; one that was not checked and contains itself, or is
    nested past the recursion limit, is a JSONValueError that names both, not advice
    about floats and ints."""
    cycle: list = []
    cycle.append(cycle)
    deep: list = []
    for _ in range(5_000):
        deep = [deep]
    for value in (cycle, deep):
        with pytest.raises(JSONValueError, match="contains itself or is nested too deeply") \
                as caught:
            dumps(value)
        assert "floats" not in str(caught.value)


def test_frozen_values_refuse_mutation_and_say_to_use_set_state():
    frozen = freeze({"a": [1, 2], "b": {"c": 1}})
    with pytest.raises(ReadOnlyError, match="set_state"):
        frozen["a"] = 1
    with pytest.raises(ReadOnlyError):
        frozen["a"].append(3)
    with pytest.raises(ReadOnlyError):
        frozen["b"].update(x=1)
    # but building a new value from it is easy
    new = {**frozen, "a": [*frozen["a"], 3]}
    assert new == {"a": [1, 2, 3], "b": {"c": 1}}


def test_tuples_become_lists_and_str_subclasses_become_str():
    import enum

    class Color(str, enum.Enum):
        RED = "red"

    assert freeze((1, (2, Color.RED))) == [1, [2, "red"]]
    assert type(freeze(Color.RED)) is str


def test_canonical_text_is_equal_for_equal_values():
    assert canonical({"b": 1, "a": [1, {"y": 2, "x": 1}]}) == canonical(
        {"a": [1, {"x": 1, "y": 2}], "b": 1}
    )


def test_loads_gives_frozen_values():
    value = loads('{"a": [1]}')
    with pytest.raises(ReadOnlyError):
        value["a"].append(2)
    assert loads(None) is None
