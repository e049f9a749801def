"""Start a Ray of the tests' own (loopback only), on a loaded machine too."""

from __future__ import annotations

import os
from typing import Any

import psutil


def start_ray(ray: Any, temp_dir: str | None = None) -> None:
    """``ray.init`` a new local Ray (``address="local"``: never one already running on the
    machine), tried up to three times: on a loaded machine Ray's raylet gives its agent
    15 s to start and then dies (ray-project/ray#65983). The processes a failed try
    started are stopped before the next."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    options: dict[str, Any] = {"_temp_dir": temp_dir} if temp_dir else {}
    me = psutil.Process()
    for attempt in range(3):
        before = {p.pid for p in me.children(recursive=True)}
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                     namespace="agentbook", **options)
            return
        except Exception:
            ray.shutdown()
            started = [p for p in me.children(recursive=True) if p.pid not in before]
            for process in started:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(started, timeout=10)
            if attempt == 2:
                raise
