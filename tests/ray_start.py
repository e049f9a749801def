"""Start a Ray of the tests' own (loopback only), on a loaded machine too."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import psutil

T = TypeVar("T")


def kill(processes: list[psutil.Process]) -> None:
    """SIGKILL *processes* (those already gone too) and wait for them to be gone."""
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


def _three_tries(start: Callable[[], T], undo: Callable[[], None]) -> T:
    """*start*, tried up to three times: on a loaded machine Ray's raylet gives its agent
    15 s to start and then dies (ray-project/ray#65983). After a failed try, *undo*, and
    the processes it started are stopped before the next."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    me = psutil.Process()
    for attempt in range(3):
        before = {p.pid for p in me.children(recursive=True)}
        try:
            return start()
        except Exception:
            undo()
            kill([p for p in me.children(recursive=True) if p.pid not in before])
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def start_ray(ray: Any, temp_dir: str | None = None) -> None:
    """``ray.init`` a new local Ray (``address="local"``: never one already running on the
    machine), tried up to three times (see :func:`_three_tries`)."""
    options: dict[str, Any] = {"_temp_dir": temp_dir} if temp_dir else {}
    _three_tries(lambda: ray.init(address="local", num_cpus=2, include_dashboard=False,
                                  log_to_driver=False, namespace="agentbook", **options),
                 ray.shutdown)


def start_cluster(ray: Any, nodes: int = 2, cpus: int = 2) -> Any:
    """A Ray cluster of *nodes* nodes on this machine (``ray.cluster_utils.Cluster``, a
    free port for its head), connected to; tried up to three times like :func:`start_ray`.
    Returns the cluster: ``ray.shutdown()`` then ``cluster.shutdown()`` when done."""
    import socket

    from ray.cluster_utils import Cluster

    made: list[Any] = []

    def start() -> Any:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cluster = Cluster(initialize_head=False)
        made.append(cluster)
        cluster.add_node(num_cpus=cpus, gcs_server_port=port, include_dashboard=False)
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING",
                 namespace="agentbook")
        return cluster

    def undo() -> None:
        ray.shutdown()
        made.pop().shutdown()

    return _three_tries(start, undo)


class SharedCluster:
    """The tests' one Ray cluster of two nodes (2 CPUs each), started on first use and
    kept for the session (starting one costs seconds, several on a loaded machine): the
    conformance suite, test_ray_backend and test_ray_reads all run on it. A test that needs
    a cluster of its own (test_ray_nodes removes and adds nodes) disconnects the driver
    from it; :meth:`connect` connects it back."""

    def __init__(self) -> None:
        self.cluster: Any = None

    def connect(self, ray: Any) -> Any:
        """Start the cluster, or connect the driver to it again; returns *ray*."""
        if ray.is_initialized() and (self.cluster is None or ray.get_runtime_context()
                                     .gcs_address != self.cluster.address):
            ray.shutdown()  # (connected to another Ray)
        if self.cluster is None:
            self.cluster = start_cluster(ray)
        elif not ray.is_initialized():
            ray.init(address=self.cluster.address, log_to_driver=False,
                     logging_level="WARNING", namespace="agentbook")
        return ray

    def shutdown(self, ray: Any) -> None:
        if self.cluster is not None:
            ray.shutdown()
            self.cluster.shutdown()
            self.cluster = None


SHARED = SharedCluster()
