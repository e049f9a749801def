"""``ab.sweep(ref, from_version, variants={...})``: "what if?" over many alternatives.

One replay (:func:`agentbook.travel.replay.replay`) per variant, each on its own fork,
all at once on the runtime's event loop (``asyncio.gather``: the forks are different
agents, so their mailboxes run side by side). A variant says what differs from the
recorded run; everything it does not change is served from the effect journal, so a
sweep on the builtin or scripted models is deterministic run to run.

A variant is one of:

* a dict with any of ``overrides`` (journal key -> value, function or model, as in
  ``ref.replay(overrides=)``: ``{"model": ab.models.scripted([...])}``, ``{"tool:search":
  fn}``), ``patch`` (a JSON merge patch on the state the replay starts from) and ``live``
  (journal keys to call for real);
* a model (anything with ``complete``): short for ``{"overrides": {"model": model}}``;
* ``None`` or ``{}``: the recorded run itself, served whole (a baseline: it must diverge
  nowhere).

The outcome is a DataFrame, one row per variant: ``variant``, ``fork`` (the fork's name),
``steps`` (replayed), ``diverged`` (steps whose state or result differ from the
original's), ``first_diverged`` (the first such original version), ``errors``,
``model_calls`` (``model`` effects the fork's replayed steps journaled), ``state`` (the
fork's final state), then one column per metric (``metrics={name: fn(fork_ref)}``). The
same rows land in the DuckDB view ``sweeps`` (with ``sweep``, ``agent``, ``name``,
``from_version``; the state and the metrics as JSON text), for this runtime's lifetime.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .. import jsonvalue
from ..errors import UsageError
from ..store import open_reader
from ..store.history import history_rows

if TYPE_CHECKING:
    import pandas as pd

    from ..core.ref import AgentRef
    from .replay import ReplayResult

__all__ = ["COLUMNS", "Variant", "sweep", "variant_of"]

#: The columns of a sweep's DataFrame before the metrics.
COLUMNS = ["variant", "fork", "steps", "diverged", "first_diverged", "errors", "model_calls",
           "state"]
_KEYS = frozenset({"overrides", "patch", "live"})


class Variant(dict):
    """One variant, spelled out: ``overrides``, ``patch`` and ``live``."""


def variant_of(label: str, spec: Any) -> Variant:
    """The :class:`Variant` a user's *spec* stands for (see the module docstring).

    Raises:
        UsageError: *spec* is none of the accepted shapes.
    """
    if spec is None:
        return Variant(overrides={}, patch=None, live=False)
    if hasattr(spec, "complete") and not isinstance(spec, Mapping):
        return Variant(overrides={"model": spec}, patch=None, live=False)
    if not isinstance(spec, Mapping):
        raise UsageError(f"variant {label!r} is a {type(spec).__name__}; give a model, or a dict "
                         "with overrides=, patch= and/or live=, e.g. {'overrides': {'model': "
                         "ab.models.scripted(['yes'])}}")
    unknown = set(spec) - _KEYS
    if unknown:
        raise UsageError(f"variant {label!r} has {sorted(unknown)}; a variant's keys are "
                         "overrides, patch and live (a model override is {'overrides': "
                         "{'model': ...}})")
    overrides = spec.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise UsageError(f"variant {label!r}: overrides is a dict of journal key -> value, "
                         "function or model")
    return Variant(overrides=dict(overrides), patch=spec.get("patch"),
                   live=spec.get("live", False))


async def sweep(ref: AgentRef, from_version: int, variants: Mapping[str, Any], *,
                metrics: Mapping[str, Callable[[AgentRef], Any]] | None = None,
                to_version: int | None = None, prefix: str | None = None) -> pd.DataFrame:
    """Replay *ref*'s history from *from_version* once per variant, on one fork each, at
    once; returns the outcomes (and adds them to the ``sweeps`` view).

    Args:
        ref: The agent whose recorded inputs run again.
        from_version: The first version replayed (each fork starts just before it).
        variants: Label -> variant (see the module docstring).
        metrics: Name -> function of the fork's ref, computed after its replay (a JSON
            value; a coroutine function is awaited).
        to_version: The last version replayed (default: the newest).
        prefix: The forks are named ``<prefix>-<label>`` (default: ``<name>-sweep-<id>``).

    Raises:
        UsageError: no variants, a bad variant, a metric that is not callable, or a fork
            name already taken.
    """
    from .replay import read_recording, replay

    if not isinstance(variants, Mapping) or not variants:
        raise UsageError("a sweep needs variants: {label: variant}, e.g. {'yes': "
                         "ab.models.scripted(['yes'] * 10), 'baseline': None}")
    specs = {str(label): variant_of(str(label), spec) for label, spec in variants.items()}
    metrics = dict(metrics or {})
    for name, fn in metrics.items():
        if not callable(fn):
            raise UsageError(f"metric {name!r} is not a function; give fn(fork_ref) -> value")
    rt = ref.runtime
    rt.check_open()
    sweep_id = secrets.token_hex(4)
    prefix = prefix or f"{ref.name}-sweep-{sweep_id}"
    conn = open_reader(rt.path_of(ref._ab_key))
    try:
        recording = read_recording(conn, from_version, to_version, repr(ref))
    finally:
        conn.close()
    results = await asyncio.gather(*(
        replay(ref, recording, on=f"{prefix}-{label}", overrides=spec["overrides"],
               live=spec["live"], patch=spec["patch"])
        for label, spec in specs.items()))
    records = []
    for label, result in zip(specs, results, strict=True):
        values = {}
        for name, fn in metrics.items():
            value = fn(result.fork)
            if asyncio.iscoroutine(value):
                value = await value
            values[name] = jsonvalue.thaw(jsonvalue.freeze(_plain(value), f"metric {name!r}"))
        records.append((label, result, values))
    frame = _frame(records, list(metrics))
    rt.analytics.add_sweep(sweep_id, ref.class_name, ref.name, recording.from_version, frame,
                           list(metrics))
    return frame


def _plain(value: Any) -> Any:
    """numpy scalars (what a DataFrame cell is) as plain Python values."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, (list, dict)) else value


def _frame(records: list[tuple[str, ReplayResult, dict]], metric_names: list[str]
           ) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for label, result, values in records:
        steps = [s for s in result.steps if s.outcome != "skipped"]
        diverged = [s for s in steps if not (s.same_state and s.same_result)]
        rows.append((label, result.fork.name, len(steps), len(diverged),
                     diverged[0].version if diverged else None,
                     sum(1 for s in steps if s.outcome.startswith("error")),
                     _model_calls(result), result.fork.state,
                     *(values[name] for name in metric_names)))
    frame = pd.DataFrame.from_records(rows, columns=[*COLUMNS, *metric_names])
    frame["first_diverged"] = frame["first_diverged"].astype("Int64")
    frame["state"] = pd.Series([r[COLUMNS.index("state")] for r in rows], dtype=object)
    return frame


def _model_calls(result: ReplayResult) -> int:
    """How many ``model`` effects the fork's replayed versions journaled."""
    done = [s.fork_version for s in result.steps if s.fork_version is not None]
    if not done:
        return 0
    rt = result.fork.runtime
    conn = open_reader(rt.path_of(result.fork._ab_key))
    try:
        rows = history_rows(conn, min(done), max(done))
    finally:
        conn.close()
    return sum(1 for row in rows for key, _value in (jsonvalue.loads(row.effects) or [])
               if key == "model")
