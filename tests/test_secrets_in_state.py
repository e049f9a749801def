"""An ``ab.Secret`` may not go where it would come back as ``{"$secret": name}``.

State, key-value values and schedule or queue payloads are stored as JSON and read back
after hibernation: a secret there would be a ``Secret`` while the agent is awake and a dict
after. They are refused with a ``JSONValueError`` (a ``TypeError``) pointing at
``self.secrets``, before anything is written. Arguments of calls may still carry secrets:
history writes them as ``{"$secret": name}``.
"""

from __future__ import annotations

from typing import Any

import pytest

import agentbook as ab
from agentbook import jsonvalue


class Vault(ab.Agent):
    initial_state = {"note": ""}

    @ab.callable
    async def put_in_state(self, nested: bool = False) -> None:
        secret = ab.Secret("sk-state", "api")
        self.set_state({"note": "x", "deep": [{"key": secret}]} if nested else {"key": secret})

    @ab.callable
    async def put_in_kv(self) -> None:
        self.kv["key"] = {"token": ab.Secret("sk-kv", "api")}

    @ab.callable
    async def put_in_schedule(self, kind: str) -> None:
        payload = {"key": ab.Secret("sk-payload", "api")}
        if kind == "delay":
            await self.schedule(60, "later", payload)
        elif kind == "cron":
            await self.schedule("0 * * * *", "later", payload)
        elif kind == "every":
            await self.schedule_every(60, "later", payload)
        else:
            await self.queue("later", payload)

    @ab.callable
    async def the_right_way(self) -> str:
        self.secrets["api"] = ab.Secret("sk-right", "api")
        self.set_state({"note": "the key is in self.secrets['api']"})
        await self.schedule(60, "later", {"secret": "api"})
        return "ok"

    @ab.callable
    async def use(self, key: Any) -> str:
        return "secret" if isinstance(key, ab.Secret) else type(key).__name__

    async def later(self, payload: Any) -> None:
        pass


@pytest.mark.parametrize("nested", [False, True])
async def test_a_secret_in_state_is_refused_before_anything_is_written(rt, nested):
    ref = rt.get(Vault, "state")
    with pytest.raises(ab.JSONValueError, match=r"self\.secrets") as info:
        await ref.put_in_state(nested)
    assert isinstance(info.value, TypeError)
    assert info.value.path.startswith("state")
    assert ref.state == {"note": ""} and ref.version == 0


async def test_a_secret_in_a_kv_value_is_refused(rt):
    ref = rt.get(Vault, "kv")
    with pytest.raises(ab.JSONValueError, match=r"self\.secrets") as info:
        await ref.put_in_kv()
    assert info.value.path == "kv['key']['token']"
    assert ref.version == 0


@pytest.mark.parametrize("kind", ["delay", "cron", "every", "queue"])
async def test_a_secret_in_a_schedule_or_queue_payload_is_refused(rt, kind):
    ref = rt.get(Vault, f"sched-{kind}")
    with pytest.raises(ab.JSONValueError, match=r"self\.secrets") as info:
        await ref.put_in_schedule(kind)
    assert info.value.path == "payload['key']"
    assert ref.schedules().empty and ref.version == 0


async def test_the_secret_store_and_names_in_state_still_work(rt):
    ref = rt.get(Vault, "right")
    assert await ref.the_right_way() == "ok"
    assert len(ref.schedules()) == 1


async def test_arguments_of_calls_may_still_carry_secrets(rt):
    ref = rt.get(Vault, "args")
    assert await ref.use(ab.Secret("sk-arg", "api")) == "secret"
    assert ref.history(limit=1).args[0] == [{"$secret": "api"}]  # written redacted


def test_freeze_refuses_secrets_only_where_values_are_stored():
    secret = ab.Secret("sk", "api")
    for path in ("state", "kv['a']", "payload", "Vault.initial_state"):
        with pytest.raises(ab.JSONValueError, match=r"self\.secrets\['api'\]"):
            jsonvalue.freeze({"k": secret}, path)
    for path in ("args", "kwargs", "event", "message", "result"):
        assert jsonvalue.freeze({"k": secret}, path)["k"] is secret
