"""Models: one interface (:class:`~agentbook.models.base.Model`) and its providers.

``builtin()`` (the default: offline, deterministic), ``scripted([...])``, and through the
official SDKs as optional extras: ``openai(model)``, ``openai_compatible(base_url, model)``
(Ollama, vLLM, llama.cpp's server), ``anthropic(model)``, ``gemini(model)``. Keys come
from the environment (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY``) or an
``api_key=`` argument, and are never stored, journaled or shown.
"""

from __future__ import annotations

from typing import Any

from .base import Chunk, Model, Response, ToolCall
from .builtin import BuiltinModel, ScriptedModel

__all__ = ["Chunk", "Model", "Response", "ToolCall", "anthropic", "builtin", "gemini", "openai",
           "openai_compatible", "scripted"]


def builtin() -> Model:
    """The offline, deterministic builtin model (a stand-in, good for teaching and tests)."""
    return BuiltinModel()


def scripted(responses: list[Any]) -> Model:
    """A model that answers with *responses*, one per call, in order."""
    return ScriptedModel(responses)


def openai(model: str = "gpt-4o-mini", **options: Any) -> Model:
    """An OpenAI model through the official ``openai`` SDK (``pip install agentbook[openai]``)."""
    from .providers.openai import OpenAIModel

    return OpenAIModel(model, **options)


def openai_compatible(base_url: str, model: str, **options: Any) -> Model:
    """Any OpenAI-compatible server (Ollama, vLLM, llama.cpp) at *base_url*."""
    from .providers.openai import OpenAIModel

    options.setdefault("api_key", "not-needed")
    return OpenAIModel(model, base_url=base_url, provider="openai-compatible", **options)


def anthropic(model: str = "claude-sonnet-4-6", **options: Any) -> Model:
    """An Anthropic model through the official ``anthropic`` SDK."""
    from .providers.anthropic import AnthropicModel

    return AnthropicModel(model, **options)


def gemini(model: str = "gemini-2.5-flash", **options: Any) -> Model:
    """A Google Gemini model through the official ``google-genai`` SDK."""
    from .providers.gemini import GeminiModel

    return GeminiModel(model, **options)
