"""Versions that are not versions: floats, infinities, NaN, bools and huge ints are a typed
error at every time-travel entry point, before anything is written."""

from __future__ import annotations

import math

import pytest

import agentbook as ab
from agentbook.errors import JSONValueError, VersionNotFoundError
from agentbook.travel.versions import check_version_type

BAD = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan, "float": 1.0, "bool": True,
       "str": "1", "huge": 10**5000, "-huge": -(10**5000)}


class TTCounter(ab.Agent):
    initial_state = {"n": 0}

    @ab.callable
    async def bump(self) -> int:
        self.set_state({"n": self.state["n"] + 1})
        return self.state["n"]


@pytest.mark.parametrize("version", list(BAD.values()), ids=list(BAD))
async def test_a_bad_version_is_a_typed_error_everywhere(rt: ab.Runtime, version: object) -> None:
    ref = rt.get(TTCounter, "c")
    await ref.bump()
    await ref.bump()
    with pytest.raises(VersionNotFoundError):
        ref.at(version)
    with pytest.raises(VersionNotFoundError):
        ref.diff(version)
    with pytest.raises(VersionNotFoundError):
        await ref.fork("f", at=version)
    with pytest.raises(VersionNotFoundError):
        await ref.replay(version)
    with pytest.raises((VersionNotFoundError, JSONValueError)):  # JSON first, in ref.rewind
        await ref.rewind(version)
    assert ref.version == 2 and ref.state["n"] == 2
    assert await ref.bump() == 3


@pytest.mark.parametrize("version", [math.inf, math.nan, True, "3", 2.0])
def test_check_version_type_names_what_was_given(version: object) -> None:
    with pytest.raises(VersionNotFoundError, match="whole numbers"):
        check_version_type(version, "TTCounter('c')")
    assert check_version_type(-1, "x") == -1
