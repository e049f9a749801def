"""The conformance suite runs every semantic invariant of SPEC §2 against each kind of
runtime: durable files (normal and full durability) and ephemeral (":memory:"), Ray hosts
over the folder, and Ray hosts keeping their stores on their own nodes (the driver reads
through them; each shard has a replica on the other node). Ray runs on the session's
cluster of two nodes on this machine (``ray_cluster`` in tests/conftest.py), one host on
each. A new backend adds itself to ``KINDS``."""

from __future__ import annotations

import pytest

import agentbook as ab

KINDS = ["file", "file-full", "memory", "ray", "ray-owners"]


def make_runtime(kind: str, folder, clock: ab.VirtualClock, **options) -> ab.Runtime:
    if kind == "file":
        return ab.Runtime(folder, clock=clock, **options)
    if kind == "file-full":
        return ab.Runtime(folder, durability="full", clock=clock, **options)
    if kind == "memory":
        return ab.Runtime(":memory:", clock=clock, **options)
    if kind == "ray":
        return ab.Runtime(folder, backend="ray", hosts=2, shards=8, **options)
    if kind == "ray-owners":  # stores in the hosts' node folders: reads through the owners
        return ab.Runtime(folder, backend="ray", hosts=2, shards=8, replicas=1,
                          host_dir=f"{folder}-nodes/agentbook-{{node}}", **options)
    raise ValueError(kind)


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    if request.param.startswith("ray"):
        if request.node.get_closest_marker("local_only"):
            pytest.skip(request.node.get_closest_marker("local_only").args[0])
        request.getfixturevalue("ray_cluster")
    return request.param


@pytest.fixture
async def crt(kind, tmp_path, clock):
    """A runtime of each kind."""
    runtime = make_runtime(kind, tmp_path / "store", clock)
    yield runtime
    await runtime.aclose()


@pytest.fixture
def reopen(kind, tmp_path, clock):
    """Open a second runtime on the same store (a restart), for durable kinds."""
    opened = []

    def _reopen(**options) -> ab.Runtime:
        if kind == "memory":
            pytest.skip("':memory:' runtimes are ephemeral by design")
        runtime = make_runtime(kind, tmp_path / "store", clock, **options)
        opened.append(runtime)
        return runtime

    yield _reopen
    for runtime in opened:
        runtime.close()
