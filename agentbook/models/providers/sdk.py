"""What the adapters over official provider SDKs share: keys, install hints, one client per
event loop, reading tool-call arguments, and turning provider failures into agentbook errors.

None of this imports an SDK: each adapter does that lazily through :func:`require`.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ...errors import (
    ModelAuthError,
    ModelError,
    ModelNotInstalledError,
    ModelRateLimitError,
    ModelResponseError,
    ModelTimeoutError,
)
from ..base import Model

__all__ = ["ClientCache", "Phase", "Secret", "api_error", "arguments", "check_installed",
           "key_from", "label", "require", "timed_out", "translated", "transport_error"]

_LABELS = {"openai": "OpenAI", "openai-compatible": "The OpenAI-compatible server",
           "anthropic": "Anthropic", "gemini": "Gemini"}


class Secret:
    """An API key held in memory: never shown by ``repr``, never pickled (copies share it)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The key itself (only for handing it to the SDK)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    def __reduce__(self) -> Any:
        raise TypeError("An API key is never serialized: let the model read it from the provider's "
                        "environment variable where it is loaded, or pass api_key= there again.")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self


def key_from(secret: Secret | None, *env_names: str) -> str | None:
    """The key given explicitly, else the first of *env_names* that is set (read at call time)."""
    if secret is not None:
        return secret.reveal()
    for name in env_names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def require(module: str, extra: str, package: str) -> ModuleType:
    """Import an optional SDK, or raise :class:`ModelNotInstalledError` saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise _not_installed(extra, package) from exc


def check_installed(module: str, extra: str, package: str) -> None:
    """Like :func:`require`, but only look for the SDK (cheap: nothing is imported)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:
        found = False
    if not found:
        raise _not_installed(extra, package)


def _not_installed(extra: str, package: str) -> ModelNotInstalledError:
    return ModelNotInstalledError(
        f"The {package!r} package is not installed; run: pip install 'agentbook[{extra}]' "
        f"(or pip install {package}).", provider=extra)


class ClientCache:
    """One SDK client per running event loop (an HTTP pool can't cross loops)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._client: Any = None
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None

    def get(self) -> Any:
        """The client for the running loop, made on first use."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is None or self._loop() is not loop:
            self._client = self._factory()
            self._loop = weakref.ref(loop)
        return self._client

    def take(self) -> Any:
        """Forget the client and hand it over (to be closed); None if there is none."""
        client, self._client, self._loop = self._client, None, None
        return client


def arguments(raw: Any, provider: str, tool: str) -> dict[str, Any]:
    """A tool call's arguments as a dict, from a JSON string or an already parsed value."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError as exc:
            shown = raw if len(raw) <= 200 else raw[:197] + "..."
            raise ModelResponseError(
                f"{label(provider)} called the tool {tool!r} with arguments that are not valid JSON: "
                f"{shown!r}; ask again or use a stronger model", provider=provider) from exc
    if not isinstance(value, dict):
        raise ModelResponseError(
            f"{label(provider)} called the tool {tool!r} with arguments that are not a JSON object: "
            f"{value!r}; ask again or use a stronger model", provider=provider)
    return dict(value)


def label(provider: str) -> str:
    """How messages name *provider*."""
    return _LABELS.get(provider, provider)


def api_error(provider: str, status: int | None, message: str, *, code: str | None = None,
              auth: bool = False, rate: bool = False, key_hint: str = "") -> ModelError:
    """The typed error for an error answer, keeping the provider's own *message* (and *code*,
    such as ``rate_limit_error`` or ``RESOURCE_EXHAUSTED``)."""
    said = (message or "no message").strip()
    said = said if said.endswith((".", "!", "?")) else said + "."
    name = label(provider)
    where = ", ".join(x for x in (f"HTTP {status}" if status else "", code or "") if x)
    where = f" ({where})" if where else ""
    if auth or status in (401, 403):
        return ModelAuthError(f"{name} refused the request{where}: {said} Check the API key"
                              f"{key_hint}.", provider=provider, status=status)
    if rate or status == 429:
        return ModelRateLimitError(f"{name} is rate limiting{where}: {said} Wait a little and "
                                   "try again.", provider=provider, status=status)
    if status in (408, 504):
        return ModelTimeoutError(f"{name} timed out{where}: {said} Try again.",
                                 provider=provider, status=status)
    return ModelError(f"{name} failed{where}: {said}", provider=provider, status=status)


def timed_out(provider: str) -> ModelTimeoutError:
    """The error for an answer that did not come in time."""
    return ModelTimeoutError(f"{label(provider)} did not answer in time; try again, or give the "
                             "model a larger timeout=", provider=provider)


def transport_error(exc: BaseException, provider: str, started: bool) -> ModelError | None:
    """Timeouts, broken connections and bad JSON from any HTTP stack the SDKs use, or None."""
    name = label(provider)
    names = {cls.__name__ for cls in type(exc).__mro__}
    module = type(exc).__module__.split(".")[0]
    if isinstance(exc, asyncio.TimeoutError) or (
            module in ("httpx", "httpx2", "httpcore", "httpcore2") and "TimeoutException" in names):
        return timed_out(provider)
    if isinstance(exc, json.JSONDecodeError) or "ValidationError" in names:
        return ModelResponseError(f"{name} sent an answer that could not be read: {exc}",
                                  provider=provider)
    if module in ("httpx", "httpx2", "httpcore", "httpcore2", "aiohttp") and (
            "TransportError" in names or "ClientError" in names):
        if started:
            return ModelResponseError(f"{name}'s stream broke off before the answer was complete "
                                      f"({exc or type(exc).__name__}); try again", provider=provider)
        return ModelError(f"could not reach {name}: {exc or type(exc).__name__}", provider=provider)
    return None


@dataclass
class Phase:
    """Where a call is: ``started`` once the provider's answer began to arrive."""

    started: bool = False


@contextmanager
def translated(translate: Callable[[Exception, Phase], ModelError | None]) -> Iterator[Phase]:
    """Re-raise SDK and transport failures as agentbook's typed errors; others pass through."""
    phase = Phase()
    try:
        yield phase
    except ModelError:
        raise
    except Exception as exc:
        error = translate(exc, phase)
        if error is None:
            raise
        raise error from exc


class SDKModel(Model):
    """What the SDK-backed models share: a per-loop client cache that is never pickled
    (a copy reconnects), and ``aclose``."""

    _clients: ClientCache
    #: ``(module, extra, pip package)`` that must be installed to make one.
    _package: tuple[str, str, str]

    def __init__(self, model: str, api_key: str | None, base_url: str | None, timeout: float,
                 client_options: dict[str, Any]) -> None:
        check_installed(*self._package)
        self.name = model
        self.base_url = base_url
        self.timeout = timeout
        self._api_key = Secret(api_key) if api_key else None
        self._client_options = client_options
        self._clients = ClientCache(self._connect)

    def __repr__(self) -> str:
        where = f" at {self.base_url}" if self.base_url else ""
        return f"<{self.provider} model {self.name!r}{where}>"

    def _connect(self) -> Any:
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_clients": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._clients = ClientCache(self._connect)

    async def aclose(self) -> None:
        """Close the HTTP connections this model holds (it reconnects if used again)."""
        client = self._clients.take()
        if client is not None:
            await self._close_client(client)

    async def _close_client(self, client: Any) -> None:
        await client.close()
