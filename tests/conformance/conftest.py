"""The conformance suite runs every semantic invariant of SPEC §2 against each kind of
runtime: durable files (normal and full durability) and ephemeral (":memory:").
A new backend (Ray) adds itself to ``KINDS``. Ray runs on a cluster of two nodes on this
machine (``ray.cluster_utils.Cluster``), one host on each: "ray" over one shared folder,
"ray-nodes" with node-local stores, a coordinator and a replica on the other node."""

from __future__ import annotations

import pytest

import agentbook as ab

KINDS = ["file", "file-full", "memory", "ray", "ray-nodes"]
#: Why "ray-nodes" is skipped for now: the suite reads agents from the driver (ref.state,
#: ref.sql, ref.history), which node-local stores answer only once reads go through their
#: owners (issue 23, part B). Set to None when that is in.
NODE_READS_MISSING: str | None = (
    "the driver's reads of node-local stores go through their owners with issue 23 part B")


def make_runtime(kind: str, folder, clock: ab.VirtualClock, **options) -> ab.Runtime:
    if kind == "file":
        return ab.Runtime(folder, clock=clock, **options)
    if kind == "file-full":
        return ab.Runtime(folder, durability="full", clock=clock, **options)
    if kind == "memory":
        return ab.Runtime(":memory:", clock=clock, **options)
    if kind == "ray":
        return ab.Runtime(folder, backend="ray", hosts=2, shards=8, **options)
    if kind == "ray-nodes":
        return ab.Runtime(folder, backend="ray", hosts=2, shards=8, replicas=1,
                          host_dir=str(folder) + "-nodes/agentbook-{node}", **options)
    raise ValueError(kind)


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray cluster of two nodes for the whole session (starting it costs seconds)."""
    ray = pytest.importorskip("ray", reason="the Ray backend is tested when ray is installed "
                                                 "(pip install 'agentbook[ray]')")
    import os
    import socket

    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = Cluster(initialize_head=False)
    try:
        cluster.add_node(num_cpus=2, gcs_server_port=port, include_dashboard=False)
        cluster.add_node(num_cpus=2)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING",
                 namespace="agentbook")
        yield ray
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    if request.param.startswith("ray"):
        if request.node.get_closest_marker("local_only"):
            pytest.skip(request.node.get_closest_marker("local_only").args[0])
        if request.param == "ray-nodes" and NODE_READS_MISSING:
            pytest.skip(NODE_READS_MISSING)
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
